"""The REST API of a running node: a valid OpenAPI schema, the token beyond loopback,
dead letters retried, destinations checked live (C-ECHO to dcmtk's storescp)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest
from openapi_spec_validator import validate

from tests.conftest import Node, free_port, missing_peer, peer_env, send_study, wait_until
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"


def _call(url: str, method: str = "GET", token: str | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A request as the worklist page makes it (with its same-origin header), unless
    ``headers`` says otherwise."""
    sent = {"X-AINode-Request": "1"} if headers is None else headers
    if token:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read()
    except HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def test_schema_jobs_dead_letters_and_destinations(node_factory, tmp_path: Path) -> None:
    storescp = shutil.which("storescp", path="/usr/bin")
    if storescp is None:
        missing_peer("dcmtk's storescp is not installed")
    scp_port = free_port()
    scp = subprocess.Popen([storescp, "-aet", "ARCHIVE", "-od", str(tmp_path), str(scp_port)],
                           env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = f"""\
job_max_attempts = 1
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {scp_port}
[[destinations]]
name = "nowhere"
ae_title = "NOBODY"
host = "127.0.0.1"
port = {free_port()}
"""
    node: Node = node_factory(config).start()
    try:
        status, schema = _call(node.api_url + "/openapi.json")
        assert status == 200
        validate(schema)  # raises unless it is a valid OpenAPI document
        assert {"/api/studies", "/api/studies/{study_instance_uid}", "/api/jobs", "/api/dead-letters",
                "/api/jobs/{job_id}/retry", "/api/models", "/api/destinations",
                "/api/destinations/{name}/echo", "/api/health", "/metrics"} <= set(schema["paths"])

        status, health = _call(node.api_url + "/api/health")
        assert status == 200 and health["status"] == "ok" and health["database"] == "ok"

        # A job that fails for good is a dead letter until someone retries it.
        node.run("selftest", "queue", "--jobs", "1", "--fail")
        [dead] = wait_until(lambda: _call(node.api_url + "/api/dead-letters")[1], 30, "a dead letter")
        assert dead["kind"] == "noop" and "told to fail" in dead["last_error"]
        # Without api_token and users, loopback callers are the local operator.
        assert _call(node.api_url + f"/api/jobs/{dead['id']}/retry", "POST") == (200, {"requeued": 1, "by": "local"})
        wait_until(lambda: _call(node.api_url + "/api/jobs?kind=noop")[1][0]["attempts"] == 1
                   and _call(node.api_url + "/api/dead-letters")[1], 30, "the retried job to fail again")
        assert _call(node.api_url + "/api/jobs/999999/retry", "POST")[0] == 404

        status, destinations = _call(node.api_url + "/api/destinations")
        assert [d["address"] for d in destinations][0] == f"ARCHIVE@127.0.0.1:{scp_port}"
        status, echo = _call(node.api_url + "/api/destinations/archive/echo", "POST")
        assert status == 200 and echo["ok"] is True
        status, echo = _call(node.api_url + "/api/destinations/nowhere/echo", "POST")
        assert status == 200 and echo["ok"] is False
        assert _call(node.api_url + "/api/destinations/missing/echo", "POST")[0] == 404

        status, models = _call(node.api_url + "/api/models")
        assert status == 200 and models[0]["name"] == "ct-chest" and models[0]["routes"] == ["ct-chest"]
        status, metrics = _call(node.api_url + "/metrics")
        assert status == 200 and 'ainode_jobs{kind="noop",state="dead"} 1.0' in metrics
    finally:
        scp.terminate()
        scp.wait(10)


def test_beyond_loopback_the_api_asks_for_its_token(node_factory) -> None:
    refused = node_factory('api_host = "0.0.0.0"\n')
    started = subprocess.run(refused.command("serve", "--port", str(refused.port)), capture_output=True,
                             text=True, timeout=60)
    assert started.returncode != 0 and "api_token" in started.stderr

    node: Node = node_factory(f'api_host = "0.0.0.0"\napi_token = "{TOKEN}"\n').start()
    for path in ("/api/studies", "/api/jobs", "/api/dead-letters", "/metrics", "/openapi.json"):
        assert _call(node.api_url + path)[0] == 401
        assert _call(node.api_url + path, token="wrong-token-0123456789")[0] == 401
        assert _call(node.api_url + path, token=TOKEN)[0] == 200
    assert _call(node.api_url + "/api/jobs/1/retry", "POST")[0] == 401
    assert _call(node.api_url + "/api/health")[0] == 200  # for load balancers; says nothing private
    assert _call(node.api_url + "/docs", token=TOKEN)[0] == 404  # no page that loads a CDN's scripts


def test_named_users_have_roles_and_their_retries_are_recorded_by_name(node_factory, tmp_path: Path) -> None:
    """Users added with `ainode users add`: once one exists every caller needs a token,
    on loopback too; a viewer reads but cannot retry, an operator's retry is recorded
    with their name; a revoked token is refused; no token is in the database."""
    config = ('quiet_period_s = 1\ncompletion_sweep_s = 0.5\n[[routes]]\nname = "ct"\nmodel = "ct-chest"\n'
              '[routes.match]\nmodality = ["CT"]\n')
    node: Node = node_factory(config).start()
    alice = node.run("users", "add", "alice", "--role", "viewer").stdout.strip()
    bob = node.run("users", "add", "bob", "--role", "operator").stdout.strip()
    assert len(alice) >= 40 and alice != bob
    assert "exists" in node.run("users", "add", "alice", check=False).stderr
    write_ct_study(tmp_path / "study", series=1, slices=6)
    send_study(node, tmp_path / "study")
    # No inference worker runs here: the infer job waits, queued, and can be retried.
    [job] = wait_until(lambda: _call(node.api_url + "/api/jobs?kind=infer", token=alice)[1], 60, "the infer job")

    assert _call(node.api_url + "/api/studies")[0] == 401  # users exist: a token is needed
    assert _call(node.api_url + "/api/studies", token=alice)[0] == 200
    status, body = _call(node.api_url + f"/api/jobs/{job['id']}/retry", "POST", token=alice)
    assert status == 403 and "alice is a viewer" in body["detail"]
    retried = _call(node.api_url + f"/api/jobs/{job['id']}/retry", "POST", token=bob)
    assert retried == (200, {"requeued": 1, "by": "bob"})
    [study] = _call(node.api_url + "/api/studies", token=bob)[1]
    steps = _call(node.api_url + f"/api/studies/{study['study_instance_uid']}", token=bob)[1]["timeline"]
    assert any(s["step"] == "retried" and s["detail"] == f"infer job {job['id']} retried by bob (operator)"
               for s in steps), steps

    node.run("users", "revoke", "bob")
    assert _call(node.api_url + "/api/studies", token=bob)[0] == 401
    listed = json.loads(node.run("users", "list", "--json").stdout)
    assert [(u["name"], u["role"], u["revoked_at"] is not None) for u in listed] == [
        ("alice", "viewer", False), ("bob", "operator", True)]
    stored = b"".join(p.read_bytes() for p in node.data_dir.glob("ainode.db*"))
    assert alice.encode() not in stored and bob.encode() not in stored  # only their SHA-256


def test_feedback_needs_a_radiologist_names_its_target_and_is_recorded_by_name(node_factory, tmp_path: Path) -> None:
    """A radiologist's agree / disagree / corrected on a finding, a segment or a lesion
    of a prediction, through the API: a viewer may not, an unknown target is refused
    with the ones that exist, and each word is kept with its user and in the timeline."""
    from tests.integration.test_map_conformance import _sphere_series
    from tests.model_files import monai_classifier_bundle

    monai_classifier_bundle(tmp_path / "models" / "nodule_ct")
    config = (f'quiet_period_s = 1\ncompletion_sweep_s = 0.5\nmodel_folders = ["{tmp_path / "models"}"]\n'
              '[[routes]]\nname = "nodules"\nmodel = "nodule_ct"\n[routes.match]\nmodality = ["CT"]\n')
    node: Node = node_factory(config, inference=True).start(timeout=90)
    viewer = node.run("users", "add", "vera", "--role", "viewer").stdout.strip()
    doctor = node.run("users", "add", "rad.one", "--role", "radiologist").stdout.strip()
    _sphere_series(tmp_path / "study" / "s01")
    send_study(node, tmp_path / "study")
    [prediction] = wait_until(lambda: json.loads(node.run("predictions", "--json").stdout), 90, "the prediction")
    url = f"{node.api_url}/api/predictions/{prediction['id']}/feedback"

    def post(body: dict, token: str) -> tuple[int, Any]:
        request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(), headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except HTTPError as exc:
            return exc.code, json.loads(exc.read())

    finding = prediction["findings"][0]["name"]
    assert post({"target_kind": "finding", "target": finding, "verdict": "agree"}, viewer)[0] == 403
    status, given = post({"target_kind": "finding", "target": finding, "verdict": "disagree",
                          "reason": "an artefact, not a lesion"}, doctor)
    assert status == 200 and (given["user"], given["role"], given["verdict"]) == ("rad.one", "radiologist",
                                                                                   "disagree")
    status, refused = post({"target_kind": "segment", "target": "liver", "verdict": "agree"}, doctor)
    assert status == 422 and "has no segment 'liver'" in refused["detail"]
    assert post({"target_kind": "finding", "target": finding, "verdict": "maybe"}, doctor)[0] == 422
    [study] = _call(node.api_url + "/api/studies", token=doctor)[1]
    results = _call(f"{node.api_url}/api/studies/{study['study_instance_uid']}/results", token=doctor)[1]
    [kept] = results["results"][0]["feedback"]
    assert (kept["target"], kept["reason"], kept["user"]) == (finding, "an artefact, not a lesion", "rad.one")
    assert any(s["step"] == "feedback" and s["detail"].startswith("rad.one (radiologist): disagree")
               for s in results["timeline"])
