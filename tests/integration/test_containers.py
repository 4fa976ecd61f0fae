"""Container models in a real node with a real podman and an image built here (no
registry): one that segments and detects, and ones that fail in each way a container
can (exit status, timeout, nothing written, a label map off the series' grid). The
good one's results are exact; each failure ends its job dead with the reason; the
node serves on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Node, send_study, wait_until
from tests.containers import PODMAN_ARGS, cache_folder, container_model_folder, model_image
from tests.integration.scu import associate
from tests.integration.test_map_conformance import _sphere_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODES = {"dense-container": "normal", "failing-container": "fail", "hanging-container": "hang",
         "silent-container": "nothing", "shifted-container": "shifted"}


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest) -> str:
    return model_image(cache_folder(request.config))


def _config(tmp_path: Path, image: str) -> str:
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{tmp_path / 'models'}"]
"""
    for name, mode in MODES.items():
        container_model_folder(tmp_path / "models" / name, image, name, mode,
                               timeout_s=5 if mode == "hang" else 120)
        config += f'\n[models.{name}.options]\nruntime_args = {json.dumps(PODMAN_ARGS)}\n'
    for name in MODES:
        config += (f'\n[[routes]]\nname = "{name}"\nmodel = "{name}"\n'
                   '[routes.match]\nmodality = ["CT"]\nmin_instances = 5\n')
    return config


@pytest.mark.timeout(600)
def test_container_models_give_exact_results_or_a_dead_job_with_the_reason(
        node_factory, image: str, tmp_path: Path) -> None:
    node: Node = node_factory(_config(tmp_path, image), inference=True).start()
    listed = {m["name"]: m for m in json.loads(node.run("models", "--json").stdout)}
    assert listed["dense-container"]["source"].startswith(f"container {image}")
    paths, dense = _sphere_series(tmp_path / "study" / "s01")
    send_study(node, tmp_path / "study")

    def settled() -> list[dict] | None:
        jobs = json.loads(node.run("jobs", "--json", "--kind", "infer").stdout)
        return jobs if len(jobs) == len(MODES) and all(j["state"] in ("succeeded", "dead") for j in jobs) else None
    jobs = {j["payload"]["model"]: j for j in wait_until(settled, 300, "every container's job settled")}

    assert jobs["dense-container"]["state"] == "succeeded"
    [prediction] = json.loads(node.run("predictions", "--json").stdout)
    volume = {m["name"]: m["value"] for m in prediction["measurements"]}["dense tissue volume"]
    assert volume == pytest.approx(dense.sum() * 0.7 * 0.7 * 1.0 / 1000)  # mL, voxel for voxel
    assert [(f["name"], f["assessment"]) for f in prediction["findings"]] == [
        ("dense tissue", "present"), ("dense lesion", "present")]
    [lesion] = prediction["detections"]
    assert np.allclose(lesion["centre"], (80 * 0.7, 60 * 0.7, 8.0), atol=0.01)  # the sphere's centre, LPS mm
    provenance = prediction["provenance"]
    assert provenance["image"] == image and provenance["runtime"] == "podman"
    assert "test model: done" in Path(provenance["log"]).read_text()  # the log is kept
    assert Path(provenance["log"]).parent == node.data_dir / "containers"

    reasons = {name: jobs[name]["last_error"] or "" for name in MODES if name != "dense-container"}
    assert all(jobs[name]["state"] == "dead" for name in reasons), reasons
    assert "exited with status 3" in reasons["failing-container"]
    assert "simulated failure" in reasons["failing-container"]  # the end of its log
    assert "ran longer than its timeout_s (5 s) and was stopped" in reasons["hanging-container"]
    assert "wrote nothing to its output folder (/output)" in reasons["silent-container"]
    assert "covers another region than the series" in reasons["shifted-container"]
    # Each failed on its first attempt: retrying a broken container helps no one.
    assert all(jobs[name]["attempts"] == 1 for name in reasons), {n: jobs[n]["attempts"] for n in reasons}
    # The stopped container is gone, and the node serves on.
    left = subprocess.run(["podman", "ps", "-a", "--filter", "name=ainode-hanging-container", "--format",
                           "{{.Names}}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    assoc = associate(node.port)
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
