"""``ainode validate`` qualifies a model on a local cohort: the public chest CT with a
reference SEG made by an independent method (a threshold and connected components)
and a label CSV. Its report (JSON and HTML) must say what the running node's quality
API says about the same study once the same SEG and labels reach the node, and the
validation must leave the node's own database and destinations untouched."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AINODE, REPO, Node, send_study, wait_until
from tests.phantoms import chest_study
from tests.reference_segs import lungs_by_threshold, series_datasets, write_reference_seg

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal, numbers to 1e-9 relative."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, path
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.timeout(500)
def test_validate_on_the_chest_ct_writes_the_figures_the_api_gives(node_factory, tmp_path: Path) -> None:
    study, _volumes = chest_study(tmp_path)
    soft = next(p for p in sorted(study.iterdir()) if p.is_dir() and "soft" in p.name)
    images = series_datasets(soft)
    right, left = lungs_by_threshold(images)
    cohort = tmp_path / "cohort"
    shutil.copytree(study, cohort / "chest")
    seg_path = cohort / "reference-seg.dcm"
    write_reference_seg(images, right, left, seg_path)
    (cohort / "README.txt").write_text("a note beside the images is not an image")
    uid = str(images[0].StudyInstanceUID)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study_instance_uid,finding,value\n{uid},emphysema suspected,absent\n")

    validated = subprocess.run(
        [*AINODE, "validate", "ct-chest", "--cohort", str(cohort), "--reference", str(labels),
         "--report", str(tmp_path / "report"), "--data-dir", str(tmp_path / "unused")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert f"study {uid}: ran" in validated.stdout
    assert "1 reference SEG(s)" in validated.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    html = (tmp_path / "report" / "report.html").read_text()
    [group] = report["groups"]
    segments = {s["name"]: s for s in group["segments"]}
    assert set(segments) == {"Right lung", "Left lung"}
    for s in segments.values():
        assert s["compared"] == 1 and 0.8 < s["dice"]["value"] < 1.0  # two methods, close but not equal
    [finding] = group["findings"]
    assert finding["referenced"] == 1 and finding["sources"] == {"csv": 1}
    assert "<svg" in html and f"{segments['Right lung']['dice']['value']:.3f}" in html
    assert not (tmp_path / "unused").exists() or not any((tmp_path / "unused").rglob("*.dcm"))

    # The same study, SEG and labels through a running node and its API.
    node: Node = node_factory("quiet_period_s = 1\ncompletion_sweep_s = 0.5\n", inference=True).start()
    send_study(node, study)
    wait_until(lambda: json.loads(node.run("predictions", "--json").stdout), 240, "the node's prediction")
    node.run("send", str(seg_path), "--to", node.address)
    imported = node.run("references", "import", str(labels))
    assert "1 label(s) stored" in imported.stdout
    wait_until(lambda: len(json.loads(node.run("results", uid, "--json").stdout)["results"][0]["references"]) == 2,
               120, "the node to compare the reference SEG")
    request = urllib.request.Request(node.api_url + "/api/models/ct-chest/quality", method="POST",
                                     headers={"X-AINode-Request": "1"})
    with urllib.request.urlopen(request, timeout=60) as response:
        api = json.loads(response.read())
    # Computed by a worker process (the API only waited): a quality job, claimed first.
    [made] = json.loads(node.run("jobs", "--kind", "quality", "--json").stdout)
    assert made["state"] == "succeeded" and made["priority"] == 10
    [api_group] = api["groups"]
    _same(group, api_group, "groups[0]")
    assert report["predictions"] == api["predictions"] == 1
    assert report["references"] == api["references"] == {"csv": 1, "seg": 2}
    text = node.run("quality", "ct-chest").stdout
    assert f"Dice mean {segments['Left lung']['dice']['value']:.3f}" in text
