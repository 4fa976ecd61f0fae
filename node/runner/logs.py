"""Logging set-up: one line per event, to standard error, no patient data.

Log calls in the node name studies and instances by UID and peers by AE title and
address; they never include patient attributes.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO and dumps datasets at DEBUG, APScheduler every
    # run of a periodic task: keep them quiet.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("pynetdicom", "alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(quiet)
