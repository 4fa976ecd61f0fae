"""Log lines cannot be forged by values from the wire."""

from __future__ import annotations

import logging

from node.runner.logs import OneLineFormatter, escape_controls


def _format(msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("node.x", logging.WARNING, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("bad\nFORGED line")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    return OneLineFormatter("%(levelname)s %(message)s").format(record)


def test_control_characters_in_a_message_are_escaped() -> None:
    line = _format("study %s complete", "1.2.3\n2026-12-02 ERROR FORGED\r\x1b[2J\u2028x")
    assert line == "WARNING study 1.2.3\\x0a2026-12-02 ERROR FORGED\\x0d\\x1b[2J\\u2028x complete"
    assert escape_controls("plain 1.2.840") == "plain 1.2.840"


def test_traceback_lines_are_indented_so_none_starts_a_record() -> None:
    lines = _format("failed", exc=True).split("\n")
    assert lines[0] == "WARNING failed" and len(lines) > 2
    assert all(line.startswith("  | ") for line in lines[1:])
    assert lines[-1] == "  | FORGED line"  # indented: it cannot pass for a record of its own
