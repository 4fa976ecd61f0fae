"""The worker loop on a real database: what it does between jobs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from config.settings import load_settings
from node.jobs.context import JobContext
from node.jobs.kinds import JobKind
from node.jobs.worker import Worker
from storage.queue import SUCCEEDED, ClaimedJob, JobQueue, NewJob

pytestmark = pytest.mark.integration


def _wait_for(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_idle_worker_settles_then_gives_its_memory_back_once_after_each_busy_spell(
        engine: Engine, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    queue = JobQueue(engine)
    ran: list[int] = []
    settled: list[int] = []  # how many jobs had run each time
    released: list[float] = []

    def handler(job: ClaimedJob, _ctx: JobContext) -> None:
        ran.append(job.id)

    def settle() -> None:
        settled.append(len(ran))
        raise RuntimeError("housekeeping failed")

    worker = Worker("w", settings, engine, queue, {JobKind.NOOP: handler}, poll_s=0.05, probe_s=0.01,
                    after_jobs=settle,
                    when_idle=lambda: released.append(time.monotonic()), idle_after_s=0.3)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        time.sleep(0.8)
        assert released == [] and settled == []  # no job has run: nothing to settle or give back

        first = queue.enqueue(NewJob("noop", "first"))
        _wait_for(lambda: ran == [first])
        finished = time.monotonic()
        _wait_for(lambda: len(released) == 1)
        assert settled == [1]  # at once when idle (its failure did not stop the worker)
        assert released[0] - finished >= 0.3 - 0.05  # not before the idle time
        time.sleep(0.8)
        assert len(released) == 1  # once per idle spell, not every poll

        second = queue.enqueue(NewJob("noop", "second"))
        _wait_for(lambda: len(released) == 2)
        assert ran == [first, second] and settled == [1, 2]
        assert {r.state for r in queue.list()} == {SUCCEEDED}
    finally:
        stop.set()
        thread.join(10)
