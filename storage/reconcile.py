"""Start-up reconciliation of the file store and the database after a crash.

Files are written (fsync, rename) before their row is committed, so a crash can
leave a complete file without a row, never a row whose file was not complete. A
power loss may also drop the last commits (SQLite WAL with synchronous=NORMAL).
Reconciliation indexes such files, drops rows whose file is gone and removes
empty series and studies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, exists, select

from storage.db import writing
from storage.files import FileStore
from storage.header import read_file_header
from storage.ingest import StoredFile, record_instance
from storage.models import Instance, Series, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    files_indexed: int
    rows_dropped: int
    unreadable_files: int


def reconcile(store: FileStore, engine: Engine) -> ReconcileReport:
    """Make the database and the file store agree again."""
    with engine.connect() as conn:
        known = set(conn.execute(select(Instance.path)).scalars())
    on_disk = set(store.iter_files())

    indexed = unreadable = 0
    for relative in sorted(on_disk - known):
        path = store.absolute(relative)
        try:
            header, ts = read_file_header(path)
        except Exception as exc:
            unreadable += 1
            log.warning("reconcile: cannot read stored file %s (%s); left in place", relative, type(exc).__name__)
            continue
        if store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        ) != relative:
            unreadable += 1
            log.warning("reconcile: %s is not where its UIDs place it; left in place", relative)
            continue
        with engine.connect() as conn:
            moved = conn.execute(
                select(Instance.id).where(Instance.sop_instance_uid == header.sop_instance_uid)
            ).first()
        if moved is not None:
            # The instance was resent into another series and its row points at the
            # new file: this one is the old copy whose deletion the crash prevented.
            store.remove(relative)
            continue
        stat = path.stat()
        # The file's time, not now: what it records is when the image arrived (and a
        # file left behind by a retention purge is still old enough to go again).
        received = datetime.fromtimestamp(stat.st_mtime, UTC)
        record_instance(engine, header, StoredFile(relative, stat.st_size, ts, None), now=received)
        indexed += 1

    missing = sorted(known - on_disk)
    with writing(engine) as conn:
        for start in range(0, len(missing), 500):
            conn.execute(delete(Instance).where(Instance.path.in_(missing[start : start + 500])))
        conn.execute(delete(Series).where(~exists().where(Instance.series_id == Series.id)))
        conn.execute(delete(Study).where(~exists().where(Series.study_id == Study.id)))
    report = ReconcileReport(indexed, len(missing), unreadable)
    if indexed or missing or unreadable:
        log.warning(
            "reconcile: indexed %d file(s) without a row, dropped %d row(s) without a file, "
            "%d unreadable file(s)",
            indexed,
            len(missing),
            unreadable,
        )
    return report
