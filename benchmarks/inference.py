"""Inference benchmark: loading a 300-slice 512x512 CT series into a volume, and the
built-in ct-chest model on it, each in a fresh process (so that peak memory is its own).

    .venv/bin/python benchmarks/inference.py [--repetitions 5] [--slices 300] [--device cpu]

The series is a generated chest phantom (body, two lungs, airways, vessels, noise),
written as uncompressed Part 10 files. Reports medians of:
- load: ``ai.volume.load_volume`` (read, sort, check geometry, rescale to HU), and as a
  reference the naive loop ``[dcmread(p).pixel_array for p in paths]`` in the same run;
- ct-chest: ``predict`` under ``torch.inference_mode`` on the loaded volume;
- warm: both again for a second series in a process that keeps the memory it freed,
  as the node's inference worker does for every study after its first;
- peak resident memory of each process (VmHWM), and peak CUDA memory on a GPU.
Writes benchmarks/results/inference-<device>.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOALS = {"cpu": {"load_s": 2.0, "ct_chest_s": 5.0, "peak_gib": 3.0},
         "cuda": {"load_s": 2.0, "ct_chest_s": 0.5, "peak_gib": 3.0}}


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(stage: str, folder: Path, device: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    paths = sorted(folder.glob("*.dcm"))
    if stage == "naive":
        from pydicom import dcmread

        started = time.perf_counter()
        arrays = [dcmread(p).pixel_array for p in paths]
        print(json.dumps({"seconds": time.perf_counter() - started, "slices": len(arrays),
                          "peak_rss_mib": _peak_rss_mib()}))
        return
    if stage == "warm":
        warm(paths, device)
        return
    from ai.volume import load_volume

    started = time.perf_counter()
    volume = load_volume(paths)
    loaded = time.perf_counter() - started
    if stage == "load":
        print(json.dumps({"seconds": loaded, "shape": volume.shape, "peak_rss_mib": _peak_rss_mib()}))
        return
    import torch

    from ai.models.ct_chest import CtChestModel

    model = CtChestModel()
    model.load(device)
    cuda = device.startswith("cuda")
    if cuda:  # initialise the context and kernels outside the timing, as a warm worker has
        with torch.inference_mode():
            model.predict(volume)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.inference_mode():
        prediction = model.predict(volume)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    values = {m.name: round(m.value, 1) for m in prediction.measurements}
    print(json.dumps({
        "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "right_ml": values["right lung volume"], "left_ml": values["left lung volume"],
    }))


def warm(paths: list[Path], device: str) -> None:
    """The series loaded and ct-chest run a second time in a process that keeps its
    freed memory, as the node's inference worker does (node.runner.memory): what each
    study after the first costs a worker in service."""
    from node.runner.memory import keep_freed_memory

    keep_freed_memory()
    import torch

    from ai.models.ct_chest import CtChestModel
    from ai.volume import load_volume

    model = CtChestModel()
    model.load(device)
    with torch.inference_mode():
        model.predict(load_volume(paths))  # the first study
        started = time.perf_counter()
        volume = load_volume(paths)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        model.predict(volume)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        predicted = time.perf_counter() - started
    print(json.dumps({"seconds": loaded + predicted, "load_seconds": loaded, "predict_seconds": predicted,
                      "peak_rss_mib": _peak_rss_mib()}))


def _run(stage: str, folder: Path, device: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", stage, "--folder", str(folder),
                          "--device", device], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child")
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.device)
        return

    from tests.phantoms import chest_phantom, write_phantom_series

    with tempfile.TemporaryDirectory(prefix="ainode-bench-") as tmp:
        folder = Path(tmp) / "series"
        started = time.perf_counter()
        phantom = chest_phantom(slices=args.slices, size=512, slice_mm=1.0, pixel_mm=0.7)
        write_phantom_series(phantom, folder, kernel="B30f")
        print(f"generated {args.slices} x 512 x 512 phantom in {time.perf_counter() - started:.0f} s; "
              f"truth right {phantom.right_ml:.0f} mL, left {phantom.left_ml:.0f} mL", flush=True)
        del phantom
        runs: dict[str, list[dict]] = {"naive": [], "load": [], "ct-chest": [], "warm": []}
        for rep in range(args.repetitions):
            for stage in runs:
                runs[stage].append(_run(stage, folder, args.device))
            print(f"repetition {rep + 1}: " + ", ".join(
                f"{s} {r[-1]['seconds']:.2f} s" for s, r in runs.items()), flush=True)

    def med(stage: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[stage])

    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    goals = GOALS[kind]
    chest = runs["ct-chest"][-1]
    rows = [
        ("load_volume (read, sort, check, HU)", med("load", "seconds"), med("load", "peak_rss_mib"),
         f"<= {goals['load_s']:g} s"),
        ("naive dcmread + pixel_array loop (reference)", med("naive", "seconds"),
         med("naive", "peak_rss_mib"), ""),
        (f"ct-chest predict on {args.device}", med("ct-chest", "seconds"),
         med("ct-chest", "peak_rss_mib"), f"<= {goals['ct_chest_s']:g} s, <= {goals['peak_gib']:g} GiB"),
        ("load_volume, second study in a process keeping its memory (as the node's worker)",
         med("warm", "load_seconds"), med("warm", "peak_rss_mib"), ""),
        ("ct-chest predict, second study in that process", med("warm", "predict_seconds"),
         med("warm", "peak_rss_mib"), ""),
    ]
    lines = [
        f"# Inference benchmark ({args.device})", "",
        f"`benchmarks/inference.py --repetitions {args.repetitions} --slices {args.slices} "
        f"--device {args.device}` on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}; medians of {args.repetitions} fresh processes each. The first three "
        "rows: one step in a fresh process, as a model developer runs it; the last two: the second "
        "series in one process that keeps the memory it freed (glibc, see node/runner/memory.py), "
        "as the node's inference worker runs each study after its first.", "",
        f"Series: generated chest phantom, {args.slices} x 512 x 512, 0.7 mm pixels, 1 mm slices, "
        "uncompressed.", "",
        "| step | median s | peak RSS MiB (whole process) | goal |", "|---|---:|---:|---|",
        *[f"| {name} | {s:.2f} | {m:.0f} | {goal} |" for name, s, m, goal in rows], "",
        f"load_volume / naive loop: {med('load', 'seconds') / med('naive', 'seconds'):.2f}x the time.",
        f"ct-chest result: right lung {chest['right_ml']} mL, left {chest['left_ml']} mL.",
    ]
    if kind == "cuda":
        lines.append(f"Peak CUDA memory: {statistics.median(r['peak_cuda_mib'] for r in runs['ct-chest']):.0f} MiB.")
    text = "\n".join(lines) + "\n"
    out = REPO / "benchmarks" / "results" / f"inference-{kind}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
