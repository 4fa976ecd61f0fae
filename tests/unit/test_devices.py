"""Which devices inference workers use, and how a bad device setting is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings
from node.runner import devices
from node.runner.serve import worker_roles


def test_configured_devices_are_used_as_given() -> None:
    settings = load_settings(inference_devices=["cuda:0", "cuda:1"], inference_workers_per_device=2)
    assert devices.inference_devices(settings) == [("cuda:0", True), ("cuda:1", True)]
    names = [r.name for r in worker_roles(settings)]
    assert names == ["worker-1", "inference-cuda0-1", "inference-cuda0-2", "inference-cuda1-1",
                     "inference-cuda1-2"]


def test_detected_gpus_or_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = tmp_path / "gpus"
    monkeypatch.setattr(devices, "Path", lambda _p: gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.inference_devices(load_settings()) == [("cpu", False)]  # no driver
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (gpus / bus).mkdir(parents=True)
    assert [d for d, _ in devices.inference_devices(load_settings())] == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert devices.cuda_device_count_hint() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.inference_devices(load_settings()) == [("cpu", False)]
    assert worker_roles(load_settings(inference_workers_per_device=0, workers=0)) == []


@pytest.mark.parametrize("value, message", [
    (["gpu0"], "'gpu0' is not a device"),
    (["cuda:0", "cuda:0"], "listed twice"),
])
def test_bad_devices_name_the_setting(value: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="inference_devices") as info:
        load_settings(inference_devices=value)
    assert message in str(info.value)
