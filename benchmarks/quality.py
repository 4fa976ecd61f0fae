"""The trust loop at scale: one model's quality report (metrics per version and route,
subgroups, course over time, drift, disagreements) over 100,000 recorded predictions,
recomputed through the API of a running `ainode serve`, while a reader keeps asking
for the worklist and the model page's data.

    .venv/bin/python benchmarks/quality.py [--predictions 100000] [--repetitions 3]

The predictions are generated (tests/quality_rows.py) over 180 days: four scanners,
two kernels, both sexes and four age bands; a report label for 40 % of them, a
reference-SEG comparison for 15 %, radiologists' feedback for 1 %, and a shift in the
kernel mix in the last week. Reports the median recompute time (the goal: under 5 s
on this machine), the reader's latencies during the recomputations (median and
worst), the peak memory of the node's processes, and writes results/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.ingest import free_port, peak_rss_mib, stop  # noqa: E402
from storage.db import open_database  # noqa: E402
from tests.quality_rows import PlannedCase, profile, record_cases  # noqa: E402

MODEL = "benchmark-model"
DAY = 86400.0


def planned(count: int, seed: int = 3) -> list[PlannedCase]:
    rng = np.random.default_rng(seed)
    now = time.time()
    scanners = ["Siemens", "GE", "Philips", "Canon"]
    ages = ["18-39", "40-64", "65-79", "80+"]
    cases = []
    for when in np.sort(rng.uniform(now - 180 * DAY, now - 60, count)):
        recent = when > now - 7 * DAY
        truth = bool(rng.random() < 0.3)
        score = float(np.clip(rng.normal(0.7 if truth else 0.3, 0.15), 0, 1))
        labelled = rng.random() < 0.4
        comparison = None
        if truth and rng.random() < 0.5:
            reference = float(rng.uniform(2, 60))
            comparison = (float(np.clip(rng.normal(0.85, 0.06), 0, 1)), reference * float(rng.normal(1, 0.1)),
                          reference)
        feedback = ("disagree" if rng.random() < 0.2 else "agree", "dr.reader", "") if rng.random() < 0.01 else None
        cases.append(PlannedCase(
            float(when), profile(manufacturer=scanners[int(rng.integers(4))],
                                 kernel="B70f" if rng.random() < (0.7 if recent else 0.3) else "B30f",
                                 sex="FM"[int(rng.integers(2))], age_band=ages[int(rng.integers(4))],
                                 mean_hu=float(rng.normal(-700, 40))),
            score >= 0.5, score, truth=truth if labelled else None, comparison=comparison, feedback=feedback,
            volume_ml=float(rng.uniform(1, 50))))
    return cases


def _get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


READS = {"worklist": "/api/studies?limit=50", "report": f"/api/models/{MODEL}/quality", "model page": "/model"}


def _reader(api: str, stop_event: threading.Event, latencies: dict[str, list[float]]) -> None:
    while not stop_event.is_set():
        for name, path in READS.items():
            latencies[name].append(_get(api + path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=100_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "quality.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ainode-quality-") as tmp:
        data = Path(tmp) / "data"
        engine = open_database(f"sqlite:///{(data / 'ainode.db').resolve()}")
        started = time.perf_counter()
        record_cases(engine, MODEL, planned(args.predictions))
        generated_s = time.perf_counter() - started
        engine.dispose()
        api_port = free_port()
        env = {**os.environ, "AINODE_API_PORT": str(api_port), "AINODE_LOG_LEVEL": "WARNING",
               "AINODE_INFERENCE_WORKERS_PER_DEVICE": "0", "AINODE_QUALITY": json.dumps({"interval_s": 0})}
        proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--data-dir", str(data), "--port",
                                 str(free_port()), "--host", "127.0.0.1"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "ainode.log", "wb"))
        api = f"http://127.0.0.1:{api_port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    _get(api + "/api/health")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the node did not start") from None
                    time.sleep(0.2)
            idle = [_get(api + "/api/studies?limit=50") for _ in range(20)]
            recompute, server_s = [], []
            during: dict[str, list[float]] = {name: [] for name in READS}
            for _ in range(args.repetitions):
                stop_event = threading.Event()
                latencies: dict[str, list[float]] = {name: [] for name in READS}
                reader = threading.Thread(target=_reader, args=(api, stop_event, latencies))
                request = urllib.request.Request(f"{api}/api/models/{MODEL}/quality", method="POST",
                                                 headers={"X-AINode-Request": "1"})
                reader.start()
                time.sleep(0.2)
                t0 = time.perf_counter()
                with urllib.request.urlopen(request, timeout=300) as response:
                    report = json.loads(response.read())
                recompute.append(time.perf_counter() - t0)
                server_s.append(float(report["seconds"]))
                stop_event.set()
                reader.join()
                for name, values in latencies.items():
                    during[name] += values
            memory = peak_rss_mib(proc.pid)
        finally:
            stop(proc)
    drift = {s["signal"]: s["status"] for s in report["drift"]}
    lines = [
        "# Quality report at scale",
        "",
        f"`benchmarks/quality.py --predictions {args.predictions} --repetitions {args.repetitions}`, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, SQLite.",
        "",
        f"- Predictions: {report['predictions']:,} (generated in {generated_s:.0f} s); references: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(report["references"].items())),
        f"- Recompute through the API (POST /api/models/{{name}}/quality), median of {args.repetitions}: "
        f"**{statistics.median(recompute):.2f} s** (each: {', '.join(f'{s:.2f}' for s in recompute)}; "
        f"inside the server {statistics.median(server_s):.2f} s). Goal: under 5 s.",
        f"- The reader meanwhile ({sum(len(v) for v in during.values())} requests), median / worst: "
        + "; ".join(f"{name} {statistics.median(v) * 1000:.0f} / {max(v) * 1000:.0f} ms"
                    for name, v in during.items())
        + f" (the first report request waits for the first report); with the node idle the worklist "
        f"takes {statistics.median(idle) * 1000:.0f} ms.",
        f"- Peak RSS of all node processes: {memory:.0f} MiB.",
        f"- Drift found: input.kernel {drift.get('input.kernel')}, input.manufacturer "
        f"{drift.get('input.manufacturer')} (the kernel mix was shifted on purpose, the scanners were not).",
        "",
    ]
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
