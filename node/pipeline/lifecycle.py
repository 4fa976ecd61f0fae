"""A study's state as its jobs move (see :class:`storage.states.StudyState`).

The rule (:func:`study_state`) is a pure function of the jobs of the study's current
results version. The queue applies it (:func:`settle_study`) in the very transaction
that claims, completes, fails, reaps or retries one of those jobs, so a study's state
never disagrees with its jobs, whichever process moved them.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Engine, select, update

from config.settings import Settings
from node.jobs.kinds import JobKind
from storage.models import Job, Study
from storage.queue import JobChange, JobQueue, QueueSettings
from storage.states import JobState, StudyState

#: The jobs that are a study's own work; notifications and self-tests are not.
STUDY_STEPS = (JobKind.PRIORS, JobKind.INFER, JobKind.ENCODE, JobKind.SEND)


def study_state(current: StudyState, jobs: Iterable[tuple[str, str]]) -> StudyState:
    """The state of a completed study whose current version has ``jobs`` as (kind, state).

    Work running: processing. A model waiting for priors (its ``priors`` job queued,
    nothing running): awaiting priors. Work waiting: still complete if nothing has
    started yet, else processing (a retried job resumes a failed study). All finished: failed if any
    job is dead; done if any model's results were encoded (or sent); not applicable if
    models ran and every one declined (no encode job followed)."""
    jobs = list(jobs)
    states = {JobState(state) for _, state in jobs}
    kinds = {JobKind(kind) for kind, _ in jobs}
    if JobState.RUNNING in states:
        return StudyState.PROCESSING
    if (JobKind.PRIORS, JobState.QUEUED) in {(JobKind(k), JobState(s)) for k, s in jobs}:
        return StudyState.AWAITING_PRIORS
    if JobState.QUEUED in states:
        return StudyState.COMPLETE if current == StudyState.COMPLETE else StudyState.PROCESSING
    if JobState.DEAD in states:
        return StudyState.FAILED
    if kinds & {JobKind.ENCODE, JobKind.SEND}:
        return StudyState.DONE
    if JobKind.INFER in kinds:
        return StudyState.NOT_APPLICABLE
    return current


def settle_study(conn: Connection, change: JobChange) -> None:
    """Bring the study of a job that just moved up to date (a :data:`JobObserver`)."""
    if change.study_id is None or change.kind not in STUDY_STEPS:
        return
    # The study row is locked before its jobs are read: of two jobs finishing at
    # once (PostgreSQL), the second to lock sees the first's new state.
    study = conn.execute(select(Study.state, Study.results_version)
                         .where(Study.id == change.study_id).with_for_update()).one_or_none()
    if study is None or study.results_version != change.results_version \
            or study.state == StudyState.RECEIVING:
        return  # superseded work, or reopened by a late image: its next completion decides
    jobs = conn.execute(select(Job.kind, Job.state).where(
        Job.study_id == change.study_id, Job.results_version == change.results_version,
        Job.kind.in_(STUDY_STEPS))).all()
    state = study_state(StudyState(study.state), jobs)
    if state != study.state:
        conn.execute(update(Study).where(Study.id == change.study_id).values(state=state))


def queue_for(settings: Settings, engine: Engine) -> JobQueue:
    """The node's job queue, which keeps studies' states with their jobs."""
    return JobQueue(engine, QueueSettings(settings.job_aging_s_per_priority, settings.job_lease_s,
                                          settings.job_max_attempts), observer=settle_study)
