"""Every place where the node reaches into pynetdicom beyond its public API, in one
module, each with the reason.

pynetdicom's public API has no hook for: deciding on a connection before pynetdicom
reads from it (it would buffer whatever length a PDU header claims); checking each
PDU header against a limit before its body is read; aborting an association whose
network thread died on a malformed PDU; releasing an association's slot the moment
its connection ends; the TLS handshake outside the accept loop; SO_REUSEPORT and a
deep listen backlog on the listening socket; a requestor telling a fast rejection from
an abort (see :func:`recover_rejection`); a requestor keeping the response to its own
request (see :func:`hand_back_responses`); serving a storage association's data phase
from its own thread instead of two polling ones (see :func:`serve_data_phase`). The
node needs all
of them on a hospital network, so they are done here, against pynetdicom 3.0
(``pyproject.toml`` pins ``>=3.0,<3.1``). :func:`check_internals` says at start-up,
and in the test suite, if an installed pynetdicom no longer has what is used here.
"""

from __future__ import annotations

import logging
import queue
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE, N_CREATE, N_SET
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.network.balance import ConnectionBalancer
from node.network.handshake import INVALID_PDU_PARAMETER, PduLimits, a_abort

log = logging.getLogger(__name__)

#: (class, attribute) pairs this module relies on beyond pynetdicom's public API.
RELIED_ON: tuple[tuple[type, str], ...] = (
    (RequestHandler, "_create_association"),  # extended: the checked socket goes in
    (Association, "dul"),
    (Association, "run"),  # wrapped: the slot is released when the thread ends
    (Association, "_serve_request"),  # wrapped: services the node does not offer get a status
    (Association, "_accepted_cx"),
    (Association, "dimse"),
    (Association, "_kill"),  # set to end the association's thread after a malformed PDU
    (Association, "kill"),
    (Association, "acceptor"),  # its primitive set to a rejection the requestor missed
    (Association, "_reactor_checkpoint"),  # cleared while a request waits for its response
    (Association, "_run_reactor"),  # wrapped: a storage association's data phase is served by the node
    (Association, "requestor"),
    (DULServiceProvider, "run"),  # wrapped: a decoding error aborts instead of ending the thread
    (DULServiceProvider, "_kill_thread"),
    (DULServiceProvider, "to_user_queue"),
    (DULServiceProvider, "socket"),
    (AssociationSocket, "socket"),
    (AssociationSocket, "ready"),  # overridden: the A-ASSOCIATE-RQ already read counts as ready
    (AssociationSocket, "recv"),  # overridden: PDU headers checked before their bodies are read
    (AssociationSocket, "send"),  # overridden: reading holds once the A-ASSOCIATE-AC is sent
    (ThreadedAssociationServer, "process_request_thread"),  # the admission, in the connection's thread
    (ThreadedAssociationServer, "get_request"),
    (ThreadedAssociationServer, "server_bind"),
    (ThreadedAssociationServer, "ssl_context"),
    (ThreadedAssociationServer, "contexts"),  # wrapped in SharedContexts
)


@dataclass(frozen=True)
class Admission:
    """A connection allowed in: the A-ASSOCIATE-RQ already read from it (pynetdicom
    reads it again from here), the PDU limits that apply to it from now on, and what
    to call once when it ends (its association slot)."""

    associate_rq: bytes
    limits: PduLimits
    release: Callable[[], None]
    #: How long a PDU may take once it has begun to arrive (network_timeout_s).
    idle_timeout_s: float


#: Decides on a new connection from its own thread: reads and checks its
#: A-ASSOCIATE-RQ; None when the connection was refused (and answered) already.
Gate = Callable[[socket.socket, str], Admission | None]


def _has(cls: type, name: str) -> bool:
    if hasattr(cls, name):
        return True
    # Instance attributes set in __init__ are not on the class: look for them there.
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    return code is not None and name in code.co_names


def check_internals() -> None:
    """Raise ``RuntimeError`` naming what this module uses that the installed
    pynetdicom lacks (a newer release than the one it was written against)."""
    import pynetdicom

    missing = [f"{cls.__name__}.{name}" for cls, name in RELIED_ON if not _has(cls, name)]
    if missing:
        raise RuntimeError(f"pynetdicom {pynetdicom.__version__} lacks {', '.join(missing)}, which "
                           "node/network/pynetdicom_internals.py relies on; install pynetdicom 3.0.x")


class SharedContexts(list[Any]):
    """The presentation contexts an association server supports, given to each of its
    associations as a new list of the same context objects.

    pynetdicom deep-copies the server's contexts for every association
    (``RequestHandler._create_association``): for the node's 170 storage SOP classes
    with 47 transfer syntaxes each that took 88 ms of CPU per association on a 2-core
    machine, more than a 300-image study's worth of header parsing. Negotiation
    (``presentation.negotiate_as_acceptor``) only reads them, and the node never
    changes them once its servers start, so sharing them is safe."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class AcceptingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the socket options the node needs.

    SO_REUSEPORT lets several listener processes share the port (the kernel spreads
    connections over them); TCP_NODELAY avoids stalls with dcmtk-based peers, which
    otherwise wait on Nagle's algorithm and delayed ACKs (~18 images/s). The listen
    backlog is deep, so that a burst of connections waits in the kernel, not in
    refused SYNs. Each connection first passes ``gate`` in its own thread; only an
    admitted one becomes a pynetdicom association.
    """

    request_queue_size = 1024
    gate: Gate | None = None  # set by the listener before serving
    #: Set by a listener process that shares the port with siblings (see node.network.balance).
    balancer: ConnectionBalancer | None = None
    tls = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = SharedContexts(self.contexts)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        assert self.gate is not None, "the listener sets the gate before serving"
        counted = self.balancer.done if self.balancer is not None else None
        try:
            admission = self.gate(request, str(client_address[0]))
        except Exception as exc:  # never take the accept loop down with one connection
            log.error("connection from %s dropped: admission failed (%s)", client_address[0], type(exc).__name__)
            admission = None
        if admission is None:
            self.shutdown_request(request)
            if counted is not None:
                counted()
            return
        if counted is not None:
            admission = replace(admission, release=_once(admission.release, counted))
        try:
            _AdmittedRequestHandler(request, client_address, self, admission)
        except Exception:
            admission.release()
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.balancer is not None:
            target = self.balancer.place()
            if target != self.balancer.index and self.balancer.hand_over(target, client, address, self.tls):
                client.close()
                raise OSError("connection passed to a sibling listener process")  # socketserver skips it
        return self.adopt(client), address

    def adopt(self, client: socket.socket) -> socket.socket:
        """The socket as this server serves it (the TLS server wraps it)."""
        return client

    def serve_passed(self, client: socket.socket, address: tuple[str, int]) -> None:
        """Serve a connection a sibling process accepted and passed here."""
        self.process_request(self.adopt(client), address)

    def shutdown(self) -> None:
        # Made with AE.make_server, so not in the AE's own list of servers that
        # pynetdicom's shutdown() would update.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _once(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    """``first`` then ``then``, the first time the result is called only."""
    called = threading.Lock()

    def both() -> None:
        if called.acquire(blocking=False):
            first()
            then()

    return both


class TlsAcceptingServer(AcceptingServer):
    """The TLS port: pynetdicom wraps the socket and shakes hands in the accept loop,
    where one silent client blocks everyone; here the socket is only wrapped, and the
    handshake is the first step of the gate, in the connection's own thread."""

    tls = True

    def adopt(self, client: socket.socket) -> socket.socket:
        assert self.ssl_context is not None
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)


class CheckedSocket(AssociationSocket):
    """pynetdicom's association socket, first serving the A-ASSOCIATE-RQ the gate
    read, and checking each PDU header before pynetdicom reads the body.

    pynetdicom's network thread reads a PDU as ``recv(6)`` (type and length), then
    ``recv(length)``, appending to one buffer: a header claiming 4 GiB would have it
    buffer all that arrives. Here a header over the limit aborts the association at
    once, and a PDU that stops arriving half-way ends it after ``idle_timeout_s``.
    """

    _pending: bytearray
    _pdu_left: int
    admission: Admission
    _host: str
    #: Set once the A-ASSOCIATE-AC is sent; reading then holds until ``_hold`` is cleared
    #: (the data phase stays pynetdicom's) or for good (the node serves it).
    accepted: threading.Event
    _hold: bool

    @classmethod
    def take_over(cls, sock: AssociationSocket, admission: Admission, host: str) -> None:
        # The socket pynetdicom made is kept (its events are already queued), with
        # this class's methods: a subclass without state of its own in __init__.
        sock.__class__ = cls
        assert isinstance(sock, CheckedSocket)
        sock._pending = bytearray(admission.associate_rq)
        sock._pdu_left = 0
        sock.admission = admission
        sock._host = host
        sock.accepted = threading.Event()
        sock._hold = False
        if sock.socket is not None:
            sock.socket.settimeout(admission.idle_timeout_s)

    @property
    def ready(self) -> bool:
        if self._hold:
            return False
        return bool(self._pending) or bool(super().ready)

    def send(self, bytestream: bytes) -> None:
        if bytestream[:1] == b"\x02":  # A-ASSOCIATE-AC: who reads the data phase is not decided yet
            self._hold = True
            super().send(bytestream)
            self.accepted.set()
            return
        super().send(bytestream)

    def release_hold(self) -> None:
        """pynetdicom's network thread reads the data phase."""
        self._hold = False

    def recv(self, nr_bytes: int) -> bytearray:
        data = bytearray(self._pending[:nr_bytes])
        del self._pending[:nr_bytes]
        if len(data) < nr_bytes:
            try:
                data += super().recv(nr_bytes - len(data))
            except OSError as exc:  # TimeoutError included: a PDU that stopped arriving
                if isinstance(exc, TimeoutError):
                    log.warning("association from %s aborted: a PDU stopped arriving for %.0f s "
                                "(network_timeout_s)", self._host, self.admission.idle_timeout_s)
                self._close_with(a_abort(INVALID_PDU_PARAMETER))
                return bytearray()
        if self._pdu_left == 0 and nr_bytes == 6 and len(data) == 6:
            pdu_type, length = data[0], int.from_bytes(data[2:6], "big")
            limit = self.admission.limits.of(pdu_type)
            if length > limit:
                log.warning("association from %s aborted: a PDU of type 0x%02X announced %d bytes, more "
                            "than the %d accepted (max_pdu_size)", self._host, pdu_type, length, limit)
                self._close_with(a_abort(INVALID_PDU_PARAMETER))
                return bytearray()  # pynetdicom sees a closed connection
            self._pdu_left = length
        else:
            self._pdu_left = max(0, self._pdu_left - len(data))
        return data

    def _close_with(self, answer: bytes) -> None:
        sock = self.socket
        if sock is None:
            return
        try:
            sock.sendall(answer)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _AdmittedRequestHandler(RequestHandler):
    """pynetdicom's handler for a connection the gate let in."""

    def __init__(self, request: Any, client_address: Any, server: Any, admission: Admission) -> None:
        self._admission = admission
        super().__init__(request, client_address, server)  # handles the request

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assert assoc.dul.socket is not None
        CheckedSocket.take_over(assoc.dul.socket, self._admission, str(self.client_address[0]))
        when_finished(assoc, self._admission.release)
        return assoc


def guard_network_thread(assoc: Association, host: str) -> None:
    """Abort the association when its network (DUL) thread fails on a malformed PDU.

    pynetdicom lets some decoding errors (an even presentation context ID in an
    A-ASSOCIATE-RQ, a DIMSE command set without a Command Field) end that thread,
    leaving the association waiting out its timeouts with nobody reading the socket.
    """
    dul = assoc.dul
    run = dul.run

    def guarded() -> None:
        try:
            run()
        except Exception as exc:
            log.warning("association from %s aborted: malformed PDU (%s)", host, type(exc).__name__)
            abort = A_ABORT_RQ()
            abort.source, abort.reason_diagnostic = 0x02, 0x06  # provider: invalid PDU parameter
            sock = dul.socket.socket if dul.socket else None
            if sock is not None:
                try:
                    sock.sendall(abort.encode())
                except OSError:
                    pass
            assoc.is_aborted, assoc.is_established = True, False
            assoc._kill = True
            dul._kill_thread = True
            # Wake an acceptor waiting for the A-ASSOCIATE (pynetdicom does the same to stop it).
            dul.to_user_queue.put(None)  # type: ignore[arg-type]

    dul.run = guarded  # type: ignore[method-assign]


#: DIMSE status "Unrecognized Operation" (PS3.7 C.4.1.1.3, 0x0211).
UNRECOGNIZED_OPERATION = 0x0211
VERIFICATION = "1.2.840.10008.1.1"
PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step SOP Class


def refuse_other_services(assoc: Association, host: str) -> None:
    """Answer a DIMSE request the node does not offer (C-FIND, C-GET, C-MOVE, N-* other
    than MPPS's N-CREATE and N-SET, or a request on a context of another kind) with
    0x0211 and go on, where pynetdicom would log a traceback and abort."""
    serve = assoc._serve_request

    def checked(msg: Any, context_id: int) -> None:
        context = assoc._accepted_cx.get(context_id)
        syntax = context.abstract_syntax if context is not None else None
        offered = (isinstance(msg, C_ECHO) if syntax == VERIFICATION
                   else isinstance(msg, (N_CREATE, N_SET)) if syntax == PERFORMED_PROCEDURE_STEP
                   else isinstance(msg, C_STORE))
        if context is None or offered or not msg.is_valid_request:
            serve(msg, context_id)  # pynetdicom's own answers to these are proper already
            return
        log.warning("association from %s: %s on a %s context is not a service of this node; answered 0x%04X",
                    host, msg.msg_type, context.abstract_syntax, UNRECOGNIZED_OPERATION)
        response = type(msg)()
        response.MessageIDBeingRespondedTo = msg.MessageID
        sop_class = getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None)
        if sop_class and hasattr(response, "AffectedSOPClassUID"):
            response.AffectedSOPClassUID = sop_class
        response.Status = UNRECOGNIZED_OPERATION
        assoc.dimse.send_msg(response, context_id)

    assoc._serve_request = checked  # type: ignore[method-assign]


def admission_of(assoc: Association) -> Admission | None:
    """The admission of an association the gate let in."""
    sock = assoc.dul.socket
    return sock.admission if isinstance(sock, CheckedSocket) else None


def when_finished(assoc: Association, release: Callable[[], None]) -> None:
    """Call ``release`` when the association's thread ends, however it ends: the
    "connection closed" event needs a network thread still alive to report it."""
    run = assoc.run

    def run_then_release() -> None:
        try:
            run()
        finally:
            release()

    assoc.run = run_then_release  # type: ignore[method-assign]


def recover_rejection(assoc: Association) -> Association:
    """Mark a requestor's association rejected when pynetdicom took a fast
    A-ASSOCIATE-RJ for an abort; returns ``assoc``.

    pynetdicom 3.0's requestor checks whether its socket is still connected after
    sending the A-ASSOCIATE-RQ. When the peer's rejection (and the connection close
    that follows it) is handled by the network thread before that check, the socket
    is already closed: the association is aborted, and the rejection, with its reason,
    is left unread in the queue to the user. Measured beside three busy CPUs: 7 to
    11 rejections in 100 were reported as aborts, so an archive that refuses the
    node's AE title read as one that does not answer.
    """
    if assoc.is_established or assoc.is_rejected:
        return assoc
    while True:
        try:
            primitive = assoc.dul.to_user_queue.get(block=False)
        except queue.Empty:
            return assoc
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            assoc.acceptor.primitive = primitive
            assoc.is_rejected, assoc.is_aborted = True, False
            return assoc


def hand_back_responses(assoc: Association) -> Association:
    """Give a response that pynetdicom's reactor took by mistake back to the request
    waiting for it; returns ``assoc``.

    pynetdicom 3.0 pauses a requestor's reactor thread while ``send_c_store`` (or any
    ``send_*``) waits for its response: the sender clears a checkpoint, then waits
    until the reactor says it is paused. The reactor says so just before it passes
    the checkpoint, and unsays it just after. A sender that looks in between goes on
    with a reactor that is not paused; when that thread is descheduled for the
    round trip, it takes the response off the queue, logs "Received unexpected
    C-STORE service message" and drops it, and the request fails at the DIMSE
    timeout. Measured beside three busy CPUs: 8 stores in 900 to dcmtk's storescp;
    a results delivery over TLS failed this way in CI. While the checkpoint is
    cleared a request is waiting, so a response then is put back for it.
    """
    serve = assoc._serve_request

    def checked(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not assoc._reactor_checkpoint.is_set():
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = checked  # type: ignore[method-assign]
    return assoc


def checked_requestor(assoc: Association) -> Association:
    """A requestor's association with both of pynetdicom 3.0's requestor races
    handled (:func:`recover_rejection`, :func:`hand_back_responses`)."""
    return hand_back_responses(recover_rejection(assoc))


DataPhaseServer = Callable[[socket.socket], None]


def serve_data_phase(assoc: Association, pick: Callable[[Association], DataPhaseServer | None]) -> None:
    """Once ``assoc`` is established, hand its data phase to ``pick(assoc)(socket)`` in
    the association's thread, with pynetdicom's network thread stopped (the node then
    owns the socket). ``pick`` returning None, or an association the gate did not
    admit, keeps pynetdicom's reactor. The server must return soon after
    ``assoc._kill`` is set (the node aborts its associations at shutdown)."""
    run_reactor = assoc._run_reactor

    def choose() -> None:
        sock = assoc.dul.socket
        if not isinstance(sock, CheckedSocket) or sock.socket is None:
            run_reactor()
            return
        # The A-ASSOCIATE-AC is queued to the network thread; until it is sent, that
        # thread must go on (it sends it), and after it, it reads nothing more.
        serve = pick(assoc) if sock.accepted.wait(assoc.acse_timeout or 30) else None
        if serve is None:
            sock.release_hold()
            run_reactor()
            return
        dul = assoc.dul
        dul._kill_thread = True
        dul.join(5)
        if dul.is_alive():  # cannot happen while reading holds; pynetdicom's way then
            log.error("association from %s: network thread did not stop; pynetdicom serves it", sock._host)
            dul._kill_thread = False
            sock.release_hold()
            run_reactor()
            return
        serve(sock.socket)

    assoc._run_reactor = choose  # type: ignore[method-assign]
