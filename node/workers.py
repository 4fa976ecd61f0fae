"""Job workers: claim a job, run its handler while heartbeating, record the outcome.

A handler is a plain function of the claimed job and a :class:`JobContext`; it
returns on success and raises on failure (the exception's type and message become
the job's ``last_error``, so they must not contain patient data). Handlers must be
idempotent: a job whose worker died is run again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from config.settings import Settings
from storage.models import Study
from storage.queue import ClaimedJob, JobQueue, QueueSettings, RetryPolicy

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


def run_noop(job: ClaimedJob, ctx: JobContext) -> None:
    """The queue self-test job: waits ``seconds``, fails when told to, and appends
    one line per run to ``<data_dir>/selftest-runs.log`` so runs can be counted.

    Created only by ``ainode selftest queue``; no route ever queues it.
    """
    deadline = time.monotonic() + float(job.payload.get("seconds", 0))
    while time.monotonic() < deadline:
        if ctx.cancelled.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            raise RuntimeError("cancelled")
    if job.payload.get("fail"):
        raise RuntimeError("self-test job told to fail")
    line = f"{job.id} {job.attempts} {os.getpid()}\n".encode()
    fd = os.open(Path(ctx.settings.data_dir) / "selftest-runs.log",
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def current_study(engine: Engine, job: ClaimedJob) -> Any:
    """The study a results job works on (id, UID, results version), or None when the
    study has moved on to a newer results version than the job's: that work is
    superseded and skipped. A removed study fails the job for good."""
    with engine.connect() as conn:
        study = conn.execute(
            select(Study.id, Study.study_instance_uid, Study.results_version).where(Study.id == job.study_id)
        ).one_or_none()
    if study is None:
        raise PermanentJobError("the study was removed before its work was done")
    if study.results_version != job.results_version:
        log.info("job %d (%s): study %s moved on to results version %d; version %s is skipped",
                 job.id, job.kind, study.study_instance_uid, study.results_version, job.results_version)
        return None
    return study


def job_handlers(settings: Settings, engine: Engine) -> dict[str, Handler]:
    """The job kinds a general worker runs, and their handlers (inference workers run
    ``infer``)."""
    from node.notify import NotificationHandler
    from node.results import ResultsHandlers  # highdicom is loaded by workers only

    results = ResultsHandlers(settings, engine)
    return {"noop": run_noop, "encode": results.encode, "send": results.send,
            "notify": NotificationHandler(settings, engine).notify}


def queue_for(settings: Settings, engine: Engine) -> JobQueue:
    return JobQueue(engine, QueueSettings(settings.job_aging_s_per_priority, settings.job_lease_s,
                                          settings.job_max_attempts))


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.job_max_attempts, settings.job_retry_base_delay_s,
                       settings.job_retry_max_delay_s)


class Worker:
    """Runs jobs one at a time until ``stop`` is set (finishing the current job)."""

    def __init__(self, name: str, settings: Settings, engine: Engine,
                 handlers: dict[str, Handler], poll_s: float = 0.5) -> None:
        self.name = name
        self._settings = settings
        self._engine = engine
        self._queue = queue_for(settings, engine)
        self._policy = retry_policy(settings)
        self._handlers = handlers
        self._poll_s = poll_s

    def run(self, stop: threading.Event) -> None:
        kinds = sorted(self._handlers)
        while not stop.is_set():
            try:
                job = self._queue.claim(self.name, kinds)
            except Exception as exc:  # database briefly unavailable: wait and retry
                log.warning("worker %s cannot claim jobs (%s); retrying", self.name, type(exc).__name__)
                stop.wait(self._poll_s * 4)
                continue
            if job is None:
                stop.wait(self._poll_s)
                continue
            self.run_one(job)

    def run_one(self, job: ClaimedJob) -> None:
        cancelled = threading.Event()
        beating = threading.Thread(target=self._heartbeat, args=(job, cancelled), daemon=True)
        beating.start()
        started = time.monotonic()
        try:
            self._handlers[job.kind](job, JobContext(self._settings, self._engine, cancelled))
        except Exception as exc:
            cancelled.set()
            permanent = isinstance(exc, PermanentJobError)
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
