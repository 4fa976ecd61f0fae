"""Keeping a received instance: the size and disk checks, its header, the durable write
and its row. Shared by the DICOM listener (C-STORE) and DICOMweb (STOW-RS), so that both
doors make the same promise: a success means the file is on disk (fsync, atomic rename)
and its row is committed.

Refusals carry the PS3.4 status a C-STORE answers with; STOW-RS reports the same codes
as each failed instance's Failure Reason (PS3.18 10.5.3).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import SegmentationStorage
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from config.settings import Settings
from node.network.throttled_log import ThrottledLog
from storage.files import FileStore, encode_file_meta
from storage.header import InstanceHeader, InstanceTooLarge, InvalidInstance, read_header
from storage.ingest import StoredFile, record_instance
from storage.instance_lock import InstanceLocks
from storage.models import Instance

log = logging.getLogger(__name__)

MB = 1024 * 1024

# Statuses (PS3.4 B.2.3, PS3.7 C), also STOW-RS Failure Reasons (PS3.18 10.5.3).
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Refusal:
    """Why an instance was not kept: the status to answer and a comment without patient data."""

    status: int
    comment: str


class InstanceIntake:
    """Writes and records received instances for one process (thread-safe)."""

    def __init__(self, settings: Settings, engine: Engine, store: FileStore,
                 door: str, on_reference: Callable[[Connection, str], None] | None = None,
                 closing: Callable[[], bool] = lambda: False) -> None:
        """``door``: "C-STORE" or "STOW-RS", as the log lines name it.
        ``on_reference(conn, sop_instance_uid)``: called in the transaction that records
        a SEG (a reference or corrected segmentation), to queue its comparison.
        ``closing()``: true once the process is shutting down (waits for the database stop)."""
        self._settings = settings
        self._door = door
        self._engine = engine
        self._store = store
        self._on_reference = on_reference
        self._closing = closing
        self.max_instance_bytes = int(settings.max_instance_mb * MB)
        self._locks = InstanceLocks(settings.data_dir)
        self._low_disk = ThrottledLog(log, 60.0)
        self._db_waits = ThrottledLog(log, 10.0)

    def close(self) -> None:
        self._locks.close()

    def size_refusal(self, size: int) -> Refusal | None:
        """An instance of ``size`` bytes over max_instance_mb, or one the disk reserve
        (min_free_disk_mb) does not leave room for."""
        s = self._settings
        if size > self.max_instance_bytes:
            log.warning("%s refused: %d bytes exceed max_instance_mb", self._door, size)
            return Refusal(OUT_OF_RESOURCES, "instance larger than the node accepts")
        free = shutil.disk_usage(self._store.root).free
        if free - size < s.min_free_disk_mb * MB:
            self._low_disk(self._door + " refused: %.0f MB free on the data disk, min_free_disk_mb is %.0f",
                           free / MB, s.min_free_disk_mb)
            return Refusal(OUT_OF_RESOURCES, "low disk space on the receiving node")
        return None

    def header(self, encoded: bytes | memoryview, transfer_syntax: str, source: str) -> InstanceHeader | Refusal:
        """The indexed attributes of a dataset, or why it cannot be kept."""
        try:
            return read_header(encoded, transfer_syntax, self.max_instance_bytes)
        except InstanceTooLarge:
            log.warning("%s from %s refused: the deflated dataset inflates beyond max_instance_mb (%.0f MB)",
                        self._door, source, self._settings.max_instance_mb)
            return Refusal(OUT_OF_RESOURCES, "inflated instance larger than the node accepts")
        except InvalidInstance as exc:
            log.warning("%s from %s refused: %s", self._door, source, exc)
            return Refusal(CANNOT_UNDERSTAND, str(exc))

    def keep(self, header: InstanceHeader, encoded: bytes | memoryview, transfer_syntax: str,
             calling_ae: str | None, source_ae: str) -> Refusal | None:
        """Write the instance (new file meta, then the dataset as received) and record
        it; ``None`` once both are done. ``calling_ae``: the sender's AE title as the
        routing rules see it (None over DICOMweb); ``source_ae``: the file meta's Source
        Application Entity Title."""
        meta = encode_file_meta(header.sop_class_uid, header.sop_instance_uid, transfer_syntax, source_ae)
        relative = self._store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self._locks.hold(header.sop_instance_uid):  # this sender's file and row win together
            return self._write_and_record(header, relative, meta, encoded, transfer_syntax, calling_ae)

    def keep_fetched(self, encoded: bytes | memoryview, transfer_syntax: str, archive_ae: str) -> Refusal | None:
        """Keep an instance the node fetched from an archive itself (WADO-RS, C-GET): the
        size and disk checks, its header, the durable write and its row, with the
        archive's AE title as Source AE; ``None`` once kept."""
        refusal = self.size_refusal(len(encoded))
        if refusal is not None:
            return refusal
        header = self.header(encoded, transfer_syntax, archive_ae)
        if isinstance(header, Refusal):
            return header
        return self.keep(header, encoded, transfer_syntax, None, archive_ae)

    def _write_and_record(self, header: InstanceHeader, relative: str, meta: bytes, encoded: bytes | memoryview,
                          transfer_syntax: str, calling_ae: str | None) -> Refusal | None:
        try:
            size = self._store.write(relative, [meta, encoded])
        except OSError as exc:
            log.error(
                "%s of instance %s failed: cannot write the file (%s)", self._door,
                header.sop_instance_uid, exc.strerror or type(exc).__name__,
            )
            return Refusal(OUT_OF_RESOURCES, "cannot write to disk")
        try:
            old_path = self._record(header, StoredFile(relative, size, transfer_syntax, calling_ae or None))
        except SQLAlchemyError as exc:
            log.error(
                "%s of instance %s failed: cannot record it in the database (%s)", self._door,
                header.sop_instance_uid, type(getattr(exc, "orig", None) or exc).__name__,
            )
            self._forget_unrecorded(relative)
            return Refusal(OUT_OF_RESOURCES, "cannot record in the database")
        if old_path is not None:
            self._store.remove(old_path)
        return None

    def _record(self, header: InstanceHeader, stored: StoredFile) -> str | None:
        """Record the instance, retrying a locked or unreachable database for up to
        ``store_db_wait_s``: the node's own writers (the completion sweep, job claims)
        may hold SQLite's write lock past the busy timeout when the machine is loaded,
        and a sender should not be refused for that. Other errors are not retried."""
        deadline = time.monotonic() + self._settings.store_db_wait_s
        pause = 0.05
        # A SEG sent to the node is a reference (or corrected) segmentation of a study it
        # has: it is compared with the model's, and does not reopen the study.
        reference = header.sop_class_uid == SegmentationStorage
        also = None
        if reference and self._on_reference is not None:
            on_reference, uid = self._on_reference, header.sop_instance_uid

            def also(conn: Connection) -> None:
                on_reference(conn, uid)
        while True:
            try:
                return record_instance(self._engine, header, stored, reopens=not reference, also=also)
            except OperationalError:
                if self._closing() or time.monotonic() + pause > deadline:
                    raise
                self._db_waits(self._door + " waits for the database (locked or unreachable); retrying")
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _forget_unrecorded(self, relative: str) -> None:
        """After a failed commit, remove the file unless a row already points at it
        (a resend whose earlier copy was recorded keeps its file)."""
        try:
            with self._engine.connect() as conn:
                recorded = conn.execute(
                    select(Instance.id).where(Instance.path == relative)
                ).first()
        except SQLAlchemyError:
            return  # cannot tell: keep the (complete) file rather than risk an acknowledged one
        if recorded is None:
            self._store.remove(relative)
