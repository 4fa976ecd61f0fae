"""An inference worker's warm models: within a memory budget, loaded on first use and
the least recently used unloaded first; a model that cannot load is unavailable with
the reason while the others work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ai.manifest import ManifestModel, read_manifest
from node.pipeline.warm_models import ModelUnavailable, WarmModel, WarmModels
from tests.model_files import onnx_segmenter


def _models(tmp_path: Path, declared: dict[str, int]) -> dict[str, WarmModel]:
    folders = {name: onnx_segmenter(tmp_path / name) for name in declared}
    return {name: WarmModel(name, lambda f=folders[name]: ManifestModel(read_manifest(f), f), torch.device("cpu"),
                            declared_mb=mb) for name, mb in declared.items()}


def test_within_the_budget_the_least_recently_used_model_is_unloaded(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    warm = WarmModels(_models(tmp_path, {"a": 400, "b": 400, "c": 400}), budget_mb=1000)
    assert warm.loaded() == []  # nothing before it is used
    warm.get("a")
    warm.get("b")
    assert warm.loaded() == ["a", "b"]
    warm.get("a")  # a is now the most recently used
    with caplog.at_level(logging.INFO, logger="node.pipeline.warm_models"):
        third = warm.get("c")  # 1200 MiB would not fit: b goes
    assert third.model is not None and warm.loaded() == ["a", "c"]
    assert "model b unloaded (least recently used, to keep within inference_memory_budget_mb (1200 of 1000 MiB))" \
        in caplog.text
    again = warm.get("b")  # loaded again when needed; a (least recently used now) goes
    assert again.model is not None and warm.loaded() == ["b", "c"]


def test_without_a_budget_every_model_is_loaded_at_start_and_kept(tmp_path: Path) -> None:
    warm = WarmModels(_models(tmp_path, {"a": 400, "b": 400, "c": 400}), budget_mb=0)
    warm.load_all()
    assert warm.loaded() == ["a", "b", "c"]
    warm.get("a")
    assert warm.loaded() == ["a", "b", "c"]


def test_a_model_too_big_for_the_budget_still_runs_alone(tmp_path: Path) -> None:
    warm = WarmModels(_models(tmp_path, {"small": 100, "big": 5000}), budget_mb=1000)
    warm.get("small")
    assert warm.get("big").model is not None and warm.loaded() == ["big"]


def test_a_model_that_cannot_load_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    models = _models(tmp_path, {"good": 10, "broken": 10})
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not onnx")
    warm = WarmModels(models, budget_mb=100)
    with pytest.raises(ModelUnavailable, match="InvalidProtobuf|INVALID_PROTOBUF|Fail"):
        warm.get("broken")
    assert "broken" in warm.unavailable
    with pytest.raises(ModelUnavailable):
        warm.get("broken")  # not tried again on every job
    assert warm.get("good").model is not None
