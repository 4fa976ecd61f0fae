"""What a model folder is and whether it runs, for an operator about to install it
(``ainode models check PATH``): its format, what it accepts and produces with the
codes its results will carry, and every problem found, before a route names it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai.bundle import BundleError
from ai.container import CONTAINER_MANIFEST, ContainerError, ContainerModel
from ai.manifest import MANIFEST_NAME, ManifestError
from ai.nnunet import NnUNetError
from ai.protocol import Model, PredictionMismatch, check_prediction
from ai.registry import FOLDER_KINDS, RegistryError, folder_kind, folder_model
from ai.volume import Volume


@dataclass
class ModelCheck:
    path: str
    kind: str  # "manifest folder", "MONAI bundle", "nnU-Net folder", "container" or "unknown"
    name: str | None = None
    version: str | None = None
    accepts: str | None = None
    outputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: What a trial run on a small synthetic volume gave, when the model loaded.
    trial: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "name": self.name, "version": self.version,
                "accepts": self.accepts, "outputs": self.outputs, "problems": self.problems,
                "trial": self.trial, "ok": self.ok}


def _trial_volume(modality: str) -> Volume:
    """A 24-slice 64x64 volume at 1.5 x 1 x 1 mm: air around a block of soft tissue."""
    array = np.full((24, 64, 64), -1000.0, dtype=np.float32)
    array[6:18, 16:48, 16:48] = 40.0
    return Volume(array=array, spacing=(1.5, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                  modality=modality, series_instance_uid="2.25.0", frame_of_reference_uid="2.25.0",
                  sop_instance_uids=tuple(f"2.25.{n + 1}" for n in range(24)), frame_numbers=(1,) * 24)


def _describe(model: Model, report: ModelCheck) -> None:
    report.name, report.version = model.name, model.version
    report.accepts = f"{'/'.join(model.accepts.modalities)}, at least {model.accepts.min_slices} slice(s)"
    for s in model.outputs.segments:
        where = f", {s.laterality.meaning}" if s.laterality else ""
        report.outputs.append(f"segment {s.label} {s.name!r}: {s.type.meaning} ({s.type.scheme} {s.type.value}), "
                              f"{s.category.meaning}{where}")
    report.outputs += [f"measurement {m.name!r} ({m.unit.value})" for m in model.outputs.measurements]
    report.outputs += [f"finding {f.name!r}: {f.concept.meaning}" for f in model.outputs.findings]
    report.outputs += [f"lesions {d.name!r}: {d.concept.meaning}, reported from score {d.threshold:g}"
                       for d in model.outputs.detections]
    report.outputs += [f"{m.kind} map {m.name!r} of {m.of!r}" + (f" ({m.method})" if m.method else "")
                       for m in model.outputs.maps]


def check_model_folder(path: Path, run: bool = True) -> ModelCheck:
    """Describe the model in ``path``; with ``run``, load it on the CPU and run it once
    on a small synthetic volume, checking its output against what it declares."""
    import torch

    report = ModelCheck(str(path), "unknown")
    kind = folder_kind(path)
    if kind is None:
        inner = sorted(p.name for p in path.iterdir() if folder_kind(p)) if path.is_dir() else []
        report.problems.append(
            f"neither an {MANIFEST_NAME}, a MONAI bundle's configs/metadata.json, an nnU-Net folder's "
            f"dataset.json, plans.json and fold_* nor an {CONTAINER_MANIFEST} is in this folder"
            + (f"; it holds model folders ({', '.join(inner)}): check each" if inner else ""))
        return report
    report.kind = FOLDER_KINDS[kind]
    try:
        model = folder_model(path)[0].create()
    except (RegistryError, ManifestError, BundleError, ContainerError, NnUNetError) as exc:
        report.problems.append(str(exc))
        return report
    _describe(model, report)
    if not run:
        return report
    try:
        model.load("cpu")
    except Exception as exc:  # the model's own code: any error is the answer
        report.problems.append(f"does not load: {type(exc).__name__}: {exc}")
        return report
    if isinstance(model, ContainerModel):
        m = model.manifest
        report.trial = (f"image {m.image} is on this machine ({m.runtime}, {m.convention} paths, {m.memory_mb} MB, "
                        f"{m.cpus:g} CPUs, timeout {m.timeout_s:g} s); a container reads DICOM files, so it is not "
                        "tried on a synthetic volume: try it on a stored study with `ainode models try`")
        return report
    volume = _trial_volume(model.accepts.modalities[0])
    try:
        with torch.inference_mode():
            prediction = model.predict(volume)
        check_prediction(model.outputs, prediction, volume.shape)
    except PredictionMismatch as exc:
        report.problems.append(f"its output does not match what it declares: {exc}")
        return report
    except Exception as exc:
        report.problems.append(f"fails on a 24x64x64 trial volume: {type(exc).__name__}: {exc}")
        return report
    labels = sorted(int(v) for v in np.unique(prediction.labelmap)) if prediction.labelmap is not None else []
    parts = [f"label map with labels {labels}"] if prediction.labelmap is not None else []
    units = {m.name: m.unit.value for m in model.outputs.measurements}
    parts += [m.brief(units.get(m.name)) for m in prediction.measurements]
    parts += [f.describe() for f in prediction.findings]
    parts += [d.describe() for d in prediction.detections]
    parts += [f"map {m.name!r} up to {float(np.max(m.values)):.2f}" for m in prediction.maps]
    report.trial = "; ".join(parts) or "no output"
    return report
