"""Log lines that anyone on the network can cause, written at most once per interval.

A full disk refuses every image, and anybody can open connections that never finish
their handshake: one line per event would let a sender fill the log. Each kind of
such line is written at most once per interval, saying how many were held back.
"""

from __future__ import annotations

import logging
import threading
import time


class ThrottledLog:
    """One kind of log line, at most once per ``interval_s``."""

    def __init__(self, logger: logging.Logger, interval_s: float, level: int = logging.WARNING) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._level = level
        self._last = -interval_s
        self._held_back = 0
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval_s:
                self._held_back += 1
                return
            held_back, self._held_back, self._last = self._held_back, 0, now
        if held_back:
            message += f" (and {held_back} more like it in the last {self._interval_s:g} s)"
        self._logger.log(self._level, message, *args)
