"""One writer at a time per SOP Instance UID, across threads and listener processes.

A received instance is written to its path (fsync, atomic rename) and then its row
is committed. When the same SOP Instance UID arrives on several associations at
once, those two steps of different senders could interleave: the file of one
sender survives the renames while the row of another survives the commits, and the
row (size, transfer syntax, sender) no longer describes the file. Holding this lock
from the write to the commit makes the file and the row of one sender win together.

Instances are hashed into ``BUCKETS`` byte ranges of one lock file in the data
directory (POSIX record locks, which the kernel drops when a process dies), each
with a thread lock besides, since record locks do not exclude threads of one
process. Two UIDs in one bucket merely wait for each other for a few milliseconds.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUCKETS = 4096
LOCK_FILE = "ainode.instances.lock"


class InstanceLocks:
    """The per-instance write locks of one data directory, for one process."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None
        self._threads = [threading.Lock() for _ in range(BUCKETS)]
        self._open = threading.Lock()

    def _file(self) -> int:
        with self._open:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            return self._fd

    @contextmanager
    def hold(self, sop_instance_uid: str) -> Iterator[None]:
        """Exclusive use of ``sop_instance_uid`` until the block ends."""
        bucket = zlib.crc32(sop_instance_uid.encode("utf-8", "surrogateescape")) % BUCKETS
        with self._threads[bucket]:
            fd = self._file()
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, bucket)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, bucket)

    def close(self) -> None:
        with self._open:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
