"""nnU-Net v2 result folders (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_*.pth``),
as nnU-Net trains them and TotalSegmentator ships its weights, run with nnunetv2's own
predictor: its preprocessing (cropping, normalisation, resampling to the plans'
spacing), sliding window with Gaussian weighting, the folds' ensemble, test-time
mirroring on the axes the checkpoint allows, and the resampling back to the input's
shape, so the label map comes back on the series' grid.

The series is given as nnU-Net's default reader (SimpleITK) gives a NIfTI made from
it: (slice, row, column) with that spacing; a dataset whose ``dataset.json`` names
``NibabelIOWithReorient`` (TotalSegmentator's) gets it reoriented to RAS first and the
label map reoriented back. Label names come from ``dataset.json`` and their codes from
:mod:`ai.label_codes` (an ``ainode-labels.toml`` in the folder adds or changes them).
Nothing is downloaded: the folder must be complete.

Options (``[models.<name>.options]``): ``folds`` (default: every ``fold_*`` present),
``checkpoint`` (``checkpoint_final.pth``), ``mirroring`` (default true: as the
checkpoint allows), ``tile_step_size`` (0.5).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.label_codes import LabelCodingError, coding_for, read_label_mapping
from ai.manifest import ML, VOLUME, folder_model_name, read_json_object
from ai.protocol import (
    Accepts,
    DeviceNeeds,
    Measurement,
    MeasurementSpec,
    ModelCannotRun,
    Outputs,
    Prediction,
    SegmentSpec,
)
from ai.volume import Volume

CHECKPOINT = "checkpoint_final.pth"
_FOLDER_PARTS = re.compile(r"^[^_]+__[^_]+__(?P<configuration>.+)$")  # Trainer__Plans__configuration
_MODALITIES = {"CT": "CT", "MR": "MR", "MRI": "MR", "T1": "MR", "T2": "MR", "FLAIR": "MR", "ADC": "MR",
               "PET": "PT", "PT": "PT"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class NnUNetError(ValueError):
    """The folder is not an nnU-Net v2 result folder AINode can run; the message says why."""


def is_nnunet_folder(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() and (folder / "plans.json").is_file() and \
        any(folder.glob("fold_*"))


def nnunet_name(folder: Path) -> str:
    """The model's name: ``<dataset folder>-<configuration>`` for nnU-Net's own layout
    (``Dataset291_TotalSegmentator_part1_organs/nnUNetTrainer__nnUNetPlans__3d_fullres``),
    else the folder's name."""
    resolved = folder.resolve()
    parts = _FOLDER_PARTS.match(resolved.name)
    raw = f"{resolved.parent.name}-{parts['configuration']}" if parts else resolved.name
    return folder_model_name(raw, folder, NnUNetError)


class NnUNetModel:
    """Runs an nnU-Net v2 result folder (see the module's docstring)."""

    def __init__(self, folder: Path, folds: list[int | str] | None = None, checkpoint: str = CHECKPOINT,
                 mirroring: bool = True, tile_step_size: float = 0.5) -> None:
        self.folder = folder
        self.dataset = read_json_object(folder / "dataset.json", NnUNetError)
        self.plans = read_json_object(folder / "plans.json", NnUNetError)
        self.name = nnunet_name(folder)
        self.version = str(self.plans.get("plans_name") or "nnUNetPlans")
        available = sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*") if (p / checkpoint).is_file())
        if not available:
            raise NnUNetError(f"nnU-Net folder {folder} has no fold_*/{checkpoint}")
        chosen = [str(f) for f in folds] if folds is not None else available
        missing = [f for f in chosen if f not in available]
        if missing:
            raise NnUNetError(f"nnU-Net folder {folder}: fold(s) {', '.join(missing)} have no {checkpoint} "
                              f"(present: {', '.join(available)})")
        parts = _FOLDER_PARTS.match(folder.resolve().name)
        configuration = (self.plans.get("configurations") or {}).get(parts["configuration"]) if parts else None
        if isinstance(configuration, dict) and configuration.get("previous_stage"):
            raise NnUNetError(f"nnU-Net folder {folder} is a cascade stage (it needs the output of "
                              f"{configuration['previous_stage']!r}); AINode runs single-stage folders such as "
                              "3d_fullres or 3d_lowres")
        self.folds = tuple(int(f) if f.isdigit() else f for f in chosen)
        self.checkpoint = checkpoint
        self.mirroring = mirroring
        self.tile_step_size = tile_step_size
        channels = self.dataset.get("channel_names") or self.dataset.get("modality") or {}
        if len(channels) != 1:
            raise NnUNetError(f"{folder}: the model takes {len(channels)} input channels; AINode gives one series")
        channel = str(next(iter(channels.values()))).upper()
        if channel not in _MODALITIES:
            raise NnUNetError(f"{folder}: dataset.json's channel {channel!r} names no modality AINode knows "
                              f"({', '.join(sorted(_MODALITIES))})")
        self.accepts = Accepts((_MODALITIES[channel],), 1)
        self.device_needs = DeviceNeeds("optional")
        self.reorient = "reorient" in str(self.dataset.get("overwrite_image_reader_writer", "")).lower()
        labels = self.dataset.get("labels") or {}
        mapping = read_label_mapping(folder)
        segments = []
        try:
            for label, value in labels.items():
                if isinstance(value, (list, tuple)):
                    raise NnUNetError(f"{folder}: region-based labels ({label}: {value}) are not supported")
                if int(value) == 0:
                    continue
                coding = coding_for(str(label), mapping, folder)
                segments.append(SegmentSpec(int(value), str(label), coding.category, coding.type, coding.laterality))
        except LabelCodingError as exc:
            raise NnUNetError(f"{folder}: {exc}") from None
        if not segments:
            raise NnUNetError(f"{folder}: dataset.json names no labels")
        segments.sort(key=lambda s: s.label)
        self.outputs = Outputs(
            segments=tuple(segments),
            measurements=tuple(MeasurementSpec(f"{s.name} volume", VOLUME, ML, s.label) for s in segments))
        self._predictor: Any = None

    def load(self, device: str) -> None:
        # nnunetv2 prints notes about its training folders (unset here: inference only)
        # on import, and about devices: not for the node's log.
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            except ImportError:
                raise NnUNetError("nnU-Net folders need nnunetv2: pip install 'ainode[nnunet]'") from None
            torch_device = torch.device(device)
            predictor = nnUNetPredictor(tile_step_size=self.tile_step_size, use_gaussian=True,
                                        use_mirroring=self.mirroring,
                                        perform_everything_on_device=torch_device.type == "cuda",
                                        device=torch_device, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=False)
            try:
                predictor.initialize_from_trained_model_folder(str(self.folder), use_folds=self.folds,
                                                               checkpoint_name=self.checkpoint)
            except Exception as exc:  # nnunetv2's own errors for a broken folder
                raise NnUNetError(f"nnU-Net folder {self.folder}: {type(exc).__name__}: {exc}") from None
        self._predictor = predictor

    def _input(self, volume: Volume) -> tuple[np.ndarray, list[float], Any]:
        """The image as nnU-Net's reader would give it: (channel, z, y, x) and spacing (z, y, x)."""
        if not self.reorient:
            return volume.array[None].astype(np.float32, copy=False), list(volume.spacing), None
        import nibabel

        nib: Any = nibabel  # untyped
        image = nib.Nifti1Image(volume.array.transpose(2, 1, 0), LPS_TO_RAS @ volume.affine_lps())
        canonical = nib.as_closest_canonical(image)
        data = np.asarray(canonical.dataobj, dtype=np.float32).transpose(2, 1, 0)
        spacing = [float(v) for v in canonical.header.get_zooms()[::-1]]
        return data[None], spacing, (image, canonical)

    def _back(self, labels: np.ndarray, reoriented: Any, volume: Volume) -> np.ndarray:
        if reoriented is None:
            return labels
        import nibabel as nib

        image, canonical = reoriented
        orientations: Any = nib.orientations  # nibabel's orientation helpers are untyped
        ornt = orientations.ornt_transform(orientations.io_orientation(canonical.affine),
                                           orientations.io_orientation(image.affine))
        back = orientations.apply_orientation(labels.transpose(2, 1, 0), ornt)
        return np.asarray(back).transpose(2, 1, 0)

    def predict(self, volume: Volume) -> Prediction:
        if self._predictor is None:
            raise RuntimeError(f"model {self.name} was not loaded")
        image, spacing, reoriented = self._input(volume)
        with contextlib.redirect_stdout(io.StringIO()):
            labels = self._predictor.predict_single_npy_array(image, {"spacing": spacing}, None, None, False)
        labels = self._back(np.asarray(labels), reoriented, volume)
        if labels.shape != volume.shape:
            raise ModelCannotRun(f"nnU-Net returned shape {labels.shape} for a series of {volume.shape}")
        labelmap = np.zeros(volume.shape, dtype=np.uint8)
        measurements = []
        for segment in self.outputs.segments:
            mask = labels == segment.label
            labelmap[mask] = segment.label
            measurements.append(Measurement(f"{segment.name} volume", float(mask.sum()) * volume.voxel_volume_ml))
        return Prediction(labelmap=labelmap, measurements=measurements,
                          provenance={"runtime": "nnunetv2", "folds": list(self.folds), "checkpoint": self.checkpoint,
                                      "mirroring": bool(self.mirroring and self._predictor.allowed_mirroring_axes)})
