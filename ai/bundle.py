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

Classification bundles (output format ``classes`` or ``classification``) give a
finding per class that is not a negative one ("normal", "no ...", "background"),
scored by its probability. For a network built from its config (``model.pt``) each
finding comes with an explanation map, MONAI's Grad-CAM on the network's last
convolution (or the layer ``explanation_layer`` names), brought back to the source
grid through the inverse of the bundle's preprocessing. A segmentation bundle can
give its segments' probabilities (``probabilities = true``), inverted the same way.
Options go in ``[models.<bundle>.options]``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ai.label_codes import LabelCodingError, coding_for, read_label_mapping
from ai.manifest import ML, VOLUME, folder_model_name, read_json_object
from ai.protocol import (
    Accepts,
    Assessment,
    DeviceNeeds,
    Finding,
    FindingSpec,
    MapKind,
    MapSpec,
    Measurement,
    MeasurementSpec,
    ModelCannotRun,
    Outputs,
    Prediction,
    SegmentSpec,
    ValueMap,
)
from ai.volume import Volume

METADATA = Path("configs") / "metadata.json"
INFERENCE_CONFIGS = (Path("configs") / "inference.json", Path("configs") / "inference.yaml")
WEIGHTS = (Path("models") / "model.ts", Path("models") / "model.pt")
#: Transforms that read or write files: AINode supplies the image and takes the result.
_FILE_TRANSFORMS = ("LoadImage", "LoadImaged", "SaveImage", "SaveImaged")
_MODALITIES = {"MRI": "MR", "CT": "CT", "MR": "MR", "PET": "PT", "PT": "PT", "US": "US"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Output formats of classification bundles (metadata network_data_format.outputs).
_CLASS_FORMATS = ("classes", "classification", "class")
#: Class names that say "nothing found": no finding is made of them.
_NEGATIVE = re.compile(r"^(background|normal|negative|other|none|no\b.*|not\b.*|non[- ].*)$", re.IGNORECASE)


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
    return read_json_object(folder / METADATA, BundleError)


def bundle_name(folder: Path) -> str:
    """The model's name: the bundle folder's name, as the Model Zoo names them."""
    return folder_model_name(folder.resolve().name, folder, BundleError)


def _format(metadata: dict[str, Any], side: str) -> tuple[str, dict[str, Any]]:
    """The (key, description) of the bundle's first network input or output."""
    entries = (metadata.get("network_data_format") or {}).get(side) or {}
    if not isinstance(entries, dict) or not entries:
        raise BundleError(f"metadata.json: network_data_format.{side} is missing")
    key, description = next(iter(entries.items()))
    return str(key), description if isinstance(description, dict) else {}


class BundleModel:
    """Runs a MONAI bundle's segmentation or classification network (see the
    module's docstring)."""

    def __init__(self, folder: Path, probabilities: bool = False, explanations: bool = True,
                 explanation_layer: str | None = None,
                 activation: Literal["auto", "softmax", "sigmoid", "none"] = "auto") -> None:
        self.folder = folder
        metadata = read_metadata(folder)
        self._config = _inference_config(folder)
        self._weights = _weights(folder)
        self.name = bundle_name(folder)
        self.version = str(metadata.get("version") or "0")
        self.input_key, image = _format(metadata, "inputs")
        self.output_key, pred = _format(metadata, "outputs")
        output_format = str(pred.get("format", "segmentation")).lower()
        if output_format not in ("segmentation", *_CLASS_FORMATS):
            raise BundleError(f"{folder}: output format {pred.get('format')!r}: AINode runs segmentation and "
                              "classification bundles (network_data_format.outputs.*.format = "
                              "\"segmentation\" or \"classes\")")
        self.task = "segmentation" if output_format == "segmentation" else "classification"
        if activation not in ("auto", "softmax", "sigmoid", "none"):
            raise BundleError(f"activation {activation!r}: use auto, softmax, sigmoid or none")
        self._activation = activation
        modality = str(image.get("modality") or "").upper()
        if modality not in _MODALITIES:
            raise BundleError(f"{folder}: metadata names input modality {modality or 'none'!r}; "
                              f"AINode knows {', '.join(sorted(_MODALITIES))}")
        self.accepts = Accepts((_MODALITIES[modality],), 1)
        self.device_needs = DeviceNeeds("optional")
        mapping = read_label_mapping(folder)
        channels = pred.get("channel_def") or {}
        named = []
        try:
            for value, label in sorted(((int(k), str(v)) for k, v in channels.items()), key=lambda kv: kv[0]):
                negative = label.lower() in ("background", "other", "everything else") or (
                    value == 0 if self.task == "segmentation" else bool(_NEGATIVE.match(label.strip())))
                if not negative:
                    named.append((value, label, coding_for(label, mapping, folder)))
        except (ValueError, LabelCodingError) as exc:
            raise BundleError(f"{folder}: {exc}") from None
        if not named:
            raise BundleError(f"{folder}: metadata.json names no labels (network_data_format.outputs."
                              f"{self.output_key}.channel_def)")
        self._channels = {label: value for value, label, _ in named}
        self.explanation_layer = explanation_layer
        if self.task == "segmentation":
            segments = tuple(SegmentSpec(value, label, c.category, c.type, c.laterality) for value, label, c in named)
            maps = tuple(MapSpec(f"{s.name} probability", MapKind.PROBABILITY, s.name,
                                 "the network's probabilities on the source grid")
                         for s in segments) if probabilities else ()
            self.outputs = Outputs(
                segments=segments,
                measurements=tuple(MeasurementSpec(f"{s.name} volume", VOLUME, ML, s.label) for s in segments),
                maps=maps)
        else:
            findings = tuple(FindingSpec(label, c.type) for _, label, c in named)
            # Grad-CAM needs the network's modules: a TorchScript file hides them.
            explain = explanations and self._weights.suffix != ".ts"
            method = f"Grad-CAM (MONAI) on layer {explanation_layer}" if explanation_layer else \
                "Grad-CAM (MONAI) on the last convolution"
            self.outputs = Outputs(findings=findings, maps=tuple(
                MapSpec(f"{f.name} explanation", MapKind.EXPLANATION, f.name, method) for f in findings)
                if explain else ())
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
        parts_needed = ["preprocessing"] + (["postprocessing"] if self.task == "segmentation" else [])
        for part in parts_needed:
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
            parts = {name: parser.get_parsed_content(name) for name in (*parts_needed, "inferer")
                     if name != "inferer" or "inferer" in parser}
        except Exception as exc:  # the bundle's own code: any error is the bundle's
            raise BundleError(f"bundle {self.folder}: {type(exc).__name__}: {exc}") from None
        network.eval()
        layer = None
        if any(m.kind is MapKind.EXPLANATION for m in self.outputs.maps):
            layer = self._explanation_layer(network)
        self._parts = {"network": network, "channel_first": channel_first, "layer": layer, **parts}

    def _explanation_layer(self, network: torch.nn.Module) -> str:
        """The layer Grad-CAM looks at: the one named, else the last convolution."""
        names = dict(network.named_modules())
        if self.explanation_layer is not None:
            if self.explanation_layer not in names:
                raise BundleError(f"bundle {self.folder}: explanation_layer {self.explanation_layer!r} is not a "
                                  f"layer of its network (e.g. {', '.join(list(names)[1:6])})")
            return self.explanation_layer
        convolutions = [n for n, m in names.items() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        if not convolutions:
            raise BundleError(f"bundle {self.folder}: its network has no convolution for Grad-CAM; name a "
                              "layer in explanation_layer, or set explanations = false")
        return str(convolutions[-1])

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

    def _on_source_grid(self, values: torch.Tensor, preprocessed: Any, volume: Volume) -> np.ndarray:
        """``values`` (channels, *preprocessed spatial shape), brought back to the
        series' grid through the inverse of the bundle's preprocessing, as
        (channels, slices, rows, columns)."""
        from monai.data.meta_tensor import MetaTensor

        assert self._parts is not None
        tensor = MetaTensor(values.detach().float().cpu(), meta=dict(preprocessed.meta),
                            applied_operations=list(preprocessed.applied_operations))
        inverted = self._parts["preprocessing"].inverse({self.input_key: tensor})[self.input_key]
        array = torch.as_tensor(inverted).detach().cpu().numpy()
        if array.shape[1:] != tuple(reversed(volume.shape)):
            raise ModelCannotRun(f"bundle preprocessing could not be inverted (shape {array.shape[1:]} "
                                 f"for a series of {tuple(reversed(volume.shape))})")
        return np.ascontiguousarray(array.transpose(0, 3, 2, 1))

    def _probabilities(self, scores: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Scores as probabilities: as given where they already are (auto), else a
        softmax over several channels or a sigmoid of one."""
        activation = self._activation
        if activation == "auto":
            looks = bool(scores.min() >= 0 and scores.max() <= 1)
            sums = scores.sum(dim=channel_dim)
            activation = "none" if looks and (scores.shape[channel_dim] == 1 or bool(
                torch.allclose(sums, torch.ones_like(sums), atol=1e-3))) else \
                "softmax" if scores.shape[channel_dim] > 1 else "sigmoid"
        if activation == "softmax":
            return torch.softmax(scores, dim=channel_dim)
        return torch.sigmoid(scores) if activation == "sigmoid" else scores

    def predict(self, volume: Volume) -> Prediction:
        if self._parts is None:
            raise RuntimeError(f"model {self.name} was not loaded")
        with _quiet_monai():
            if self.task == "classification":
                return self._classify(volume)
            return self._segment(volume)

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        assert self._parts is not None
        inferer = self._parts.get("inferer")
        network = self._parts["network"]
        out = inferer(batch, network) if inferer is not None else network(batch)
        result: torch.Tensor = out[0] if isinstance(out, (tuple, list)) else out
        return result

    def _segment(self, volume: Volume) -> Prediction:
        parts = self._parts
        assert parts is not None
        data = parts["preprocessing"]({self.input_key: self._image(volume)})
        preprocessed = data[self.input_key]
        batch = preprocessed.unsqueeze(0).to(self.device)
        scores = self._infer(batch)[0]
        data[self.output_key] = scores
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
        maps = []
        if self.outputs.maps:
            probabilities = self._on_source_grid(self._probabilities(scores, 0), preprocessed, volume)
            for spec in self.outputs.maps:
                channel = self._channels[spec.of]
                maps.append(ValueMap(spec.name, np.clip(probabilities[channel], 0.0, 1.0)))
        return Prediction(labelmap=labelmap, measurements=measurements, maps=maps,
                          provenance={"runtime": "monai-bundle", "weights": self._weights.name})

    def _classify(self, volume: Volume) -> Prediction:
        parts = self._parts
        assert parts is not None
        data = parts["preprocessing"]({self.input_key: self._image(volume)})
        preprocessed = data[self.input_key]
        batch = preprocessed.unsqueeze(0).to(self.device)
        scores = self._infer(batch).reshape(batch.shape[0], -1)
        needed = max(self._channels.values()) + 1
        if scores.shape[1] < needed:
            raise ModelCannotRun(f"bundle returned {scores.shape[1]} class scores, its metadata names {needed}")
        probabilities = self._probabilities(scores.float(), 1)[0]
        findings = []
        for spec in self.outputs.findings:
            score = float(probabilities[self._channels[spec.name]])
            if not np.isfinite(score):
                raise ModelCannotRun("bundle returned a class score that is not a number")
            findings.append(Finding(spec.name, min(max(score, 0.0), 1.0), Assessment.of(score >= 0.5)))
        maps = [ValueMap(spec.name, self._explain(batch, preprocessed, volume, self._channels[spec.of]))
                for spec in self.outputs.maps]
        return Prediction(labelmap=None, findings=findings, maps=maps,
                          provenance={"runtime": "monai-bundle", "weights": self._weights.name,
                                      **({"explanation_layer": parts["layer"]} if maps else {})})

    def _explain(self, batch: torch.Tensor, preprocessed: Any, volume: Volume, channel: int) -> np.ndarray:
        """MONAI's Grad-CAM for class ``channel`` (0..1), on the series' grid. Gradients
        are needed, so it runs outside the worker's inference mode, on a copy of the input."""
        from monai.visualize.class_activation_maps import GradCAM

        assert self._parts is not None
        with torch.inference_mode(False), torch.enable_grad():
            image = batch.as_tensor().clone() if hasattr(batch, "as_tensor") else batch.clone()
            # MONAI's default normaliser maps the largest value to 0 (for display): the
            # raw map (ReLU'd, upsampled to the input) is scaled here, strongest point = 1.
            cam = GradCAM(nn_module=self._parts["network"], target_layers=self._parts["layer"],
                          postprocessing=lambda raw: raw)
            with warnings.catch_warnings():  # the input needs no gradient: only the layer's
                warnings.filterwarnings("ignore", message=".*backward hook.*")
                values = cam(image, class_idx=channel)[0].detach().float()  # (1, *spatial)
            peak = float(values.max())
            values = values / peak if peak > 0 else torch.zeros_like(values)
        explained: np.ndarray = np.clip(self._on_source_grid(values, preprocessed, volume)[0], 0.0, 1.0)
        return explained
