"""Recording a received instance: one transaction for study, series and instance rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.header import InstanceHeader
from storage.models import Instance, Series, Study

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


def _upsert(conn: Connection, table: Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _keep_first(table: Table, stmt: Any, *columns: str) -> dict[str, Any]:
    """On conflict, keep a value already known and fill one that was missing."""
    return {c: func.coalesce(table.c[c], stmt.excluded[c]) for c in columns}


def record_instance(
    engine: Engine, header: InstanceHeader, stored: StoredFile, now: datetime | None = None
) -> str | None:
    """Insert or replace the rows for one stored instance, in one transaction.

    A resent SOP Instance UID updates its row, so it counts once. Returns the path
    of the instance's previous file when that file lies elsewhere (the instance
    moved to another series) and should now be deleted; otherwise ``None``.
    """
    now = now or datetime.now(timezone.utc)
    with engine.begin() as conn:
        stmt = _upsert(conn, _studies).values(
            study_instance_uid=header.study_instance_uid,
            study_date=header.study_date,
            study_description=header.study_description,
            accession_number=header.accession_number,
            state="receiving",
            first_received_at=now,
            last_received_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["study_instance_uid"],
            set_={
                "last_received_at": now,
                **_keep_first(_studies, stmt, "study_date", "study_description", "accession_number"),
            },
        )
        study_id = conn.execute(stmt.returning(_studies.c.id)).scalar_one()

        stmt = _upsert(conn, _series).values(
            study_id=study_id,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality,
            series_number=header.series_number,
            series_description=header.series_description,
            body_part_examined=header.body_part_examined,
            calling_ae_title=stored.calling_ae_title,
            first_received_at=now,
            last_received_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["series_instance_uid"],
            set_={
                "last_received_at": now,
                **_keep_first(
                    _series,
                    stmt,
                    "modality",
                    "series_number",
                    "series_description",
                    "body_part_examined",
                ),
            },
        )
        series_id = conn.execute(stmt.returning(_series.c.id)).scalar_one()

        old_path = conn.execute(
            select(_instances.c.path).where(
                _instances.c.sop_instance_uid == header.sop_instance_uid
            )
        ).scalar_one_or_none()
        values = dict(
            series_id=series_id,
            sop_class_uid=header.sop_class_uid,
            instance_number=header.instance_number,
            transfer_syntax_uid=stored.transfer_syntax_uid,
            size_bytes=stored.size_bytes,
            path=stored.path,
            calling_ae_title=stored.calling_ae_title,
            received_at=now,
        )
        stmt = _upsert(conn, _instances).values(sop_instance_uid=header.sop_instance_uid, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["sop_instance_uid"], set_=values))
    return old_path if old_path is not None and old_path != stored.path else None
