"""Recording a received instance: one transaction for study, series and instance rows."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import writing
from storage.header import InstanceHeader
from storage.models import Instance, Series, Study
from storage.states import StudyState

_studies: Table = Study.__table__  # type: ignore[assignment]
_series: Table = Series.__table__  # type: ignore[assignment]
_instances: Table = Instance.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class StoredFile:
    """Where and how an instance was written."""

    path: str
    size_bytes: int
    transfer_syntax_uid: str
    calling_ae_title: str | None


def _upsert(dialect: Any, table: Table, key: str, keep_first: tuple[str, ...], update: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (key) DO UPDATE, parameters bound at execution.

    ``keep_first`` columns keep a value already known and fill one that was missing;
    ``update`` columns take the new value.
    """
    stmt = dialect.insert(table)
    set_ = {c: func.coalesce(table.c[c], stmt.excluded[c]) for c in keep_first}
    set_.update({c: stmt.excluded[c] for c in update})
    return stmt.on_conflict_do_update(index_elements=[key], set_=set_)


class _Statements:
    """The three upserts, built once per dialect so each C-STORE only binds values."""

    def __init__(self, dialect_name: str) -> None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        self.study = _upsert(
            dialect, _studies, "study_instance_uid",
            ("study_date", "study_description", "accession_number"),
            # A late image reopens a completed study: its next completion is a new
            # results version.
            ("last_received_at", "state"),
        ).returning(_studies.c.id)
        # An instance that is evidence about the study, not more of it (a reference SEG):
        # recorded without reopening a study that completed.
        self.study_kept = _upsert(
            dialect, _studies, "study_instance_uid",
            ("study_date", "study_description", "accession_number"), (),
        ).returning(_studies.c.id)
        self.series = _upsert(
            dialect, _series, "series_instance_uid",
            ("modality", "series_number", "series_description", "body_part_examined",
             "sop_class_uid", "slice_thickness", "convolution_kernel", "orientation"),
            ("last_received_at",),
        ).returning(_series.c.id)
        self.old_path = select(_instances.c.path).where(
            _instances.c.sop_instance_uid == bindparam("sop_instance_uid")
        )
        self.instance = _upsert(
            dialect, _instances, "sop_instance_uid", (),
            ("series_id", "sop_class_uid", "instance_number", "transfer_syntax_uid",
             "size_bytes", "path", "calling_ae_title", "received_at"),
        )


@functools.cache
def _statements(dialect_name: str) -> _Statements:
    return _Statements(dialect_name)


def record_instance(
    engine: Engine, header: InstanceHeader, stored: StoredFile, now: datetime | None = None,
    reopens: bool = True, also: Callable[[Connection], None] | None = None,
) -> str | None:
    """Insert or replace the rows for one stored instance, in one transaction.

    A resent SOP Instance UID updates its row, so it counts once. Returns the path
    of the instance's previous file when that file lies elsewhere (the instance
    moved to another series) and should now be deleted; otherwise ``None``.
    ``reopens`` False: the instance does not reopen its study or count as its latest
    image (a reference SEG about it). ``also`` runs in the same transaction (to queue
    the work the instance calls for, atomically with its row).
    """
    now = now or datetime.now(UTC)
    h = asdict(header)
    sql = _statements(engine.dialect.name)
    with writing(engine) as conn:
        study_id = conn.execute(sql.study if reopens else sql.study_kept, {
            "study_instance_uid": h["study_instance_uid"], "study_date": h["study_date"],
            "study_description": h["study_description"],
            "accession_number": h["accession_number"], "state": StudyState.RECEIVING,
            "first_received_at": now, "last_received_at": now,
        }).scalar_one()
        series_id = conn.execute(sql.series, {
            "study_id": study_id, "series_instance_uid": h["series_instance_uid"],
            "modality": h["modality"], "series_number": h["series_number"],
            "series_description": h["series_description"],
            "body_part_examined": h["body_part_examined"],
            "sop_class_uid": h["sop_class_uid"], "slice_thickness": h["slice_thickness"],
            "convolution_kernel": h["convolution_kernel"], "orientation": h["orientation"],
            "calling_ae_title": stored.calling_ae_title,
            "first_received_at": now, "last_received_at": now,
        }).scalar_one()
        old_path = conn.execute(
            sql.old_path, {"sop_instance_uid": h["sop_instance_uid"]}
        ).scalar_one_or_none()
        conn.execute(sql.instance, {
            "sop_instance_uid": h["sop_instance_uid"], "series_id": series_id,
            "sop_class_uid": h["sop_class_uid"], "instance_number": h["instance_number"],
            "transfer_syntax_uid": stored.transfer_syntax_uid, "size_bytes": stored.size_bytes,
            "path": stored.path, "calling_ae_title": stored.calling_ae_title, "received_at": now,
        })
        if also is not None:
            also(conn)
    return old_path if old_path is not None and old_path != stored.path else None
