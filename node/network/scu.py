"""The node as a DICOM client: C-ECHO and C-STORE of files to a peer."""

from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.settings import Destination, validate_ae_title
from node.network.pynetdicom_internals import checked_requestor
from node.network.tls import client_context

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


@dataclass(frozen=True)
class PeerAddress:
    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


def destination_peer(destination: Destination) -> PeerAddress:
    """The DICOM peer of a ``type = "dicom"`` destination, with its TLS context.

    Raises:
        TlsConfigError: a TLS file of the destination cannot be used.
    """
    context = client_context(destination.tls, destination.name) if destination.tls else None
    return PeerAddress(destination.ae_title or "", destination.host or "", int(destination.port or 0),
                       context)


def parse_address(text: str) -> PeerAddress:
    """Parse ``AE@HOST:PORT``; raises ``ValueError`` with what is wrong."""
    match = _ADDRESS.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not AE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return PeerAddress(validate_ae_title(match["ae"]), match["host"].strip("[]"), port)


def _nodelay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wake_waiters(event: evt.Event) -> None:
    # pynetdicom leaves a requestor waiting for a response until the DIMSE timeout
    # when the peer aborts or closes the connection; hand it "no response" now.
    event.assoc.dimse.msg_queue.put((None, None))


def _associate(ae: AE, peer: PeerAddress, ext_neg: list[Any] | None = None,
               handlers: list[tuple[Any, Any]] | None = None) -> Association:
    """An association to ``peer`` (TCP_NODELAY; a requestor that hears the peer leave
    stops waiting); ``ext_neg``: extended negotiation items such as SCP/SCU roles;
    ``handlers``: more event handlers (a C-GET's C-STORE handler)."""
    return checked_requestor(ae.associate(
        peer.host, peer.port, ae_title=peer.ae_title,
        tls_args=(peer.tls, peer.host) if peer.tls else None, ext_neg=ext_neg,
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_ABORTED, _wake_waiters),
                      (evt.EVT_CONN_CLOSE, _wake_waiters), *(handlers or [])],
    ))


def echo(peer: PeerAddress, calling_ae: str, timeout_s: float = 30.0) -> tuple[bool, str]:
    """C-ECHO ``peer``; returns (success, what happened)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer)
    if not assoc.is_established:
        return False, _why_not_established(assoc)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == 0x0000:
        return True, "C-ECHO succeeded"
    code = f"0x{status.Status:04X}" if status else "no response"
    return False, f"C-ECHO failed: {code}"


def _why_not_established(assoc: Association) -> str:
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        reason = getattr(rsp, "reason_str", "") if rsp is not None else ""
        return f"association rejected by the peer{': ' + reason if reason else ''}"
    if assoc.acceptor.primitive is None:
        return "no association: peer not reachable or not answering (check host and port)"
    if assoc.is_aborted:
        return "association aborted by the peer"
    return "no association established"


# --- sending files -----------------------------------------------------------------

SUCCESS, WARNING, FAILURE, SKIPPED = "success", "warning", "failure", "skipped"


@dataclass(frozen=True)
class SendOutcome:
    path: Path
    category: str  # success | warning | failure | skipped (not a DICOM file)
    detail: str


@dataclass
class SendReport:
    outcomes: list[SendOutcome] = field(default_factory=list)

    def count(self, category: str) -> int:
        return sum(1 for o in self.outcomes if o.category == category)

    def by_detail(self) -> dict[str, int]:
        summary: dict[str, int] = {}
        for o in self.outcomes:
            summary[o.detail] = summary.get(o.detail, 0) + 1
        return summary

    @property
    def ok(self) -> bool:
        return self.count(FAILURE) == 0


def collect_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files named, and every file below the folders named, in sorted order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


@dataclass(frozen=True)
class _Item:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def _item(path: Path) -> tuple[_Item | None, str]:
    """What to propose for a file: the SOP class and transfer syntax of its file meta
    (PS3.10: what the file says it holds), or why it cannot be sent. The whole file is
    read once, so that a truncated one is named here rather than sent cut short."""
    try:
        ds = dcmread(path)
    except InvalidDicomError:
        return None, "skipped: not a DICOM file"
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
        return None, f"not sent: the file cannot be read to its end, truncated or damaged ({type(exc).__name__})"
    meta = ds.get("file_meta")
    if meta is None or "TransferSyntaxUID" not in meta:
        return None, "skipped: not a DICOM Part 10 file (no file meta information)"
    sop_class = str(meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID") or "")
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID") or ds.get("SOPInstanceUID") or "")
    if not sop_class or not sop_instance or not str(ds.get("SOPInstanceUID") or ""):
        missing = "SOP Class UID" if not sop_class else "SOP Instance UID"
        return None, f"not sent: the file has no {missing}"
    is_image = "Rows" in ds or "Image Storage" in UID(sop_class).name
    if is_image and not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None, "not sent: the file ends before its pixel data (truncated?)"
    expected = _pixel_bytes(ds)
    if expected is not None and len(ds.PixelData) < expected:
        return None, (f"not sent: the pixel data is truncated ({len(ds.PixelData)} of {expected} bytes)")
    return _Item(path, sop_class, str(meta.TransferSyntaxUID)), ""


def _pixel_bytes(ds: Any) -> int | None:
    """The bytes native (uncompressed) pixel data must have; None when encapsulated or unknown."""
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames \
            * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None


def _classify(status: Any) -> tuple[str, str]:
    if status is None or "Status" not in status:
        return FAILURE, "no response (association lost or timed out)"
    code = int(status.Status)
    if code == 0x0000:
        return SUCCESS, "0x0000 success"
    if code in (0x0001, 0xB000, 0xB006, 0xB007) or (code & 0xF000) == 0xB000:
        return WARNING, f"0x{code:04X} warning"
    comment = str(status.get("ErrorComment", "")).strip()
    return FAILURE, f"0x{code:04X} failure" + (f" ({comment})" if comment else "")


def send_files(
    files: list[Path],
    peer: PeerAddress,
    calling_ae: str,
    on_outcome: Callable[[SendOutcome], None] | None = None,
    timeout_s: float = 60.0,
) -> SendReport:
    """C-STORE ``files`` to ``peer``, proposing exactly their SOP classes and transfer
    syntaxes, over as few associations as the 128-context limit allows."""
    report = SendReport()

    def record(outcome: SendOutcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    items: list[_Item] = []
    for path in files:
        item, problem = _item(path)
        if item is None:
            record(SendOutcome(path, SKIPPED if problem.startswith("skipped") else FAILURE, problem))
        else:
            items.append(item)

    contexts = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
    for start in range(0, len(contexts), MAX_CONTEXTS):
        batch = set(contexts[start : start + MAX_CONTEXTS])
        _send_batch([i for i in items if (i.sop_class_uid, i.transfer_syntax_uid) in batch],
                    sorted(batch), peer, calling_ae, timeout_s, record)
    return report


def _send_batch(
    items: list[_Item],
    contexts: list[tuple[str, str]],
    peer: PeerAddress,
    calling_ae: str,
    timeout_s: float,
    record: Callable[[SendOutcome], None],
) -> None:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.maximum_pdu_size = 0
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    assoc = _associate(ae, peer)
    try:
        for index, item in enumerate(items):
            if not assoc.is_established:
                why = _why_not_established(assoc)
                for rest in items[index:]:
                    record(SendOutcome(rest.path, FAILURE, why))
                return
            try:
                status = assoc.send_c_store(item.path)
            except Exception as exc:  # noqa: BLE001 - one unreadable file does not end the run
                record(SendOutcome(item.path, FAILURE, f"not sent: {type(exc).__name__}: {exc}"[:300]))
                continue
            category, detail = _classify(status)
            record(SendOutcome(item.path, category, detail))
    finally:
        if assoc.is_established:
            assoc.release()
