"""The durable job queue: the only code that writes job state.

States (an explicit state machine)::

    queued --claim--> running --complete--> succeeded
       ^   \\             |  \\--fail (attempts left)--> queued (after a backoff)
       |    \\            |   \\-fail (no attempts left, or permanent)--> dead
       |     \\           |\\--supersede (its results version is left behind)--> superseded
       |      \\--supersede (the study completed a newer version)--> superseded
       |                 \\--lease expired (reaper)--> queued | dead
       \\-------------- retry (operator) --------------- dead

A claim takes the job with the smallest ``sort_key`` among queued jobs that are due,
under a lease that the worker's heartbeat extends. A worker that dies stops
heartbeating; the reaper returns its job to the queue when the lease expires. Every
transition checks the state it starts from (and the lease owner), so a worker that
lost its lease cannot overwrite what happened since.

SQLite: writers start with BEGIN IMMEDIATE and claim in one UPDATE ... RETURNING.
PostgreSQL: the candidate row is locked with FOR UPDATE SKIP LOCKED, so concurrent
workers never wait for each other or claim the same job.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, Table, and_, func, select, update

from storage.db import dialect_insert, writing
from storage.models import Job
from storage.states import JobState

QUEUED, RUNNING, SUCCEEDED, DEAD = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.DEAD
SUPERSEDED = JobState.SUPERSEDED

_jobs: Table = Job.__table__  # type: ignore[assignment]
#: What an observer is told of a job that moved.
_CHANGE = (_jobs.c.id, _jobs.c.kind, _jobs.c.study_id, _jobs.c.results_version)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, up to a maximum number of attempts."""

    max_attempts: int = 5
    base_delay_s: float = 10.0
    max_delay_s: float = 600.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class QueueSettings:
    """How the queue orders and leases work."""

    #: Seconds of waiting that are worth one priority level: a routine job queued
    #: this long before an urgent one (one level higher) is claimed first.
    aging_s_per_priority: float = 300.0
    lease_s: float = 60.0
    #: Attempts of a job enqueued without its own maximum.
    max_attempts: int = 5


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    study_id: int | None
    results_version: int | None
    attempts: int
    max_attempts: int
    lease_owner: str
    priority: int = 0


@dataclass(frozen=True)
class JobChange:
    """A job that has just entered ``state`` (what an observer is told)."""

    id: int
    kind: str
    state: JobState
    study_id: int | None
    results_version: int | None


#: Called in the very transaction that moved a job, after the move: what the job was
#: for (a study's state, say) changes atomically with it.
JobObserver = Callable[[Connection, JobChange], None]


@dataclass
class NewJob:
    """What to enqueue; ``dedupe_key`` makes enqueueing idempotent."""

    kind: str
    dedupe_key: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    study_id: int | None = None
    results_version: int | None = None
    max_attempts: int | None = None  # None: the queue's setting


def _due(kinds: Sequence[str], now: float) -> tuple[ColumnElement[bool], ...]:
    """A queued job of one of ``kinds`` whose time has come."""
    return _jobs.c.state == QUEUED, _jobs.c.run_after <= now, _jobs.c.kind.in_(kinds)


class JobQueue:
    """Operations on the ``jobs`` table. ``now`` is injectable for tests."""

    def __init__(
        self,
        engine: Engine,
        settings: QueueSettings | None = None,
        clock: Callable[[], float] = time.time,
        observer: JobObserver | None = None,
    ) -> None:
        """``observer``: told of every claim, completion, failure, reaping and retry,
        inside the transaction that makes it."""
        self.engine = engine
        self.settings = settings or QueueSettings()
        self._clock = clock
        self._observer = observer

    def _observe(self, conn: Connection, rows: Sequence[Row[Any]], state: JobState) -> None:
        if self._observer is None:
            return
        for row in rows:
            self._observer(conn, JobChange(row.id, row.kind, state, row.study_id, row.results_version))

    # --- producers ------------------------------------------------------------------

    def enqueue(self, job: NewJob, conn: Connection | None = None) -> int | None:
        """Add a job unless one with the same ``dedupe_key`` exists; its id, or None.

        With ``conn``, the job is added inside the caller's transaction (so a study
        is marked complete and its jobs queued atomically).
        """
        if conn is None:
            with writing(self.engine) as own:
                return self.enqueue(job, own)
        now = self._clock()
        stmt = dialect_insert(conn, _jobs).values(
            kind=job.kind, state=QUEUED, dedupe_key=job.dedupe_key, study_id=job.study_id,
            results_version=job.results_version, payload=job.payload, priority=job.priority,
            sort_key=now - job.priority * self.settings.aging_s_per_priority,
            attempts=0, max_attempts=job.max_attempts or self.settings.max_attempts, run_after=now,
            created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(_jobs.c.id)
        return conn.execute(stmt).scalar_one_or_none()

    # --- workers ---------------------------------------------------------------------

    def has_due(self, kinds: Sequence[str]) -> bool:
        """Whether a job of one of ``kinds`` is queued and due: a plain read, taking no
        write lock, so that idle workers can ask often (and claim only then)."""
        with self.engine.connect() as conn:
            return conn.execute(select(_jobs.c.id).where(*_due(kinds, self._clock())).limit(1)).first() is not None

    def claim(self, worker: str, kinds: Sequence[str]) -> ClaimedJob | None:
        """Take the next due job of one of ``kinds`` under a lease, or None."""
        now = self._clock()
        candidate = (
            select(_jobs.c.id)
            .where(*_due(kinds, now))
            .order_by(_jobs.c.sort_key, _jobs.c.id)
            .limit(1)
        )
        if self.engine.dialect.name == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True)
        stmt = (
            update(_jobs)
            .where(_jobs.c.id == candidate.scalar_subquery(), _jobs.c.state == QUEUED)
            .values(state=RUNNING, lease_owner=worker, lease_expires_at=now + self.settings.lease_s,
                    attempts=_jobs.c.attempts + 1, updated_at=now)
            .returning(_jobs.c.id, _jobs.c.kind, _jobs.c.payload, _jobs.c.study_id,
                       _jobs.c.results_version, _jobs.c.attempts, _jobs.c.max_attempts,
                       _jobs.c.priority)
        )
        with writing(self.engine) as conn:
            row = conn.execute(stmt).first()
            if row is not None:
                self._observe(conn, [row], RUNNING)
        if row is None:
            return None
        return ClaimedJob(row.id, row.kind, row.payload, row.study_id, row.results_version,
                          row.attempts, row.max_attempts, worker, row.priority)

    def _owned(self, job: ClaimedJob) -> ColumnElement[bool]:
        return and_(_jobs.c.id == job.id, _jobs.c.state == RUNNING,
                    _jobs.c.lease_owner == job.lease_owner)

    def heartbeat(self, job: ClaimedJob) -> bool:
        """Extend the lease; False when the worker no longer holds it."""
        now = self._clock()
        with writing(self.engine) as conn:
            result = conn.execute(update(_jobs).where(self._owned(job)).values(
                lease_expires_at=now + self.settings.lease_s, updated_at=now))
        return bool(result.rowcount == 1)

    def complete(self, job: ClaimedJob) -> bool:
        """Mark the job succeeded; False when the lease was lost (another attempt owns it)."""
        now = self._clock()
        with writing(self.engine) as conn:
            rows = conn.execute(update(_jobs).where(self._owned(job)).values(
                state=SUCCEEDED, lease_owner=None, lease_expires_at=None, finished_at=now,
                updated_at=now, last_error=None).returning(*_CHANGE)).all()
            self._observe(conn, rows, SUCCEEDED)
        return len(rows) == 1

    def supersede(self, job: ClaimedJob, reason: str) -> bool:
        """End a running job whose results version was left behind; False when the
        lease was lost."""
        now = self._clock()
        with writing(self.engine) as conn:
            rows = conn.execute(update(_jobs).where(self._owned(job)).values(
                state=SUPERSEDED, lease_owner=None, lease_expires_at=None, finished_at=now,
                updated_at=now, last_error=reason[:2000]).returning(*_CHANGE)).all()
            self._observe(conn, rows, SUPERSEDED)
        return len(rows) == 1

    def supersede_older(self, conn: Connection, study_id: int, version: int, reason: str) -> int:
        """Inside the caller's transaction: end the queued jobs of ``study_id`` for
        results versions before ``version`` (running ones end so when they next look
        at their study); how many."""
        now = self._clock()
        rows = conn.execute(update(_jobs).where(
            _jobs.c.study_id == study_id, _jobs.c.results_version < version, _jobs.c.state == QUEUED,
        ).values(state=SUPERSEDED, finished_at=now, updated_at=now, last_error=reason[:2000])
            .returning(*_CHANGE)).all()
        self._observe(conn, rows, SUPERSEDED)
        return len(rows)

    def fail(self, job: ClaimedJob, error: str, policy: RetryPolicy | None = None,
             permanent: bool = False) -> str | None:
        """Record a failed attempt: back to the queue after a backoff, or dead.

        ``permanent``: retrying cannot help (the input is unusable), so the job is dead
        at once; an operator can still retry it after fixing the cause. ``error`` is
        shown to operators: it must not contain patient data. Returns the new state,
        or None when the lease was lost.
        """
        policy = policy or RetryPolicy(max_attempts=job.max_attempts)
        now = self._clock()
        dead = permanent or job.attempts >= job.max_attempts
        values: dict[str, Any] = dict(lease_owner=None, lease_expires_at=None, updated_at=now,
                                      last_error=error[:2000])
        if dead:
            values.update(state=DEAD, finished_at=now)
        else:
            values.update(state=QUEUED, run_after=now + policy.delay(job.attempts))
        state = DEAD if dead else QUEUED
        with writing(self.engine) as conn:
            rows = conn.execute(update(_jobs).where(self._owned(job)).values(**values)
                                .returning(*_CHANGE)).all()
            self._observe(conn, rows, state)
        return state if rows else None

    def defer(self, job: ClaimedJob, until: float, reason: str) -> bool:
        """Put a running job back to wait until ``until`` without counting the attempt
        (a throttle or an off-peak window said not yet); False when the lease was lost."""
        now = self._clock()
        with writing(self.engine) as conn:
            rows = conn.execute(update(_jobs).where(self._owned(job)).values(
                state=QUEUED, lease_owner=None, lease_expires_at=None, run_after=max(until, now),
                attempts=_jobs.c.attempts - 1, updated_at=now, last_error=reason[:2000])
                .returning(*_CHANGE)).all()
            self._observe(conn, rows, QUEUED)
        return len(rows) == 1

    # --- maintenance -----------------------------------------------------------------

    def reap(self) -> int:
        """Return running jobs whose lease expired to the queue (or to dead when they
        have used all their attempts); the number of jobs reaped."""
        now = self._clock()
        expired = and_(_jobs.c.state == RUNNING, _jobs.c.lease_expires_at < now)
        with writing(self.engine) as conn:
            died = conn.execute(
                update(_jobs).where(expired, _jobs.c.attempts >= _jobs.c.max_attempts).values(
                    state=DEAD, lease_owner=None, lease_expires_at=None, finished_at=now,
                    updated_at=now, last_error="worker stopped (lease expired) on the last attempt")
                .returning(*_CHANGE)).all()
            requeued = conn.execute(
                update(_jobs).where(expired).values(
                    state=QUEUED, lease_owner=None, lease_expires_at=None, run_after=now,
                    updated_at=now, last_error="worker stopped (lease expired); retried")
                .returning(*_CHANGE)).all()
            self._observe(conn, died, DEAD)
            self._observe(conn, requeued, QUEUED)
        return len(died) + len(requeued)

    def retry(self, job_id: int | None = None, all_dead: bool = False) -> int:
        """Operator's retry: dead jobs (by id, also one queued with backoff, or one that
        succeeded, to run it again, e.g. to deliver results once more) become due now with
        their attempts reset. Returns how many jobs were requeued."""
        now = self._clock()
        if all_dead:
            where = _jobs.c.state == DEAD
        elif job_id is not None:
            where = and_(_jobs.c.id == job_id, _jobs.c.state.in_((DEAD, QUEUED, SUCCEEDED)))
        else:
            raise ValueError("give a job id or all_dead=True")
        with writing(self.engine) as conn:
            rows = conn.execute(update(_jobs).where(where).values(
                state=QUEUED, attempts=0, run_after=now, finished_at=None, updated_at=now)
                .returning(*_CHANGE)).all()
            self._observe(conn, rows, QUEUED)
        return len(rows)

    # --- reading ---------------------------------------------------------------------

    def counts(self) -> dict[str, dict[JobState, int]]:
        """Jobs by kind, then by state (every state present, zero when none)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_jobs.c.kind, _jobs.c.state, func.count()).group_by(_jobs.c.kind, _jobs.c.state)
            ).all()
        out: dict[str, dict[JobState, int]] = {}
        for kind, state, n in rows:
            out.setdefault(kind, dict.fromkeys(JobState, 0))[JobState(state)] = n
        return out

    def list(self, states: Sequence[str] = (), kinds: Sequence[str] = (), limit: int = 200) -> list[Row[Any]]:
        query = select(_jobs).order_by(_jobs.c.id.desc()).limit(limit)
        if states:
            query = query.where(_jobs.c.state.in_(states))
        if kinds:
            query = query.where(_jobs.c.kind.in_(kinds))
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())
