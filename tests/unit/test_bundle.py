"""MONAI bundles run by AINode: the bundle's own transforms and network, fed the
node's volume, with the label map back on the source grid in patient space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ai.bundle import BundleError, BundleModel
from ai.label_codes import LEFT, default_coding
from ai.model_check import check_model_folder
from ai.registry import installed_models
from ai.volume import Volume
from tests.model_files import monai_bundle, monai_classifier_bundle


def _off_centre_phantom(direction: np.ndarray) -> tuple[Volume, np.ndarray]:
    """Dense tissue (500 HU) in air: a 9 mm sphere near one corner and a 4-voxel
    cube in the opposite one, so a flipped or transposed result cannot match."""
    shape, spacing = (20, 36, 44), (2.5, 0.8, 0.9)
    k, j, i = np.indices(shape)
    z, y, x = k * spacing[0], j * spacing[1], i * spacing[2]
    dense = (z - 18) ** 2 + (y - 10) ** 2 + (x - 12) ** 2 <= 9 ** 2
    dense |= (k >= 14) & (k < 18) & (j >= 28) & (j < 32) & (i >= 36) & (i < 40)
    volume = Volume(
        array=np.where(dense, 500.0, -1000.0).astype(np.float32), spacing=spacing,
        origin=(-120.0, 35.0, 410.0), direction=direction, modality="CT",
        series_instance_uid="2.25.11", frame_of_reference_uid="2.25.12",
        sop_instance_uids=tuple(f"2.25.{n + 100}" for n in range(shape[0])), frame_numbers=(1,) * shape[0])
    return volume, dense


def _predict(folder: Path, volume: Volume):  # noqa: ANN202
    model = BundleModel(folder)
    model.load("cpu")
    with torch.inference_mode():
        return model, model.predict(volume)


# Axial (rows along +x, columns along +y), and one whose rows run along +y and columns
# along +x, slices towards the feet: both need the bundle's reorientation to RAS.
AXIAL = np.eye(3)
SWAPPED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@pytest.mark.parametrize(("direction", "pixdim"), [(AXIAL, (0.9, 0.8, 2.5)), (SWAPPED, (0.8, 0.9, 2.5))],
                         ids=["axial", "swapped"])
def test_on_its_own_grid_the_bundle_marks_exactly_the_dense_voxels(
        direction: np.ndarray, pixdim: tuple[float, float, float], tmp_path: Path) -> None:
    volume, dense = _off_centre_phantom(direction)
    # pixdim (x, y, z in RAS) = the series' own spacing along those axes: Orientationd
    # and Spacingd reorient and Invertd undoes it, so every voxel must come back in place.
    model, prediction = _predict(monai_bundle(tmp_path / "spleen_ct", pixdim=pixdim), volume)
    assert prediction.labelmap is not None and prediction.labelmap.shape == volume.shape
    assert np.array_equal(prediction.labelmap == 1, dense)
    [measurement] = prediction.measurements
    assert measurement.name == "spleen volume"
    assert measurement.value == pytest.approx(dense.sum() * volume.voxel_volume_ml)
    assert model.name == "spleen_ct" and model.version == "0.3.1"
    [segment] = model.outputs.segments
    assert (segment.label, segment.type.value, segment.category.meaning) == (1, "78961009", "Anatomical Structure")


def test_resampled_by_the_bundle_the_result_stays_in_place(tmp_path: Path) -> None:
    volume, dense = _off_centre_phantom(AXIAL)
    _, prediction = _predict(monai_bundle(tmp_path / "coarse", pixdim=(2.0, 2.0, 2.0)), volume)
    assert prediction.labelmap is not None
    found = prediction.labelmap == 1
    # Resampled to 2 mm and back: only edge voxels of this small object (measured: 16 %)
    # may differ, the centre of mass stays within a millimetre in patient space.
    assert (found != dense).sum() < 0.25 * dense.sum()
    affine = volume.affine_lps()

    def centre(mask: np.ndarray) -> np.ndarray:
        k, j, i = np.nonzero(mask)
        return (affine @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]

    assert np.linalg.norm(centre(found) - centre(dense)) < 1.0


def test_labels_get_standard_codes_and_the_operator_can_map_others(tmp_path: Path) -> None:
    coding = default_coding("left_kidney")
    assert coding is not None and coding.type.meaning == "Kidney" and coding.laterality == LEFT
    tumour = default_coding("liver tumour")
    assert tumour is not None and tumour.type.meaning == "Tumor"
    assert tumour.category.meaning == "Morphologically Abnormal Structure"

    folder = monai_bundle(tmp_path / "odd", labels={"0": "background", "1": "hepatic vessel"})
    with pytest.raises(BundleError, match=r"label 'hepatic vessel' has no standard code.*ainode-labels.toml"):
        BundleModel(folder)
    (folder / "ainode-labels.toml").write_text(
        '[labels."hepatic vessel"]\n'
        'category = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }\n'
        'type = { value = "59820001", scheme = "SCT", meaning = "Blood vessel" }\n')
    [segment] = BundleModel(folder).outputs.segments
    assert (segment.name, segment.type.meaning) == ("hepatic vessel", "Blood vessel")


def test_broken_bundles_are_refused_with_the_reason(tmp_path: Path) -> None:
    folder = monai_bundle(tmp_path / "b")
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="no models/model.pt or models/model.ts"):
        BundleModel(folder)
    folder = monai_bundle(tmp_path / "c")
    torch.save(torch.nn.Conv3d(1, 3, 1).state_dict(), folder / "models" / "model.pt")
    with pytest.raises(BundleError, match="size mismatch"):
        BundleModel(folder).load("cpu")
    folder = monai_bundle(tmp_path / "d")
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["format"] = "regression"
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="runs segmentation and classification bundles"):
        BundleModel(folder)


def test_the_registry_finds_bundles_among_model_folders(tmp_path: Path) -> None:
    monai_bundle(tmp_path / "models" / "spleen_ct_segmentation")
    found = installed_models([tmp_path / "models"])
    assert found["spleen_ct_segmentation"].source == f"MONAI bundle {tmp_path / 'models' / 'spleen_ct_segmentation'}"
    assert isinstance(found["spleen_ct_segmentation"].create(), BundleModel)


def test_a_check_names_what_keeps_a_folder_from_running(tmp_path: Path) -> None:
    broken = monai_bundle(tmp_path / "broken")
    torch.save(torch.nn.Conv3d(1, 3, 1).state_dict(), broken / "models" / "model.pt")
    [problem] = check_model_folder(broken).problems
    assert problem.startswith("does not load: BundleError") and "size mismatch" in problem
    assert check_model_folder(broken, run=False).ok  # read only: the folder itself is complete

    # A bundle that resamples but does not invert: its label map is not on the series' grid.
    uninverted = monai_bundle(tmp_path / "uninverted")
    config = json.loads((uninverted / "configs" / "inference.json").read_text())
    config["postprocessing"]["transforms"] = [t for t in config["postprocessing"]["transforms"]
                                              if t["_target_"] != "Invertd"]
    (uninverted / "configs" / "inference.json").write_text(json.dumps(config))
    [problem] = check_model_folder(uninverted).problems
    assert "must invert its preprocessing (Invertd)" in problem

    [problem] = check_model_folder(tmp_path).problems
    assert problem.endswith("it holds model folders (broken, uninverted): check each")


def test_a_bundle_with_a_yaml_config_runs_the_same(tmp_path: Path) -> None:
    import yaml

    volume, dense = _off_centre_phantom(AXIAL)
    folder = monai_bundle(tmp_path / "yaml_bundle", pixdim=(0.9, 0.8, 2.5))
    config = folder / "configs" / "inference.json"
    (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(json.loads(config.read_text())))
    config.unlink()
    _, prediction = _predict(folder, volume)
    assert prediction.labelmap is not None and np.array_equal(prediction.labelmap == 1, dense)


def test_a_segmentation_bundle_gives_its_probabilities_on_the_source_grid(tmp_path: Path) -> None:
    volume, dense = _off_centre_phantom(SWAPPED)
    folder = monai_bundle(tmp_path / "spleen_ct", pixdim=(0.8, 0.9, 2.5))
    model = BundleModel(folder, probabilities=True)
    [spec] = model.outputs.maps
    assert (spec.name, spec.kind, spec.of) == ("spleen probability", "probability", "spleen")
    model.load("cpu")
    with torch.inference_mode():
        prediction = model.predict(volume)
    [probability] = prediction.maps
    # softmax(0, x - 0.5) with x the intensity scaled to 0..1: sigmoid(0.25) in the
    # 500 HU tissue, sigmoid(-0.5) in air, voxel for voxel on the series' grid.
    inside, outside = 1 / (1 + np.exp(-0.25)), 1 / (1 + np.exp(0.5))
    assert np.allclose(probability.values[dense], inside, atol=1e-4)
    assert np.allclose(probability.values[~dense], outside, atol=1e-4)
    assert np.array_equal(prediction.labelmap == 1, dense)


@pytest.mark.parametrize("direction", [AXIAL, SWAPPED], ids=["axial", "swapped"])
def test_a_classification_bundle_scores_and_explains_where_it_looked(direction: np.ndarray, tmp_path: Path) -> None:
    volume, dense = _off_centre_phantom(direction)
    model, prediction = _predict(monai_classifier_bundle(tmp_path / "nodule_ct"), volume)
    [spec] = model.outputs.findings
    assert (spec.name, spec.concept.value, spec.concept.meaning) == ("nodule", "27925004", "Nodule")
    [finding] = prediction.findings
    assert finding.present and finding.score == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-3)
    assert prediction.labelmap is None
    [explanation] = prediction.maps
    assert explanation.name == "nodule explanation" and explanation.values.shape == volume.shape
    assert model.outputs.maps[0].method == "Grad-CAM (MONAI) on the last convolution"
    assert prediction.provenance["explanation_layer"] == "0"
    # Grad-CAM on the convolution marks the dense tissue, resized by the bundle to
    # 24 x 20 x 12 and back: high inside it, nothing more than 4 mm away from it.
    from scipy import ndimage
    far = ndimage.distance_transform_edt(~dense, sampling=volume.spacing) > 4.0
    assert np.median(explanation.values[dense]) > 0.5
    assert explanation.values[far].max() < 0.05
    k, j, i = np.unravel_index(int(explanation.values.argmax()), volume.shape)
    assert dense[k, j, i] or ndimage.distance_transform_edt(~dense, sampling=volume.spacing)[k, j, i] < 3.0

    # Nothing dense: the finding is absent and the map holds nothing to point at.
    empty = Volume(np.full(volume.shape, -1000.0, dtype=np.float32), volume.spacing, volume.origin,
                   volume.direction, "CT", volume.series_instance_uid, volume.frame_of_reference_uid,
                   volume.sop_instance_uids, volume.frame_numbers)
    with torch.inference_mode():
        nothing = model.predict(empty)
    assert not nothing.findings[0].present and nothing.findings[0].score < 0.01
    assert nothing.maps[0].values.max() < 0.05


def test_explanations_need_the_network_modules_and_a_layer_that_exists(tmp_path: Path) -> None:
    scripted = BundleModel(monai_classifier_bundle(tmp_path / "scripted", ts=True))
    assert scripted.outputs.maps == ()  # TorchScript hides the layers: scores only
    assert BundleModel(monai_classifier_bundle(tmp_path / "off"), explanations=False).outputs.maps == ()
    wrong = BundleModel(monai_classifier_bundle(tmp_path / "wrong"), explanation_layer="features.9")
    with pytest.raises(BundleError, match="explanation_layer 'features.9' is not a layer of its network"):
        wrong.load("cpu")
    found = installed_models([tmp_path / "off"])["off"].create({"explanations": False})
    assert isinstance(found, BundleModel) and found.outputs.maps == ()
