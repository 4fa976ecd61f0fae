"""The node asking an archive for studies: C-FIND at study level (Study Root), and C-MOVE
of one study to the node or C-GET of it on the node's own association (PS3.4 C). Used
by backfill (``ainode fetch``) and the retrieval jobs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from config.settings import PacsSettings
from node.network.archive import MoveOutcome, QueryFailed, StudyMatch
from node.network.intake import PROCESSING_FAILURE, SUCCESS, InstanceIntake, Refusal
from node.network.listener import ACCEPTED_TRANSFER_SYNTAXES
from node.network.scu import PeerAddress, _associate, _why_not_established
from node.network.wado import search_studies

log = logging.getLogger(__name__)

#: Study-level attributes a C-FIND asks the archive to return.
RETURN_KEYS = ("StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime", "ModalitiesInStudy",
               "NumberOfStudyRelatedInstances", "StudyDescription", "PatientID")


def _peer(pacs: PacsSettings) -> PeerAddress:
    assert pacs.host is not None and pacs.port is not None  # the settings ask for them without dicomweb_url
    return PeerAddress(pacs.ae_title, pacs.host, pacs.port)


def _ae(calling_ae: str, pacs: PacsSettings, context: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = pacs.timeout_s
    ae.add_requested_context(context)
    return ae


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value or "").strip()


def _match(ds: Dataset) -> StudyMatch | None:
    uid = _text(ds, "StudyInstanceUID")
    if not uid or len(uid) > 64:
        return None
    count = ds.get("NumberOfStudyRelatedInstances")
    try:
        instances = int(count) if count not in (None, "") else None
    except (TypeError, ValueError):
        instances = None
    modalities = ds.get("ModalitiesInStudy") or []
    if isinstance(modalities, str):
        modalities = [modalities]
    return StudyMatch(uid, _text(ds, "AccessionNumber"), _text(ds, "StudyDate"),
                      tuple(str(m) for m in modalities if m), instances, _text(ds, "StudyDescription"))


def find_studies(pacs: PacsSettings, calling_ae: str, **keys: str) -> list[StudyMatch]:
    """The studies matching ``keys`` (e.g. AccessionNumber="A1", StudyDate="20250101-20250131",
    ModalitiesInStudy="CT"), one C-FIND at study level (or one QIDO-RS search when the
    archive is reached over DICOMweb); raises :class:`QueryFailed`."""
    if pacs.dicomweb_url:
        return [m for m in (_match(ds) for ds in search_studies(pacs, RETURN_KEYS, keys)) if m is not None]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(query, keyword, "")
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    assoc = _associate(_ae(calling_ae, pacs, StudyRootQueryRetrieveInformationModelFind), _peer(pacs))
    if not assoc.is_established:
        raise QueryFailed(f"C-FIND to {pacs.ae_title}: {_why_not_established(assoc)}")
    found: list[StudyMatch] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise QueryFailed(f"C-FIND to {pacs.ae_title}: no response (timeout or connection lost)")
            if code in (0xFF00, 0xFF01):
                match = _match(identifier) if identifier is not None else None
                if match is not None:
                    found.append(match)
            elif code != 0x0000:
                raise QueryFailed(f"C-FIND to {pacs.ae_title} answered 0x{code:04X}")
    finally:
        assoc.release()
    return found


def _move_responses(assoc: Any, query: Dataset, destination: str) -> Iterator[tuple[int | None, Dataset]]:
    for status, _identifier in assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove):
        code = int(status.Status) if status and "Status" in status else None
        yield code, status


def move_study(pacs: PacsSettings, calling_ae: str, study_instance_uid: str, destination: str) -> MoveOutcome:
    """Have the archive send one study to ``destination`` (C-MOVE); the counts of its
    sub-operations once all are done. Raises :class:`QueryFailed` when the move fails
    or some instances were not sent."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    assoc = _associate(_ae(calling_ae, pacs, StudyRootQueryRetrieveInformationModelMove), _peer(pacs))
    if not assoc.is_established:
        raise QueryFailed(f"C-MOVE from {pacs.ae_title}: {_why_not_established(assoc)}")
    final: tuple[int, Dataset] | None = None
    try:
        for code, status in _move_responses(assoc, query, destination):
            if code is None:
                raise QueryFailed(f"C-MOVE from {pacs.ae_title}: no response (timeout or connection lost)")
            if code != 0xFF00:  # pending responses report progress; the last one the outcome
                final = (code, status)
    finally:
        assoc.release()
    if final is None:
        raise QueryFailed(f"C-MOVE from {pacs.ae_title}: no final response")
    code, status = final
    if code == 0xA801:
        raise QueryFailed(f"C-MOVE from {pacs.ae_title}: it does not know the destination {destination!r} "
                          "(add this node to the archive's modalities, or set pacs.retrieve = \"get\")")
    return _outcome("C-MOVE", pacs, code, status)


def _outcome(operation: str, pacs: PacsSettings, code: int, status: Dataset) -> MoveOutcome:
    """The counts of a C-MOVE's or C-GET's final response; raises :class:`QueryFailed`
    when it failed or some instances were not sent."""
    def count(keyword: str) -> int:
        return int(status.get(keyword, 0) or 0)
    outcome = MoveOutcome(count("NumberOfCompletedSuboperations"), count("NumberOfFailedSuboperations"),
                          count("NumberOfWarningSuboperations"))
    if code not in (0x0000, 0xB000) or outcome.failed:
        raise QueryFailed(f"{operation} from {pacs.ae_title} answered 0x{code:04X}: {outcome.completed} sent, "
                          f"{outcome.failed} failed")
    return outcome


class _GetReceiver:
    """The C-STOREs an archive sends back on a C-GET association: each kept through the
    node's intake (the same checks, durable write and row as a listener's C-STORE)
    before it is acknowledged."""

    def __init__(self, pacs: PacsSettings, intake: InstanceIntake) -> None:
        self._pacs, self._intake = pacs, intake
        self.kept = self.refused = 0

    def __call__(self, event: Any) -> int:
        try:
            refusal = self._intake.keep_fetched(event.request.DataSet.getbuffer(),
                                                str(event.context.transfer_syntax), self._pacs.ae_title)
        except Exception as exc:  # never let one dataset end the retrieval: it is counted as failed
            log.error("C-GET from %s: an instance could not be kept (%s)", self._pacs.ae_title, type(exc).__name__)
            refusal = Refusal(PROCESSING_FAILURE, "processing failure")
        if refusal is None:
            self.kept += 1
            return SUCCESS
        self.refused += 1
        return refusal.status


def get_study(pacs: PacsSettings, calling_ae: str, study_instance_uid: str, intake: InstanceIntake) -> MoveOutcome:
    """Fetch one study with C-GET: the archive sends its instances back on this
    association (the node takes the Storage SCP role for each storage SOP class it
    proposes) and each is kept before it is acknowledged. For archives that cannot be
    told where the node is (C-MOVE needs the node's address on the archive's side).
    Raises :class:`QueryFailed` when the retrieval fails or an instance was not kept."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    ae = _ae(calling_ae, pacs, StudyRootQueryRetrieveInformationModelGet)
    # 120 storage SOP classes and the C-GET context: within the 128 an association allows.
    roles = []
    for context in StoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_requested_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    receiver = _GetReceiver(pacs, intake)
    assoc = _associate(ae, _peer(pacs), ext_neg=roles, handlers=[(evt.EVT_C_STORE, receiver)])
    if not assoc.is_established:
        raise QueryFailed(f"C-GET from {pacs.ae_title}: {_why_not_established(assoc)}")
    final: tuple[int, Dataset] | None = None
    try:
        for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise QueryFailed(f"C-GET from {pacs.ae_title}: no response (timeout or connection lost)")
            if code != 0xFF00:
                final = (code, status)
    finally:
        assoc.release()
    if final is None:
        raise QueryFailed(f"C-GET from {pacs.ae_title}: no final response")
    outcome = _outcome("C-GET", pacs, *final)
    if receiver.refused:
        raise QueryFailed(f"C-GET from {pacs.ae_title}: {receiver.kept} instance(s) kept, "
                          f"{receiver.refused} refused by this node")
    return outcome
