"""DICOMweb STOW-RS into a running node, from a real DICOMweb client (the
`dicomweb-client` package) and from hand-made multipart bodies: a whole-study request
completes its study at once (the quiet period is 60 s here), a bad part gets the
standard failure reason while the rest is kept, only an operator's token may store, and
a SIGKILL of every process of the node right after the 200 loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.conftest import Node, wait_until
from tests.procs import child_pids
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration

CONFIG = ('quiet_period_s = 60\ncompletion_sweep_s = 0.5\n[[routes]]\nname = "ct"\nmodel = "ct-chest"\n'
          '[routes.match]\nmodality = ["CT"]\n')
BOUNDARY = "ainode-test-boundary-7f3a"
CANNOT_UNDERSTAND, DOES_NOT_MATCH = 0xC000, 0xA900


def _db(node: Node) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True, timeout=30)


def _post(node: Node, path: str, parts: list[bytes], token: str | None,
          content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}') -> tuple[int, Any]:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + BOUNDARY.encode() + b"--\r\n"
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(node.api_url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else None


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def _uid(item: dict[str, Any], tag: str = "00081155") -> str:
    return str(item[tag]["Value"][0])


def _completion(node: Node, study_uid: str) -> tuple[str, str | None]:
    with _db(node) as db:
        row = db.execute("SELECT state, completion_reason FROM studies WHERE study_instance_uid = ?",
                         (study_uid,)).fetchone()
    return (row[0], row[1]) if row else ("missing", None)


def test_a_dicomweb_client_stores_a_whole_study_which_completes_at_once(node_factory, tmp_path: Path) -> None:
    node: Node = node_factory(CONFIG).start()
    sender = node.run("users", "add", "pacs-forwarder", "--role", "operator").stdout.strip()
    viewer = node.run("users", "add", "vic", "--role", "viewer").stdout.strip()
    files = write_ct_study(tmp_path / "study", series=1, slices=6)
    datasets = [dcmread(f) for f in files]
    study_uid = str(datasets[0].StudyInstanceUID)

    def client(token: str | None) -> DICOMwebClient:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return DICOMwebClient(node.api_url + "/dicomweb", headers=headers)

    # Only an operator's token may store (without a token the request-forgery guard
    # refuses it before authentication: 403 too).
    for token, status in ((None, 403), (viewer, 403)):
        with pytest.raises(Exception) as refused:
            client(token).store_instances(datasets[:1], study_instance_uid=study_uid)
        assert str(status) in str(refused.value)
    assert _completion(node, study_uid)[0] == "missing"

    response = client(sender).store_instances(datasets, study_instance_uid=study_uid)
    stored = {str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response
    # The request was the whole study: complete now, not after the 60 s quiet period,
    # and its inference job queued.
    state, reason = wait_until(lambda: (c := _completion(node, study_uid))[0] != "receiving" and c, 5,
                               "the study to complete")
    assert (state, reason) == ("complete", "stow-rs")
    with _db(node) as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM jobs")]
        rows = dict(db.execute("SELECT sop_instance_uid, path FROM instances"))
    assert kinds == ["infer"]
    for ds in datasets:  # each file holds what was sent
        kept = dcmread(node.data_dir / rows[str(ds.SOPInstanceUID)])
        assert np.array_equal(kept.pixel_array, ds.pixel_array)
        assert kept.file_meta.SourceApplicationEntityTitle == "DICOMWEB"
    assert "STOW-RS by pacs-forwarder: 6 instance(s) kept, 0 refused; the study completed" in node.log()


def test_a_bad_part_gets_its_failure_reason_and_the_rest_is_kept(node_factory, tmp_path: Path) -> None:
    node: Node = node_factory(CONFIG).start()
    token = node.run("users", "add", "pacs-forwarder", "--role", "operator").stdout.strip()
    files = write_ct_study(tmp_path / "study", series=1, slices=3)
    other = write_ct_study(tmp_path / "other", series=1, slices=1)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    good = [f.read_bytes() for f in files]
    not_dicom = b"this is not a DICOM file" * 10
    status, body = _post(node, f"/dicomweb/studies/{study_uid}",
                         [good[0], not_dicom, good[1], other[0].read_bytes(), good[2]], token)
    assert status == 202  # some kept, some not
    assert {_uid(i) for i in _items(body, "00081199")} == {str(dcmread(f).SOPInstanceUID) for f in files}
    failed = _items(body, "00081198")
    reasons = sorted(int(i["00081197"]["Value"][0]) for i in failed)
    assert reasons == sorted([CANNOT_UNDERSTAND, DOES_NOT_MATCH])
    [mismatched] = [i for i in failed if int(i["00081197"]["Value"][0]) == DOES_NOT_MATCH]
    assert _uid(mismatched) == str(dcmread(other[0]).SOPInstanceUID)  # the other study's instance, named
    with _db(node) as db:
        held = {uid for (uid,) in db.execute("SELECT sop_instance_uid FROM instances")}
    assert held == {str(dcmread(f).SOPInstanceUID) for f in files}
    assert _completion(node, study_uid) == ("complete", "stow-rs")

    # Nothing kept at all: 409; not multipart: 415; a torn body: 400. The node goes on.
    assert _post(node, "/dicomweb/studies", [not_dicom], token)[0] == 409
    assert _post(node, "/dicomweb/studies", [good[0]], token, content_type="application/dicom")[0] == 415
    request = urllib.request.Request(node.api_url + "/dicomweb/studies", method="POST", data=b"--x\r\nContent-Ty",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": 'multipart/related; type="application/dicom"; '
                                                              'boundary=x'})
    with pytest.raises(HTTPError) as torn:
        urllib.request.urlopen(request, timeout=30)
    assert torn.value.code == 400
    # Posted to /dicomweb/studies: kept, and the study waits for its quiet period.
    later = write_ct_study(tmp_path / "later", series=1, slices=2)
    assert _post(node, "/dicomweb/studies", [f.read_bytes() for f in later], token)[0] == 200
    assert _completion(node, str(dcmread(later[0]).StudyInstanceUID))[0] == "receiving"
    assert "Traceback" not in node.log()


def test_sigkill_right_after_the_200_loses_nothing(node_factory, tmp_path: Path) -> None:
    node: Node = node_factory(CONFIG).start()
    token = node.run("users", "add", "pacs-forwarder", "--role", "operator").stdout.strip()
    files = write_ct_study(tmp_path / "study", series=2, slices=8)
    sent = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in files}
    study_uid = str(next(iter(sent.values())).StudyInstanceUID)
    assert node.proc is not None
    processes = [node.proc.pid, *child_pids(node.proc.pid, recursive=True)]
    status, body = _post(node, f"/dicomweb/studies/{study_uid}", [f.read_bytes() for f in files], token)
    for pid in processes:  # every process of the node at once, the API process among them
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(10)
    node.proc = None
    assert status == 200 and len(_items(body, "00081199")) == len(files)

    node.start()
    with _db(node) as db:
        paths = dict(db.execute("SELECT sop_instance_uid, path FROM instances"))
        jobs = [k for (k,) in db.execute("SELECT kind FROM jobs")]
    assert set(paths) == set(sent)
    for uid, ds in sent.items():
        kept: Dataset = dcmread(node.data_dir / paths[uid])
        assert np.array_equal(kept.pixel_array, ds.pixel_array)
    assert _completion(node, study_uid) == ("complete", "stow-rs") and jobs == ["infer"]
