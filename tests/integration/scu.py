"""A small pynetdicom client for tests, sending datasets or files as they are."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.network.pynetdicom_internals import checked_requestor


def associate(
    port: int,
    contexts: Iterable[tuple[str, str]] = (),
    calling_ae: str = "TESTSCU",
    called_ae: str = "AINODE",
    tls: ssl.SSLContext | None = None,
    source: str = "127.0.0.1",
) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    # checked_requestor: a rejection the node sends at once would otherwise now and
    # then read as an abort, and a store's response be dropped (pynetdicom races).
    return checked_requestor(ae.associate(
        "127.0.0.1", port, ae_title=called_ae, bind_address=(source, 0),
        tls_args=(tls, "127.0.0.1") if tls else None,
        evt_handlers=[(evt.EVT_ABORTED, _no_response), (evt.EVT_CONN_CLOSE, _no_response)]))


def _no_response(event: evt.Event) -> None:
    # A request waiting for a response gets "none" at once when the node aborts or
    # closes, instead of waiting out the DIMSE timeout.
    event.assoc.dimse.msg_queue.put((None, None))


def store_datasets(port: int, datasets: list[Dataset], calling_ae: str = "TESTSCU") -> list[int]:
    """C-STORE each dataset (its file meta names the transfer syntax); the statuses."""
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    assoc = associate(port, sorted(contexts), calling_ae)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def store_files_raw(port: int, files: list[Path]) -> list[int]:
    """C-STORE files sending their encoded datasets byte for byte (no re-encoding)."""
    contexts = []
    for path in files:
        meta = dcmread(path, stop_before_pixels=True)
        contexts.append((str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
    statuses = []
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for path, context in zip(files, contexts, strict=True):
            assoc = associate(port, [context])
            assert assoc.is_established
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status else -1)
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses


def send_raw_c_store(assoc: Association, sop_class: str, sop_instance: str, transfer_syntax: str,
                     payload: bytes, message_id: int = 1) -> int | None:
    """C-STORE ``payload`` as the dataset, byte for byte, however malformed; the status,
    or None when no response came (the association was aborted or lost)."""
    request = C_STORE()
    request.MessageID, request.Priority = message_id, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, sop_instance
    request.DataSet = BytesIO(payload)
    response = send_request(assoc, request, transfer_syntax)
    if response is None or getattr(response, "Status", None) is None:
        return None
    return int(response.Status)


def send_request(assoc: Association, request: Any, transfer_syntax: str) -> Any:
    """Send any DIMSE request on the context of its SOP class and ``transfer_syntax``,
    as it is; the response primitive, or None when none came."""
    sop_class = request.AffectedSOPClassUID
    context = assoc._get_valid_context(sop_class, transfer_syntax, "scu")
    # As Association.send_c_store does: pause its reactor while this thread talks DIMSE.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, int(context.context_id))
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return response


def raw_associate_rq(calling_ae: str = "FUZZ", called_ae: str = "AINODE",
                     sop_classes: Iterable[str] = (Verification,)) -> bytes:
    """The bytes of a valid A-ASSOCIATE-RQ (explicit and implicit VR little endian for
    each SOP class), for tests that talk to the node over a raw socket."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling_ae, called_ae
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 11112)  # not encoded
    contexts = []
    for i, sop_class in enumerate(sop_classes):
        context = build_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        context.context_id = 2 * i + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
