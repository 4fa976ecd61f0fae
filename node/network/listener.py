"""The DICOM listener: C-ECHO and C-STORE of every storage SOP class.

A C-STORE is answered Success only after its file is durable (fsync, atomic
rename) and its row committed. Anything that prevents that is answered with a
failure status, and the association and the node go on serving.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Connection, Engine

from config.settings import Settings
from node.network.access import AccessPolicy
from node.network.balance import ConnectionBalancer
from node.network.data_phase import Answer, Context, DataPhase, StoreRequest
from node.network.handshake import (
    HandshakeRefused,
    PduLimits,
    PendingHandshakes,
    associate_rj,
    read_associate_request,
)
from node.network.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    MB,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    InstanceIntake,
    Refusal,
)
from node.network.mpps import ProcedureSteps
from node.network.pynetdicom_internals import (
    PERFORMED_PROCEDURE_STEP,
    AcceptingServer,
    Admission,
    DataPhaseServer,
    TlsAcceptingServer,
    admission_of,
    check_internals,
    guard_network_thread,
    refuse_other_services,
    serve_data_phase,
    when_finished,
)
from node.network.throttled_log import ThrottledLog
from node.network.tls import peer_identity, server_context
from storage.files import FileStore

log = logging.getLogger(__name__)


# Everything pynetdicom can negotiate, plus the retired JPEG processes some older
# modalities still send: the node stores what it receives without decoding it.
ACCEPTED_TRANSFER_SYNTAXES = [
    *ALL_TRANSFER_SYNTAXES,
    "1.2.840.10008.1.2.4.53",  # JPEG Extended (Process 6 & 8), retired
    "1.2.840.10008.1.2.4.55",  # JPEG Full Progression (Process 10 & 12), retired
]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(2.0)
        sock.sendall(data)
    except OSError:
        pass


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


# A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local limit exceeded
REJECT_LIMIT = (0x02, 0x03, 0x02)


PEER_BUCKETS = 1024  # hosts are counted in this many buckets per listener process


def _bucket(host: str) -> int:
    # crc32, not hash(): it must be the same in every listener process.
    return zlib.crc32(host.encode()) % PEER_BUCKETS


class AssociationSlots:
    """Associations open across all listener processes, in shared memory, so that
    ``max_associations`` and ``max_associations_per_peer`` hold for the node as a whole.

    ``counters`` has one total per process; ``peers`` has ``PEER_BUCKETS`` counters per
    process, one per bucket of sending hosts. Two hosts in one bucket share a count
    (rare with 1,024 buckets): the limit can then bite a little early, never late.
    """

    def __init__(self, counters: Any, index: int, maximum: int, peers: Any = None,
                 per_peer: int | None = None) -> None:
        self._counters = counters
        self._index = index
        self._maximum = maximum
        self._peers = peers if peers is not None else [0] * ((index + 1) * PEER_BUCKETS)
        self._per_peer = per_peer or maximum
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget this process's counts (a restarted listener holds no associations)."""
        self._counters[self._index] = 0
        start = self._index * PEER_BUCKETS
        self._peers[start : start + PEER_BUCKETS] = [0] * PEER_BUCKETS

    def opened(self, host: str) -> None:
        with self._lock:
            self._counters[self._index] += 1
            self._peers[self._index * PEER_BUCKETS + _bucket(host)] += 1

    def closed(self, host: str) -> None:
        with self._lock:
            self._counters[self._index] -= 1
            self._peers[self._index * PEER_BUCKETS + _bucket(host)] -= 1

    def over_limit(self, host: str) -> str | None:
        """Which limit a new association from ``host`` would exceed, if any."""
        if sum(self._counters[:]) > self._maximum:
            return "max_associations"
        bucket = _bucket(host)
        if sum(self._peers[i * PEER_BUCKETS + bucket] for i in range(len(self._counters))) > self._per_peer:
            return "max_associations_per_peer"
        return None




@dataclass
class _Traffic:
    """What one association has brought so far."""

    host: str
    total: int = 0  # dataset bytes
    message: int = 0  # dataset bytes of the instance arriving now
    aborting: bool = False


@dataclass
class _InFlight:
    """C-STOREs being handled, so that shutdown can wait for them to finish."""

    count: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.cond = threading.Condition()

    def enter(self) -> bool:
        with self.cond:
            if self.closed:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify_all()

    def close_and_wait(self, timeout: float) -> bool:
        with self.cond:
            self.closed = True
            return self.cond.wait_for(lambda: self.count == 0, timeout)


class StorageListener:
    """Receives images over DICOM into the file store and the database."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: FileStore,
        slots: AssociationSlots | None = None,
        on_reference: Callable[[Connection, str], None] | None = None,
        on_procedure_completed: Callable[[str], object] | None = None,
        balancer: ConnectionBalancer | None = None,
    ) -> None:
        """``on_reference(conn, sop_instance_uid)``: called in the transaction that records
        a SEG (a reference or corrected segmentation), to queue its comparison.
        ``on_procedure_completed(study_instance_uid)``: called when a modality's MPPS N-SET
        reports a procedure COMPLETED, to complete the study at once if its images are here.
        ``balancer``: this process's place among the listener processes sharing the port."""
        self._settings = settings
        self._in_flight = _InFlight()
        self._intake = InstanceIntake(settings, engine, store, "C-STORE", on_reference,
                                      closing=lambda: self._in_flight.closed)
        self._procedure_steps = ProcedureSteps(engine, on_procedure_completed)
        self.policy = AccessPolicy.from_settings(settings)
        self._slots = slots or AssociationSlots([0], 0, settings.max_associations,
                                                per_peer=settings.max_associations_per_peer)
        self._servers: list[AcceptingServer] = []
        self._balancer = balancer
        self._stopping = threading.Event()
        self._traffic: dict[int, _Traffic] = {}
        self._pending = PendingHandshakes(settings.max_pending_handshakes,
                                          settings.max_pending_handshakes_per_peer)
        self._pdu_limits = PduLimits.from_settings(settings.max_pdu_size, self._intake.max_instance_bytes)
        # each kind of line its own throttle: a stream of stalled connections must
        # not hide a peer that sends malformed PDUs, nor the other way round
        self._no_handshake = ThrottledLog(log, 10.0, logging.INFO)
        self._bad_handshake = ThrottledLog(log, 10.0)
        check_internals()
        self._ae = self._build_ae()
        # Built now, so that a bad certificate or key is reported at start-up.
        self._tls_context = server_context(settings.tls) if settings.tls else None

    def _build_ae(self) -> AE:
        s = self._settings
        ae = AE(ae_title=s.ae_title)
        # The node counts associations itself (AssociationSlots, across processes and
        # per host, released as soon as a connection closes). pynetdicom's own count is
        # of threads, which linger up to the ACSE timeout after a peer hung up early, so
        # that a burst of broken connections would lock everyone out: keep it out of the way.
        ae.maximum_associations = 10 * s.max_associations + 100
        ae.maximum_pdu_size = s.max_pdu_size
        ae.network_timeout = s.network_timeout_s
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(PERFORMED_PROCEDURE_STEP, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    @property
    def port(self) -> int:
        """The plain port actually bound (useful when configured as 0 in tests)."""
        assert self._servers, "listener not started"
        return int(self._servers[0].server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The TLS port actually bound, if there is one."""
        return int(self._servers[1].server_address[1]) if len(self._servers) > 1 else None

    def start(self) -> None:
        """Bind the plain port (and the TLS port) and serve in background threads."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
            *self._procedure_steps.handlers(),
        ]
        s = self._settings
        plain = self._ae.make_server((s.host, s.port), evt_handlers=handlers, server_class=AcceptingServer)
        assert isinstance(plain, AcceptingServer)
        self._servers.append(plain)
        if s.tls is not None:
            tls = self._ae.make_server((s.host, s.tls.port), evt_handlers=handlers,
                                       server_class=TlsAcceptingServer, ssl_context=self._tls_context)
            assert isinstance(tls, TlsAcceptingServer)
            self._servers.append(tls)
        for server in self._servers:
            server.gate = self._admit
            server.balancer = self._balancer
            threading.Thread(target=server.serve_forever, name="ainode-accept", daemon=True).start()
        if self._balancer is not None:
            self._balancer.join()
            threading.Thread(target=self._balancer.receive, args=(self._serve_passed, self._stopping),
                             name="ainode-passed", daemon=True).start()

    def _serve_passed(self, sock: socket.socket, address: tuple[str, int], tls: bool) -> None:
        """A connection a sibling listener process accepted and passed to this one."""
        server = next((s for s in self._servers if s.tls == tls), None)
        if server is None:
            sock.close()
            if self._balancer is not None:
                self._balancer.done()
            return
        server.serve_passed(sock, address)

    def stop(self, drain_timeout_s: float = 30.0) -> bool:
        """Stop accepting, let C-STOREs in progress finish, then close associations.

        Returns ``False`` when C-STOREs were still running at the timeout.
        """
        if not self._servers:
            return True
        servers, self._servers = self._servers, []
        self._stopping.set()
        if self._balancer is not None:
            self._balancer.leave()
        # Stop accepting and close the listening sockets; established associations
        # go on until the C-STOREs in progress have finished, then are aborted.
        for server in servers:
            server.shutdown()  # the accept loop ends and the listening socket closes
        drained = self._in_flight.close_and_wait(drain_timeout_s)
        for server in servers:
            for assoc in server.active_associations:
                assoc.abort()
        self._intake.close()
        return drained

    # --- event handlers -------------------------------------------------------------

    def _admit(self, sock: socket.socket, host: str) -> Admission | None:
        """A new connection, in its own thread: its whole A-ASSOCIATE-RQ within
        handshake_timeout_s, then the access policy, then an association slot.

        Until then it holds no slot, only a place among the pending handshakes, so
        that connections that never ask for an association keep nobody out.
        """
        deadline = time.monotonic() + self._settings.handshake_timeout_s
        ticket = self._pending.add(host, sock)
        try:
            request = read_associate_request(sock, deadline)
        except HandshakeRefused as refused:
            if refused.tls:
                log.warning("TLS connection from %s refused: %s", host, refused.reason)
            elif refused.quiet:
                log.debug("connection from %s closed: %s", host, refused.reason)
            else:
                throttled = self._bad_handshake if refused.answer else self._no_handshake
                throttled("connection from %s closed: %s", host, refused.reason)
            if refused.answer:
                _send_quietly(sock, refused.answer)
            return None
        finally:
            self._pending.remove(ticket)
        if isinstance(sock, ssl.SSLSocket) and (who := peer_identity(sock)):
            log.info("TLS connection from %s with client certificate %r", host, who)
        calling = request.calling_ae_title
        decision = self.policy.decide(calling, request.called_ae_title, host)
        if not decision.allowed:
            assert decision.reject is not None
            log.warning("association rejected: %s", decision.reason)
            _send_quietly(sock, associate_rj(*decision.reject))
            return None
        self._slots.opened(host)
        limit = self._slots.over_limit(host)
        if limit:
            self._slots.closed(host)
            log.warning("association rejected: %r from %s: %s reached; raise it if the peers need more",
                        calling, host, limit)
            _send_quietly(sock, associate_rj(*REJECT_LIMIT))
            return None
        released = threading.Event()

        def release() -> None:  # once, at connection close or when the association's thread ends
            if not released.is_set():
                released.set()
                self._slots.closed(host)

        return Admission(request.pdu, self._pdu_limits, release, self._settings.network_timeout_s)

    def _on_connection(self, event: evt.Event) -> None:
        """An admitted connection, before its association thread starts."""
        assoc = event.assoc
        address = getattr(event, "address", None)  # set for connection events
        host = str(address[0]) if address else ""
        self._traffic[id(assoc)] = _Traffic(host)
        guard_network_thread(assoc, host)
        refuse_other_services(assoc, host)
        serve_data_phase(assoc, self._data_phase_for)
        when_finished(assoc, lambda: self._forget(assoc))

    def _forget(self, assoc: Association) -> None:
        self._traffic.pop(id(assoc), None)

    def _on_close(self, event: evt.Event) -> None:
        """The slot is free as soon as the connection closes (the association's
        thread may linger until its timeouts)."""
        self._traffic.pop(id(event.assoc), None)
        admission = admission_of(event.assoc)
        if admission is not None:
            admission.release()

    def _on_pdu(self, event: evt.Event) -> None:
        """Count dataset bytes as they arrive; abort an instance over the size limit
        before pynetdicom has gathered all of it in memory."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        traffic = self._traffic.get(id(event.assoc))
        if traffic is None or traffic.aborting:
            return
        for item in event.pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value or value[0] & 0x01:  # a command fragment
                continue
            traffic.total += len(value) - 1
            traffic.message += len(value) - 1
            if traffic.message > self._intake.max_instance_bytes:
                traffic.aborting = True
                log.warning("association from %s aborted: an instance exceeds max_instance_mb (%.0f MB)",
                            traffic.host, self._settings.max_instance_mb)
                # Not from this (the association's network) thread: abort() waits for it.
                threading.Thread(target=event.assoc.abort, name="ainode-abort", daemon=True).start()
                return
            if value[0] & 0x02:  # the last fragment of the dataset
                traffic.message = 0

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset | int:
        """A C-STORE on an association pynetdicom serves (one that also offers MPPS)."""
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None
        traffic = self._traffic.get(id(event.assoc))
        answer = self._keep(
            str(event.assoc.requestor.ae_title).strip(), traffic.host if traffic else "",
            Context(str(event.context.abstract_syntax), str(event.context.transfer_syntax)),
            str(request.AffectedSOPInstanceUID), request.DataSet.getbuffer(), traffic.total if traffic else 0,
        )
        return _status(answer.status, answer.comment) if answer.comment else answer.status

    def _data_phase_for(self, assoc: Association) -> DataPhaseServer | None:
        """The node serves the data phase of an association of storage and verification
        contexts itself (see node.network.data_phase); one that also offers MPPS stays
        with pynetdicom's service classes."""
        contexts = {int(cx.context_id): Context(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in assoc._accepted_cx.values() if cx.context_id is not None}
        admission = admission_of(assoc)
        if admission is None or any(c.abstract_syntax == PERFORMED_PROCEDURE_STEP for c in contexts.values()):
            return None
        traffic = self._traffic.get(id(assoc))
        host = traffic.host if traffic else ""
        calling_ae = str(assoc.requestor.ae_title).strip()

        def store(request: StoreRequest, association_bytes: int) -> Answer:
            assert request.command.sop_instance_uid is not None
            return self._keep(calling_ae, host, request.context, request.command.sop_instance_uid,
                              request.dataset, association_bytes)

        def serve(sock: socket.socket) -> None:
            sock.settimeout(min(0.5, admission.idle_timeout_s))
            outcome = DataPhase(
                sock, host, contexts, int(assoc.requestor.maximum_length or 0), admission.limits,
                admission.idle_timeout_s, self._intake.max_instance_bytes, store, lambda: assoc._kill,
            ).serve()
            assoc.is_established = False
            assoc.is_released = outcome == "released"
            assoc.is_aborted = outcome != "released"

        return serve

    def _keep(self, calling_ae: str, host: str, context: Context, request_uid: str,
              encoded: bytes | bytearray | memoryview, association_bytes: int) -> Answer:
        """Keep one C-STORE's instance; the status to answer (with a comment when it is
        not a success)."""
        if not self._in_flight.enter():
            return Answer(OUT_OF_RESOURCES, "node is shutting down; send again later")
        try:
            return self._receive(calling_ae, host, context, request_uid, memoryview(encoded), association_bytes)
        except Exception as exc:  # never let one bad dataset take the association down
            # The type only: messages from parsers may quote attribute values.
            log.error("C-STORE failed unexpectedly (%s); answered 0x0110", type(exc).__name__)
            log.debug("C-STORE failure detail", exc_info=True)
            return Answer(PROCESSING_FAILURE, "processing failure")
        finally:
            self._in_flight.leave()

    def _over_limits(self, host: str, size: int, association_bytes: int) -> Answer | None:
        """0xA700 for an instance the limits or the disk reserve do not allow."""
        s = self._settings
        if s.max_association_mb and association_bytes > s.max_association_mb * MB:
            log.warning("C-STORE from %s refused: the association brought more than max_association_mb", host)
            return Answer(OUT_OF_RESOURCES, "association size limit; open a new association")
        refusal = self._intake.size_refusal(size)
        return Answer(refusal.status, refusal.comment) if refusal else None

    def _receive(self, calling_ae: str, host: str, context: Context, request_uid: str,
                 encoded: memoryview, association_bytes: int) -> Answer:
        started = time.perf_counter()
        transfer_syntax = context.transfer_syntax
        refusal = self._over_limits(host, len(encoded), association_bytes)
        if refusal is not None:
            return refusal
        header = self._intake.header(encoded, transfer_syntax, calling_ae)
        if isinstance(header, Refusal):
            return Answer(header.status, header.comment)
        if header.sop_instance_uid != request_uid:
            log.warning(
                "C-STORE from %s refused: SOP Instance UID %s in the dataset differs from the "
                "request's %s", calling_ae, header.sop_instance_uid, request_uid,
            )
            return Answer(CANNOT_UNDERSTAND, "SOP Instance UID differs from the request")
        if header.sop_class_uid != context.abstract_syntax:
            log.warning(
                "C-STORE from %s refused: instance %s has SOP Class %s on a %s context",
                calling_ae, header.sop_instance_uid, header.sop_class_uid, context.abstract_syntax,
            )
            return Answer(DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class differs from the context")

        kept = self._intake.keep(header, encoded, transfer_syntax, calling_ae, calling_ae or "UNKNOWN")
        if kept is not None:
            return Answer(kept.status, kept.comment)
        log.debug(
            "stored instance %s (%d bytes, %s) from %s in %.1f ms",
            header.sop_instance_uid, len(encoded), transfer_syntax, calling_ae,
            (time.perf_counter() - started) * 1000,
        )
        return Answer(SUCCESS)
