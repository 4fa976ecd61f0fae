"""Bring-your-own models: manifests, and TorchScript and ONNX files run by the adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai.manifest import ManifestError, ManifestModel, read_manifest
from ai.registry import RegistryError, installed_models
from tests.model_files import onnx_classifier, onnx_segmenter, sphere_volume, torchscript_segmenter


def _run(folder: Path, volume):  # noqa: ANN001, ANN202
    model = ManifestModel(read_manifest(folder), folder)
    model.load("cpu")
    import torch

    with torch.inference_mode():
        return model, model.predict(volume)


@pytest.mark.parametrize("make", [torchscript_segmenter, onnx_segmenter], ids=["torchscript", "onnx"])
def test_segmenter_through_resampling_and_sliding_window(make, tmp_path: Path) -> None:  # noqa: ANN001
    volume, truth_ml = sphere_volume()
    model, prediction = _run(make(tmp_path / "m"), volume)
    assert prediction.labelmap is not None and prediction.labelmap.shape == volume.shape
    assert set(np.unique(prediction.labelmap)) == {0, 1}
    [measurement] = prediction.measurements
    assert measurement.name == "Dense volume"
    # Resampled to 2 mm, run in 16x32x32 windows, scores back to 1.5x1x1 mm: within 5 %.
    assert measurement.value == pytest.approx(truth_ml, rel=0.05)
    centre = tuple(n // 2 for n in volume.shape)
    assert prediction.labelmap[centre] == 1 and prediction.labelmap[0, 0, 0] == 0
    assert [s.name for s in model.outputs.segments] == ["Dense"]


def test_onnx_and_torchscript_agree(tmp_path: Path) -> None:
    volume, _ = sphere_volume(radius_mm=14.0, shape=(30, 48, 56))
    _, a = _run(torchscript_segmenter(tmp_path / "ts"), volume)
    _, b = _run(onnx_segmenter(tmp_path / "onnx"), volume)
    assert np.array_equal(a.labelmap, b.labelmap)


def test_classifier_scores_findings(tmp_path: Path) -> None:
    folder = onnx_classifier(tmp_path / "c")
    small, _ = sphere_volume(radius_mm=8.0)
    large, _ = sphere_volume(radius_mm=40.0)
    _, low = _run(folder, small)
    _, high = _run(folder, large)
    assert low.labelmap is None and high.labelmap is None
    assert [f.name for f in low.findings] == ["mostly dense"]
    assert low.findings[0].score < 0.5 and not low.findings[0].present
    assert high.findings[0].score > 0.5 and high.findings[0].present


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('task = "segmentation"', 'task = "detection"'), "task"),
    (lambda t: t.replace('file = "model.pt"', 'file = "model.bin"'), "must end in .onnx"),
    (lambda t: t.replace('file = "model.pt"', 'file = "other.pt"'), "'other.pt' is not in the folder"),
    (lambda t: t.replace("window = [-1000.0, 1000.0]", "window = [1000.0, -1000.0]"), "low < high"),
    (lambda t: t.split("[[segments]]")[0], "at least one [[segments]]"),
    (lambda t: t.replace("overlap = 0.25", "overlap = 1.5"), "preprocess.overlap"),
    (lambda t: t + "\nsurprise = 1\n", "surprise"),
    (lambda t: t.replace("[accepts]", "[accepts"), "not valid TOML"),
])
def test_bad_manifests_are_refused_with_the_reason(change, message: str, tmp_path: Path) -> None:  # noqa: ANN001
    folder = torchscript_segmenter(tmp_path / "m")
    manifest = folder / "ainode-model.toml"
    manifest.write_text(change(manifest.read_text()))
    with pytest.raises(ManifestError, match="ainode-model.toml") as info:
        read_manifest(folder)
    assert message in str(info.value)


def test_registry_finds_folders_and_refuses_conflicts(tmp_path: Path) -> None:
    onnx_segmenter(tmp_path / "models" / "a")
    onnx_classifier(tmp_path / "models" / "b")
    single = torchscript_segmenter(tmp_path / "single")
    models = installed_models([tmp_path / "models", single])
    assert {"ct-chest", "dense-onnx", "dense-classifier", "dense-ts"} <= set(models)
    assert models["dense-onnx"].source == f"folder {tmp_path / 'models' / 'a'}"
    assert models["dense-ts"].create().version == "0.1.0"
    with pytest.raises(TypeError, match="takes no options"):
        models["dense-ts"].create({"threshold": 1})
    with pytest.raises(TypeError, match="models.ct-chest.options do not fit"):
        models["ct-chest"].create({"no_such_option": 1})
    assert models["ct-chest"].create({"emphysema_threshold_pct": 9}).emphysema_threshold_pct == 9

    with pytest.raises(RegistryError, match="does not exist; fix model_folders"):
        installed_models([tmp_path / "absent"])
    torchscript_segmenter(tmp_path / "clash", name="ct-chest")
    with pytest.raises(RegistryError, match="has the name of entry point"):
        installed_models([tmp_path / "clash"])
