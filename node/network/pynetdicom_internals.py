"""Every place where the node reaches into pynetdicom beyond its public API, in one
module, each with the reason.

pynetdicom's public API has no hook for: checking who is asking before negotiation
starts; aborting an association whose network thread died on a malformed PDU;
releasing an association's slot the moment its connection ends; the TLS handshake
outside the accept loop; SO_REUSEPORT on the listening socket. The node needs all
of them on a hospital network, so they are done here, against pynetdicom 3.0
(``pyproject.toml`` pins ``>=3.0,<3.1``). :func:`check_internals` says at start-up,
and in the test suite, if an installed pynetdicom no longer has what is used here.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

log = logging.getLogger(__name__)

#: (class, attribute) pairs this module relies on beyond pynetdicom's public API.
RELIED_ON: tuple[tuple[type, str], ...] = (
    (ACSE, "_negotiate_as_acceptor"),  # overridden: the admission check comes first
    (ACSE, "requestor"),  # the A-ASSOCIATE-RQ primitive being negotiated
    (ACSE, "send_reject"),
    (ACSE, "assoc"),
    (Association, "acse"),  # replaced per association by the checking ACSE
    (Association, "dul"),
    (Association, "run"),  # wrapped: the slot is released when the thread ends
    (Association, "_kill"),  # set to end the association's thread after a malformed PDU
    (Association, "kill"),
    (DULServiceProvider, "run"),  # wrapped: a decoding error aborts instead of ending the thread
    (DULServiceProvider, "_kill_thread"),
    (DULServiceProvider, "to_user_queue"),
    (DULServiceProvider, "socket"),
    (AssociationSocket, "socket"),
    (ThreadedAssociationServer, "process_request_thread"),  # the TLS handshake, in its own thread
    (ThreadedAssociationServer, "get_request"),
    (ThreadedAssociationServer, "server_bind"),
    (ThreadedAssociationServer, "ssl_context"),
)

#: A-ASSOCIATE-RJ as (result, source, reason/diagnostic).
Rejection = tuple[int, int, int]
#: Decides on an association request before negotiation: None to go on, else why
#: it is refused (for the log) and the A-ASSOCIATE-RJ to answer.
AdmissionCheck = Callable[[str, str], tuple[str, Rejection] | None]


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


class AcceptingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the socket options the node needs.

    SO_REUSEPORT lets several listener processes share the port (the kernel spreads
    connections over them); TCP_NODELAY avoids stalls with dcmtk-based peers, which
    otherwise wait on Nagle's algorithm and delayed ACKs (~18 images/s).
    """

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def shutdown(self) -> None:
        # Made with AE.make_server, so not in the AE's own list of servers that
        # pynetdicom's shutdown() would update.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class TlsAcceptingServer(AcceptingServer):
    """The TLS port: pynetdicom wraps the socket and shakes hands in the accept loop,
    where one silent client blocks everyone; here the handshake runs in the
    connection's own thread, within ``handshake_timeout_s``."""

    handshake_timeout_s: float = 30.0
    #: Called with (client address, the client certificate's common name or None).
    on_handshake: Callable[[str, ssl.SSLSocket], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout_s)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("TLS connection from %s refused: %s", client_address[0], reason)
            self.shutdown_request(request)
            return
        if self.on_handshake is not None:
            self.on_handshake(str(client_address[0]), request)
        super().process_request_thread(request, client_address)


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


class _CheckingACSE(ACSE):
    """pynetdicom's ACSE with an admission check before negotiation (pynetdicom
    checks only its own thread count, after accepting the connection)."""

    def __init__(self, assoc: Association, check: AdmissionCheck) -> None:
        super().__init__(assoc)
        self._check = check

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None  # negotiation starts once the A-ASSOCIATE-RQ is in
        calling = str(request.calling_ae_title)
        refusal = self._check(calling, str(request.called_ae_title))
        if refusal is None:
            super()._negotiate_as_acceptor()
            return
        reason, rejection = refusal
        log.warning("association rejected: %s", reason)
        self.requestor.ae_title = calling
        self.send_reject(*rejection)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def check_before_negotiation(assoc: Association, check: AdmissionCheck) -> None:
    """Run ``check`` on the association's request before pynetdicom negotiates it."""
    assoc.acse = _CheckingACSE(assoc, check)


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
