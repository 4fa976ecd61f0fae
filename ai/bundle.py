"""MONAI bundles, as the MONAI Model Zoo publishes them, run with ``monai.bundle``.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` (or
``.yaml``) and ``models/model.pt`` (a state dict) or ``models/model.ts``
(TorchScript). :class:`BundleModel` builds the bundle's own network, preprocessing,
inferer and postprocessing from its inference config and feeds them AINode's volume
in place of the file loader: an image with its patient-space affine, so that the
bundle's orientation and spacing transforms, and the ``Invertd`` that undoes them,
work as on a NIfTI file, without writing one. The bundle's writers (``SaveImaged``)
are left out; the label map comes back on the source grid.

Label names come from the metadata's output ``channel_def``; their codes from
:mod:`ai.label_codes` (standard defaults, an ``ainode-labels.toml`` beside the
configs to change or add them).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.label_codes import LabelCodingError, coding_for, read_label_mapping
from ai.manifest import ML, VOLUME
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

METADATA = Path("configs") / "metadata.json"
INFERENCE_CONFIGS = (Path("configs") / "inference.json", Path("configs") / "inference.yaml")
WEIGHTS = (Path("models") / "model.ts", Path("models") / "model.pt")
#: Transforms that read or write files: AINode supplies the image and takes the result.
_FILE_TRANSFORMS = ("LoadImage", "LoadImaged", "SaveImage", "SaveImaged")
_MODALITIES = {"MRI": "MR", "CT": "CT", "MR": "MR", "PET": "PT", "PT": "PT", "US": "US"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """MONAI warns about its own deprecations in a bundle's config and about optional
    codecs at import: facts about the bundle's MONAI version, not about the study,
    and repeated in the log on every load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        yield


class BundleError(ValueError):
    """The folder is not a bundle AINode can run; the message says what is wrong."""


def is_bundle(folder: Path) -> bool:
    return (folder / METADATA).is_file()


def _inference_config(folder: Path) -> Path:
    for candidate in INFERENCE_CONFIGS:
        if (folder / candidate).is_file():
            return folder / candidate
    raise BundleError(f"bundle {folder} has no configs/inference.json or configs/inference.yaml")


def _weights(folder: Path) -> Path:
    for candidate in WEIGHTS:
        if (folder / candidate).is_file():
            return folder / candidate
    raise BundleError(f"bundle {folder} has no models/model.pt or models/model.ts (weights)")


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a JSON object")
    return data


def bundle_name(folder: Path) -> str:
    """The model's name: the bundle folder's name, as the Model Zoo names them."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.")[:64]
    if not name:
        raise BundleError(f"bundle folder {folder} has no usable name; rename the folder")
    return name


def _format(metadata: dict[str, Any], side: str) -> tuple[str, dict[str, Any]]:
    """The (key, description) of the bundle's first network input or output."""
    entries = (metadata.get("network_data_format") or {}).get(side) or {}
    if not isinstance(entries, dict) or not entries:
        raise BundleError(f"metadata.json: network_data_format.{side} is missing")
    key, description = next(iter(entries.items()))
    return str(key), description if isinstance(description, dict) else {}


class BundleModel:
    """Runs a MONAI bundle's segmentation network (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        metadata = read_metadata(folder)
        self._config = _inference_config(folder)
        self._weights = _weights(folder)
        self.name = bundle_name(folder)
        self.version = str(metadata.get("version") or "0")
        self.input_key, image = _format(metadata, "inputs")
        self.output_key, pred = _format(metadata, "outputs")
        if str(pred.get("format", "segmentation")).lower() != "segmentation":
            raise BundleError(f"{folder}: output format {pred.get('format')!r}: AINode runs segmentation "
                              "bundles (network_data_format.outputs.*.format = \"segmentation\")")
        modality = str(image.get("modality") or "").upper()
        if modality not in _MODALITIES:
            raise BundleError(f"{folder}: metadata names input modality {modality or 'none'!r}; "
                              f"AINode knows {', '.join(sorted(_MODALITIES))}")
        self.accepts = Accepts((_MODALITIES[modality],), 1)
        self.device_needs = DeviceNeeds("optional")
        mapping = read_label_mapping(folder)
        channels = pred.get("channel_def") or {}
        segments = []
        try:
            for value, label in sorted(((int(k), str(v)) for k, v in channels.items()), key=lambda kv: kv[0]):
                if value == 0 or label.lower() in ("background", "other", "everything else"):
                    continue
                coding = coding_for(label, mapping, folder)
                segments.append(SegmentSpec(value, label, coding.category, coding.type, coding.laterality))
        except (ValueError, LabelCodingError) as exc:
            raise BundleError(f"{folder}: {exc}") from None
        if not segments:
            raise BundleError(f"{folder}: metadata.json names no labels (network_data_format.outputs."
                              f"{self.output_key}.channel_def)")
        self.outputs = Outputs(
            segments=tuple(segments),
            measurements=tuple(MeasurementSpec(f"{s.name} volume", VOLUME, ML, s.label) for s in segments))
        self.device = torch.device("cpu")
        self._parts: dict[str, Any] | None = None

    def load(self, device: str) -> None:
        with _quiet_monai():
            self._load(device)

    def _load(self, device: str) -> None:
        from monai.bundle.config_parser import ConfigParser

        self.device = torch.device(device)
        parser = ConfigParser()
        parser.read_config(str(self._config))
        parser.read_meta(str(self.folder / METADATA))
        parser["bundle_root"] = str(self.folder)
        parser["device"] = f"$torch.device({str(self.device)!r})"
        channel_first = False
        for part in ("preprocessing", "postprocessing"):
            transforms = parser.get(f"{part}#transforms")
            if not isinstance(transforms, list):
                raise BundleError(f"bundle {self.folder}: {part} is not a Compose with a transforms list")
            kept = []
            for transform in transforms:
                target = str(transform.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(transform, dict) else ""
                if target in _FILE_TRANSFORMS:
                    channel_first |= bool(transform.get("ensure_channel_first", False))
                else:
                    kept.append(transform)
            # Invertd refers to "@preprocessing": it inverts what is left.
            parser[f"{part}#transforms"] = kept
        try:
            if self._weights.suffix == ".ts":
                network = torch.jit.load(str(self._weights), map_location=self.device)  # type: ignore[no-untyped-call]
            else:
                network = parser.get_parsed_content("network_def").to(self.device)
                state = torch.load(self._weights, map_location=self.device, weights_only=True)
                if isinstance(state, dict) and isinstance(state.get("model"), dict):
                    state = state["model"]  # a CheckpointSaver file: {"model": state dict, ...}
                network.load_state_dict(state)
            parts = {name: parser.get_parsed_content(name)
                     for name in ("preprocessing", "inferer", "postprocessing")}
        except Exception as exc:  # the bundle's own code: any error is the bundle's
            raise BundleError(f"bundle {self.folder}: {type(exc).__name__}: {exc}") from None
        network.eval()
        self._parts = {"network": network, "channel_first": channel_first, **parts}

    def _image(self, volume: Volume) -> Any:
        from monai.data.meta_tensor import MetaTensor
        from monai.transforms.utility.array import EnsureChannelFirst

        assert self._parts is not None
        ras = LPS_TO_RAS @ volume.affine_lps()
        array = np.ascontiguousarray(volume.array.transpose(2, 1, 0))  # (column, row, slice)
        image = MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(ras), meta={
            "original_affine": ras, "spatial_shape": np.array(array.shape), "original_channel_dim": "no_channel",
            "space": "RAS", "filename_or_obj": volume.series_instance_uid})
        return EnsureChannelFirst()(image) if self._parts["channel_first"] else image

    def predict(self, volume: Volume) -> Prediction:
        if self._parts is None:
            raise RuntimeError(f"model {self.name} was not loaded")
        parts = self._parts
        with _quiet_monai():
            data = parts["preprocessing"]({self.input_key: self._image(volume)})
            batch = data[self.input_key].unsqueeze(0).to(self.device)
            data[self.output_key] = parts["inferer"](batch, parts["network"])[0]
            data = parts["postprocessing"](data)
        pred = torch.as_tensor(data[self.output_key]).detach().cpu()
        if pred.ndim == 4 and pred.shape[0] > 1:
            pred = pred.argmax(dim=0)
        elif pred.ndim == 4:
            pred = pred[0]
        labels = np.rint(pred.numpy()).astype(np.int64).transpose(2, 1, 0)  # back to (slice, row, column)
        if labels.shape != volume.shape:
            raise ModelCannotRun(f"bundle output has shape {labels.shape}, the series {volume.shape}: its "
                                 "postprocessing must invert its preprocessing (Invertd)")
        labelmap = np.zeros(volume.shape, dtype=np.uint8)
        measurements = []
        for segment in self.outputs.segments:
            mask = labels == segment.label
            labelmap[mask] = segment.label
            measurements.append(Measurement(f"{segment.name} volume", float(mask.sum()) * volume.voxel_volume_ml))
        return Prediction(labelmap=labelmap, measurements=measurements,
                          provenance={"runtime": "monai-bundle", "weights": self._weights.name})
