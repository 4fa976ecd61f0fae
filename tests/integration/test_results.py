"""Results back to a real archive (Orthanc): SEG and SR in the source study, conformant
(dciodvfy, dcentvfy), one copy per results version, delivered after an outage, over
C-STORE and over DICOMweb STOW-RS."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import Node, free_port, missing_peer, send_study, wait_until
from tests.orthanc import Orthanc
from tests.phantoms import chest_study

pytestmark = pytest.mark.integration

SEG_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _config(destination: str, extra: str = "") -> str:
    return f"""\
quiet_period_s = 2
completion_sweep_s = 0.5
job_retry_base_delay_s = 1
job_retry_max_delay_s = 2
job_max_attempts = 20
{extra}
[[destinations]]
{destination}

[[routes]]
name = "ct-chest"
model = "ct-chest"
select = "smoothest_kernel"
destinations = ["archive"]
[routes.match]
modality = ["CT"]
orientation = ["AXIAL"]
min_instances = 40
slice_thickness_max = 5.0
"""


def _dicom_destination(orthanc: Orthanc) -> str:
    return f'name = "archive"\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}'


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_peer(f"{name} is not installed (apt-get install dicom3tools)")
    return str(path)


def _jobs(node: Node, kind: str) -> list[dict]:
    return json.loads(node.run("jobs", "--json", "--kind", kind).stdout)


def _results_in(orthanc: Orthanc, count: int) -> list[dict]:
    return wait_until(lambda: len(i := orthanc.instances()) >= count and i, 120,
                      f"{count} result objects in Orthanc")


def test_seg_and_sr_reach_the_archive_conformant_and_once_per_version(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    study, _volumes = chest_study(tmp_path)
    node: Node = node_factory(_config(_dicom_destination(orthanc)), inference=True).start()
    assert "ORTHANC@127.0.0.1" in node.run("echo", "archive").stdout  # the destination by name
    send_study(node, study)
    stored = _results_in(orthanc, 2)
    assert sorted(i["Tags"]["SOPClassUID"] for i in stored) == [SEG_CLASS, SR_CLASS]  # nothing else

    [prediction] = json.loads(node.run("predictions", "--json").stdout)
    sources = sorted(p for p in study.rglob("*.dcm")
                     if dcmread(p, stop_before_pixels=True).SeriesInstanceUID == prediction["series_instance_uid"])
    files = {i["Tags"]["SOPClassUID"]: orthanc.download(i["ID"], tmp_path / f"{i['ID']}.dcm") for i in stored}
    seg, sr = dcmread(files[SEG_CLASS]), dcmread(files[SR_CLASS])
    source = dcmread(sources[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == prediction["series_instance_uid"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Body", "Right lung", "Left lung"]
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "ct-chest"
    assert "ct-chest" in seg.SeriesDescription and "ct-chest" in sr.SeriesDescription
    evidence = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence for item in s.ReferencedSeriesSequence}
    assert seg.SOPInstanceUID in evidence

    # Conformance: zero errors from dciodvfy; dcentvfy finds the three consistent.
    for path in files.values():
        checked = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"
    entities = subprocess.run([_tool("dcentvfy"), *map(str, files.values()), *map(str, sources)],
                              capture_output=True, text=True)
    problems = [line for line in (entities.stdout + entities.stderr).splitlines()
                if line.startswith("Error") or "present in one instance but not" in line
                or "Value different" in line or "value different" in line]
    assert problems == []

    # The same study sent again is a new results version: one more SEG and SR, no more.
    send_study(node, study)
    stored = _results_in(orthanc, 4)
    wait_until(lambda: all(j["state"] == "succeeded" for j in _jobs(node, "send")) and len(_jobs(node, "send")) == 2,
               60, "both deliveries")
    assert len(orthanc.instances()) == 4
    assert sorted(i["Tags"]["SOPClassUID"] for i in stored) == [SEG_CLASS, SEG_CLASS, SR_CLASS, SR_CLASS]


SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def test_key_images_for_a_viewer_without_seg_and_a_resend_replaces_not_duplicates(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    study, _volumes = chest_study(tmp_path)
    destination = _dicom_destination(orthanc) + '\nobjects = ["sr", "sc"]'
    node: Node = node_factory(_config(destination), inference=True).start()
    send_study(node, study)
    [job] = wait_until(lambda: [j for j in _jobs(node, "send") if j["state"] == "succeeded"], 120, "delivery")
    stored = orthanc.instances()
    classes = sorted(i["Tags"]["SOPClassUID"] for i in stored)
    assert SEG_CLASS not in classes and classes.count(SR_CLASS) == 1
    key_images = [i for i in stored if i["Tags"]["SOPClassUID"] == SC_CLASS]
    assert 1 <= len(key_images) <= 3  # one per segment at most: body, right and left lung
    for item in key_images:
        path = orthanc.download(item["ID"], tmp_path / f"{item['ID']}.dcm")
        image = dcmread(path)
        assert image.BurnedInAnnotation == "YES" and "not for diagnostic use" in image.ImageComments
        source = dcmread(next(study.rglob("*.dcm")), stop_before_pixels=True)
        assert (image.Rows, image.Columns) == (source.Rows, source.Columns)  # the source's grid
        assert image.PhotometricInterpretation == "RGB"
        checked = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
        # Outlines: pixels in the segments' colours, which a grey CT slice never has.
        red, green, blue = (image.pixel_array[..., c].astype(int) for c in range(3))
        assert ((green - red > 100) & (green - blue > 100)).sum() > 200

    # The operator delivers the same results again: the archive keeps one copy of each.
    assert "requeued 1" in node.run("retry", str(job["id"])).stdout
    wait_until(lambda: [j for j in _jobs(node, "send") if j["state"] == "succeeded" and j["attempts"] == 1
                        and j["finished_at"] > job["finished_at"]], 60, "the second delivery")
    assert sorted(i["ID"] for i in orthanc.instances()) == sorted(i["ID"] for i in stored)


def test_results_wait_for_the_archive_and_arrive_once_it_is_back(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    study, _volumes = chest_study(tmp_path)
    node: Node = node_factory(_config(_dicom_destination(orthanc)), inference=True).start()
    orthanc.stop()
    send_study(node, study)
    # Two failed attempts, waiting for the next one (not caught while an attempt runs).
    failing = wait_until(lambda: [j for j in _jobs(node, "send") if j["attempts"] >= 2 and j["state"] == "queued"],
                         120, "delivery attempts against the stopped archive")
    assert failing[0]["state"] == "queued" and "not stored at archive" in failing[0]["last_error"]
    orthanc.start()
    stored = _results_in(orthanc, 2)
    assert sorted(i["Tags"]["SOPClassUID"] for i in stored) == [SEG_CLASS, SR_CLASS]
    [job] = wait_until(lambda: [j for j in _jobs(node, "send") if j["state"] == "succeeded"], 30, "delivery")
    assert job["attempts"] >= 3


def test_results_over_dicomweb_stow_rs_signed_in(node_factory, tmp_path: Path) -> None:
    """STOW-RS to an archive that asks for HTTP Basic sign-in (and refuses anyone else)."""
    study, _volumes = chest_study(tmp_path)
    secured = Orthanc(tmp_path / "secured", free_port(), free_port(), users={"ainode": "stow-pass-1"}).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{secured.url}/dicom-web/studies", timeout=10)
        assert refused.value.code == 401
        destination = (f'name = "archive"\ntype = "dicomweb"\nurl = "{secured.url}/dicom-web"\n'
                       'auth = { username = "ainode", password = "stow-pass-1" }')
        node: Node = node_factory(_config(destination), inference=True).start()
        send_study(node, study)
        stored = _results_in(secured, 2)
        assert sorted(i["Tags"]["SOPClassUID"] for i in stored) == [SEG_CLASS, SR_CLASS]
        [job] = _jobs(node, "send")
        assert job["state"] == "succeeded"
        assert "stow-pass-1" not in node.log()
    finally:
        secured.stop()
