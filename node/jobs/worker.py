"""The worker loop: claim a job, run its handler while heartbeating, record the outcome.

What a handler is and may raise is in :mod:`node.jobs.context`; which handler runs
which kind is decided by whoever builds the worker (:mod:`node.runner.handlers`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import Engine

from config.settings import Settings
from node.jobs.context import Deferred, Handler, JobContext, PermanentJobError, Superseded
from node.jobs.kinds import BadPayload, JobKind
from storage.queue import ClaimedJob, JobQueue, RetryPolicy

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.job_max_attempts, settings.job_retry_base_delay_s,
                       settings.job_retry_max_delay_s)


class Worker:
    """Runs jobs one at a time until ``stop`` is set (finishing the current job).

    Between jobs: ``after_jobs`` is called each time the worker turns idle after
    running jobs, ``when_idle`` once it has then had no job for ``idle_after_s`` (the
    node's workers settle their long-lived objects, then give their memory back)."""

    def __init__(self, name: str, settings: Settings, engine: Engine, queue: JobQueue,
                 handlers: Mapping[JobKind, Handler], poll_s: float = 0.5, probe_s: float = 0.05,
                 after_jobs: Callable[[], None] | None = None, when_idle: Callable[[], None] | None = None,
                 idle_after_s: float = 60.0) -> None:
        self.name = name
        self._settings = settings
        self._engine = engine
        self._queue = queue
        self._policy = retry_policy(settings)
        self._handlers = dict(handlers)
        self._poll_s = poll_s
        self._probe_s = probe_s
        self._after_jobs = after_jobs
        self._when_idle = when_idle
        self._idle_after_s = idle_after_s

    def run(self, stop: threading.Event) -> None:
        kinds = sorted(self._handlers)
        last_job: float | None = None  # when the last job ended, until when_idle ran
        busy = False  # jobs ran since after_jobs was last called
        while not stop.is_set():
            try:
                job = self._queue.claim(self.name, kinds)
            except Exception as exc:  # database briefly unavailable: wait and retry
                log.warning("worker %s cannot claim jobs (%s); retrying", self.name, type(exc).__name__)
                stop.wait(self._poll_s * 4)
                continue
            if job is None:
                if busy:
                    busy = False
                    self._housekeeping(self._after_jobs)
                if last_job is not None and time.monotonic() - last_job >= self._idle_after_s:
                    last_job = None
                    self._housekeeping(self._when_idle)
                self._wait_for_work(stop, kinds)
                continue
            self.run_one(job)
            last_job, busy = time.monotonic(), True

    def _housekeeping(self, task: Callable[[], None] | None) -> None:
        if task is None:
            return
        try:
            task()
        except Exception as exc:  # noqa: BLE001 - housekeeping never stops the worker
            log.warning("worker %s: housekeeping between jobs failed (%s)", self.name, type(exc).__name__)

    def _wait_for_work(self, stop: threading.Event, kinds: Sequence[str]) -> None:
        """Idle: until a due job of this worker's kinds is queued, or ``poll_s`` passes
        (a job's run_after may fall due meanwhile). It asks with a read every
        ``probe_s`` (no write lock), so a job queued by the step before is taken within
        tens of milliseconds rather than half the poll interval on average: a study
        passes three such hand-offs (infer, encode, send) on its way to the archive."""
        deadline = time.monotonic() + self._poll_s
        while not stop.wait(self._probe_s):
            if time.monotonic() >= deadline:
                return
            try:
                if self._queue.has_due(kinds):
                    return
            except Exception:  # noqa: BLE001 - the claim that follows says what is wrong
                return

    def run_one(self, job: ClaimedJob) -> None:
        cancelled = threading.Event()
        beating = threading.Thread(target=self._heartbeat, args=(job, cancelled), daemon=True)
        beating.start()
        started = time.monotonic()
        try:
            self._handlers[JobKind(job.kind)](job, JobContext(self._settings, self._engine, cancelled))
        except Deferred as exc:
            cancelled.set()
            self._queue.defer(job, exc.until, str(exc))
            log.info("job %d (%s) waits: %s", job.id, job.kind, exc)
            return
        except Superseded as exc:
            cancelled.set()
            ended = self._queue.supersede(job, str(exc))
            log.info("job %d (%s): %s%s", job.id, job.kind, exc, "" if ended else " (lease lost)")
            return
        except Exception as exc:
            cancelled.set()
            permanent = isinstance(exc, (PermanentJobError, BadPayload))
            error = str(exc) if permanent else f"{type(exc).__name__}: {exc}"
            state = self._queue.fail(job, error, self._policy, permanent=permanent)
            log.warning("job %d (%s) attempt %d failed: %s -> %s", job.id, job.kind, job.attempts,
                        error, state or "lease lost")
            return
        finally:
            cancelled.set()
            beating.join()
        if self._queue.complete(job):
            log.info("job %d (%s) succeeded in %.1f s", job.id, job.kind, time.monotonic() - started)
        else:
            log.warning("job %d (%s) finished after its lease was lost; the retry counts", job.id, job.kind)

    def _heartbeat(self, job: ClaimedJob, cancelled: threading.Event) -> None:
        interval = max(0.2, self._settings.job_lease_s / 3)
        while not cancelled.wait(interval):
            try:
                if not self._queue.heartbeat(job):
                    log.warning("job %d lost its lease; stopping it", job.id)
                    cancelled.set()
            except Exception as exc:
                log.warning("heartbeat for job %d failed (%s)", job.id, type(exc).__name__)
