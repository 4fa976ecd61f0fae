"""Drift end to end: a running node holds months of one model's predictions whose
inputs shift in the last week (the kernel mix turns from mostly smooth to mostly sharp,
and the images' mean density rises), and another model's that do not. The node's own
schedule recomputes both reports; the shifted model raises its signals, /metrics shows
them, and the drift webhook gets exactly one message naming them, however often the
schedule runs after; the steady model raises nothing and tells no one."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from storage.db import open_database
from tests.conftest import Node, wait_until
from tests.listeners import WebhookServer
from tests.quality_rows import PlannedCase, profile, record_cases

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = 86400.0


def _cases(shifted: bool, seed: int) -> list[PlannedCase]:
    rng = np.random.default_rng(seed)
    now = time.time()
    cases = []
    for window, count, start, end in (("reference", 240, now - 34 * DAY, now - 8 * DAY),
                                      ("current", 120, now - 6 * DAY, now - 0.1 * DAY)):
        moved = shifted and window == "current"
        for when in np.sort(rng.uniform(start, end, count)):
            sharp = rng.random() < (0.8 if moved else 0.2)
            mean_hu = float(rng.normal(-550.0 if moved else -700.0, 25.0))
            score = float(rng.random())
            cases.append(PlannedCase(float(when), profile(kernel="B70f" if sharp else "B30f", mean_hu=mean_hu),
                                     score >= 0.5, score))
    return cases


def _quality_jobs(node: Node) -> int:
    jobs = json.loads(node.run("jobs", "--kind", "quality", "--json").stdout)
    return sum(1 for j in jobs if j["state"] == "succeeded")


@pytest.mark.timeout(300)
def test_a_shift_in_kernels_and_density_raises_one_notification_and_no_shift_none(
        node_factory, tmp_path: Path) -> None:
    hook = WebhookServer()
    node: Node = node_factory(f"""\
[quality]
interval_s = 2
drift_min_cases = 30

[[notifications]]
name = "quality-team"
type = "webhook"
url = "{hook.url}"
drift_alerts = true
""").start()
    engine = open_database(f"sqlite:///{node.data_dir / 'ainode.db'}")
    record_cases(engine, "drifting", _cases(shifted=True, seed=1))
    record_cases(engine, "steady", _cases(shifted=False, seed=2))
    engine.dispose()

    [post] = wait_until(lambda: list(hook.posts), 60, "the drift notification")
    assert post["event"] == "model.drift" and post["model"] == "drifting"
    named = {s["signal"] for s in post["signals"]}
    assert {"input.kernel", "input.intensity_mean"} <= named
    assert not any(name.startswith("output.") for name in named)  # what the model says did not move
    assert all(s["population_stability_index"] >= s["threshold"] for s in post["signals"])

    # More scheduled recomputations: the alert stays open, nobody is told again.
    seen = _quality_jobs(node)
    wait_until(lambda: _quality_jobs(node) >= seen + 4, 60, "two more rounds of quality reports")
    assert len(hook.posts) == 1
    with urllib.request.urlopen(node.api_url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'ainode_model_drift_shifted{model="drifting",signal="input.kernel"} 1.0' in metrics
    assert 'ainode_model_drift_shifted{model="steady",signal="input.kernel"} 0.0' in metrics
    steady = json.loads(node.run("quality", "steady", "--json").stdout)
    assert {s["signal"]: s["status"] for s in steady["drift"]}["input.kernel"] == "stable"
    assert all(s["status"] != "shifted" for s in steady["drift"])
    text = node.run("quality", "drifting").stdout
    assert "input.kernel: shifted" in text and "input.intensity_mean: shifted" in text
