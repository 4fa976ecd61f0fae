"""Log lines cannot be forged by values from the wire; libraries do not flood them."""

from __future__ import annotations

import logging

import pytest

from node.runner.logs import OneLineFormatter, escape_controls, setup_logging


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


def test_an_encode_and_a_skipped_sweep_leave_the_log_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from ai.encoders.results import encode_prediction
    from tests.unit.test_encoders import _inputs, _result

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        identity, sources, labelmap = _inputs()
        encode_prediction(identity, _result(sources, labelmap), sources)
        # What APScheduler says when a sweep still runs at its next time.
        logging.getLogger("apscheduler.scheduler").warning(
            'Execution of job "sweep" skipped: maximum number of running instances reached (1)')
        logging.getLogger("apscheduler.executors.default").error("Job raised an exception")
    finally:
        handlers, level = saved
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
    logged = capsys.readouterr().err.splitlines()
    assert not [line for line in logged if "highdicom" in line]
    assert not [line for line in logged if "skipped" in line]
    assert any("Job raised an exception" in line for line in logged)  # errors still show
