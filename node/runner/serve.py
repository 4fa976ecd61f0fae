"""`ainode serve`: start-up checks, reconciliation, the node's processes, orderly shutdown.

The main process owns the data directory (lock, reconciliation, migrations), runs
the periodic tasks (completion sweep, lease reaper) and supervises the other
processes: listeners, which run pynetdicom on the same port (SO_REUSEPORT; one
Python process is bound by its interpreter lock to about one core, so several let
concurrent senders use the machine), and job workers. Every arrow between them
goes through the database.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from config.settings import Settings
from node.network.access import AccessPolicy
from node.network.balance import ListenerMesh
from node.network.listener import PEER_BUCKETS
from node.network.tls import TlsConfigError, server_context
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from node.pipeline.lifecycle import queue_for
from node.pipeline.route_history import record_route_changes
from node.quality.report import schedule as quality_schedule
from node.runner.child import PROCESS_LOCK
from node.runner.devices import inference_devices
from node.runner.supervisor import (
    Role,
    StartupError,
    Supervisor,
    run_api,
    run_inference_worker,
    run_listener,
    run_worker,
)
from storage.db import open_database
from storage.files import FileStore
from storage.reconcile import reconcile
from storage.retention import purge_older_than

__all__ = ["DataDirInUse", "StartupError", "serve"]

log = logging.getLogger(__name__)


class DataDirInUse(RuntimeError):
    """Another node process already serves this data directory."""


class RunMarker:
    """An exclusive lock on the data directory, and a marker that tells the next
    start whether this run ended cleanly (marker removed) or was killed."""

    def __init__(self, data_dir: Path) -> None:
        self._lock_path = data_dir / "ainode.lock"
        self._marker = data_dir / "ainode.running"
        self._lock_fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; return ``True`` when the previous run did not stop cleanly."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"another ainode process is using {self._lock_path.parent}; stop it or "
                "choose another --data-dir"
            ) from None
        self._lock_fd = fd
        unclean = self._marker.exists()
        marker_fd = os.open(self._marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(marker_fd, f"{os.getpid()}\n".encode())
        os.fsync(marker_fd)
        os.close(marker_fd)
        return unclean

    def release(self, clean: bool) -> None:
        """Drop the lock; a clean stop also removes the marker."""
        if clean:
            self._marker.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock_holders(path: Path) -> list[int]:
    """The processes holding a lock on ``path`` (from /proc/locks; empty elsewhere)."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = set()
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, listed after the holder
            continue
        if len(fields) >= 6 and fields[5].rsplit(":", 1)[-1] == str(inode):
            pids.add(int(fields[4]))
    return sorted(pids)


def refuse_if_processes_remain(data_dir: Path, wait_s: float = 5.0) -> None:
    """Fail when processes of an earlier ``ainode serve`` still run on ``data_dir``.

    Every process of a node holds the data directory's process lock. After the main
    process was killed its children die with it, which takes the kernel a moment;
    anything still holding the lock after ``wait_s`` would race this start (the
    same port, the same files), so the start is refused, naming the processes.
    """
    path = data_dir / PROCESS_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        pids = " ".join(str(p) for p in _lock_holders(path)) or "unknown"
        raise StartupError(f"processes of an earlier AINode still run on {data_dir} (pids {pids}); stop them "
                           f"(e.g. `kill {pids}`) and start again")
    finally:
        os.close(fd)


def listener_process_count(settings: Settings, cpu_count: int | None = None) -> int:
    """How many listener processes to run: the setting, or one per core, 2 to 8.

    At least two even on one core: the kernel hands each new connection to a
    process by a hash of its addresses, not by load, and a second process keeps a
    slow association from holding up every other sender. Each process costs about
    100 MB of memory (Python with pydicom, pynetdicom, SQLAlchemy loaded).
    """
    if settings.listener_processes:
        return settings.listener_processes
    return max(2, min(8, cpu_count or os.cpu_count() or 1))


def _check_port_free(host: str, port: int, wait_s: float = 5.0, setting: str = "--port") -> None:
    """Fail early, and clearly, when something else listens on the port: with
    SO_REUSEPORT a second node of the same user would otherwise share it silently."""
    deadline = time.monotonic() + wait_s
    while True:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as exc:
                # Listener processes of a node killed a moment ago may still be exiting.
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise StartupError(
                        f"cannot listen on {host}:{port}: {exc.strerror}; choose another "
                        f"{setting} or stop what uses it"
                    ) from None
        time.sleep(0.2)


def _scheduler(settings: Settings, engine: Engine) -> BackgroundScheduler:
    """The periodic tasks of the main process: completion sweep, retention cleanup,
    the quality reports' schedule and lease reaper."""
    queue = queue_for(settings, engine)
    sweep = CompletionSweep(engine, queue, CompletionPolicy.from_settings(settings, datetime.now(UTC)),
                            FileStore(settings.data_dir))

    def guarded(task: Callable[[], Any], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                task()
            except Exception as exc:  # a busy or unreachable database: next tick retries
                log.warning("%s failed (%s); will retry", name, type(exc).__name__)
        return run

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(guarded(sweep.run, "completion sweep"), "interval",
                      seconds=settings.completion_sweep_s, max_instances=1, coalesce=True,
                      id="completion")
    if settings.retention_days > 0:
        store = FileStore(settings.data_dir)

        def purge() -> None:
            cutoff = datetime.now(UTC) - timedelta(days=settings.retention_days)
            purge_older_than(engine, store, cutoff)

        scheduler.add_job(guarded(purge, "retention cleanup"), "interval",
                          seconds=settings.retention_sweep_s, max_instances=1, coalesce=True,
                          id="retention", next_run_time=datetime.now(UTC),
                          misfire_grace_time=None)
    if settings.quality.interval_s > 0:
        interval = settings.quality.interval_s
        scheduler.add_job(guarded(lambda: quality_schedule(engine, queue, interval), "quality schedule"),
                          "interval", seconds=interval, max_instances=1, coalesce=True, id="quality",
                          next_run_time=datetime.now(UTC) + timedelta(seconds=min(60.0, interval)))
    scheduler.add_job(guarded(queue.reap, "lease reaper"), "interval",
                      seconds=max(1.0, settings.job_lease_s / 4), max_instances=1, coalesce=True,
                      id="reaper")
    return scheduler


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set ``stop``: work in progress finishes, then the process exits."""
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            if signum == signal.SIGINT:  # a second Ctrl-C: the operator insists
                log.warning("second SIGINT: exiting without waiting")
                os._exit(130)
            return
        stop.set()
        # A repeated SIGTERM (service managers send them) must not kill the
        # process halfway through its orderly shutdown, nor while it exits.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.info("received %s: finishing C-STOREs and jobs in progress, then stopping",
                 signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)


def worker_roles(settings: Settings) -> list[Role]:
    """Job workers: the general ones, and the inference ones on each device."""
    roles = [Role(f"worker-{i + 1}", run_worker) for i in range(settings.workers)]
    for device, configured in inference_devices(settings):
        for i in range(settings.inference_workers_per_device):
            roles.append(Role(f"inference-{device.replace(':', '')}-{i + 1}", run_inference_worker,
                              (device, configured)))
    return roles


def _describe_workers(settings: Settings) -> str:
    devices = [d for d, _ in inference_devices(settings)]
    inference = len(devices) * settings.inference_workers_per_device
    return (f"{settings.workers} job worker{'' if settings.workers == 1 else 's'}, "
            f"{inference} inference worker{'' if inference == 1 else 's'}"
            + (f" on {', '.join(devices)}" if inference else ""))


def run_workers(settings: Settings, stop: threading.Event | None = None) -> int:
    """``ainode worker``: job and inference workers only, for a machine that computes
    against a shared PostgreSQL database and data folder; exit status."""
    stop = stop or threading.Event()
    roles = worker_roles(settings)
    if not roles:
        raise StartupError("no workers to run: set workers or inference_workers_per_device above 0")
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    _stop_on_signals(stop)
    supervisor = Supervisor(settings, roles, multiprocessing.get_context("spawn"))
    try:
        supervisor.start()
        log.info("AINode workers running (%s); data in %s; database %s", _describe_workers(settings),
                 settings.data_dir.resolve(), engine.url.render_as_string(hide_password=True))
        while not stop.wait(1.0):
            supervisor.watch()
    finally:
        supervisor.stop(timeout_s=settings.job_lease_s)
        engine.dispose()
    log.info("AINode workers stopped")
    return 0


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the node in the foreground until SIGINT/SIGTERM (or ``stop``); exit status."""
    stop = stop or threading.Event()
    store = FileStore(settings.data_dir)
    marker = RunMarker(settings.data_dir)
    try:
        store.prepare()
        unclean = marker.acquire()
    except OSError as exc:
        raise StartupError(f"cannot use data_dir {settings.data_dir}: {exc.strerror or exc}; choose another "
                           "--data-dir (data_dir) or make it a folder this user can write") from None
    # The marker stays only when files may lack rows: the previous run was killed and
    # this one did not reconcile yet, or this run's processes did not stop in order.
    clean = not unclean
    try:
        refuse_if_processes_remain(settings.data_dir)
        engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
        record_route_changes(engine, settings.routes)
        if unclean:
            log.warning("the previous run did not stop cleanly; reconciling files and database")
            reconcile(store, engine)
            clean = True
        _check_port_free(settings.host, settings.port)
        if settings.tls is not None:
            _check_port_free(settings.host, settings.tls.port, setting="tls.port")
            try:
                server_context(settings.tls)  # a bad certificate or key stops start-up here
            except TlsConfigError as exc:
                raise StartupError(f"cannot listen with TLS: {exc}") from None
        if settings.api_port:
            _check_port_free(settings.api_host, settings.api_port, setting="api_port")

        _stop_on_signals(stop)

        listeners = listener_process_count(settings)
        ctx = multiprocessing.get_context("spawn")
        counters = ctx.Array("i", listeners, lock=False)
        peers = ctx.Array("i", listeners * PEER_BUCKETS, lock=False)
        mesh = ListenerMesh(ctx, listeners)
        roles = [Role(f"listener-{i + 1}", run_listener, (counters, peers, i, mesh.counts, mesh.pids,
                                                          mesh.outboxes, mesh.inboxes[i]))
                 for i in range(listeners)]
        roles += worker_roles(settings)
        if settings.api_port:
            roles.append(Role("api", run_api))
        supervisor = Supervisor(settings, roles, ctx, hold_data_dir=True)
        scheduler = _scheduler(settings, engine)
        clean = False  # until the processes have stopped in order
        try:
            supervisor.start()
            scheduler.start()
            log.info(
                "AINode listening on %s:%d as AE %s (%d listener process%s, %s); "
                "data in %s; database %s",
                settings.host, settings.port, settings.ae_title, listeners,
                "" if listeners == 1 else "es", _describe_workers(settings),
                settings.data_dir.resolve(), engine.url.render_as_string(hide_password=True),
            )
            if settings.tls is not None:
                log.info("DICOM TLS on %s:%d (%s)", settings.host, settings.tls.port,
                         "client certificates required" if settings.tls.client_ca else
                         "no client certificates asked")
            log.info("%s", AccessPolicy.from_settings(settings).describe())
            if settings.api_port:
                log.info("worklist, REST API and /metrics on http://%s:%d/%s", settings.api_host,
                         settings.api_port, " (bearer token required)" if settings.api_token else "")
            while not stop.wait(1.0):
                supervisor.watch()
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=True)
            supervisor.stop(timeout_s=settings.dimse_timeout_s + 5)
            engine.dispose()
            # Stopped in order (SIGTERM, C-STOREs drained), a failed start included.
            clean = not supervisor.had_crash
        log.info("AINode stopped")
    finally:
        marker.release(clean)
    return 0
