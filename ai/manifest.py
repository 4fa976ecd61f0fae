"""Bring your own model without Python: a folder with a TorchScript or ONNX file and
an ``ainode-model.toml`` that says what the model accepts, how its input is prepared
and what its outputs mean. :class:`ManifestModel` runs any such folder.

A segmentation model takes a ``(1, 1, D, H, W)`` float32 image and returns
``(1, C, D, H, W)`` class scores (channel 0 is background); each voxel gets the
channel with the highest score. A classification model takes the same input and
returns ``(1, K)`` scores, turned into probabilities by a sigmoid or softmax.

Example manifest::

    name = "liver-ct"
    version = "1.2.0"
    file = "model.onnx"                 # .onnx, or .pt / .ts for TorchScript
    task = "segmentation"               # or "classification"

    [accepts]
    modalities = ["CT"]
    min_slices = 20

    [preprocess]
    window = [-200.0, 300.0]            # HU window scaled to 0..1 (or normalize = [mean, std])
    target_spacing = [2.0, 1.5, 1.5]    # mm (slice, row, column); omit to keep the spacing
    patch_size = [64, 128, 128]         # sliding window; omit to run on the whole volume
    overlap = 0.25

    [[segments]]
    channel = 1
    name = "Liver"
    category = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }
    type = { value = "10200004", scheme = "SCT", meaning = "Liver" }
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ai.protocol import (
    Accepts,
    Assessment,
    Code,
    DeviceNeeds,
    Finding,
    FindingSpec,
    Measurement,
    MeasurementSpec,
    Outputs,
    Prediction,
    SegmentSpec,
)
from ai.volume import Volume

MANIFEST_NAME = "ainode-model.toml"
M = TypeVar("M", bound=BaseModel)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")
ONNX_SUFFIXES = (".onnx",)

VOLUME = Code("118565006", "SCT", "Volume")
ML = Code("mL", "UCUM", "milliliter")


class ManifestError(ValueError):
    """The model folder's manifest is missing or wrong; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeEntry(_Strict):
    value: str = Field(min_length=1)
    scheme: str = Field(min_length=1)
    meaning: str = Field(min_length=1)

    def code(self) -> Code:
        return Code(self.value, self.scheme, self.meaning)


class AcceptsEntry(_Strict):
    modalities: list[str] = Field(min_length=1)
    min_slices: int = Field(default=1, ge=1)


class Preprocess(_Strict):
    window: tuple[float, float] | None = None
    normalize: tuple[float, float] | None = None
    target_spacing: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] | None = None
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> Preprocess:
        if self.window and self.normalize:
            raise ValueError("give either window or normalize, not both")
        if self.window and not self.window[0] < self.window[1]:
            raise ValueError("window must be [low, high] with low < high")
        if self.normalize and self.normalize[1] <= 0:
            raise ValueError("normalize must be [mean, std] with std > 0")
        if self.target_spacing and min(self.target_spacing) <= 0:
            raise ValueError("target_spacing must be positive millimetres")
        if self.patch_size and min(self.patch_size) < 1:
            raise ValueError("patch_size must be positive voxel counts")
        return self


class SegmentEntry(_Strict):
    channel: int = Field(ge=1, description="output channel; 0 is background")
    label: int | None = Field(default=None, ge=1, le=255, description="label value; the channel by default")
    name: str = Field(min_length=1)
    category: CodeEntry
    type: CodeEntry
    laterality: CodeEntry | None = None


class FindingEntry(_Strict):
    index: int = Field(ge=0, description="position in the output scores")
    name: str = Field(min_length=1)
    concept: CodeEntry
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)


class Manifest(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=32)
    file: str
    task: Literal["segmentation", "classification"]
    description: str = ""
    accepts: AcceptsEntry
    preprocess: Preprocess = Field(default_factory=Preprocess)
    activation: Literal["sigmoid", "softmax"] = "sigmoid"
    segments: list[SegmentEntry] = Field(default_factory=list)
    findings: list[FindingEntry] = Field(default_factory=list)
    gpu: Literal["none", "optional", "required"] = "optional"
    gpu_memory_mb: int = Field(default=0, ge=0)
    mixed_precision: bool = False

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if not self.file.endswith(TORCHSCRIPT_SUFFIXES + ONNX_SUFFIXES):
            raise ValueError(f"file {self.file!r} must end in .onnx, .pt, .ts or .torchscript")
        if self.task == "segmentation" and not self.segments:
            raise ValueError("a segmentation model needs at least one [[segments]]")
        if self.task == "classification" and not self.findings:
            raise ValueError("a classification model needs at least one [[findings]]")
        labels = [s.label or s.channel for s in self.segments]
        if len(set(labels)) != len(labels) or len({s.channel for s in self.segments}) != len(labels):
            raise ValueError("each segment needs its own channel and label")
        if len({f.index for f in self.findings}) != len(self.findings):
            raise ValueError("each finding needs its own index")
        return self


def read_toml_model(path: Path, schema: type[M], error: type[ValueError]) -> M:
    """``path`` parsed as TOML and checked against ``schema``; ``error`` (with the file
    and each field's problem) when it cannot be read or does not fit."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors())
        raise error(f"{path}: {problems}") from None


def read_json_object(path: Path, error: type[ValueError]) -> dict[str, Any]:
    """``path`` parsed as a JSON object; ``error`` (with the file) when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: not a JSON object")
    return data


def folder_model_name(raw: str, folder: Path, error: type[ValueError]) -> str:
    """A model name made from a folder's name (``raw``): other characters than letters,
    digits and ``._-`` become ``-``, at most 64; ``error`` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")[:64]
    if not name:
        raise error(f"model folder {folder} has no usable name; rename the folder")
    return name


def read_manifest(folder: Path) -> Manifest:
    """Parse and check ``<folder>/ainode-model.toml``; raises :class:`ManifestError`."""
    path = folder / MANIFEST_NAME
    manifest = read_toml_model(path, Manifest, ManifestError)
    if not (folder / manifest.file).is_file():
        raise ManifestError(f"{path}: file {manifest.file!r} is not in the folder")
    return manifest


class _TorchScript:
    def __init__(self, path: Path, device: torch.device) -> None:
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            # torch.jit.load has no type annotations (torch 2.13).
            self.module = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.module(batch)
        if isinstance(out, (tuple, list)):
            out = out[0]
        result: torch.Tensor = out.float()
        return result


class _Onnx:
    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime

        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.device = device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (out, *_rest) = self.session.run(None, {self.input: batch.detach().cpu().numpy()})
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(self.device)


def _positions(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, step))
    return starts + [size - patch]


class ManifestModel:
    """Runs a TorchScript or ONNX model as its manifest describes."""

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder
        self.name = manifest.name
        self.version = manifest.version
        self.accepts = Accepts(tuple(manifest.accepts.modalities), manifest.accepts.min_slices)
        self.device_needs = DeviceNeeds(manifest.gpu, manifest.gpu_memory_mb, manifest.mixed_precision)
        segments = tuple(
            SegmentSpec(s.label or s.channel, s.name, s.category.code(), s.type.code(),
                        s.laterality.code() if s.laterality else None)
            for s in manifest.segments)
        self.outputs = Outputs(
            segments=segments,
            measurements=tuple(MeasurementSpec(f"{s.name} volume", VOLUME, ML, s.label) for s in segments),
            findings=tuple(FindingSpec(f.name, f.concept.code()) for f in manifest.findings),
        )
        self.device = torch.device("cpu")
        self._runner: _TorchScript | _Onnx | None = None

    def load(self, device: str) -> None:
        self.device = torch.device(device)
        path = self.folder / self.manifest.file
        kind = _Onnx if path.suffix in ONNX_SUFFIXES else _TorchScript
        self._runner = kind(path, self.device)

    # --- preprocessing -------------------------------------------------------------

    def _intensities(self, array: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(array).to(self.device, torch.float32)
        pre = self.manifest.preprocess
        if pre.window:
            low, high = pre.window
            image = ((image.clamp(low, high) - low) / (high - low))
        elif pre.normalize:
            mean, std = pre.normalize
            image = (image - mean) / std
        return image[None, None]  # (1, 1, D, H, W)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self._runner is None:
            raise RuntimeError(f"model {self.name} was not loaded")
        return self._runner(batch)

    def _sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        pre = self.manifest.preprocess
        if pre.patch_size is None:
            return self._run(image)
        patch = pre.patch_size
        shape = image.shape[2:]
        # Pad up to at least one patch (edge values, so padding looks like the border).
        padding = [max(0, p - s) for p, s in zip(patch, shape, strict=True)]
        if any(padding):
            pads = list(itertools.chain.from_iterable((0, p) for p in reversed(padding)))
            image = F.pad(image, pads, mode="replicate")
        padded = image.shape[2:]
        steps = [max(1, int(p * (1 - pre.overlap))) for p in patch]
        total: torch.Tensor | None = None
        counts = torch.zeros((1, 1, *padded), device=image.device)
        starts = (_positions(s, p, st) for s, p, st in zip(padded, patch, steps, strict=True))
        for z, y, x in itertools.product(*starts):
            window = (slice(None), slice(None), slice(z, z + patch[0]), slice(y, y + patch[1]),
                      slice(x, x + patch[2]))
            out = self._run(image[window].contiguous())
            if total is None:
                total = torch.zeros((1, out.shape[1], *padded), device=image.device)
            total[window] += out
            counts[window] += 1
        assert total is not None
        result = total / counts
        return result[:, :, :shape[0], :shape[1], :shape[2]]

    # --- prediction ----------------------------------------------------------------

    def predict(self, volume: Volume) -> Prediction:
        image = self._intensities(volume.array)
        pre = self.manifest.preprocess
        if self.manifest.task == "classification":
            if pre.patch_size:
                image = F.interpolate(image, size=pre.patch_size, mode="trilinear", align_corners=False)
            return self._classify(self._run(image))
        if pre.target_spacing:
            size = [max(1, round(n * s / t)) for n, s, t in
                    zip(volume.shape, volume.spacing, pre.target_spacing, strict=True)]
            image = F.interpolate(image, size=size, mode="trilinear", align_corners=False)
        scores = self._sliding_window(image)
        if tuple(scores.shape[2:]) != volume.shape:
            scores = F.interpolate(scores, size=volume.shape, mode="trilinear", align_corners=False)
        return self._segmentation(scores.argmax(dim=1)[0], volume)

    def _segmentation(self, channels: torch.Tensor, volume: Volume) -> Prediction:
        channels_np = channels.cpu().numpy()
        labelmap = np.zeros(volume.shape, dtype=np.uint8)
        measurements = []
        for segment in self.manifest.segments:
            label = segment.label or segment.channel
            mask = channels_np == segment.channel
            labelmap[mask] = label
            measurements.append(Measurement(f"{segment.name} volume",
                                            float(mask.sum()) * volume.voxel_volume_ml))
        return Prediction(labelmap=labelmap, measurements=measurements,
                          provenance={"runtime": Path(self.manifest.file).suffix.lstrip(".")})

    def _classify(self, scores: torch.Tensor) -> Prediction:
        logits = scores.reshape(-1).float()
        needed = max(f.index for f in self.manifest.findings) + 1
        if logits.numel() < needed:
            raise RuntimeError(f"model {self.name} returned {logits.numel()} scores, "
                               f"its manifest needs {needed}")
        probs = torch.softmax(logits, 0) if self.manifest.activation == "softmax" else torch.sigmoid(logits)
        findings = []
        for entry in self.manifest.findings:
            score = float(probs[entry.index])
            if not math.isfinite(score):
                raise RuntimeError(f"model {self.name} returned a score that is not a number")
            findings.append(Finding(entry.name, score, Assessment.of(score >= entry.threshold)))
        return Prediction(labelmap=None, findings=findings,
                          provenance={"runtime": Path(self.manifest.file).suffix.lstrip(".")})

