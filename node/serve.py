"""`ainode serve`: start-up checks, reconciliation, the listener, orderly shutdown."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from config.settings import Settings
from node.listener import StorageListener
from storage.db import open_database
from storage.files import FileStore
from storage.reconcile import reconcile

log = logging.getLogger(__name__)


class DataDirInUse(RuntimeError):
    """Another node process already serves this data directory."""


class RunMarker:
    """An exclusive lock on the data directory, and a marker that tells the next
    start whether this run ended cleanly (marker removed) or was killed."""

    def __init__(self, data_dir: Path) -> None:
        self._lock_path = data_dir / "ainode.lock"
        self._marker = data_dir / "ainode.running"
        self._lock_fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; return ``True`` when the previous run did not stop cleanly."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"another ainode process is using {self._lock_path.parent}; stop it or "
                "choose another --data-dir"
            ) from None
        self._lock_fd = fd
        unclean = self._marker.exists()
        marker_fd = os.open(self._marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(marker_fd, f"{os.getpid()}\n".encode())
        os.fsync(marker_fd)
        os.close(marker_fd)
        return unclean

    def release(self, clean: bool) -> None:
        """Drop the lock; a clean stop also removes the marker."""
        if clean:
            self._marker.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the node in the foreground until SIGINT/SIGTERM (or ``stop``); exit status."""
    stop = stop or threading.Event()
    store = FileStore(settings.data_dir)
    store.prepare()
    marker = RunMarker(settings.data_dir)
    unclean = marker.acquire()
    clean = False
    try:
        engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
        if unclean:
            log.warning("the previous run did not stop cleanly; reconciling files and database")
            reconcile(store, engine)
        listener = StorageListener(settings, engine, store)
        listener.start()
        log.info(
            "AINode listening on %s:%d as AE %s; data in %s; database %s",
            settings.host, listener.port, settings.ae_title, settings.data_dir.resolve(),
            engine.url.render_as_string(hide_password=True),
        )
        log.info("%s", listener.policy.describe())

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if stop.is_set():
                if signum == signal.SIGINT:  # a second Ctrl-C: the operator insists
                    log.warning("second SIGINT: exiting without waiting")
                    os._exit(130)
                return
            log.info("received %s: finishing C-STOREs in progress, then stopping",
                     signal.Signals(signum).name)
            # A repeated SIGTERM (service managers send them) must not kill the
            # process halfway through its orderly shutdown, nor while it exits.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
        stop.wait()
        drained = listener.stop()
        engine.dispose()
        if not drained:
            log.warning("C-STOREs were still running at the shutdown timeout; they were not acknowledged")
        log.info("AINode stopped")
        clean = True
    finally:
        marker.release(clean)
    return 0
