"""What a job handler is given, what it may raise, and the study its job is about.

A handler is a plain function of the claimed job and a :class:`JobContext`; it
returns on success and raises on failure (the exception's type and message become
the job's ``last_error``, so they must not contain patient data). Handlers must be
idempotent: a job whose worker died is run again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Engine, select

from config.settings import Settings
from node.jobs.kinds import StudyWork
from storage.models import Study
from storage.queue import ClaimedJob
from storage.states import StudyState

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    settings: Settings
    engine: Engine
    #: Set when the lease was lost or the worker is stopping; long handlers check it.
    cancelled: threading.Event


Handler = Callable[[ClaimedJob, JobContext], None]


class PermanentJobError(Exception):
    """Retrying cannot help (the input is unusable, the model refuses it): the job is
    dead at once, with this message as its reason, until an operator retries it."""


class Deferred(Exception):  # noqa: N818 (not an error: the job waits, its attempt uncounted)
    """Not yet: the job goes back to the queue until ``until`` (epoch seconds) without
    using an attempt (a throttle's next turn, the start of an off-peak window)."""

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until


class Named(Protocol):
    name: str


N = TypeVar("N", bound=Named)


def configured(entries: Iterable[N], name: str, table: str) -> N:
    """The ``[[table]]`` entry a job names; gone from the configuration, the job is dead
    until it is added back (the job can then be retried)."""
    for entry in entries:
        if entry.name == name:
            return entry
    raise PermanentJobError(f"{table} entry {name!r} is no longer configured; add it back to "
                            f"[[{table}]] and retry the job")


class Superseded(Exception):
    """The job's results version was left behind: its study received more images after
    it completed, so a newer version will be (or was) computed. The job ends as
    ``superseded``, with this message, without doing its work."""


def current_study(engine: Engine, job: ClaimedJob) -> StudyWork:
    """The study a job works on, for the job's results version.

    Raises :class:`Superseded` when the study has left that version behind: it is
    receiving again (reopened by a late image) or has completed a newer version. A
    removed study fails the job for good.
    """
    with engine.connect() as conn:
        study = conn.execute(
            select(Study.id, Study.study_instance_uid, Study.results_version, Study.state)
            .where(Study.id == job.study_id)
        ).one_or_none()
    if study is None:
        raise PermanentJobError("the study was removed before its work was done")
    if study.results_version != job.results_version:
        raise Superseded(f"results version {job.results_version} superseded: the study completed again as "
                         f"version {study.results_version}")
    if study.state == StudyState.RECEIVING:
        raise Superseded(f"results version {job.results_version} superseded: the study is receiving images "
                         "again; a new version follows its completion")
    return StudyWork(study.id, study.study_instance_uid, study.results_version)
