"""Model-format overhead: a model run by AINode against the same model run its own
way, on the same volume, each repetition in a fresh process (so that peak memory is
its own). ``--format``: ``bundle`` (below), ``nnunet`` or ``container``.

    .venv/bin/python benchmarks/model_formats.py [--format bundle] [--repetitions 5] [--slices 96] [--device cpu]

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

nnunet: the nnU-Net v2 folder the tests plan with nnunetv2 (tests/model_files.py; a
small 3d_fullres U-Net, patch 24 x 40 x 40 at 1.5 x 0.8 x 0.8 mm), own way
``nnUNetPredictor.predict_from_files`` (NIfTI read by SimpleITK, NIfTI written), AINode
``NnUNetModel.predict`` on the volume in memory. Both run fold 0 without mirroring (its
small patch makes the 96-slice volume some 2,000 windows; mirroring would multiply
them by 8 in both alike); use ``--slices 24`` on a CPU.

container: the tests' image (tests/containers.py, podman), own way ``podman run`` on a
folder of the series' DICOM files, AINode ``ContainerModel.predict`` (links the files
into a fresh input folder, runs the same image, reads the NIfTI label map and
results.json back onto the series' grid). Memory is the node process's; the
container's own is the same in both.

Reports medians of the predict time and of peak RSS, and the ratio AINode / own way.
Writes benchmarks/results/model-formats-<format>-<device>.md.
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


def child(fmt: str, stage: str, model: Path, data: Path, slices: int, device: str) -> None:
    import torch

    volume = _volume(slices)
    if fmt == "bundle" and stage == "ainode":
        from ai.bundle import BundleModel

        bundle_model = BundleModel(model)
        bundle_model.load(device)
        started = time.perf_counter()
        with torch.inference_mode():
            prediction = bundle_model.predict(volume)
        seconds = time.perf_counter() - started
        assert prediction.labelmap is not None and prediction.labelmap.shape == volume.shape
    elif fmt == "bundle":
        import warnings

        from monai.bundle.config_parser import ConfigParser

        warnings.simplefilter("ignore")
        parser = ConfigParser()
        parser.read_config(str(model / "configs" / "inference.json"))
        parser["bundle_root"] = str(model)
        parser["device"] = f"$torch.device({device!r})"
        network = parser.get_parsed_content("network_def").to(device)
        network.load_state_dict(torch.load(model / "models" / "model.pt", map_location=device, weights_only=True))
        network.eval()
        pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
        started = time.perf_counter()
        with torch.inference_mode():
            loaded = pre({"image": str(data)})
            loaded["pred"] = inferer(loaded["image"].unsqueeze(0).to(device), network)[0]
            post(loaded)
        seconds = time.perf_counter() - started
    elif fmt == "nnunet" and stage == "ainode":
        from ai.nnunet import NnUNetModel

        nnunet_model = NnUNetModel(model, folds=[0], mirroring=False)
        nnunet_model.load(device)
        started = time.perf_counter()
        with torch.inference_mode():
            prediction = nnunet_model.predict(volume)
        seconds = time.perf_counter() - started
        assert prediction.labelmap is not None and prediction.labelmap.shape == volume.shape
    elif fmt == "nnunet":
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=device != "cpu",
                                        device=torch.device(device), allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
            out = data.parent / f"out-{time.monotonic_ns()}"
            started = time.perf_counter()
            predictor.predict_from_files([[str(data)]], [str(out / "volume")], save_probabilities=False,
                                         overwrite=True, num_processes_preprocessing=1,
                                         num_processes_segmentation_export=1)
            seconds = time.perf_counter() - started
    elif stage == "ainode":
        from ai.container import ContainerModel, read_container_manifest
        from ai.volume import load_volume
        from tests.containers import PODMAN_ARGS

        container = ContainerModel(read_container_manifest(model), model, work_dir=str(data.parent / "work"),
                                   runtime_args=PODMAN_ARGS)
        container.load(device)
        series = load_volume(sorted(data.glob("*.dcm")))
        started = time.perf_counter()
        prediction = container.predict(series)
        seconds = time.perf_counter() - started
        assert prediction.labelmap is not None
    else:
        import shutil

        from ai.container import ContainerModel, read_container_manifest
        from tests.containers import PODMAN_ARGS

        container = ContainerModel(read_container_manifest(model), model, runtime_args=PODMAN_ARGS)
        out = data.parent / f"out-{time.monotonic_ns()}"
        out.mkdir()
        started = time.perf_counter()
        subprocess.run(container.run_arguments(f"bench-{time.monotonic_ns()}", data, out), check=True,
                       capture_output=True)
        seconds = time.perf_counter() - started
        shutil.rmtree(out)
    print(json.dumps({"seconds": seconds, "peak_rss_mib": _peak_rss_mib()}))


def _write_series(volume, folder: Path) -> None:  # noqa: ANN001
    """The volume as a CT series of single-frame files."""
    import numpy as np
    from pydicom.uid import generate_uid

    from tests.synthetic import TEST_UID_ROOT, ct_slice

    folder.mkdir(parents=True)
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    for index in range(volume.shape[0]):
        ds = ct_slice(study, series, index, size=volume.shape[1])
        ds.PixelSpacing, ds.SliceThickness = [volume.spacing[1], volume.spacing[2]], volume.spacing[0]
        ds.ImagePositionPatient = [float(volume.origin[0]), float(volume.origin[1]),
                                   float(volume.origin[2] + index * volume.spacing[0])]
        ds.PixelData = np.clip(volume.array[index], -1024, 3000).astype(np.int16).tobytes()
        ds.save_as(folder / f"{index:04d}.dcm", enforce_file_format=True)


def _write_nifti(volume, path: Path) -> None:  # noqa: ANN001
    import nibabel as nib
    import numpy as np

    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine_lps()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.array.transpose(2, 1, 0)), ras), str(path))


LABELS = {
    "bundle": ("bundle's own way (NIfTI in and out)", "AINode BundleModel (in memory)",
               "spleen-bundle UNet, 96^3 sliding window"),
    "nnunet": ("nnUNetPredictor.predict_from_files (NIfTI in and out)", "AINode NnUNetModel (in memory)",
               "the tests' planned nnU-Net 3d_fullres (patch 24 x 40 x 40), fold 0, no mirroring"),
    "container": ("podman run on the series folder", "AINode ContainerModel (stage, run, read back)",
                  "the tests' container image (numpy threshold, NIfTI and results.json out)"),
}


def _prepare(fmt: str, tmp: Path, slices: int) -> tuple[Path, Path]:
    """The model folder and the input (a NIfTI file or a series folder)."""
    if fmt == "bundle":
        model = make_bundle(tmp / "spleen_like")
    elif fmt == "nnunet":
        from tests.model_files import nnunet_folder

        model = nnunet_folder(tmp / "Dataset990_DenseTissue" / "nnUNetTrainer__nnUNetPlans__3d_fullres", tmp / "nn")
    else:
        from tests.containers import cache_folder_path, container_model_folder, model_image

        model = container_model_folder(tmp / "container", model_image(cache_folder_path()), timeout_s=600)
    if fmt == "container":
        data = tmp / "series"
        _write_series(_volume(slices), data)
    else:
        data = tmp / ("volume.nii.gz" if fmt == "bundle" else "volume_0000.nii.gz")
        _write_nifti(_volume(slices), data)
    return model, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=sorted(LABELS), default="bundle")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, model, data = args.child
        child(args.format, stage, Path(model), Path(data), args.slices, args.device)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model, data = _prepare(args.format, Path(tmp), args.slices)
        results: dict[str, list[dict[str, float]]] = {"own": [], "ainode": []}
        for _ in range(args.repetitions):
            for stage in ("own", "ainode"):
                run = subprocess.run([sys.executable, __file__, "--format", args.format, "--slices", str(args.slices),
                                      "--device", args.device, "--child", stage, str(model), str(data)],
                                     capture_output=True, text=True, check=True, cwd=REPO)
                results[stage].append(json.loads(run.stdout.strip().splitlines()[-1]))
    med = {stage: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "peak_rss_mib")}
           for stage, rows in results.items()}
    ratio = med["ainode"]["seconds"] / med["own"]["seconds"]
    own, ainode, what = LABELS[args.format]
    lines = [
        f"# Model formats: {args.format} via AINode vs its own way ({time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, {args.device})", "",
        f"{args.slices} x 256 x 256 CT at 0.8 x 0.8 x 2.5 mm; {what}; "
        f"medians of {args.repetitions} fresh processes each.", "",
        "| | predict (s) | peak RSS (MiB) |", "| --- | --- | --- |",
        f"| {own} | {med['own']['seconds']:.2f} | {med['own']['peak_rss_mib']:.0f} |",
        f"| {ainode} | {med['ainode']['seconds']:.2f} | {med['ainode']['peak_rss_mib']:.0f} |",
        "", f"Ratio AINode / own way: {ratio:.2f} (time), "
        f"{med['ainode']['peak_rss_mib'] / med['own']['peak_rss_mib']:.2f} (peak memory).",
    ]
    out = REPO / "benchmarks" / "results" / f"model-formats-{args.format}-{args.device.split(':')[0]}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main()
