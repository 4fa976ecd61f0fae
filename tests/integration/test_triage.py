"""Triage end to end: a suspicious study sent after a normal one, while no inference
worker is free, is inferred first, tops the worklist, and is the only one the RIS
(a real MLLP listener) and the webhook (a real HTTP server) hear about."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, Node, send_study, wait_until
from tests.listeners import MllpListener, WebhookServer
from tests.phantoms import chest_phantom, write_phantom_series

pytestmark = pytest.mark.integration


def _get(node: Node, path: str) -> object:
    with urllib.request.urlopen(node.api_url + path, timeout=10) as response:
        body = response.read()
    return json.loads(body) if path != "/metrics" else body.decode()


def _jobs(node: Node, kind: str) -> list[dict]:
    return json.loads(node.run("jobs", "--json", "--kind", kind).stdout)


def test_the_suspicious_study_is_inferred_first_listed_first_and_alone_notified(
    node_factory, tmp_path: Path
) -> None:
    ris, hook = MllpListener(), WebhookServer()
    config = f"""\
quiet_period_s = 2
completion_sweep_s = 0.5

[[triage]]
finding = "emphysema suspected"
min_score = 0.5
level = "critical"

[[notifications]]
name = "ris"
type = "hl7"
host = "127.0.0.1"
port = {ris.port}
min_level = "critical"

[[notifications]]
name = "chat"
type = "webhook"
url = "{hook.url}"
min_level = "critical"
"""
    # 2.5 mm slices: ct-chest's %LAA-950 is reliable, so the emphysema finding counts.
    shape = dict(slices=64, size=256, slice_mm=2.5, pixel_mm=1.3)
    normal = tmp_path / "normal"
    write_phantom_series(chest_phantom(**shape, seed=1), normal, attributes={"AccessionNumber": "NORMAL1"})
    suspicious = tmp_path / "suspicious"
    write_phantom_series(chest_phantom(**shape, emphysema_fraction=0.25, seed=2), suspicious,
                         attributes={"AccessionNumber": "SUSP1", "RequestedProcedurePriority": "STAT"})

    node: Node = node_factory(config).start()  # receives and queues; no inference worker yet
    send_study(node, normal)
    send_study(node, suspicious)
    queued = wait_until(lambda: len(j := _jobs(node, "infer")) == 2 and j, 60, "two infer jobs")
    # The STAT request makes the later study urgent: its job is claimed first.
    assert sorted(j["priority"] for j in queued) == [0, 12]

    worker = subprocess.Popen(
        node.command("worker"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "AINODE_WORKERS": "0", "AINODE_INFERENCE_WORKERS_PER_DEVICE": "1"})
    try:
        predictions = wait_until(lambda: len(p := json.loads(node.run("predictions", "--json").stdout)) == 2 and p,
                                 120, "both studies inferred")
    finally:
        worker.terminate()
        worker.wait(60)
    studies = {s["accession_number"]: s for s in _get(node, "/api/studies")}  # type: ignore[union-attr]
    susp_uid, normal_uid = studies["SUSP1"]["study_instance_uid"], studies["NORMAL1"]["study_instance_uid"]
    first = min(predictions, key=lambda p: p["created_at"])
    assert first["study_instance_uid"] == susp_uid

    # One ORU and one webhook, both for the suspicious study, none for the normal one.
    wait_until(lambda: len(ris.messages) >= 1 and len(hook.posts) >= 1, 60, "the notifications")
    wait_until(lambda: all(j["state"] == "succeeded" for j in _jobs(node, "encode"))
               and len(_jobs(node, "encode")) == 2, 60, "both studies encoded")
    [oru] = ris.messages
    assert "ORU^R01" in oru and susp_uid in oru and "|CRITICAL|" in oru and normal_uid not in oru
    assert "PID|1||PHANTOM-1||Phantom^Chest" in oru  # the RIS matches the order by patient
    [post] = hook.posts
    assert post["study_instance_uid"] == susp_uid and post["level"] == "critical"
    assert post["accession_number"] == "SUSP1" and "Phantom" not in json.dumps(post)  # no patient data

    # The worklist: suspicious first (critical, for its finding), then the normal one.
    worklist = _get(node, "/api/studies")
    assert [s["accession_number"] for s in worklist] == ["SUSP1", "NORMAL1"]  # type: ignore[index]
    assert [s["priority"] for s in worklist] == ["critical", "routine"]  # type: ignore[index]
    assert worklist[0]["findings"][0]["present"] and not worklist[1]["findings"][0]["present"]  # type: ignore[index]
    detail = _get(node, f"/api/studies/{susp_uid}")
    steps = [s["step"] for s in detail["timeline"]]  # type: ignore[index]
    for step in ("first_image", "last_image", "completed", "prioritized", "inferred", "encoded", "notified"):
        assert step in steps, steps
    assert [s["detail"] for s in detail["timeline"] if s["step"] == "prioritized"][0].startswith(  # type: ignore[index]
        "urgent: request priority STAT")
    times = [s["at"] for s in detail["timeline"]]  # type: ignore[index]
    assert times == sorted(times)

    metrics = str(_get(node, "/metrics"))
    assert 'ainode_studies_by_level{level="critical"} 1.0' in metrics
    assert "ainode_notifications_sent_total 2.0" in metrics
    assert "ainode_inference_seconds_count 2.0" in metrics
    assert "ainode_images_received_total 128.0" in metrics
    ris.shutdown()
    hook.shutdown()
