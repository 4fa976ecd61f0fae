"""Model-format overhead: a MONAI bundle run by AINode against the same bundle run
its own way, on the same volume, each repetition in a fresh process (so that peak
memory is its own).

    .venv/bin/python benchmarks/model_formats.py [--repetitions 5] [--slices 96] [--device cpu]

The bundle is the Model Zoo's spleen layout (configs/metadata.json, inference.json,
models/model.pt) with the spleen bundle's network (MONAI UNet, channels 16-256, two
residual units), preprocessing (RAS, 1.5 x 1.5 x 2 mm, intensity window), sliding
window 96^3 and postprocessing (softmax, Invertd, argmax); its weights are random,
which costs the same as trained ones. The volume is a synthetic 96 x 256 x 256 CT at
0.8 x 0.8 x 2.5 mm.

- **own way**: the bundle's chain as ``monai.bundle`` runs it: ``LoadImaged`` from a
  NIfTI file, the transforms, the inferer, ``SaveImaged`` to a NIfTI file (the ignite
  evaluator the config names is not installed; its loop adds nothing but batching).
- **AINode**: ``ai.bundle.BundleModel.predict`` on the in-memory volume (no file in,
  none out), plus building the label map and volumes.

Reports medians of the predict time and of peak RSS, and the ratio AINode / own way.
Writes benchmarks/results/model-formats-<device>.md.
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


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _volume(slices: int):  # noqa: ANN202
    import numpy as np

    from ai.volume import Volume

    rng = np.random.default_rng(7)
    k, j, i = np.indices((slices, 256, 256), sparse=True)
    body = ((j - 128) / 110.0) ** 2 + ((i - 128) / 120.0) ** 2 <= 1.0
    array = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, (slices, 256, 256))
    organ = ((k - slices / 2) / (slices / 5)) ** 2 + ((j - 150) / 30.0) ** 2 + ((i - 80) / 25.0) ** 2 <= 1.0
    array = np.where(organ, 120.0, array).astype(np.float32)
    return Volume(array=array, spacing=(2.5, 0.8, 0.8), origin=(-102.0, -102.0, 0.0), direction=np.eye(3),
                  modality="CT", series_instance_uid="2.25.1", frame_of_reference_uid="2.25.2",
                  sop_instance_uids=tuple(f"2.25.{n + 10}" for n in range(slices)), frame_numbers=(1,) * slices)


def make_bundle(folder: Path) -> Path:
    import torch

    from tests.model_files import monai_bundle

    monai_bundle(folder, pixdim=(1.5, 1.5, 2.0))
    config_path = folder / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"] = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                             "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                             "num_res_units": 2, "norm": "batch"}
    config["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4,
                         "overlap": 0.5}
    for transform in config["preprocessing"]["transforms"]:
        if transform["_target_"] == "ScaleIntensityRanged":
            transform.update(a_min=-57, a_max=164)
    config["postprocessing"]["transforms"][-1]["output_dir"] = str(folder / "eval")
    config_path.write_text(json.dumps(config, indent=2))
    from monai.bundle.config_parser import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_path))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "models" / "model.pt")
    return folder


def child(stage: str, bundle: Path, nifti: Path, slices: int, device: str) -> None:
    import torch

    volume = _volume(slices)
    if stage == "ainode":
        from ai.bundle import BundleModel

        model = BundleModel(bundle)
        model.load(device)
        started = time.perf_counter()
        with torch.inference_mode():
            prediction = model.predict(volume)
        seconds = time.perf_counter() - started
        assert prediction.labelmap is not None and prediction.labelmap.shape == volume.shape
    else:
        import warnings

        from monai.bundle.config_parser import ConfigParser

        warnings.simplefilter("ignore")
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(bundle)
        parser["device"] = f"$torch.device({device!r})"
        network = parser.get_parsed_content("network_def").to(device)
        network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location=device, weights_only=True))
        network.eval()
        pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
        started = time.perf_counter()
        with torch.inference_mode():
            data = pre({"image": str(nifti)})
            data["pred"] = inferer(data["image"].unsqueeze(0).to(device), network)[0]
            post(data)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mib": _peak_rss_mib()}))


def _write_nifti(volume, path: Path) -> None:  # noqa: ANN001
    import nibabel as nib
    import numpy as np

    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine_lps()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.array.transpose(2, 1, 0)), ras), str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, bundle, nifti = args.child
        child(stage, Path(bundle), Path(nifti), args.slices, args.device)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "spleen_like")
        nifti = Path(tmp) / "volume.nii.gz"
        _write_nifti(_volume(args.slices), nifti)
        results: dict[str, list[dict[str, float]]] = {"own": [], "ainode": []}
        for _ in range(args.repetitions):
            for stage in ("own", "ainode"):
                run = subprocess.run([sys.executable, __file__, "--slices", str(args.slices), "--device",
                                      args.device, "--child", stage, str(bundle), str(nifti)],
                                     capture_output=True, text=True, check=True, cwd=REPO)
                results[stage].append(json.loads(run.stdout.strip().splitlines()[-1]))
    med = {stage: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "peak_rss_mib")}
           for stage, rows in results.items()}
    ratio = med["ainode"]["seconds"] / med["own"]["seconds"]
    lines = [
        f"# Model formats: MONAI bundle via AINode vs its own way ({time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, {args.device})", "",
        f"{args.slices} x 256 x 256 CT at 0.8 x 0.8 x 2.5 mm; spleen-bundle UNet, 96^3 sliding window; "
        f"medians of {args.repetitions} fresh processes each.", "",
        "| | predict (s) | peak RSS (MiB) |", "| --- | --- | --- |",
        f"| bundle's own way (NIfTI in and out) | {med['own']['seconds']:.2f} | {med['own']['peak_rss_mib']:.0f} |",
        f"| AINode BundleModel (in memory) | {med['ainode']['seconds']:.2f} | {med['ainode']['peak_rss_mib']:.0f} |",
        "", f"Ratio AINode / own way: {ratio:.2f} (time), "
        f"{med['ainode']['peak_rss_mib'] / med['own']['peak_rss_mib']:.2f} (peak memory).",
    ]
    out = REPO / "benchmarks" / "results" / f"model-formats-{args.device.split(':')[0]}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
