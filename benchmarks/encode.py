"""Result encoding benchmark: SEG + TID 1500 SR for a 300-slice 512x512 CT with three
segments (the ct-chest outputs on a generated chest phantom).

    .venv/bin/python benchmarks/encode.py [--repetitions 5] [--slices 300]

Reports the median time of ``ai.encoders.results.encode_prediction`` with highdicom's
frame encoding in this process (``workers=0``, what the node does) and with two
worker processes, and the peak RSS. Writes benchmarks/results/encode.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()

    import torch
    from pydicom.uid import generate_uid

    from ai.encoders.identity import ResultIdentity
    from ai.encoders.results import ModelResult, encode_prediction
    from ai.labelmap import LabelMap
    from ai.models.ct_chest import OUTPUTS, CtChestModel
    from tests.phantoms import chest_phantom, phantom_volume
    from tests.synthetic import TEST_UID_ROOT, ct_slice

    phantom = chest_phantom(slices=args.slices, size=512, slice_mm=1.0, pixel_mm=0.7)
    volume = phantom_volume(phantom)
    with torch.inference_mode():
        prediction = CtChestModel().predict(volume)
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    sources = [ct_slice(study, series, i, size=512) for i in range(args.slices)]
    uids = tuple(str(s.SOPInstanceUID) for s in sources)
    identity = ResultIdentity(study, series, "ct-chest", "1.0.0", 1)
    assert prediction.labelmap is not None
    labelmap = LabelMap(prediction.labelmap, uids, (1,) * len(uids), series, volume.spacing, volume.origin,
                        volume.direction)
    result = ModelResult(OUTPUTS, tuple(prediction.measurements), tuple(prediction.findings), labelmap)
    times: dict[int, list[float]] = {0: [], 2: []}
    frames = 0
    for _ in range(args.repetitions):
        for workers in times:
            started = time.perf_counter()
            objects = encode_prediction(identity, result, sources, workers=workers)
            times[workers].append(time.perf_counter() - started)
            frames = int(objects[0].dataset.NumberOfFrames)
    peak = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    text = "\n".join([
        "# Result encoding benchmark", "",
        f"`benchmarks/encode.py --repetitions {args.repetitions} --slices {args.slices}`, "
        f"{time.strftime('%Y-%m-%d')}; medians.", "",
        f"SEG ({frames} non-empty frames of 3 segments) + TID 1500 SR for a {args.slices} x 512 x 512 "
        "chest phantom.", "",
        "| highdicom frame encoding | median s | goal |", "|---|---:|---|",
        f"| in the worker process (workers=0, as the node runs) | {statistics.median(times[0]):.2f} | <= 2 s |",
        f"| two worker processes (workers=2) | {statistics.median(times[2]):.2f} | |", "",
        f"Peak RSS of the benchmark process (phantom, model and sources included): {peak:.0f} MiB.",
    ]) + "\n"
    (REPO / "benchmarks" / "results" / "encode.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
