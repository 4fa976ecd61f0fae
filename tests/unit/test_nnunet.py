"""nnU-Net v2 result folders run with nnunetv2's own predictor (a folder planned by
nnunetv2 on a synthetic data set, its network's weights set by hand): the label map
comes back on the series' grid, voxel for voxel on the plans' own spacing, in place
in patient space when nnU-Net resamples, and through the reorientation TotalSegmentator's
reader asks for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ai.model_check import check_model_folder
from ai.nnunet import NnUNetError, NnUNetModel
from ai.registry import installed_models
from ai.volume import Volume

AXIAL = np.eye(3)
SWAPPED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _phantom(direction: np.ndarray, spacing: tuple[float, float, float]) -> tuple[Volume, np.ndarray]:
    """Air with a 7 mm sphere of dense tissue off centre."""
    shape = (20, 36, 44)
    k, j, i = np.indices(shape)
    z, y, x = k * spacing[0], j * spacing[1], i * spacing[2]
    dense = (z - 15) ** 2 + (y - 12) ** 2 + (x - 14) ** 2 <= 7 ** 2
    volume = Volume(np.where(dense, 500.0, -1000.0).astype(np.float32), spacing, (-120.0, 35.0, 410.0),
                    direction, "CT", "2.25.1", "2.25.2", tuple(f"2.25.{n + 10}" for n in range(shape[0])),
                    (1,) * shape[0])
    return volume, dense


def _predict(model: NnUNetModel, volume: Volume) -> np.ndarray:
    model.load("cpu")
    with torch.inference_mode():
        prediction = model.predict(volume)
    assert prediction.labelmap is not None
    return prediction.labelmap


@pytest.mark.parametrize("direction", [AXIAL, SWAPPED], ids=["axial", "swapped"])
def test_on_the_plans_spacing_the_label_map_is_exact(nnunet_model_folder: Path, direction: np.ndarray) -> None:
    volume, dense = _phantom(direction, (1.5, 0.8, 0.8))  # the plans' 3d_fullres spacing
    model = NnUNetModel(nnunet_model_folder)
    assert model.name == "Dataset990_DenseTissue-3d_fullres" and model.folds == (0,)
    [segment] = model.outputs.segments
    assert (segment.label, segment.name, segment.type.meaning) == (1, "spleen", "Spleen")
    assert np.array_equal(_predict(model, volume) == 1, dense)


def test_resampled_by_nnunet_the_result_stays_in_place(nnunet_model_folder: Path) -> None:
    volume, dense = _phantom(AXIAL, (2.5, 0.9, 0.7))
    found = _predict(NnUNetModel(nnunet_model_folder), volume) == 1
    # Resampled to 1.5 x 0.8 x 0.8 mm and back: edge voxels of this small sphere may differ
    # (measured: 18 %), its centre stays within a millimetre in patient space.
    assert (found != dense).sum() < 0.25 * dense.sum()
    affine = volume.affine_lps()

    def centre(mask: np.ndarray) -> np.ndarray:
        k, j, i = np.nonzero(mask)
        return (affine @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]
    assert np.linalg.norm(centre(found) - centre(dense)) < 1.0


def test_a_reorienting_reader_is_honoured(nnunet_model_folder: Path, tmp_path: Path) -> None:
    """TotalSegmentator's datasets name NibabelIOWithReorient: the series goes in as RAS
    (axes and spacing in nibabel's order, transposed as nnU-Net does) and comes back."""
    folder = shutil.copytree(nnunet_model_folder, tmp_path / "Dataset991_Reoriented" / nnunet_model_folder.name)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["overwrite_image_reader_writer"] = "NibabelIOWithReorient"
    (folder / "dataset.json").write_text(json.dumps(dataset))
    volume, dense = _phantom(SWAPPED, (1.5, 0.8, 0.8))
    model = NnUNetModel(folder)
    assert model.reorient
    assert np.array_equal(_predict(model, volume) == 1, dense)


def test_folders_are_found_checked_and_refused_with_the_reason(nnunet_model_folder: Path, tmp_path: Path) -> None:
    found = installed_models([nnunet_model_folder.parent])
    assert found["Dataset990_DenseTissue-3d_fullres"].kind == "nnunet"
    report = check_model_folder(nnunet_model_folder)
    assert report.ok and report.kind == "nnU-Net folder", report.problems
    assert report.trial and report.trial.startswith("label map with labels")  # nnunetv2 ran
    with pytest.raises(NnUNetError, match=r"fold\(s\) 3 have no checkpoint_final.pth \(present: 0\)"):
        NnUNetModel(nnunet_model_folder, folds=[3])
    broken = shutil.copytree(nnunet_model_folder, tmp_path / "broken")
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(NnUNetError, match="broken"):
        NnUNetModel(broken).load("cpu")
    unlabelled = shutil.copytree(nnunet_model_folder, tmp_path / "odd")
    dataset = json.loads((unlabelled / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "hepatic vessel": 1}
    (unlabelled / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(NnUNetError, match=r"label 'hepatic vessel' has no standard code.*ainode-labels.toml"):
        NnUNetModel(unlabelled)


def test_a_cascade_stage_is_refused_with_the_reason(nnunet_model_folder: Path, tmp_path: Path) -> None:
    cascade = shutil.copytree(nnunet_model_folder, tmp_path / "Dataset990_DenseTissue"
                              / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres")
    plans = json.loads((cascade / "plans.json").read_text())
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (cascade / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NnUNetError, match="is a cascade stage .* '3d_lowres'"):
        NnUNetModel(cascade)
