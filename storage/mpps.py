"""Modality Performed Procedure Steps as recorded rows (PS3.4 F.7): what a modality
said it did, and whether a study has everything its completed steps list.

A step is created IN PROGRESS and set once to COMPLETED or DISCONTINUED; after that
it may not change (PS3.4 F.7.2.2). A study is complete by MPPS when it has at least
one step, every step of it is COMPLETED, and every instance those steps list has
arrived. A DISCONTINUED step, or one that never completes, leaves the study to the
quiet period.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection, Engine, func, insert, select, update

from storage.db import writing
from storage.models import Instance, PerformedProcedure, Study
from storage.timeline import record

#: Timeline step of a study's procedure step reported COMPLETED or DISCONTINUED.
PROCEDURE_STEP = "procedure_step"
#: SQLite allows 32,766 bound values a statement; a CT may list thousands of instances.
_CHUNK = 500


class StepStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252)."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class StepUpdate(StrEnum):
    """What became of an N-SET."""

    UPDATED = "updated"
    UNKNOWN = "unknown"  # no such step (0x0112)
    FINAL = "final"  # already COMPLETED or DISCONTINUED (0xA710)


def create_step(engine: Engine, sop_instance_uid: str, study_instance_uid: str | None, status: StepStatus,
                instance_uids: list[str], calling_ae_title: str | None) -> bool:
    """Record a new step; False when one with this UID exists (a duplicate N-CREATE)."""
    now = time.time()
    with writing(engine) as conn:
        if conn.execute(select(PerformedProcedure.id).where(
                PerformedProcedure.sop_instance_uid == sop_instance_uid)).first() is not None:
            return False
        conn.execute(insert(PerformedProcedure).values(
            sop_instance_uid=sop_instance_uid, study_instance_uid=study_instance_uid, status=status,
            instance_uids=instance_uids, calling_ae_title=calling_ae_title, created_at=now, updated_at=now))
    return True


def update_step(engine: Engine, sop_instance_uid: str, status: StepStatus | None,
                instance_uids: list[str] | None) -> tuple[StepUpdate, str | None]:
    """Apply an N-SET; what became of it and the step's study UID. A final status is
    recorded in the study's timeline when the study is already here."""
    with writing(engine) as conn:
        row = conn.execute(select(PerformedProcedure.id, PerformedProcedure.status,
                                  PerformedProcedure.study_instance_uid, PerformedProcedure.instance_uids)
                           .where(PerformedProcedure.sop_instance_uid == sop_instance_uid)
                           .with_for_update()).one_or_none()
        if row is None:
            return StepUpdate.UNKNOWN, None
        if row.status != StepStatus.IN_PROGRESS:
            return StepUpdate.FINAL, row.study_instance_uid
        values: dict[str, object] = {"updated_at": time.time()}
        if status is not None:
            values["status"] = status
        if instance_uids is not None:
            values["instance_uids"] = instance_uids
        conn.execute(update(PerformedProcedure).where(PerformedProcedure.id == row.id).values(**values))
        if status in (StepStatus.COMPLETED, StepStatus.DISCONTINUED) and row.study_instance_uid:
            study_id = conn.execute(select(Study.id).where(
                Study.study_instance_uid == row.study_instance_uid)).scalar_one_or_none()
            listed = len(instance_uids if instance_uids is not None else row.instance_uids or [])
            if study_id is not None:
                record(conn, study_id, PROCEDURE_STEP, f"the modality reported the procedure {status} "
                       f"({listed} instance(s) listed)" + (
                           "; the study completes by its quiet period" if status == StepStatus.DISCONTINUED else ""))
    return StepUpdate.UPDATED, row.study_instance_uid


@dataclass(frozen=True)
class StudySteps:
    """What a study's procedure steps say about its completeness."""

    steps: int
    completed: int
    listed: int  # instances the completed steps list
    missing: int  # of those, not (yet) here

    @property
    def complete(self) -> bool:
        """Every step completed and everything they list here."""
        return self.steps > 0 and self.completed == self.steps and self.listed > 0 and self.missing == 0


def study_steps(conn: Connection, study_instance_uid: str) -> StudySteps:
    rows = conn.execute(select(PerformedProcedure.status, PerformedProcedure.instance_uids)
                        .where(PerformedProcedure.study_instance_uid == study_instance_uid)).all()
    listed = sorted({uid for status, uids in rows if status == StepStatus.COMPLETED for uid in uids or []})
    present = 0
    for start in range(0, len(listed), _CHUNK):
        present += conn.execute(select(func.count()).select_from(Instance).where(
            Instance.sop_instance_uid.in_(listed[start:start + _CHUNK]))).scalar_one()
    completed = sum(1 for status, _ in rows if status == StepStatus.COMPLETED)
    return StudySteps(len(rows), completed, len(listed), len(listed) - present)
