"""Completion from MPPS: a pynetdicom modality reports its procedure steps (N-CREATE,
N-SET) around its C-STOREs to a running node. A study completes as soon as exactly the
instances a COMPLETED step lists have arrived, with the quiet period at 60 s: images
sent before the N-SET, and images that come after it. A step that lists more than was
sent, a step never completed and a DISCONTINUED one leave the study to the quiet
period, and its timeline says why. Wrong N-CREATEs and N-SETs get their PS3.4 statuses."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    Verification,
)

from tests.conftest import Node, wait_until
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration

ROUTES = '[[routes]]\nname = "ct"\nmodel = "ct-chest"\n[routes.match]\nmodality = ["CT"]\n'


def _modality(node: Node) -> Association:
    ae = AE(ae_title="CT_SCANNER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert assoc.is_established
    return assoc


def _started(study_uid: str) -> Dataset:
    """The N-CREATE attribute list of a step for ``study_uid`` (PS3.4 F.7.2.1)."""
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID, item.AccessionNumber = study_uid, "ACC1"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID, ds.PerformedStationAETitle = "PPS1", "CT_SCANNER"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261204", "080000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def _finished(status: str, series: dict[str, list[str]]) -> Dataset:
    """The N-SET modification list: the final status and the instances of each series."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = "20261204", "081000"
    items = []
    for series_uid, instances in series.items():
        item = Dataset()
        item.SeriesInstanceUID, item.PerformingPhysicianName, item.ProtocolName = series_uid, "", "CHEST"
        refs = []
        for uid in instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, uid
            refs.append(ref)
        item.ReferencedImageSequence = refs
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        items.append(item)
    ds.PerformedSeriesSequence = items
    return ds


def _create(assoc: Association, step: str, study_uid: str, status: str = "IN PROGRESS") -> int:
    ds = _started(study_uid)
    ds.PerformedProcedureStepStatus = status
    result, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, step)
    return int(result.Status)


def _set(assoc: Association, step: str, status: str, series: dict[str, list[str]]) -> int:
    result, _ = assoc.send_n_set(_finished(status, series), ModalityPerformedProcedureStep, step)
    return int(result.Status)


def _store(assoc: Association, files: list[Path]) -> None:
    for path in files:
        assert int(assoc.send_c_store(dcmread(path)).Status) == 0


def _listed(files: list[Path]) -> dict[str, list[str]]:
    series: dict[str, list[str]] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        series.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
    return series


def _study(node: Node, study_uid: str) -> tuple[str, str | None, float | None, float]:
    """state, completion reason, seconds from the last image to completion, and the
    completed step's detail."""
    with sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True, timeout=30) as db:
        row = db.execute("SELECT state, completion_reason, completed_at, last_received_at FROM studies "
                         "WHERE study_instance_uid = ?", (study_uid,)).fetchone()
    if row is None:
        return ("missing", None, None, 0.0)
    state, reason, completed, last = row

    def at(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    return state, reason, (at(completed) - at(last)) if completed else None, at(last)


def _steps(node: Node, study_uid: str) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True, timeout=30) as db:
        return list(db.execute("SELECT e.step, coalesce(e.detail, '') FROM study_events e JOIN studies s "
                               "ON s.id = e.study_id WHERE s.study_instance_uid = ? ORDER BY e.id", (study_uid,)))


def test_a_study_completes_once_the_instances_its_completed_step_lists_are_here(node_factory,
                                                                                tmp_path: Path) -> None:
    node: Node = node_factory("quiet_period_s = 60\ncompletion_sweep_s = 0.5\n" + ROUTES).start()
    before = write_ct_study(tmp_path / "before", series=2, slices=4)  # images, then the N-SET
    after = write_ct_study(tmp_path / "after", series=1, slices=6)  # the N-SET, then the rest of the images
    first_uid = str(dcmread(before[0]).StudyInstanceUID)
    second_uid = str(dcmread(after[0]).StudyInstanceUID)
    assoc = _modality(node)
    try:
        step_one, step_two = generate_uid(), generate_uid()
        assert _create(assoc, step_one, first_uid) == 0
        _store(assoc, before)
        assert _set(assoc, step_one, "COMPLETED", _listed(before)) == 0
        state, reason, lag, _ = wait_until(lambda: (s := _study(node, first_uid))[0] != "receiving" and s, 5,
                                           "the first study to complete")
        assert (state, reason) == ("complete", "mpps") and lag is not None and lag < 1.0

        assert _create(assoc, step_two, second_uid) == 0
        _store(assoc, after[:3])
        assert _set(assoc, step_two, "COMPLETED", _listed(after)) == 0
        time.sleep(2)  # three of the six listed are here: not complete
        assert _study(node, second_uid)[0] == "receiving"
        _store(assoc, after[3:])
        state, reason, lag, _ = wait_until(lambda: (s := _study(node, second_uid))[0] != "receiving" and s, 5,
                                           "the second study to complete")
        assert (state, reason) == ("complete", "mpps") and lag is not None and lag < 1.0

        # What PS3.4 says of wrong requests.
        assert _set(assoc, step_one, "COMPLETED", _listed(before)) == 0xA710  # completed already
        assert _set(assoc, generate_uid(), "COMPLETED", {}) == 0x0112  # no such step
        assert _create(assoc, step_one, first_uid) == 0x0111  # exists already
        assert _create(assoc, generate_uid(), first_uid, status="COMPLETED") == 0x0106  # must start IN PROGRESS
        assert int(assoc.send_c_echo().Status) == 0  # and the association goes on
    finally:
        assoc.release()
    steps = _steps(node, first_uid)
    assert ("procedure_step", "the modality reported the procedure COMPLETED (8 instance(s) listed)") in steps
    assert any(step == "completed" and detail.startswith("mpps; ct -> ct-chest") for step, detail in steps)
    assert "Traceback" not in node.log()


def test_steps_that_list_more_never_complete_or_are_discontinued_leave_the_study_to_the_quiet_period(
        node_factory, tmp_path: Path) -> None:
    node: Node = node_factory("quiet_period_s = 4\ncompletion_sweep_s = 0.5\n" + ROUTES).start()
    studies = {name: write_ct_study(tmp_path / name, series=1, slices=3)
               for name in ("more", "unfinished", "discontinued")}
    uids = {name: str(dcmread(files[0]).StudyInstanceUID) for name, files in studies.items()}
    assoc = _modality(node)
    try:
        for name, files in studies.items():
            step = generate_uid()
            assert _create(assoc, step, uids[name]) == 0
            _store(assoc, files)
            listed = _listed(files)
            if name == "more":  # the N-SET lists one more image than was sent
                next(iter(listed.values())).append(generate_uid())
                assert _set(assoc, step, "COMPLETED", listed) == 0
            elif name == "discontinued":
                assert _set(assoc, step, "DISCONTINUED", listed) == 0
    finally:
        assoc.release()
    time.sleep(2)  # none completes by its steps
    assert {name: _study(node, uid)[0] for name, uid in uids.items()} == dict.fromkeys(uids, "receiving")
    for name, uid in uids.items():
        state, reason, lag, _ = wait_until(lambda u=uid: (s := _study(node, u))[0] != "receiving" and s, 15,
                                           f"{name} to complete by the quiet period")
        assert (state, reason) == ("complete", "quiet") and lag is not None and lag >= 4.0
    [more] = [d for s, d in _steps(node, uids["more"]) if s == "completed"]
    assert more.endswith("its procedure steps listed 1 instance(s) that did not arrive")
    [unfinished] = [d for s, d in _steps(node, uids["unfinished"]) if s == "completed"]
    assert unfinished.endswith("1 of its 1 procedure step(s) not reported completed")
    assert ("procedure_step", "the modality reported the procedure DISCONTINUED (3 instance(s) listed); the study "
            "completes by its quiet period") in _steps(node, uids["discontinued"])
