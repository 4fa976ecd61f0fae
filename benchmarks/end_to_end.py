"""End-to-end latency: from the last image of a study received by `ainode serve` to
its TID 1500 SR stored in a real Orthanc, the quiet period excluded.

    .venv/bin/python benchmarks/end_to_end.py [--repetitions 3] [--slices 300] [--device cpu]
        [--archive orthanc|pynetdicom] [--sender storescu|pynetdicom]

Studies: the public chest CT in ../shared/data (when present) and a generated
300-slice 512x512 chest phantom. Each repetition sends a fresh copy (new UIDs) with
dcmtk storescu (TCP_NODELAY=1) to one running node (models loaded, as in service),
which routes it to ct-chest and sends SEG + SR to Orthanc by C-STORE. A first study
after the node started is reported on its own (its workers map their memory anew, as
after an idle spell); the medians are of the repetitions after it. Reports the
median latency, the share spent in each job (inference, encoding, delivery) and the
node's peak memory. Writes benchmarks/results/end-to-end-<device>.md.

Where Orthanc and dcmtk are not installed (the GPU machine lent to this project has
neither and can install nothing), ``--archive pynetdicom`` puts a pynetdicom Store SCP
in this process in Orthanc's place (the SR counts as archived when its C-STORE
arrives) and ``--sender pynetdicom`` sends the study over one pynetdicom association;
the report says which were used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.ingest import ENV, STORESCU, free_port, peak_rss_by_process, stop, wait_port  # noqa: E402

QUIET_PERIOD_S = 2.0
SENDERS = {"storescu": "dcmtk storescu (TCP_NODELAY=1)", "pynetdicom": "one pynetdicom association"}
ARCHIVES = {"orthanc": "a real Orthanc, asked over REST every 50 ms",
            "pynetdicom": "a pynetdicom Store SCP in the benchmark's process (no Orthanc on that machine)"}
STEPS = ("complete", "infer", "encode", "send", "archive")
#: inside "infer"
INFER_PARTS = ("load", "model")
GOALS = {"cpu": "<= 5 s (300-slice CT)", "cuda": "<= 2 s (300-slice CT, H200)"}


class Archive(Protocol):
    ae_title: str
    dicom_port: int

    def sr_arrived(self, study_uid: str) -> float | None: ...

    def stop(self) -> None: ...


class OrthancArchive:
    """A real Orthanc, asked over REST (every 50 ms) whether the SR is there."""

    def __init__(self, folder: Path) -> None:
        from tests.orthanc import Orthanc

        self._orthanc = Orthanc(folder, free_port(), free_port()).start()
        self.ae_title, self.dicom_port = self._orthanc.ae_title, self._orthanc.dicom_port

    def sr_arrived(self, study_uid: str) -> float | None:
        query = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
        request = urllib.request.Request(self._orthanc.url + "/tools/find", data=query.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return time.time() if json.loads(response.read()) else None

    def stop(self) -> None:
        self._orthanc.stop()


class PynetdicomArchive:
    """A pynetdicom Store SCP in this process, for a machine without Orthanc: it
    accepts every storage SOP class and notes when each study's SR arrives."""

    ae_title = "ARCHIVE"

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.dicom_port = free_port()
        self._arrived: dict[str, float] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.dicom_port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._stored)])

    def _stored(self, event: Any) -> int:
        ds = event.dataset
        if ds.get("Modality") == "SR":
            with self._lock:
                self._arrived.setdefault(str(ds.StudyInstanceUID), time.time())
        return 0x0000

    def sr_arrived(self, study_uid: str) -> float | None:
        with self._lock:
            return self._arrived.get(study_uid)

    def stop(self) -> None:
        self._server.shutdown()


def send_study(sender: str, port: int, folder: Path) -> None:
    """The study to the node, by dcmtk storescu (TCP_NODELAY) or one pynetdicom association."""
    if sender == "storescu":
        sent = subprocess.run([STORESCU, "-aec", "AINODE", "-aet", "BENCH", "+sd", "+r", "127.0.0.1",
                               str(port), str(folder)], env=ENV, capture_output=True, text=True)
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
        return
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    try:
        for path in sorted(folder.rglob("*.dcm")):
            status = assoc.send_c_store(dcmread(path))
            if getattr(status, "Status", None) != 0x0000:
                raise RuntimeError(f"C-STORE of {path.name} answered {status}")
    finally:
        assoc.release()


def _config(orthanc: Archive, device: str) -> str:
    return f"""\
quiet_period_s = {QUIET_PERIOD_S}
completion_sweep_s = 0.25
inference_devices = ["{device}"]

[[destinations]]
name = "archive"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[[routes]]
name = "ct-chest"
model = "ct-chest"
select = "smoothest_kernel"
destinations = ["archive"]
[routes.match]
modality = ["CT"]
orientation = ["AXIAL"]
min_instances = 40
slice_thickness_max = 5.0
"""


def fresh_copy(source: Path, target: Path, tag: str) -> None:
    """The study under new UIDs (the same for every file of one series/study), so the
    node and the archive see a new study each repetition."""
    from pydicom import dcmread

    def renamed(uid: str) -> str:
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{uid}|{tag}').int}"

    target.mkdir(parents=True)
    for i, path in enumerate(sorted(source.rglob("*.dcm"))):
        ds = dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
            if keyword in ds:
                setattr(ds, keyword, renamed(str(ds[keyword].value)))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target / f"{i:05d}.dcm", enforce_file_format=True)


def one_run(node_port: int, archive: Archive, sender: str, folder: Path, data_dir: Path) -> dict:
    from pydicom import dcmread

    study_uid = str(dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    send_study(sender, node_port, folder)
    last_image = time.time()  # the jobs' times are wall-clock epochs too
    deadline = last_image + 120
    while (in_archive := archive.sr_arrived(study_uid)) is None:
        if time.time() > deadline:
            raise RuntimeError("no SR in the archive after 2 minutes; see the node's log")
        time.sleep(0.05)
    jobs = json.loads(subprocess.run(
        [sys.executable, "-m", "node", "jobs", "--json", "--data-dir", str(data_dir), "--limit", "1000"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout)
    mine = {j["kind"]: j for j in sorted(jobs, key=lambda j: j["id"]) if f":{study_uid}:" in j["dedupe_key"]}
    infer, encode, send = mine["infer"], mine["encode"], mine["send"]
    predictions = json.loads(subprocess.run(
        [sys.executable, "-m", "node", "predictions", "--json", "--data-dir", str(data_dir), "--limit", "20"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout)
    prediction = next(p for p in predictions if p["study_instance_uid"] == study_uid)
    # Each job is queued when the one before it finishes: the steps add up to the latency.
    return {
        "latency": in_archive - last_image - QUIET_PERIOD_S,
        "complete": infer["created_at"] - last_image - QUIET_PERIOD_S,
        "infer": infer["finished_at"] - infer["created_at"],
        # what the worker measured inside the infer job: the series read, the model
        "load": prediction["load_seconds"],
        "model": prediction["inference_seconds"],
        "encode": encode["finished_at"] - encode["created_at"],
        "send": send["finished_at"] - send["created_at"],
        "archive": in_archive - send["finished_at"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archive", choices=("orthanc", "pynetdicom"), default="orthanc")
    parser.add_argument("--sender", choices=("storescu", "pynetdicom"), default="storescu")
    args = parser.parse_args()

    from tests.conftest import SHARED_DATA
    from tests.phantoms import chest_phantom, write_phantom_series

    (REPO / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ainode-e2e-", dir=REPO / "var") as tmp:
        work = Path(tmp)
        studies: dict[str, Path] = {}
        public = SHARED_DATA / "ct-chest-tcia-a0001"
        if public.exists():
            studies["public chest CT (ct-chest-tcia-a0001)"] = public
        phantom = chest_phantom(slices=args.slices, size=512, slice_mm=1.0, pixel_mm=0.7)
        write_phantom_series(phantom, work / "phantom", kernel="B30f")
        studies[f"chest phantom {args.slices} x 512 x 512"] = work / "phantom"
        del phantom
        counts = {name: sum(1 for _ in folder.rglob("*.dcm")) for name, folder in studies.items()}

        archive: Archive = OrthancArchive(work / "orthanc") if args.archive == "orthanc" else PynetdicomArchive()
        config = work / "ainode.toml"
        config.write_text(_config(archive, args.device))
        port, data_dir = free_port(), work / "data"
        log = open(work / "ainode.log", "wb")
        node = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(config),
                                 "--data-dir", str(data_dir), "--port", str(port), "--host", "127.0.0.1"],
                                cwd=REPO, env={**os.environ, "AINODE_LOG_LEVEL": "INFO"},
                                stdout=subprocess.DEVNULL, stderr=log)
        results: dict[str, list[dict]] = {name: [] for name in studies}
        first: dict[str, dict] = {}
        try:
            wait_port(port, node)
            time.sleep(10)  # the inference worker loads its models before claiming jobs
            # Repetition 0 is the first study after the node started: the workers' memory
            # is not yet theirs to reuse (node.runner.memory), highdicom reads its tables.
            # It is reported on its own; the medians are of the repetitions after it.
            for rep in range(args.repetitions + 1):
                for name, folder in studies.items():
                    copy = work / f"send-{rep}-{len(results[name])}-{abs(hash(name))}"
                    fresh_copy(folder, copy, f"{rep}-{name}")
                    r = one_run(port, archive, args.sender, copy, data_dir)
                    if rep == 0:
                        first[name] = r
                    else:
                        results[name].append(r)
                    shutil.rmtree(copy)
                    which = f"repetition {rep}" if rep else "first study"
                    print(f"{which}, {name}: {r['latency']:.2f} s (" + ", ".join(
                        f"{k} {r[k]:.2f}" for k in (*STEPS[:2], *INFER_PARTS, *STEPS[2:])) + ")", flush=True)
            rss = peak_rss_by_process(node.pid)
        except Exception:
            print((work / "ainode.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(node, 60)
            archive.stop()

    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    rows = []
    for name, runs in results.items():
        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        rows.append(f"| {name} | {counts[name]} | **{med('latency'):.2f}** | "
                    + " | ".join(f"{med(k):.2f}" for k in (*STEPS[:2], *INFER_PARTS, *STEPS[2:]))
                    + f" | {min(r['latency'] for r in runs):.2f}-{max(r['latency'] for r in runs):.2f}"
                    + f" | {first[name]['latency']:.2f} |")
    memory = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in rss.items())
    report = f"""# End-to-end latency ({kind})

`benchmarks/end_to_end.py --repetitions {args.repetitions} --slices {args.slices} --device {args.device}`
on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')};
medians of {args.repetitions} repetitions, after a first study that is reported on its own.

From the sender's last image acknowledged by `ainode serve` to the SR in the archive, minus
the {QUIET_PERIOD_S:g} s quiet period. Sender: {SENDERS[args.sender]}. Archive: {ARCHIVES[args.archive]}. The node runs
with its models loaded; each repetition is a new study (fresh UIDs). The steps add up to
the latency: complete (last image + quiet period to the infer job queued; sweep every
0.25 s), infer (queued to done: claim, load the series, run ct-chest, record; of which
load and model as the worker measured them), encode
(SEG + SR written), send (C-STORE to the archive, every status checked), archive (until
the archive has the SR). First study: the latency of the first study after the node
started, whose workers map their memory anew (as after `worker_memory_release_s` idle).

| study | images | latency s | complete s | infer s | (load s | model s) | encode s | send s | archive s | range s \
| first study s |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Goal: {GOALS[kind]}. For scale: MONAI Deploy's published end-to-end figure for a
324-slice CT is 2.5 minutes.

Peak resident memory (VmHWM) of each node process over the whole run: {memory}; all
together {sum(rss.values()):.0f} MiB.
"""
    out = REPO / "benchmarks" / "results" / f"end-to-end-{kind}.md"
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
