"""The node's processes: listeners and job workers, and the supervisor that starts,
watches, restarts and stops them.

Each process is started with ``spawn`` (no state inherited by accident), gets its
configuration as an argument, reports when it is ready, and dies with the main
process even when that is killed with SIGKILL, from its first instruction on
(:mod:`node.runner.child`).
"""

from __future__ import annotations

import logging
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from sqlalchemy import Engine

from config.settings import Settings
from node.jobs.context import Handler, JobContext
from node.jobs.kinds import JobKind
from node.jobs.worker import Worker
from node.network.balance import ConnectionBalancer
from node.network.listener import AssociationSlots, StorageListener
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from node.pipeline.lifecycle import queue_for
from node.quality.seg_jobs import comparison_queuer
from node.runner import child
from node.runner.logs import setup_logging
from node.runner.memory import give_back_memory, keep_freed_memory, settle_long_lived_objects
from storage.db import make_engine
from storage.files import FileStore
from storage.queue import ClaimedJob

log = logging.getLogger(__name__)

class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


def _child_signals(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _child_process(settings: Settings) -> threading.Event:
    """What every node process does after :func:`node.runner.child.run`; returns the
    event its signals set."""
    setup_logging(settings.log_level)
    stop = threading.Event()
    _child_signals(stop)
    return stop


def run_listener(settings: Settings, name: str, ready: Any, counters: Any, peers: Any,
                 index: int, connections: Any = None, pids: Any = None,
                 outboxes: list[socket.socket] | None = None, inbox: socket.socket | None = None) -> None:
    """Body of one listener process; ``counters`` and ``peers`` are the shared
    association counts (see :class:`AssociationSlots`); ``connections``, ``pids``,
    ``outboxes`` and ``inbox``: its part of the :class:`ListenerMesh` (connections
    spread by load), absent when it is the only listener."""
    stop = _child_process(settings)
    try:
        engine = make_engine(settings.effective_database_url, settings.db_busy_timeout_ms)
        slots = AssociationSlots(counters, index, settings.max_associations, peers,
                                 settings.max_associations_per_peer)
        slots.reset()  # a restarted listener holds no associations
        queue, store = queue_for(settings, engine), FileStore(settings.data_dir)
        completion = CompletionSweep(engine, queue, CompletionPolicy.from_settings(settings), store)
        balancer = (ConnectionBalancer(connections, pids, index, outboxes, inbox)
                    if outboxes is not None and inbox is not None and len(outboxes) > 1 else None)
        listener = StorageListener(settings, engine, store, slots, on_reference=comparison_queuer(queue),
                                   on_procedure_completed=completion.complete_now, balancer=balancer)
        listener.start()
    except Exception as exc:
        ready.put((name, f"{type(exc).__name__}: {exc}"))
        raise
    ready.put((name, None))
    stop.wait()
    if not listener.stop():
        log.warning("C-STOREs were still running at the shutdown timeout; they were not acknowledged")
    engine.dispose()


def _worker(name: str, settings: Settings, engine: Engine, handlers: Mapping[JobKind, Handler]) -> Worker:
    """A worker process's job loop, with its memory kept between jobs: what has
    survived start-up is settled now, and again each time the worker turns idle;
    the memory goes back after ``worker_memory_release_s`` without a job
    (:mod:`node.runner.memory`; :func:`keep_freed_memory` ran first)."""
    worker = Worker(name, settings, engine, queue_for(settings, engine), handlers,
                    after_jobs=settle_long_lived_objects, when_idle=give_back_memory,
                    idle_after_s=settings.worker_memory_release_s)
    settle_long_lived_objects()
    return worker


def run_worker(settings: Settings, name: str, ready: Any) -> None:
    """Body of one job worker process: finishes its current job on SIGTERM."""
    stop = _child_process(settings)
    from node.runner.handlers import general_handlers  # highdicom is loaded by workers only

    keep_freed_memory()
    engine = make_engine(settings.effective_database_url, settings.db_busy_timeout_ms)
    worker = _worker(name, settings, engine, general_handlers(settings, engine))
    ready.put((name, None))
    worker.run(stop)
    engine.dispose()


def run_inference_worker(settings: Settings, name: str, ready: Any, device: str,
                         configured: bool) -> None:
    """Body of one inference worker process: one device, its models loaded once."""
    stop = _child_process(settings)
    keep_freed_memory()
    try:
        from node.pipeline.inference import InferenceRunner  # torch is imported here only

        engine = make_engine(settings.effective_database_url, settings.db_busy_timeout_ms)
        runner = InferenceRunner.start(settings, engine, device, configured)
    except Exception as exc:
        ready.put((name, str(exc) if type(exc).__name__ == "InferenceStartupError"
                   else f"{type(exc).__name__}: {exc}"))
        return

    def infer(job: ClaimedJob, ctx: JobContext) -> None:
        try:
            runner(job, ctx)
        finally:
            _report(runner, name)

    _report(runner, name)
    worker = _worker(name, settings, engine, {JobKind.INFER: infer})  # (the models are loaded)
    ready.put((name, None))
    worker.run(stop)
    engine.dispose()


def _report(runner: Any, name: str) -> None:
    try:
        runner.report_status(name)
    except Exception as exc:  # metrics only: never fail a job for them
        log.warning("%s could not record its status (%s)", name, type(exc).__name__)


def run_api(settings: Settings, name: str, ready: Any) -> None:
    """Body of the API process: the REST API, web worklist and /metrics (uvicorn)."""
    import socket

    import uvicorn

    from node.web.api import create_app

    setup_logging(settings.log_level)
    try:
        engine = make_engine(settings.effective_database_url, settings.db_busy_timeout_ms)
        family = socket.AF_INET6 if ":" in settings.api_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.api_host, settings.api_port))
        app = create_app(settings, engine)
    except Exception as exc:
        ready.put((name, f"{type(exc).__name__}: {exc}"))
        return
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                            log_config=None))

    def report_ready() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        ready.put((name, None if server.started else "the web server did not start"))

    threading.Thread(target=report_ready, daemon=True).start()
    server.run(sockets=[sock])  # uvicorn handles SIGTERM/SIGINT: requests in flight finish
    engine.dispose()


@dataclass(frozen=True)
class Role:
    """One supervised process: its name and what it runs."""

    name: str
    target: Callable[..., None]
    args: tuple[Any, ...] = ()


class Supervisor:
    """The node's processes: started, watched, restarted if one dies, stopped."""

    def __init__(self, settings: Settings, roles: list[Role], ctx: Any, hold_data_dir: bool = False) -> None:
        """``ctx``: the spawn context that also made any shared memory in ``roles``;
        ``hold_data_dir``: every process holds the data directory's process lock
        (``ainode serve``), so that a later start can tell they still run."""
        self._settings = settings
        self._lock_dir = str(settings.data_dir) if hold_data_dir else None
        self._pickled = pickle.dumps(settings)
        self._ctx = ctx
        self._ready = self._ctx.Queue()
        self._roles = roles
        self._processes: dict[str, SpawnProcess] = {}
        #: A process died: files it was writing may lack rows, so the next start
        #: must reconcile even after a clean stop.
        self.had_crash = False

    def _spawn(self, role: Role) -> None:
        process = self._ctx.Process(
            target=child.run,
            args=(self._lock_dir, child.reference(role.target), self._pickled, role.name, self._ready, *role.args),
            name=role.name, daemon=False,
        )
        process.start()
        self._processes[role.name] = process

    def start(self, timeout_s: float = 60.0) -> None:
        for role in self._roles:
            self._spawn(role)
        self._wait_ready(len(self._roles), timeout_s)

    def _wait_ready(self, expected: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for _ in range(expected):
            try:
                name, error = self._ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                raise StartupError("the node's processes did not start in time") from None
            if error:
                raise StartupError(f"{name} could not start: {error}")

    def watch(self) -> None:
        """Restart any process that died (the others kept working)."""
        for role in self._roles:
            process = self._processes[role.name]
            if not process.is_alive():
                log.error("%s exited unexpectedly (status %s); restarting it",
                          role.name, process.exitcode)
                self.had_crash = True
                self._spawn(role)
                self._wait_ready(1, 60.0)
                log.info("%s restarted", role.name)

    def stop(self, timeout_s: float) -> None:
        live = [p for p in self._processes.values() if p.is_alive()]
        for process in live:
            process.terminate()  # SIGTERM
        deadline = time.monotonic() + timeout_s
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("%s did not stop; killing it", process.name)
                self.had_crash = True  # what it was writing may lack its row
                process.kill()
                process.join()
