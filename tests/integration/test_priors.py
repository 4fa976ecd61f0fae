"""Priors from the PACS: a real Orthanc holds two earlier studies of the patient (the
public chest CT, or its phantom stand-in, with new UIDs and earlier dates; the more
recent one cut short, so its lungs are smaller). Sending the current study makes the
node find them (C-FIND), retrieve exactly the relevant one (C-MOVE), hold the model's
job until it is here, and run ct-chest with it: the change of each lung's volume is in
the prediction, in the SR (with the prior as evidence) and on the study page. Sent
again, the study gets the change again without the prior being fetched twice. An
archive reached over DICOMweb gives the prior by QIDO-RS and WADO-RS. With the PACS
down, the study runs without priors after the route's timeout and says so."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from storage.db import open_database
from storage.files import FileStore
from storage.retention import purge_older_than
from tests.conftest import Node, free_port, send_study, wait_until
from tests.orthanc import Orthanc
from tests.phantoms import chest_study
from tests.synthetic import TEST_UID_ROOT

pytestmark = pytest.mark.integration

PATIENT = "PRIORS-TEST-1"
VOLUME_CHANGE = "VOLCHG"  # ct-chest's code for a lung's volume change since the prior, in %


def _copy_study(source: Path, folder: Path, study_date: str, drop_lowest: int = 0) -> tuple[str, list[Path]]:
    """``source``'s images as a new study of PATIENT dated ``study_date`` (new study,
    series, instance and frame of reference UIDs), each series without its
    ``drop_lowest`` most inferior slices (the lung bases: smaller lungs)."""
    study_uid = generate_uid(TEST_UID_ROOT)
    renamed: dict[str, str] = {}
    by_series: dict[str, list] = {}
    for path in sorted(source.rglob("*.dcm")):
        ds = dcmread(path)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    written = []
    for n, images in enumerate(by_series.values()):
        images.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        new_series = generate_uid(TEST_UID_ROOT)
        for i, ds in enumerate(images[drop_lowest:]):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, new_series
            ds.FrameOfReferenceUID = renamed.setdefault(str(ds.FrameOfReferenceUID), generate_uid(TEST_UID_ROOT))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(TEST_UID_ROOT)
            ds.PatientID, ds.StudyDate, ds.AccessionNumber = PATIENT, study_date, f"A{study_date}"
            path = folder / f"{n}-{i:04d}.dcm"
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return study_uid, written


def _config(pacs_port: int | None, timeout_s: float, destination: str = "", dicomweb_url: str = "",
            retrieve: str = "move") -> str:
    reached = f'dicomweb_url = "{dicomweb_url}"' if dicomweb_url else \
        f'host = "127.0.0.1"\nport = {pacs_port}\nretrieve = "{retrieve}"'
    return f"""\
quiet_period_s = 2
completion_sweep_s = 0.5
job_retry_base_delay_s = 1
job_retry_max_delay_s = 2
[pacs]
ae_title = "ORTHANC"
{reached}
timeout_s = 10
retrieve_per_minute = 60
{destination}
[[routes]]
name = "chest"
model = "ct-chest"
select = "smoothest_kernel"
destinations = {'["archive"]' if destination else '[]'}
[routes.match]
modality = ["CT"]
min_instances = 40
[routes.priors]
count = 1
max_age_days = 1000
timeout_s = {timeout_s}
"""


def _db(node: Node) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True, timeout=30)


def _study_rows(node: Node) -> dict[str, tuple[str, str | None]]:
    with _db(node) as db:
        return {uid: (state, reason) for uid, state, reason in db.execute(
            "SELECT study_instance_uid, state, completion_reason FROM studies")}


def _done(node: Node, uid: str, version: int) -> dict:
    """The study's results once its version ``version`` is done."""
    def ready() -> dict | None:
        result = node.run("results", uid, "--json", check=False)
        if result.returncode != 0:
            return None
        data = json.loads(result.stdout)
        return data if data["state"] == "done" and data["results_version"] == version else None
    return wait_until(ready, 240, f"study done as version {version}")


def _timeline(node: Node, uid: str, step: str) -> list[str]:
    with _db(node) as db:
        return [d for (d,) in db.execute(
            "SELECT e.detail FROM study_events e JOIN studies s ON s.id = e.study_id "
            "WHERE s.study_instance_uid = ? AND e.step = ? ORDER BY e.id", (uid, step))]


def _time_point(group: Any) -> str | None:
    """A measurement group's TID 1502 Time Point, if it says one."""
    return next((str(item.TextValue) for item in group[0].ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning == "Time Point"), None)


def _changes(prediction: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for m in prediction["measurements"] if m["name"].endswith("volume change")}


def _study_page_shows_the_comparison(node: Node, uid: str, before: dict[str, float], now: dict[str, float]) -> None:
    """The comparison note, the change rows, and the trend table: each lung's volume on
    the prior and on this study (as the API gives them), with a line through them."""
    from selenium.webdriver.common.by import By

    from tests.browser import headless_chromium

    browser = headless_chromium()
    try:
        browser.get(f"{node.api_url}/study?uid={uid}")
        note = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "p.comparison"), 60, "the comparison")
        assert note[0].text == "Changes are since the study of 2025-11-01"
        page = browser.find_element(By.TAG_NAME, "main").text
        assert "right lung volume change" in page and "left lung LAA-950 change" in page
        trend = browser.find_element(By.CSS_SELECTOR, "table.trend")
        assert [th.text for th in trend.find_elements(By.TAG_NAME, "th")][:3] == \
            ["Measurement", "2025-11-01", "this study"]
        rows = {r.find_elements(By.TAG_NAME, "td")[0].text: r for r in trend.find_elements(By.CSS_SELECTOR, "tbody tr")}
        for side in ("right", "left"):
            cells = rows[f"{side} lung volume"].find_elements(By.TAG_NAME, "td")
            assert abs(float(cells[1].text) - before[side]) <= 0.5 and abs(float(cells[2].text) - now[side]) <= 0.5
            assert cells[3].find_elements(By.CSS_SELECTOR, "svg.sparkline polyline")
        assert "right lung LAA-950" in rows
    finally:
        browser.quit()


def test_the_relevant_prior_is_retrieved_once_and_the_change_reaches_the_sr(
        node_factory, orthanc: Orthanc, tmp_path: Path) -> None:
    import highdicom as hd

    source, _volumes = chest_study(tmp_path)
    current_uid, current = _copy_study(source, tmp_path / "current", "20261101")
    recent_uid, recent = _copy_study(source, tmp_path / "recent", "20251101", drop_lowest=16)
    older_uid, older = _copy_study(source, tmp_path / "older", "20241101")
    orthanc.upload(recent + older)
    destination = (f'[[destinations]]\nname = "archive"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
                   f'port = {orthanc.dicom_port}\n')
    node: Node = node_factory(_config(orthanc.dicom_port, 180, destination), inference=True).start()
    orthanc.knows("ainode", "AINODE", node.port)

    send_study(node, tmp_path / "current")
    results = _done(node, current_uid, 1)
    # Exactly the most recent prior came; it is held, not routed; the older one stayed.
    studies = _study_rows(node)
    assert set(studies) == {current_uid, recent_uid}
    assert studies[recent_uid] == ("not_applicable", "prior")
    assert _timeline(node, current_uid, "priors_chosen") == ["1 prior(s) on ORTHANC: 20251101; 1 retrieval(s) queued"]
    assert _timeline(node, current_uid, "priors_ready") == ["ct-chest gets 1 prior(s): 20251101"]

    [prediction] = [p for p in json.loads(node.run("predictions", "--json").stdout)
                    if p["study_instance_uid"] == current_uid]
    prior = prediction["provenance"]["prior"]
    assert prior["study_instance_uid"] == recent_uid and prior["study_date"] == "20251101"
    volumes = {m["name"]: m["value"] for m in prediction["measurements"]}
    changes = _changes(prediction)
    for side in ("right", "left"):
        before = prior["volumes_ml"][side]
        assert before < volumes[f"{side} lung volume"]  # the prior was cut short
        expected = 100 * (volumes[f"{side} lung volume"] - before) / before
        assert changes[f"{side} lung volume change"] == pytest.approx(expected)
        assert changes[f"{side} lung volume change"] > 1
    assert [r["model"] for r in results["results"]] == ["ct-chest"]
    assert results["results"][0]["compared_with"]["study_date"] == "2025-11-01"
    assert "changes since the study of 2025-11-01" in node.run("results", current_uid).stdout
    _study_page_shows_the_comparison(node, current_uid, prior["volumes_ml"],
                                     {side: volumes[f"{side} lung volume"] for side in ("right", "left")})

    # The SR in the archive carries each lung's change in that lung's group.
    def sr() -> object:
        found = [i for i in orthanc.instances() if i["Tags"]["Modality"] == "SR"
                 and i["Tags"]["StudyInstanceUID"] == current_uid]
        return found[0] if found else None
    stored = wait_until(sr, 120, "the SR in the archive")
    sr_dataset = dcmread(orthanc.download(stored["ID"], tmp_path / "sr.dcm"))
    report = hd.sr.Comprehensive3DSR.from_dataset(sr_dataset)
    checked = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", str(tmp_path / "sr.dcm")],
                             capture_output=True, text=True)
    assert [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")] == []
    # The prior's images are the SR's evidence from another study.
    [other] = sr_dataset.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == recent_uid
    assert [s.SeriesInstanceUID for s in other.ReferencedSeriesSequence] == [prior["series_instance_uid"]]
    in_sr = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            if measurement.name.value == VOLUME_CHANGE:
                in_sr[str(group.tracking_identifier)] = measurement.value
    assert in_sr == pytest.approx({"Right lung": changes["right lung volume change"],
                                   "Left lung": changes["left lung volume change"]}, rel=1e-3)
    # Each lung at both time points (TID 1502): this study's group and the prior's values,
    # under the same tracking UID.
    current_groups = {str(g.tracking_identifier): g for g in report.content.get_volumetric_roi_measurement_groups()}
    prior_groups = {str(g.tracking_identifier): g for g in report.content.get_image_measurement_groups()
                    if _time_point(g) is not None}
    for side, name in (("right", "Right lung"), ("left", "Left lung")):
        then, now = prior_groups[name], current_groups[name]
        assert then.tracking_uid == now.tracking_uid
        assert (_time_point(then), _time_point(now)) == ("2025-11-01", "2026-11-01")
        volume = next(m for m in then.get_measurements() if m.name.meaning.endswith("olume"))
        assert volume.value == pytest.approx(prior["volumes_ml"][side], rel=1e-6)

    # Sent again (a second results version): the change again, the prior not fetched again.
    prior_kept_until = datetime.now(UTC)
    send_study(node, tmp_path / "current")
    _done(node, current_uid, 2)
    with _db(node) as db:
        retrieves = db.execute("SELECT state, count(*) FROM jobs WHERE kind = 'retrieve' GROUP BY state").fetchall()
    assert retrieves == [("succeeded", 1)]
    assert node.log().count("retrieved from ORTHANC") == 1
    assert _timeline(node, current_uid, "priors_chosen")[1] == "1 prior(s) on ORTHANC: 20251101; 0 retrieval(s) queued"
    second = [p for p in json.loads(node.run("predictions", "--json").stdout)
              if p["study_instance_uid"] == current_uid and p["results_version"] == 2]
    assert [_changes(p) for p in second] == [changes]
    assert older_uid not in _study_rows(node)

    # Retention removes the prior (the node's own purge, with a cutoff that spares the
    # current study); sent a third time, the study has its prior fetched once more.
    engine = open_database(f"sqlite:///{node.data_dir / 'ainode.db'}")
    assert purge_older_than(engine, FileStore(node.data_dir), prior_kept_until).studies == 1
    engine.dispose()
    assert recent_uid not in _study_rows(node)
    send_study(node, tmp_path / "current")
    _done(node, current_uid, 3)
    assert _timeline(node, current_uid, "priors_chosen")[2] == "1 prior(s) on ORTHANC: 20251101; 1 retrieval(s) queued"
    assert node.log().count("retrieved from ORTHANC") == 2
    third = [p for p in json.loads(node.run("predictions", "--json").stdout)
             if p["study_instance_uid"] == current_uid and p["results_version"] == 3]
    assert [_changes(p) for p in third] == [changes]


def test_with_the_pacs_down_the_study_runs_without_priors_after_the_timeout(node_factory, tmp_path: Path) -> None:
    source, _volumes = chest_study(tmp_path)
    current_uid, _current = _copy_study(source, tmp_path / "current", "20261101")
    node: Node = node_factory(_config(free_port(), 4), inference=True).start()  # nothing listens there
    send_study(node, tmp_path / "current")
    _done(node, current_uid, 1)
    [ready] = _timeline(node, current_uid, "priors_ready")
    assert ready.startswith("ct-chest gets 0 prior(s); ran without priors: C-FIND to ORTHANC")
    [prediction] = json.loads(node.run("predictions", "--json").stdout)
    assert _changes(prediction) == {} and "prior" not in prediction["provenance"]
    assert {m["name"] for m in prediction["measurements"]} >= {"right lung volume", "left lung volume"}
    with _db(node) as db:
        [(state, attempts)] = db.execute("SELECT state, attempts FROM jobs WHERE kind = 'priors'").fetchall()
    assert (state, attempts) == ("succeeded", 1)  # waiting did not use up its attempts


def _prior_fetched_itself(node: Node, tmp_path: Path, current_uid: str, recent_uid: str, recent: list[Path]) -> None:
    """The current study sent, the prior fetched by the node's worker (not by a C-MOVE
    to its listener), compared with, and held whole: each instance a complete Part 10
    file naming the archive as its source."""
    send_study(node, tmp_path / "current")
    _done(node, current_uid, 1)
    assert _study_rows(node)[recent_uid] == ("not_applicable", "prior")
    assert _timeline(node, current_uid, "priors_ready") == ["ct-chest gets 1 prior(s): 20251101"]
    [prediction] = [p for p in json.loads(node.run("predictions", "--json").stdout)
                    if p["study_instance_uid"] == current_uid]
    assert prediction["provenance"]["prior"]["study_instance_uid"] == recent_uid
    assert _changes(prediction)["right lung volume change"] > 1
    held = [dcmread(p) for p in (node.data_dir / "studies").rglob("*.dcm")
            if dcmread(p, stop_before_pixels=True).StudyInstanceUID == recent_uid]
    assert sorted(ds.SOPInstanceUID for ds in held) == sorted(dcmread(p).SOPInstanceUID for p in recent)
    assert {ds.file_meta.SourceApplicationEntityTitle for ds in held} == {"ORTHANC"}
    assert f"{len(recent)} instance(s) retrieved from ORTHANC" in node.log()


def test_over_dicomweb_the_prior_is_found_with_qido_and_fetched_with_wado(node_factory, tmp_path: Path) -> None:
    """The archive reached only over DICOMweb, signed in with HTTP Basic (it does not
    even know the node as a DICOM peer, so no C-MOVE could bring anything)."""
    source, _volumes = chest_study(tmp_path)
    current_uid, _current = _copy_study(source, tmp_path / "current", "20261101")
    recent_uid, recent = _copy_study(source, tmp_path / "recent", "20251101", drop_lowest=16)
    secured = Orthanc(tmp_path / "secured", free_port(), free_port(), users={"ainode": "qido-pass-1"}).start()
    try:
        secured.upload(recent)
        signed_in = 'retrieve_per_minute = 60\nauth = { username = "ainode", password = "qido-pass-1" }'
        config = _config(None, 180, dicomweb_url=secured.url + "/dicom-web").replace(
            "retrieve_per_minute = 60", signed_in)
        node: Node = node_factory(config, inference=True).start()
        _prior_fetched_itself(node, tmp_path, current_uid, recent_uid, recent)
        assert "qido-pass-1" not in node.log()
    finally:
        secured.stop()


def test_with_c_get_the_prior_comes_back_on_the_nodes_own_association(
        node_factory, orthanc: Orthanc, tmp_path: Path) -> None:
    """The archive knows the node only at a port where nothing listens (a NAT or a
    stale entry): a C-MOVE could deliver nothing, C-GET brings the prior anyway."""
    source, _volumes = chest_study(tmp_path)
    current_uid, _current = _copy_study(source, tmp_path / "current", "20261101")
    recent_uid, recent = _copy_study(source, tmp_path / "recent", "20251101", drop_lowest=16)
    orthanc.upload(recent)
    node: Node = node_factory(_config(orthanc.dicom_port, 180, retrieve="get"), inference=True).start()
    orthanc.knows("ainode", "AINODE", free_port())  # C-GET's permission; the port is wrong on purpose
    _prior_fetched_itself(node, tmp_path, current_uid, recent_uid, recent)
