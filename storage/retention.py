"""Retention: studies whose last image is older than the configured age are removed,
files and rows together, unless work on them is still queued or running."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Exists, delete, exists, select

from storage.db import writing
from storage.files import FileStore
from storage.models import Instance, Job, Series, Study
from storage.states import LIVE_JOB_STATES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    studies: int
    files: int


def _has_live_jobs() -> Exists:
    return exists().where(Job.study_id == Study.id, Job.state.in_(LIVE_JOB_STATES))


def purge_older_than(engine: Engine, store: FileStore, cutoff: datetime, limit: int = 100) -> PurgeReport:
    """Remove up to ``limit`` studies last received before ``cutoff`` with no live jobs.

    Rows go first, in one transaction per study that re-checks for live jobs; the
    files follow. A crash in between leaves files without rows, which start-up
    reconciliation indexes with their file times, so the next purge removes them.
    """
    with engine.connect() as conn:
        candidates = list(conn.execute(
            select(Study.id).where(Study.last_received_at < cutoff, ~_has_live_jobs())
            .order_by(Study.last_received_at).limit(limit)
        ).scalars())
    studies = files = 0
    for study_id in candidates:
        with writing(engine) as conn:
            row = conn.execute(
                select(Study.study_instance_uid).where(
                    Study.id == study_id, Study.last_received_at < cutoff, ~_has_live_jobs()
                ).with_for_update()
            ).first()
            if row is None:  # a new image or a new job since the candidates were read
                continue
            paths = list(conn.execute(
                select(Instance.path).join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == study_id)
            ).scalars())
            conn.execute(delete(Study).where(Study.id == study_id))  # series, instances cascade
        for path in paths:
            store.remove(path)
        store.remove_results(row.study_instance_uid)
        studies += 1
        files += len(paths)
        log.info("retention: removed study %s (%d files)", row.study_instance_uid, len(paths))
    return PurgeReport(studies, files)
