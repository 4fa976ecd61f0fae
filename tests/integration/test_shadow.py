"""Shadow mode end to end, with a real Orthanc as the clinical archive and a real
webhook receiver: a shadow route's results are computed, recorded and shown marked,
but reach no clinical archive, raise no study and notify no one; promoted by a
configuration change (recorded), the same model's results reach the archive, raise
the study and notify."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Node, send_study, wait_until
from tests.integration.test_map_conformance import _sphere_series
from tests.listeners import WebhookServer
from tests.model_files import monai_classifier_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(tmp_path: Path, orthanc, hook: WebhookServer, shadow: bool) -> str:  # noqa: ANN001
    return f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{tmp_path / 'models'}"]

[[destinations]]
name = "pacs"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[[triage]]
finding = "nodule"
min_score = 0.5
level = "urgent"

[[notifications]]
name = "chat"
type = "webhook"
url = "{hook.url}"
min_level = "urgent"

[[routes]]
name = "nodules"
model = "nodule_ct"
shadow = {"true" if shadow else "false"}
destinations = [{'' if shadow else '"pacs"'}]
[routes.match]
modality = ["CT"]
min_instances = 5
"""


def _studies(node: Node) -> list[dict]:
    with urllib.request.urlopen(node.api_url + "/api/studies", timeout=10) as response:
        return json.loads(response.read())


def _settled(node: Node) -> bool:
    jobs = json.loads(node.run("jobs", "--json").stdout)
    return bool(jobs) and all(j["state"] in ("succeeded", "dead") for j in jobs)


@pytest.mark.timeout(400)
def test_shadow_results_stay_off_the_clinical_archive_until_the_route_is_promoted(
        node_factory, orthanc, tmp_path: Path) -> None:
    monai_classifier_bundle(tmp_path / "models" / "nodule_ct")
    hook = WebhookServer()
    node: Node = node_factory(_config(tmp_path, orthanc, hook, shadow=True), inference=True).start()
    paths, _ = _sphere_series(tmp_path / "study" / "s01")
    send_study(node, tmp_path / "study")
    [prediction] = wait_until(lambda: json.loads(node.run("predictions", "--json").stdout), 90,
                              "the shadow prediction")
    assert [(f["name"], f["assessment"]) for f in prediction["findings"]] == [("nodule", "present")]
    wait_until(lambda: _settled(node), 60, "the shadow study's jobs")
    time.sleep(2)  # anything that was going to be sent or notified has had its chance
    assert orthanc.instances() == []  # nothing reached the clinical archive
    assert hook.posts == []  # no one was notified
    [study] = _studies(node)
    assert study["priority"] == "routine" and study["findings"] == [] and study["shadow_results"] == 1
    results = node.run("results", study["study_instance_uid"]).stdout
    assert "[SHADOW: not for clinical reading]" in results and "nodule: present" in results
    history = node.run("route", "history").stdout
    assert "route nodules (nodule_ct) starts in shadow mode" in history

    # Promotion is a configuration change; the next start records it.
    node.stop()
    assert node.config is not None
    node.config.write_text(_config(tmp_path, orthanc, hook, shadow=False))
    node.start(timeout=60)
    history = node.run("route", "history").stdout
    assert "route nodules (nodule_ct) promoted from shadow mode to clinical use" in history
    send_study(node, tmp_path / "study")  # sent again: a new results version, now clinical
    wait_until(lambda: any(s["results_version"] == 2 and s["priority"] == "urgent" for s in _studies(node)), 90,
               "the promoted route to raise the study")
    archived = wait_until(lambda: orthanc.instances(), 90, "the clinical results in the archive")
    assert {i["Tags"]["Modality"] for i in archived} == {"SR"}
    wait_until(lambda: hook.posts, 30, "the notification")
    assert hook.posts[0]["level"] == "urgent"
    [study] = _studies(node)
    assert study["shadow_results"] == 0 and [f["name"] for f in study["findings"]] == ["nodule"]
