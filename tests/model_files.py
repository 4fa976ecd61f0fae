"""Tiny bring-your-own models made by the tests: TorchScript and ONNX files with their
ainode-model.toml. Their behaviour is simple enough to know the right answer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ai.volume import Volume

STRUCTURE = '{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }'
TISSUE = '{ value = "85756007", scheme = "SCT", meaning = "Tissue" }'

SEGMENTER_MANIFEST = """\
name = "{name}"
version = "0.1.0"
file = "{file}"
task = "segmentation"

[accepts]
modalities = ["CT"]
min_slices = 3

[preprocess]
window = [-1000.0, 1000.0]
target_spacing = [2.0, 2.0, 2.0]
patch_size = [16, 32, 32]
overlap = 0.25

[[segments]]
channel = 1
label = 1
name = "Dense"
category = {structure}
type = {tissue}
"""

CLASSIFIER_MANIFEST = """\
name = "{name}"
version = "0.1.0"
file = "{file}"
task = "classification"

[accepts]
modalities = ["CT"]

[preprocess]
window = [-1000.0, 1000.0]
patch_size = [16, 32, 32]

[[findings]]
index = 0
name = "mostly dense"
concept = {tissue}
threshold = 0.5
"""


def _manifest(folder: Path, template: str, name: str, file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ainode-model.toml").write_text(
        template.format(name=name, file=file, structure=STRUCTURE, tissue=TISSUE))
    return folder


def torchscript_segmenter(folder: Path, name: str = "dense-ts") -> Path:
    """Channel 1 wins where the windowed image is above 0.5 (above 0 HU)."""
    import torch

    class Threshold(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            foreground = x - 0.5
            return torch.cat([-foreground, foreground], dim=1)

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Threshold()).save(str(folder / "model.pt"))
    return _manifest(folder, SEGMENTER_MANIFEST, name, "model.pt")


def _save_onnx(graph: object, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_segmenter(folder: Path, name: str = "dense-onnx") -> Path:
    """The same threshold as :func:`torchscript_segmenter`, as an ONNX graph."""
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, "d", "h", "w"])
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    graph = helper.make_graph(
        [helper.make_node("Sub", ["image", "half"], ["foreground"]),
         helper.make_node("Neg", ["foreground"], ["background"]),
         helper.make_node("Concat", ["background", "foreground"], ["scores"], axis=1)],
        "threshold", [image], [scores], [half])
    folder.mkdir(parents=True, exist_ok=True)
    _save_onnx(graph, folder / "model.onnx")
    return _manifest(folder, SEGMENTER_MANIFEST, name, "model.onnx")


def onnx_classifier(folder: Path, name: str = "dense-classifier") -> Path:
    """Score = sigmoid(20 * (mean windowed intensity - 0.25)): more than about a
    quarter of the field dense gives a score above 0.5."""
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1])
    constants = [numpy_helper.from_array(np.array(v, dtype=np.float32), n)
                 for n, v in (("offset", 0.25), ("gain", 20.0))]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3, 4], keepdims=0),
         helper.make_node("Sub", ["mean", "offset"], ["centred"]),
         helper.make_node("Mul", ["centred", "gain"], ["logits"])],
        "mean-density", [image], [logits], constants)
    folder.mkdir(parents=True, exist_ok=True)
    _save_onnx(graph, folder / "model.onnx")
    return _manifest(folder, CLASSIFIER_MANIFEST, name, "model.onnx")


def sphere_volume(radius_mm: float = 20.0, shape: tuple[int, int, int] = (40, 64, 64),
                  spacing: tuple[float, float, float] = (1.5, 1.0, 1.0)) -> tuple[Volume, float]:
    """A sphere of bone (1000 HU) in air, and its true volume in mL: with the models'
    window its edge is at the middle of their 0..1 range."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij")
    centre = [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius_mm ** 2
    array = np.where(inside, 1000.0, -1000.0).astype(np.float32)
    volume = Volume(
        array=array, spacing=spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3), modality="CT",
        series_instance_uid="2.25.1", frame_of_reference_uid="2.25.2",
        sop_instance_uids=tuple(f"2.25.{i + 10}" for i in range(shape[0])),
        frame_numbers=(1,) * shape[0],
    )
    return volume, 4 / 3 * np.pi * radius_mm ** 3 / 1000


def monai_bundle(folder: Path, pixdim: tuple[float, float, float] = (2.0, 2.0, 2.0),
                 labels: dict[str, str] | None = None) -> Path:
    """A MONAI bundle in the Model Zoo's layout whose network is a 1x1x1 convolution
    with weights set by hand: channel 1 wins where the intensity, scaled from
    -1000..1000 HU to 0..1, is above 0.5 (above 0 HU). Its preprocessing reorients to
    RAS and resamples to ``pixdim`` (x, y, z mm); its postprocessing inverts that."""
    import json

    import torch

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    metadata = {
        "version": "0.3.1", "task": "Dense tissue segmentation (test)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "channel_def": labels or {"0": "background", "1": "spleen"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    inference = {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob('/nonexistent/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
             "b_min": 0, "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 2,
                    "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"}]},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    network = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        network.weight.zero_()
        network.bias.zero_()
        network.weight[1] = 1.0
        network.bias[1] = -0.5
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def monai_classifier_bundle(folder: Path, spatial_size: tuple[int, int, int] = (24, 20, 12),
                            ts: bool = False) -> Path:
    """A MONAI classification bundle whose network (built from its config) is a 1x1x1
    convolution, a ReLU, a global max pool and a linear layer, with weights set by
    hand: "nodule" scores 0.99 when any voxel, scaled from -1000..1000 HU to 0..1, is
    above 0.5 (above 0 HU), and 0.01 otherwise. Grad-CAM on the convolution then
    marks the dense voxels. Its preprocessing reorients to RAS and resizes to
    ``spatial_size`` (x, y, z); ``ts``: the network as TorchScript instead."""
    import json

    import torch

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    metadata = {
        "version": "0.1.0", "task": "Dense nodule classification (test)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 2,
                                 "spatial_shape": [1, 2], "channel_def": {"0": "no nodule", "1": "nodule"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.ReLU(), "
                       "torch.nn.AdaptiveMaxPool3d(1), torch.nn.Flatten(), torch.nn.Linear(2, 2))",
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Resized", "keys": "image", "spatial_size": list(spatial_size), "mode": "trilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
             "b_min": 0, "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SimpleInferer"},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool3d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network[0].weight[1] = 1.0
        network[0].bias[1] = -0.5
        network[4].weight[1, 1] = 40.0
        network[4].bias[1] = -5.0
    if ts:
        torch.jit.script(network).save(str(folder / "models" / "model.ts"))
    else:
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder
