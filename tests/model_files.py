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


#: Planning an nnU-Net dataset with nnunetv2's own code, in a process of its own (nnunetv2
#: reads its folders from the environment when it is imported).
_NNUNET_PLAN = r"""
import json, sys
from pathlib import Path
import numpy as np, nibabel as nib
raw = Path(sys.argv[1]) / "Dataset990_DenseTissue"
(raw / "imagesTr").mkdir(parents=True, exist_ok=True)
(raw / "labelsTr").mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for case in range(4):
    shape = (40, 40, 24)  # x, y, z
    i, j, k = np.indices(shape)
    centre = rng.uniform((12, 12, 8), (28, 28, 16))
    dense = ((i - centre[0]) * 0.8) ** 2 + ((j - centre[1]) * 0.8) ** 2 + ((k - centre[2]) * 1.5) ** 2 <= 36
    affine = np.diag([-0.8, -0.8, 1.5, 1.0])
    # Dense tissue of varied density, so that nnU-Net's CT normalisation (clipped to the
    # foreground's 0.5-99.5 percentiles) keeps air and tissue apart.
    image = np.where(dense, rng.uniform(100.0, 900.0, shape), -1000.0).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(raw / "imagesTr" / f"dense_{case:03d}_0000.nii.gz"))
    nib.save(nib.Nifti1Image(dense.astype(np.uint8), affine), str(raw / "labelsTr" / f"dense_{case:03d}.nii.gz"))
(raw / "dataset.json").write_text(json.dumps({
    "channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1},
    "numTraining": 4, "file_ending": ".nii.gz"}))
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
extract_fingerprints([990], num_processes=1, check_dataset_integrity=True, verbose=False)
plan_experiments([990])
"""


def nnunet_folder(folder: Path, work: Path, mirroring: bool = True) -> Path:
    """An nnU-Net v2 result folder (``dataset.json``, ``plans.json``,
    ``fold_0/checkpoint_final.pth``) for a small synthetic CT data set, planned by
    nnunetv2's own fingerprint extraction and experiment planner; its 3d_fullres U-Net
    (built from the plans by nnunetv2) gets weights set by hand instead of training:
    every convolution passes channel 0 of the full-resolution path straight through
    (the upsampling path is cut), so that after nnU-Net's normalisations a voxel is
    "spleen" exactly where it is denser than the rest of its patch: the dense voxels
    of a two-valued phantom."""
    import json
    import os
    import subprocess
    import sys

    import torch

    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"))
    subprocess.run([sys.executable, "-c", _NNUNET_PLAN, str(work / "raw")], env=env, check=True,
                   capture_output=True, timeout=600)
    planned = work / "preprocessed" / "Dataset990_DenseTissue"
    folder.mkdir(parents=True, exist_ok=True)
    plans = json.loads((planned / "nnUNetPlans.json").read_text())
    dataset = json.loads((planned / "dataset.json").read_text())
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (folder / "dataset_fingerprint.json").write_text((planned / "dataset_fingerprint.json").read_text())

    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(plans).get_configuration("3d_fullres")
    network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, 1, 2, allow_init=True,
                                     deep_supervision=False)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        centre = lambda conv: tuple(k // 2 for k in conv.kernel_size)  # noqa: E731
        for stage in network.encoder.stages:
            for conv in (m for m in stage.modules() if isinstance(m, torch.nn.Conv3d)):
                conv.weight[(0, 0, *centre(conv))] = 1.0
        decoder = network.decoder
        for s, stage in enumerate(decoder.stages):
            convs = [m for m in stage.modules() if isinstance(m, torch.nn.Conv3d)]
            # The first takes (upsampled, skip): channel 0 of the skip only.
            convs[0].weight[(0, decoder.transpconvs[s].out_channels, *centre(convs[0]))] = 1.0
            for conv in convs[1:]:
                conv.weight[(0, 0, *centre(conv))] = 1.0
        decoder.seg_layers[-1].weight[1, 0] = 10.0
    fold = folder / "fold_0"
    fold.mkdir(exist_ok=True)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
                "inference_allowed_mirroring_axes": (0, 1, 2) if mirroring else None},
               fold / "checkpoint_final.pth")
    return folder
