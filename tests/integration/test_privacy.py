"""No patient data where it does not belong: a study with known identifiers goes
through reception, inference, encoding and failed deliveries, and no log line, job
error or metric names the patient; the node's files are its user's alone."""

from __future__ import annotations

import json
import stat
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Node, free_port, send_study, wait_until
from tests.phantoms import chest_phantom, write_phantom_series

pytestmark = pytest.mark.integration

NAME, PATIENT_ID, BIRTH_DATE = "Quuxley^Wilhelmina", "MRN-73915824", "19340227"
SECRETS = ("Quuxley", "Wilhelmina", PATIENT_ID, BIRTH_DATE, "1934-02-27")


def test_no_patient_data_in_logs_errors_or_metrics_and_private_files(node_factory, tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_phantom_series(chest_phantom(slices=48, size=128, slice_mm=2.5, pixel_mm=2.6, emphysema_fraction=0.2),
                         study, attributes={"PatientName": NAME, "PatientID": PATIENT_ID,
                                            "PatientBirthDate": BIRTH_DATE, "AccessionNumber": "ACC-PRIV"})
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
job_max_attempts = 2
job_retry_base_delay_s = 0.5
job_retry_max_delay_s = 1
[[destinations]]
name = "archive"
ae_title = "DOWN"
host = "127.0.0.1"
port = {free_port()}
[[notifications]]
name = "ris"
type = "hl7"
host = "127.0.0.1"
port = {free_port()}
min_level = "urgent"
[[routes]]
name = "ct-chest"
model = "ct-chest"
destinations = ["archive"]
[routes.match]
modality = ["CT"]
min_instances = 40
"""
    node: Node = node_factory(config, inference=True).start()
    send_study(node, study)
    # The delivery and the notification fail (nobody listens) until they are dead.
    wait_until(lambda: {j["kind"] for j in json.loads(node.run("jobs", "--json").stdout)
                        if j["state"] == "dead"} == {"send", "notify"}, 120, "the failed delivery and notification")
    with urllib.request.urlopen(node.api_url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    with urllib.request.urlopen(node.api_url + "/api/jobs", timeout=10) as response:
        api_jobs = response.read().decode()
    node.stop()
    assert node.log_path is not None
    log = node.log_path.read_text()
    dead = {j["kind"]: j["last_error"] for j in json.loads(api_jobs) if j["state"] == "dead"}
    assert "not stored at archive" in dead["send"] and "peer not reachable" in dead["send"], dead["send"]
    assert dead["notify"].startswith("RuntimeError: the MLLP receiver at 127.0.0.1:"), dead["notify"]
    assert dead["notify"].endswith("cannot be reached (ConnectionRefusedError)"), dead["notify"]
    for where, text in (("log", log), ("jobs", api_jobs), ("metrics", metrics),
                        ("cli", node.run("jobs").stdout + node.run("predictions").stdout)):
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} appears in the {where}"

    # Images, results, label maps, the database: the service's user only.
    loose = [str(p.relative_to(node.data_dir)) for p in node.data_dir.rglob("*")
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []
    assert any(p.suffix == ".npz" for p in node.data_dir.rglob("*")) and (node.data_dir / "ainode.db").exists()
