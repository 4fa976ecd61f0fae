"""A study's timeline: one row per step (completed, inferred, encoded, delivered, ...),
written in the same transaction as the work it records where there is one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select

from storage.db import writing
from storage.models import Study, StudyEvent
from storage.states import JobState

COMPLETED, PRIORITIZED, INFERRED, DECLINED, ENCODED = "completed", "prioritized", "inferred", "declined", "encoded"
DELIVERED, DELIVERY_FAILED, NOTIFIED, NOTIFY_FAILED = "delivered", "delivery_failed", "notified", "notify_failed"
RETRIED = "retried"  # an operator ran a job again (the detail names who)
REFERENCE_COMPARED = "reference_compared"  # a reference or corrected SEG compared with the model's
#: A results version left behind; its unfinished jobs end in the job state of that name.
SUPERSEDED = JobState.SUPERSEDED.value


def record(conn: Connection, study_id: int, step: str, detail: str = "", results_version: int | None = None,
           at: float | None = None) -> None:
    """Add one step to a study's timeline (inside the caller's transaction)."""
    conn.execute(insert(StudyEvent).values(study_id=study_id, results_version=results_version, step=step,
                                           detail=detail[:400] or None, at=at or time.time()))


def record_now(engine: Engine, study_id: int, step: str, detail: str = "",
               results_version: int | None = None) -> None:
    """Add one step in a transaction of its own."""
    with writing(engine) as conn:
        record(conn, study_id, step, detail, results_version)


def epoch(value: datetime) -> float:
    """Seconds since the epoch of a stored time (SQLite gives them back without zone: UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Step:
    step: str
    at: float
    detail: str | None = None
    results_version: int | None = None


def timeline(conn: Connection, study_id: int) -> list[Step]:
    """Every step of a study in time order, starting with its first and last image."""
    study = conn.execute(select(Study.first_received_at, Study.last_received_at)
                         .where(Study.id == study_id)).one_or_none()
    if study is None:
        return []
    steps = [Step("first_image", epoch(study.first_received_at)),
             Step("last_image", epoch(study.last_received_at))]
    rows = conn.execute(select(StudyEvent.step, StudyEvent.at, StudyEvent.detail, StudyEvent.results_version)
                        .where(StudyEvent.study_id == study_id).order_by(StudyEvent.at, StudyEvent.id))
    steps += [Step(r.step, r.at, r.detail, r.results_version) for r in rows]
    return steps
