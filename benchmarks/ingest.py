"""Ingest benchmark: dcmtk storescu sending a 300-slice 512x512 CT to `ainode serve`,
dcmtk storescp and Orthanc, in the same run, on loopback.

    .venv/bin/python benchmarks/ingest.py [--repetitions 5] [--slices 300]

Reports the median images/s of each receiver, the ratio to storescp, the peak
resident memory of each receiver process, and the aggregate rate with four
storescu processes sending at once. Writes benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.procs import child_pids  # noqa: E402
from tests.synthetic import write_ct_study  # noqa: E402

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_VERSION = "1.10.1 (Debian)"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)  # let the probe connection's association end
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and all its descendants, summed."""
    total = 0
    for each in [pid, *child_pids(pid, recursive=True)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def peak_rss_by_process(pid: int) -> dict[str, float]:
    """Peak resident memory (VmHWM, MiB) of a process and each descendant, keyed by
    process name (the node names its processes after their roles; ``pid`` itself is
    "main")."""
    found: dict[str, float] = {}
    for each in [pid, *child_pids(pid, recursive=True)]:
        try:
            name = "main" if each == pid else Path(f"/proc/{each}/comm").read_text().strip()
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    found[name if name not in found else f"{name} ({each})"] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return found


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited in ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Receiver:
    name: str
    ae_title: str
    start: Callable[[Path, int], subprocess.Popen[bytes]]
    #: True once the receiver is fully started (given its work folder), beyond its port
    #: answering: the images are sent to a receiver in service, not one still starting.
    started: Callable[[Path], bool] = lambda _workdir: True


def ainode_started(workdir: Path) -> bool:
    """`ainode serve` logs "AINode listening" once every process is ready (the
    inference worker with its models loaded, the API up)."""
    log = workdir / "ainode.log"
    return log.exists() and b"AINode listening on" in log.read_bytes()


def start_ainode(max_pdu: int) -> Callable[[Path, int], subprocess.Popen[bytes]]:
    def start(workdir: Path, port: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "AINODE_MAX_PDU_SIZE": str(max_pdu), "AINODE_LOG_LEVEL": "INFO"}
        return subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--data-dir", str(workdir / "data"),
             "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "ainode.log", "wb"),
        )
    return start


def start_storescp(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    out = workdir / "storescp"
    out.mkdir()
    return subprocess.Popen([STORESCP, "-aet", "STORESCP", "-od", str(out), str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_orthanc(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = {
        "Name": "bench", "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(),
        "StorageDirectory": str(workdir / "orthanc"), "IndexDirectory": str(workdir / "orthanc"),
        "RemoteAccessAllowed": False, "DicomCheckCalledAet": False, "Plugins": [],
        "HttpServerEnabled": True, "StorageCompression": False,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen([ORTHANC, str(path)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


RECEIVERS = [
    Receiver("dcmtk storescp", "STORESCP", start_storescp),
    Receiver("ainode serve", "AINODE", start_ainode(1_048_576), ainode_started),
    Receiver("ainode serve (max PDU 16 KiB)", "AINODE", start_ainode(16_384), ainode_started),
    Receiver("Orthanc", "ORTHANC", start_orthanc),
]


def send(port: int, ae_title: str, folders: list[Path]) -> float:
    """Run one storescu per folder at once; the wall time until all are done."""
    started = time.perf_counter()
    procs = [subprocess.Popen([STORESCU, "-aec", ae_title, "-aet", "BENCH", "+sd", "+r",
                               "127.0.0.1", str(port), str(f)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for f in folders]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


def run(receiver: Receiver, folders: list[Path], images: int) -> tuple[float, float, dict[str, float]]:
    """One repetition on a fresh receiver: images/s, the receiver's peak RSS (MiB, all
    its processes) and each process's."""
    with tempfile.TemporaryDirectory(dir=REPO / "var") as tmp:
        workdir = Path(tmp)
        port = free_port()
        proc = receiver.start(workdir, port)
        try:
            wait_port(port, proc)
            deadline = time.monotonic() + 120
            while not receiver.started(workdir):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{receiver.name} did not finish starting; see {workdir}")
                time.sleep(0.2)
            seconds = send(port, receiver.ae_title, folders)
            each = peak_rss_by_process(proc.pid)
        finally:
            stop(proc)
        return images / seconds, sum(each.values()), each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    for tool in (STORESCU, STORESCP, ORTHANC):
        if not Path(tool).exists():
            sys.exit(f"{tool} is missing: run scripts/install-peers")

    (REPO / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "var") as data:
        studies = [Path(data) / f"study{i}" for i in range(args.senders)]
        for folder in studies:
            write_ct_study(folder, series=1, slices=args.slices, size=512)
        size_mb = sum(p.stat().st_size for p in studies[0].rglob("*.dcm")) / 1e6

        # Receivers take turns within each repetition, so that the machine's moods
        # (it is shared) fall on all of them alike.
        single: dict[str, list[tuple[float, float, dict[str, float]]]] = {r.name: [] for r in RECEIVERS}
        multi: dict[str, list[tuple[float, float, dict[str, float]]]] = {r.name: [] for r in RECEIVERS}
        for _ in range(args.repetitions):
            for receiver in RECEIVERS:
                single[receiver.name].append(run(receiver, studies[:1], args.slices))
                multi[receiver.name].append(run(receiver, studies, args.slices * args.senders))
        rows = []
        processes: dict[str, dict[str, float]] = {}
        for receiver in RECEIVERS:
            one, many = single[receiver.name], multi[receiver.name]
            rows.append((receiver.name,
                         statistics.median(r for r, _, _ in one),
                         statistics.median(m for _, m, _ in one),
                         statistics.median(r for r, _, _ in many),
                         statistics.median(m for _, m, _ in many),
                         [round(r) for r, _, _ in one], [round(r) for r, _, _ in many]))
            processes[receiver.name] = many[-1][2]
            print(f"{receiver.name}: {rows[-1][1]:.0f} images/s, {args.senders} senders "
                  f"{rows[-1][3]:.0f} images/s", flush=True)

    reference = rows[0][1]
    reference_multi = rows[0][3]
    orthanc = next(r for r in rows if r[0] == "Orthanc")
    lines = [
        f"Ingest: storescu (TCP_NODELAY=1) sends a synthetic {args.slices}-slice 512x512 CT "
        f"({size_mb:.0f} MB, implicit VR LE) on loopback; medians of {args.repetitions} runs "
        f"(one sender) and {args.repetitions} runs ({args.senders} senders at once, "
        f"{args.slices * args.senders} images), the receivers taking turns in each repetition. "
        f"{os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. Orthanc {ORTHANC_VERSION} runs with its defaults "
        "(SyncStorageArea on: each file fsynced; its SQLite index); storescp writes without fsync "
        "and records nothing; ainode serve fsyncs each file and its folder and commits its row "
        "before it answers.",
        "",
        "| receiver | 1 sender, images/s | to storescp | to Orthanc | peak RSS MiB | "
        f"{args.senders} senders, images/s | to storescp | to Orthanc | peak RSS MiB | runs (1 sender) | "
        f"runs ({args.senders} senders) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, rate, rss, many, mrss, runs, many_runs in rows:
        lines.append(f"| {name} | {rate:.0f} | {rate / reference:.2f} | {rate / orthanc[1]:.2f} | {rss:.0f} | "
                     f"{many:.0f} | {many / reference_multi:.2f} | {many / orthanc[3]:.2f} | {mrss:.0f} | "
                     f"{runs} | {many_runs} |")
    lines += ["", f"Peak resident memory of each process during a {args.senders}-sender run:"]
    for name, each in processes.items():
        lines.append(f"- {name}: " + ", ".join(f"{process} {mib:.0f} MiB" for process, mib in each.items()))
    table = "\n".join(lines)
    print("\n" + table)
    results = REPO / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "ingest.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
