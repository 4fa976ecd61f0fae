"""Logging set-up: one line per event, to standard error, no patient data.

Log calls in the node name studies and instances by UID and peers by AE title and
address; they never include patient attributes. Those UIDs and titles come from
the wire, so every record's message has its control characters escaped (a UID with
a line break in it cannot forge a log line), and the lines of a traceback that
follow a record are indented with ``  | ``, so that no line a sender influenced can
start like a record of its own.
"""

from __future__ import annotations

import logging
import sys

#: C0 controls, DEL, C1 controls and the Unicode line and paragraph separators.
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_UNSAFE.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape."""
    return text.translate(_UNSAFE)


class OneLineFormatter(logging.Formatter):
    """A formatter whose records cannot be split into several lines by their content."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        return "\n".join([first, *("  | " + escape_controls(line) for line in rest)])


def setup_logging(level: str) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        OneLineFormatter("%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Warnings (pydicom quotes the raw values it finds invalid) go through the same
    # formatter instead of straight to standard error.
    logging.captureWarnings(True)
    # pynetdicom logs every PDU at INFO and dumps datasets at DEBUG, highdicom each
    # module it copies (16 lines per encode), APScheduler every run of a periodic task:
    # keep them quiet. APScheduler also warns when a sweep still running makes it skip
    # the next run, which is how a periodic sweep should behave: only its errors show.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("pynetdicom", "alembic", "highdicom"):
        logging.getLogger(noisy).setLevel(quiet)
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, logging.getLevelName(level)))
    # MONAI warns at import, on every machine without NVIDIA's image codec, that it will
    # not use it; the node decodes with pydicom's own handlers anyway.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(max(logging.ERROR, logging.getLevelName(level)))
