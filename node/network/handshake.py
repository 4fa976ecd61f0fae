"""The front door of the DICOM port: a connection is only a pending handshake until
its whole A-ASSOCIATE-RQ has arrived and was allowed.

Anything can connect to the port. Until a connection has sent a complete
A-ASSOCIATE-RQ (after its TLS handshake, on the TLS port) it holds no association
slot; it is one of a few pending handshakes, capped per sending host and in total,
and it must finish within one deadline from connect (bytes trickling in do not
extend it). When a cap is reached the *oldest* pending handshake is closed to make
room: real senders send their request within milliseconds of connecting, so a
connection that has waited longest is the one most likely stalled, and a burst of
silent connections never keeps an allowed peer out.

Every PDU header is checked before its body is read (PS3.8 9.3): the A-ASSOCIATE-RQ
against a small fixed maximum here, later PDUs against what was negotiated
(:class:`PduLimits`), so a header claiming gigabytes is aborted at once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from node.network.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x01, 0x03, 0x04, 0x07

#: Largest A-ASSOCIATE-RQ read (bytes after the 6-byte header). 128 presentation
#: contexts with a dozen transfer syntaxes each stay well under it.
MAX_ASSOCIATE_RQ = 256 * 1024
#: The fixed part of an A-ASSOCIATE-RQ: version, reserved, two AE titles, reserved.
_FIXED_RQ = 68
#: Largest other PDU besides P-DATA-TF (release and abort PDUs have 4 bytes).
MAX_CONTROL_PDU = 64 * 1024

# A-ABORT reasons (PS3.8 9.3.8), sent with source 2 (service provider).
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PDU_PARAMETER = 0x01, 0x02, 0x06


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBIBBBB", A_ASSOCIATE_RJ, 0, 4, 0, result, source, reason)


def a_abort(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (PS3.8 9.3.8)."""
    return struct.pack(">BBIBBBB", A_ABORT, 0, 4, 0, 0, 0x02, reason)


class HandshakeRefused(Exception):
    """The connection is closed before pynetdicom sees it; ``answer`` is sent first."""

    def __init__(self, reason: str, answer: bytes | None = None, quiet: bool = False,
                 tls: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer
        self.quiet = quiet  # a peer that merely went away: not worth a warning
        self.tls = tls  # the TLS handshake failed


@dataclass(frozen=True)
class AssociateRequest:
    """A complete A-ASSOCIATE-RQ PDU as read from the wire, header included."""

    pdu: bytes

    @property
    def called_ae_title(self) -> str:
        return self._title(10)

    @property
    def calling_ae_title(self) -> str:
        return self._title(26)

    def _title(self, at: int) -> str:
        return self.pdu[at : at + 16].decode("ascii", errors="replace").strip(" \0")


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(data), 65536))
        if not chunk:
            raise HandshakeRefused("closed the connection before its A-ASSOCIATE-RQ was complete", quiet=True)
        data += chunk
    return bytes(data)


def read_associate_request(sock: socket.socket, deadline: float) -> AssociateRequest:
    """The TLS handshake (on a TLS socket), then one whole A-ASSOCIATE-RQ, all
    before ``deadline`` (a ``time.monotonic()`` value).

    Raises :class:`HandshakeRefused` for anything else, with the A-ABORT to send.
    """
    timeout_s = max(0.0, deadline - time.monotonic())
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(timeout_s)
            sock.do_handshake()
        header = _read_exactly(sock, 6, deadline)
        pdu_type, _, length = struct.unpack(">BBI", header)
        if pdu_type != A_ASSOCIATE_RQ:
            raise HandshakeRefused(f"sent a PDU of type 0x{pdu_type:02X} instead of an A-ASSOCIATE-RQ",
                                   a_abort(UNEXPECTED_PDU if pdu_type <= A_ABORT else UNRECOGNIZED_PDU))
        if not _FIXED_RQ <= length <= MAX_ASSOCIATE_RQ:
            raise HandshakeRefused(f"announced an A-ASSOCIATE-RQ of {length} bytes (the node reads "
                                   f"{_FIXED_RQ} to {MAX_ASSOCIATE_RQ})", a_abort(INVALID_PDU_PARAMETER))
        return AssociateRequest(header + _read_exactly(sock, length, deadline))
    except TimeoutError:
        raise HandshakeRefused(f"sent no complete A-ASSOCIATE-RQ within {timeout_s:.0f} s "
                               "(handshake_timeout_s)") from None
    except ssl.SSLError as exc:
        raise HandshakeRefused(str(exc.reason or type(exc).__name__), tls=True) from None
    except OSError as exc:  # reset by the peer, or closed by eviction
        raise HandshakeRefused(f"connection ended during the handshake ({type(exc).__name__})",
                               quiet=True) from None


class PendingHandshakes:
    """Connections still in their handshake, in one listener process, capped in
    total and per host by closing the oldest (see the module's docstring)."""

    def __init__(self, total: int, per_peer: int) -> None:
        self._total = total
        self._per_peer = per_peer
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, tuple[str, socket.socket]] = OrderedDict()
        self._next = 0
        self._log_eviction = ThrottledLog(log, 10.0)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, host: str, sock: socket.socket) -> int:
        """Register a new connection; returns its ticket for :meth:`remove`."""
        with self._lock:
            ticket, self._next = self._next, self._next + 1
            same_host = [t for t, (h, _) in self._pending.items() if h == host]
            victims = same_host[: max(0, len(same_host) + 1 - self._per_peer)]
            overall = max(0, len(self._pending) - len(victims) + 1 - self._total)
            victims += [t for t in self._pending if t not in victims][:overall]
            for victim in victims:
                _, victim_sock = self._pending.pop(victim)
                try:  # wakes the thread reading it, which then gives up
                    victim_sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._pending[ticket] = (host, sock)
        if victims:
            self._log_eviction("closed %d pending handshake(s) to make room for a connection from %s "
                               "(max_pending_handshakes%s)", len(victims), host,
                               "_per_peer" if len(same_host) + 1 > self._per_peer else "")
        return ticket

    def remove(self, ticket: int) -> None:
        with self._lock:
            self._pending.pop(ticket, None)


@dataclass(frozen=True)
class PduLimits:
    """The largest PDU length (variable field, PS3.8 9.3.1) accepted after association."""

    p_data: int

    @classmethod
    def from_settings(cls, max_pdu_size: int, max_instance_bytes: int) -> PduLimits:
        # The length the node announced, plus a little: some senders count the
        # 6-byte PDV header on top of the maximum. With no announced maximum, no
        # P-DATA PDU needs to be larger than the largest instance accepted.
        return cls(max_pdu_size + 16 if max_pdu_size else max_instance_bytes + 65536)

    def of(self, pdu_type: int) -> int:
        if pdu_type == P_DATA_TF:
            return self.p_data
        if pdu_type == A_ASSOCIATE_RQ:
            return MAX_ASSOCIATE_RQ
        return MAX_CONTROL_PDU
