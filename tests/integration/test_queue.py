"""The job queue's state machine on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine

from storage.queue import (
    DEAD,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SUPERSEDED,
    JobQueue,
    NewJob,
    QueueSettings,
    RetryPolicy,
)

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now




def _state(queue: JobQueue, job_id: int) -> str:
    return next(r.state for r in queue.list() if r.id == job_id)


def test_lifecycle_and_idempotent_enqueue(engine: Engine) -> None:
    clock = Clock()
    queue = JobQueue(engine, clock=clock)
    first = queue.enqueue(NewJob("noop", "noop:study-1:v1", {"n": 1}))
    assert first is not None
    assert queue.enqueue(NewJob("noop", "noop:study-1:v1", {"n": 2})) is None  # same key
    job = queue.claim("w1", ["noop"])
    assert job is not None and job.id == first and job.payload == {"n": 1} and job.attempts == 1
    assert queue.claim("w2", ["noop"]) is None  # nothing else queued
    assert queue.heartbeat(job)
    assert queue.complete(job)
    assert _state(queue, first) == SUCCEEDED
    assert not queue.complete(job)  # a second completion is refused
    assert queue.counts() == {"noop": {QUEUED: 0, RUNNING: 0, SUCCEEDED: 1, DEAD: 0, SUPERSEDED: 0}}


def test_an_idle_worker_is_told_of_due_work_of_its_kinds_only(engine: Engine) -> None:
    clock = Clock()
    queue = JobQueue(engine, clock=clock)
    assert not queue.has_due(["noop"])
    later = queue.enqueue(NewJob("noop", "later"))
    assert queue.has_due(["noop"])
    claimed = queue.claim("w", ["noop"])
    assert claimed is not None
    queue.defer(claimed, clock.now + 60, "waits a minute")
    queue.enqueue(NewJob("other", "other-kind"))
    assert not queue.has_due(["noop"])  # one not due yet, one of a kind this worker does not run
    assert queue.has_due(["other"])
    clock.now += 61
    assert queue.has_due(["noop"])
    job = queue.claim("w", ["noop"])
    assert job is not None and job.id == later
    assert not queue.has_due(["noop"])  # running, no longer queued


def test_priority_with_aging(engine: Engine) -> None:
    clock = Clock()
    queue = JobQueue(engine, QueueSettings(aging_s_per_priority=100), clock=clock)
    old_routine = queue.enqueue(NewJob("noop", "routine-old", priority=0))
    clock.now += 150  # waited 1.5 priority levels
    urgent = queue.enqueue(NewJob("noop", "urgent", priority=1))
    routine = queue.enqueue(NewJob("noop", "routine-new", priority=0))
    very_urgent = queue.enqueue(NewJob("noop", "very-urgent", priority=2))
    order = [queue.claim("w", ["noop"]).id for _ in range(4)]  # type: ignore[union-attr]
    assert order == [very_urgent, old_routine, urgent, routine]


def test_failures_back_off_then_die_and_retry_revives(engine: Engine) -> None:
    clock = Clock()
    queue = JobQueue(engine, clock=clock)
    policy = RetryPolicy(max_attempts=3, base_delay_s=10, max_delay_s=100)
    job_id = queue.enqueue(NewJob("noop", "flaky", max_attempts=3))
    for attempt in (1, 2):
        job = queue.claim("w", ["noop"])
        assert job is not None and job.attempts == attempt
        assert queue.fail(job, f"boom {attempt}", policy) == QUEUED
        assert queue.claim("w", ["noop"]) is None  # backing off
        clock.now += 10 * 2 ** (attempt - 1)  # the longest possible delay
    job = queue.claim("w", ["noop"])
    assert job is not None
    assert queue.fail(job, "boom 3", policy) == DEAD
    row = next(r for r in queue.list(states=[DEAD]))
    assert (row.id, row.last_error, row.attempts) == (job_id, "boom 3", 3)
    assert queue.retry(all_dead=True) == 1
    again = queue.claim("w", ["noop"])
    assert again is not None and again.id == job_id and again.attempts == 1


def test_expired_lease_is_reaped_and_the_late_worker_is_refused(engine: Engine) -> None:
    clock = Clock()
    queue = JobQueue(engine, QueueSettings(lease_s=30), clock=clock)
    job_id = queue.enqueue(NewJob("noop", "k", max_attempts=2))
    lost = queue.claim("dead-worker", ["noop"])
    assert lost is not None
    clock.now += 31
    assert queue.reap() == 1
    assert _state(queue, job_id) == QUEUED
    winner = queue.claim("w2", ["noop"])
    assert winner is not None and winner.attempts == 2
    assert not queue.heartbeat(lost) and not queue.complete(lost)  # lease gone
    clock.now += 31
    assert queue.reap() == 1  # no attempts left: dead, with the reason
    row = queue.list()[0]
    assert row.state == DEAD and "lease expired" in row.last_error


def test_concurrent_claims_never_share_a_job(engine: Engine) -> None:
    queue = JobQueue(engine)
    for i in range(60):
        queue.enqueue(NewJob("noop", f"job-{i}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := queue.claim(name, ["noop"])) is not None:
            with lock:
                claimed.append(job.id)
            assert queue.complete(job)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60
    assert queue.counts()["noop"][SUCCEEDED] == 60
