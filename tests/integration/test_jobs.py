"""Completion, routing and the job queue in a real `ainode serve`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import SHARED_DATA, Node, send_study, wait_until
from tests.synthetic import TEST_UID_ROOT, write_ct_study

pytestmark = pytest.mark.integration


def _jobs(node: Node, *args: str) -> list[dict]:
    return json.loads(node.run("jobs", "--json", *args).stdout)


def _chest_ct(tmp_path: Path) -> Path:
    public = SHARED_DATA / "ct-chest-tcia-a0001"
    if public.exists():
        return public
    folder = tmp_path / "synthetic-chest"
    write_ct_study(folder, series=2, slices=64)
    return folder


@pytest.fixture(params=["sqlite", "postgresql"])
def database_config(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    return f'database_url = "{request.getfixturevalue("fresh_postgres_url")}"\n'


def test_chest_ct_completes_once_and_a_resend_makes_a_new_version(
    node_factory, tmp_path: Path, database_config: str
) -> None:
    study = _chest_ct(tmp_path)
    node: Node = node_factory(database_config + "quiet_period_s = 3\ncompletion_sweep_s = 0.5\n"
                              "workers = 0\n").start()
    sent_at = time.monotonic()
    send_study(node, study)
    [job] = wait_until(lambda: _jobs(node, "--kind", "infer"), what="the infer job")
    assert time.monotonic() - sent_at >= 3  # not before the quiet period
    assert job["state"] == "queued" and job["results_version"] == 1
    assert job["payload"]["model"] == "ct-chest" and len(job["payload"]["series"]) == 1
    # Later sweeps do not complete it again: another study completing shows that they ran.
    other = generate_uid(TEST_UID_ROOT)
    write_ct_study(tmp_path / "other", series=1, slices=3, study_uid=other)
    send_study(node, tmp_path / "other")
    wait_until(lambda: f"study {other} complete (quiet)" in node.log(), 30, "a later sweep")
    assert len(_jobs(node, "--kind", "infer")) == 1  # the other study matches no route
    assert node.log().count("complete (quiet), results version 1") == 2  # once each

    one = sorted(study.rglob("*.dcm"))[0]
    send_study(node, one)  # a late resend reopens the study
    def two_versions() -> list[dict] | None:
        jobs = _jobs(node, "--kind", "infer")
        return jobs if len(jobs) == 2 else None

    jobs = wait_until(two_versions, what="the second version's job")
    assert sorted(j["results_version"] for j in jobs) == [1, 2]
    counts = json.loads(node.run("status", "--json").stdout)
    # Version 1's job never ran: it is superseded by version 2's, which waits for a worker.
    assert counts["instances"] == 128 + 3
    assert (counts["jobs"]["infer"]["queued"], counts["jobs"]["infer"]["superseded"]) == (1, 1)


def test_route_test_names_rule_and_series(tmp_path: Path) -> None:
    from tests.conftest import AINODE, REPO

    study = _chest_ct(tmp_path)
    result = subprocess.run([*AINODE, "route", "test", str(study)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rule 'ct-chest' -> model ct-chest: MATCHED, takes series" in result.stdout
    if study.name == "ct-chest-tcia-a0001":  # the soft-tissue kernel (B), not the lung kernel (L)
        assert "takes series 3" in result.stdout and "kernel L" in result.stdout


def test_route_test_reports_tilt_varying_thickness_region_and_unusable_files(tmp_path: Path) -> None:
    from pydicom import dcmread

    from tests.conftest import AINODE, REPO
    from tests.phantoms import head_phantom, write_phantom_series

    # A head CT: gantry tilt 15 degrees, 4 mm slices at the skull base, then 7 mm.
    head = tmp_path / "head"
    paths = write_phantom_series(head_phantom(slices=30), head, kernel="H31s", description="CT Schaedel",
                                 attributes={"BodyPartExamined": "HEAD", "GantryDetectorTilt": 15.0})
    for index, path in enumerate(paths):
        ds = dcmread(path)
        ds.SliceThickness = 4.0 if index < 15 else 7.0
        ds.save_as(path)
    result = subprocess.run([*AINODE, "route", "test", str(head)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "4 to 7 mm (varies), gantry tilt 15 degrees" in result.stdout
    assert "body region HEAD (from Body Part Examined 'HEAD') not in ['CHEST']" in result.stdout

    # Files without the UIDs the node files images by: named, not "no DICOM images found".
    for path in paths:
        ds = dcmread(path)
        ds.SOPInstanceUID = ""
        ds.save_as(path)
    result = subprocess.run([*AINODE, "route", "test", str(head)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "missing SOP Instance UID (SOPInstanceUID)" in result.stderr
    assert "30 file(s) left out" in result.stderr


def test_sigkill_while_jobs_run_every_job_succeeds_once(node_factory, database_config: str) -> None:
    node: Node = node_factory(database_config + "workers = 2\njob_lease_s = 2\n").start()
    result = node.run("selftest", "queue", "--jobs", "20", "--seconds", "0.6")
    assert "queued 20" in result.stdout
    wait_until(lambda: sum(j["state"] == "succeeded" for j in _jobs(node)) >= 3, what="some jobs done")
    node.kill()  # the workers die with the main process, each in the middle of a job

    node.start()
    wait_until(lambda: all(j["state"] == "succeeded" for j in _jobs(node)), timeout=120,
          what="every job to succeed")
    jobs = _jobs(node)
    assert len(jobs) == 20 and {j["state"] for j in jobs} == {"succeeded"}
    runs = (node.data_dir / "selftest-runs.log").read_text().split("\n")
    assert {int(line.split()[0]) for line in runs if line} == {j["id"] for j in jobs}
    # The jobs the killed workers held were reclaimed after their lease expired.
    assert any(j["attempts"] > 1 for j in jobs)


def test_failing_job_ends_dead_with_its_error_and_retry_revives_it(node_factory) -> None:
    node: Node = node_factory("workers = 1\njob_max_attempts = 2\njob_retry_base_delay_s = 0.2\n"
                              "job_retry_max_delay_s = 0.5\n").start()
    node.run("selftest", "queue", "--jobs", "1", "--fail")
    [dead] = wait_until(lambda: _jobs(node, "--state", "dead"), what="the job to die")
    assert dead["attempts"] == 2 and dead["last_error"] == "RuntimeError: self-test job told to fail"
    table = node.run("jobs", "--state", "dead").stdout
    assert "self-test job told to fail" in table

    assert "requeued 1" in node.run("retry", "--dead").stdout

    def died_again() -> list[dict] | None:
        rows = _jobs(node, "--state", "dead")
        return rows if rows and rows[0]["finished_at"] > dead["finished_at"] else None

    again = wait_until(died_again, what="the retried job to run and die again")
    assert again[0]["id"] == dead["id"] and again[0]["attempts"] == 2
    missing = node.run("retry", "999", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
