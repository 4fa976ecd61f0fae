"""Queue benchmark: claims and completions per second with 1, 2 and 4 worker
processes on SQLite and PostgreSQL, and the delay from a study's last image to its
jobs being queued (quiet period aside).

    .venv/bin/python benchmarks/job_queue.py [--jobs 2000] [--repetitions 3]

Writes benchmarks/results/queue.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from sqlalchemy import select  # noqa: E402

from storage.db import open_database  # noqa: E402
from storage.models import Job, Study  # noqa: E402
from storage.queue import JobQueue, NewJob  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402
from tests.synthetic import write_ct_study  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(url: str, name: str, start: multiprocessing.synchronize.Event, done: multiprocessing.Queue) -> None:  # type: ignore[name-defined]
    engine = open_database(url)
    queue = JobQueue(engine)
    start.wait()
    n = 0
    while (job := queue.claim(name, ["bench"])) is not None:
        queue.complete(job)
        n += 1
    done.put(n)
    engine.dispose()


def throughput(url: str, jobs: int, workers: int) -> float:
    engine = open_database(url)
    queue = JobQueue(engine)
    with engine.begin() as conn:
        conn.execute(Job.__table__.delete())
    batch = time.time_ns()
    for i in range(jobs):
        queue.enqueue(NewJob("bench", f"bench:{batch}:{i}"))
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, f"w{i}", start, done)) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(3)  # let them import and connect
    t0 = time.perf_counter()
    start.set()
    total = sum(done.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    engine.dispose()
    assert total == jobs, (total, jobs)
    return jobs / elapsed


def completion_delay(url: str, repetitions: int, workdir: Path) -> list[float]:
    """Seconds from a study's last image to its infer job, minus the quiet period."""
    quiet = 2.0
    data = workdir / "node"
    config = workdir / "node.toml"
    config.write_text(f'database_url = "{url}"\nquiet_period_s = {quiet}\nworkers = 0\n')
    port = free_port()
    log = open(workdir / "serve.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(config),
                             "--data-dir", str(data), "--port", str(port), "--host", "127.0.0.1"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    delays = []
    try:
        while b"AINode listening" not in (workdir / "serve.log").read_bytes():
            time.sleep(0.1)
        engine = open_database(url)
        for r in range(repetitions):
            study = workdir / f"study{r}"
            paths = write_ct_study(study, series=1, slices=50, size=64)
            uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            subprocess.run(["/usr/bin/storescu", "-aec", "AINODE", "+sd", "+r", "127.0.0.1", str(port),
                            str(study)], check=True, env={**os.environ, "TCP_NODELAY": "1"},
                           capture_output=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    row = conn.execute(
                        select(Study.last_received_at, Job.created_at).join(Job, Job.study_id == Study.id)
                        .where(Job.kind == "infer", Study.study_instance_uid == uid)
                    ).first()
                if row is not None:
                    last = row.last_received_at
                    last = last if last.tzinfo else last.replace(tzinfo=UTC)
                    delays.append(row.created_at - last.timestamp() - quiet)
                    break
                time.sleep(0.05)
        engine.dispose()
    finally:
        node.terminate()
        node.wait(60)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    (REPO / "var").mkdir(exist_ok=True)
    rows = []
    delays: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "var") as tmp, postgres_server(free_port(), durable=True) as pg:
        backends = {"SQLite (WAL)": f"sqlite:///{Path(tmp) / 'bench.db'}", "PostgreSQL 15": pg}
        for name, url in backends.items():
            for workers in (1, 2, 4):
                rates = [throughput(url, args.jobs, workers) for _ in range(args.repetitions)]
                rows.append((name, workers, statistics.median(rates), [round(r) for r in rates]))
                print(f"{name}, {workers} worker(s): {rows[-1][2]:.0f} jobs/s", flush=True)
            workdir = Path(tmp) / name.split()[0]
            workdir.mkdir()
            delays[name] = completion_delay(url, args.repetitions + 2, workdir)
            print(f"{name}: completion delay {[round(d, 2) for d in delays[name]]}", flush=True)

    lines = [
        f"Queue: {args.jobs} jobs claimed and completed by N worker processes (each job one claim "
        f"and one completion, each its own transaction); medians of {args.repetitions} runs. "
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. PostgreSQL with fsync on; SQLite WAL, synchronous=NORMAL.",
        "",
        "| database | workers | jobs/s | runs |",
        "| --- | ---: | ---: | --- |",
        *[f"| {n} | {w} | {r:.0f} | {runs} |" for n, w, r, runs in rows],
        "",
        "Delay from a study's last image to its infer job being queued, quiet period (2 s) "
        "excluded, default completion sweep every 2 s: " + "; ".join(
            f"{n}: median {statistics.median(d):.2f} s (runs {[round(x, 2) for x in d]})"
            for n, d in delays.items()),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "queue.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
