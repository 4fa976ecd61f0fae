"""Prior studies as recorded rows: which earlier studies of the patient were chosen
for a study's results version, and whether a study is held as someone's prior."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select

from storage.db import dialect_insert, writing
from storage.models import PriorStudy

#: Completion reason of a study retrieved as another study's prior (it is not routed).
PRIOR = "prior"
#: Timeline steps: the priors were chosen; the model's wait for them ended.
PRIORS_CHOSEN = "priors_chosen"
PRIORS_READY = "priors_ready"


@dataclass(frozen=True)
class ChosenPrior:
    study_instance_uid: str
    study_date: str | None
    instances: int | None


def is_a_prior(conn: Connection, study_instance_uid: str) -> bool:
    """Whether the study was fetched as a prior of another study."""
    return conn.execute(select(PriorStudy.id).where(
        PriorStudy.prior_study_instance_uid == study_instance_uid).limit(1)).first() is not None


def chosen_priors(engine: Engine, study_id: int, results_version: int) -> list[ChosenPrior] | None:
    """The priors chosen for the study's version, the most recent first; None when
    none were chosen yet (an empty list: the PACS had none)."""
    with engine.connect() as conn:
        rows = conn.execute(select(PriorStudy.prior_study_instance_uid, PriorStudy.study_date,
                                   PriorStudy.instances)
                            .where(PriorStudy.study_id == study_id, PriorStudy.results_version == results_version)
                            .order_by(PriorStudy.id)).all()
    if not rows:
        return None
    return [ChosenPrior(uid, date, count) for uid, date, count in rows if uid]


def choose_priors(engine: Engine, study_id: int, results_version: int, priors: list[ChosenPrior]) -> None:
    """Record the chosen priors once (a rerun records nothing new). No prior at all is
    recorded as one row with an empty UID, so that the PACS is not asked again."""
    now = time.time()
    rows = [dict(study_id=study_id, results_version=results_version, prior_study_instance_uid=p.study_instance_uid,
                 study_date=p.study_date, instances=p.instances, chosen_at=now) for p in priors] or \
        [dict(study_id=study_id, results_version=results_version, prior_study_instance_uid="", study_date=None,
              instances=None, chosen_at=now)]
    with writing(engine) as conn:
        for row in rows:
            conn.execute(dialect_insert(conn, PriorStudy.__table__).values(**row).on_conflict_do_nothing())
