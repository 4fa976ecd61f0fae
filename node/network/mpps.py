"""The Modality Performed Procedure Step SCP (PS3.4 F.7): N-CREATE when a modality
starts a procedure, N-SET when it completes or discontinues it with the instances it
made. The listener serves it on its ports; the steps are rows (storage.mpps), and a
study whose completed steps' instances have all arrived completes at once (the
completion sweep, and the N-SET itself when the images came first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from storage.mpps import StepStatus, StepUpdate, create_step, update_step

log = logging.getLogger(__name__)

# PS3.4 F.7.2.1.2, F.7.2.2.2 and PS3.7 C (statuses of N-CREATE and N-SET)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
NO_LONGER_UPDATABLE = 0xA710  # the step is COMPLETED or DISCONTINUED already

_UID = 64


def _instances(ds: Dataset) -> list[str] | None:
    """The SOP Instance UIDs of a Performed Series Sequence, images and other objects;
    None when the dataset does not carry the sequence."""
    if "PerformedSeriesSequence" not in ds:
        return None
    found: list[str] = []
    for series in ds.PerformedSeriesSequence or []:
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in series.get(keyword) or []:
                uid = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
                if uid and len(uid) <= _UID:
                    found.append(uid)
    return found


def _study_uid(ds: Dataset) -> str | None:
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        uid = str(item.get("StudyInstanceUID", "") or "").strip()
        if uid and len(uid) <= _UID:
            return uid
    return None


def _status(ds: Dataset) -> StepStatus | None:
    """The step's status; None when absent, ``ValueError`` when not one PS3.3 knows."""
    if "PerformedProcedureStepStatus" not in ds:
        return None
    return StepStatus(str(ds.PerformedProcedureStepStatus or "").strip().upper())


def _decoded(event: evt.Event, attribute: str, what: str, calling_ae: str) -> Dataset | None:
    """The request's dataset (``attribute_list`` or ``modification_list``), or None
    (logged) when it does not decode."""
    try:
        ds = getattr(event, attribute)
    except Exception as exc:  # a dataset that does not decode
        log.warning("MPPS %s from %s refused: its %s does not decode (%s)", what, calling_ae,
                    attribute.replace("_", " "), type(exc).__name__)
        return None
    assert isinstance(ds, Dataset)
    return ds


class ProcedureSteps:
    """The handlers of N-CREATE and N-SET on the MPPS SOP Class."""

    def __init__(self, engine: Engine, on_completed: Callable[[str], object] | None = None) -> None:
        """``on_completed(study_instance_uid)``: called after an N-SET reported a step
        COMPLETED, to complete the study at once when its instances are all here."""
        self._engine = engine
        self._on_completed = on_completed

    def handlers(self) -> list[tuple[Any, Callable[[evt.Event], Any]]]:
        return [(evt.EVT_N_CREATE, self.on_create), (evt.EVT_N_SET, self.on_set)]

    def on_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        ds = _decoded(event, "attribute_list", "N-CREATE", calling_ae)
        if ds is None:
            return INVALID_ATTRIBUTE_VALUE, None
        try:
            status = _status(ds)
        except ValueError:
            status = None
            if "PerformedProcedureStepStatus" in ds:
                log.warning("MPPS N-CREATE from %s refused: Performed Procedure Step Status is not IN PROGRESS",
                            calling_ae)
                return INVALID_ATTRIBUTE_VALUE, None
        if status != StepStatus.IN_PROGRESS:
            log.warning("MPPS N-CREATE from %s refused: Performed Procedure Step Status is %s, not IN PROGRESS",
                        calling_ae, status or "missing")
            return (MISSING_ATTRIBUTE if status is None else INVALID_ATTRIBUTE_VALUE), None
        request = event.request
        assert isinstance(request, N_CREATE)
        uid = str(request.AffectedSOPInstanceUID or "") or generate_uid()
        try:
            created = create_step(self._engine, uid, _study_uid(ds), StepStatus.IN_PROGRESS,
                                  _instances(ds) or [], calling_ae or None)
        except SQLAlchemyError as exc:
            log.error("MPPS N-CREATE from %s failed: cannot record it (%s)", calling_ae, type(exc).__name__)
            return PROCESSING_FAILURE, None
        if not created:
            log.warning("MPPS N-CREATE from %s refused: step %s exists already", calling_ae, uid)
            return DUPLICATE_SOP_INSTANCE, None
        log.info("MPPS %s from %s: IN PROGRESS", uid, calling_ae)
        reply = Dataset()
        reply.PerformedProcedureStepStatus = StepStatus.IN_PROGRESS.value
        if not request.AffectedSOPInstanceUID:
            reply.SOPInstanceUID = uid  # the SCP made the UID: the modality needs it for its N-SET
        return SUCCESS, reply

    def on_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        request = event.request
        assert isinstance(request, N_SET)
        uid = str(request.RequestedSOPInstanceUID or "")
        ds = _decoded(event, "modification_list", "N-SET", calling_ae)
        if ds is None:
            return INVALID_ATTRIBUTE_VALUE, None
        try:
            status = _status(ds)
        except ValueError:
            log.warning("MPPS N-SET from %s refused: its Performed Procedure Step Status is not one PS3.3 knows",
                        calling_ae)
            return INVALID_ATTRIBUTE_VALUE, None
        if status == StepStatus.IN_PROGRESS:
            status = None  # no change
        try:
            outcome, study = update_step(self._engine, uid, status, _instances(ds))
        except SQLAlchemyError as exc:
            log.error("MPPS N-SET from %s failed: cannot record it (%s)", calling_ae, type(exc).__name__)
            return PROCESSING_FAILURE, None
        if outcome == StepUpdate.UNKNOWN:
            log.warning("MPPS N-SET from %s refused: no step %s", calling_ae, uid)
            return NO_SUCH_SOP_INSTANCE, None
        if outcome == StepUpdate.FINAL:
            log.warning("MPPS N-SET from %s refused: step %s is completed or discontinued already", calling_ae, uid)
            return NO_LONGER_UPDATABLE, None
        log.info("MPPS %s from %s: %s", uid, calling_ae, status or "updated")
        if status == StepStatus.COMPLETED and study and self._on_completed is not None:
            try:
                self._on_completed(study)
            except SQLAlchemyError as exc:  # the sweep will complete it
                log.warning("study completion after MPPS %s deferred to the sweep (%s)", uid, type(exc).__name__)
        return SUCCESS, ds
