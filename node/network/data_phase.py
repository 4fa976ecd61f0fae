"""The data phase of a storage association, served from the association's own thread.

pynetdicom negotiates the association (A-ASSOCIATE-RQ/AC) and then, by default, serves
it with two threads that poll each other through queues, each sleeping a millisecond
when idle: a PDU is read by one, decoded into a message, handed to the other, handled,
and its response handed back to be sent. On a 2-core machine that polling cost more
than half of each image's time. Once an association holds only storage and
verification contexts, this module serves its data phase instead (PS3.8 9.3.5, PS3.7
9.3.1 and 9.3.5): it reads each PDU with a blocking read, gathers the DIMSE message,
hands a C-STORE to the listener (which answers once the file is fsynced and its row
committed), sends the response from the same thread, and answers A-RELEASE-RQ and
A-ABORT. Nothing is acknowledged earlier than before.

Every PDU header is still checked against the negotiated limits before its body is
read, an instance over max_instance_mb is aborted as it arrives, and a peer silent for
network_timeout_s is aborted.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.network.handshake import (
    A_ABORT,
    INVALID_PDU_PARAMETER,
    P_DATA_TF,
    UNEXPECTED_PDU,
    UNRECOGNIZED_PDU,
    PduLimits,
    a_abort,
)

log = logging.getLogger(__name__)

A_RELEASE_RQ, A_RELEASE_RP = 0x05, 0x06
_KNOWN_PDUS = {0x01, 0x02, 0x03, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT}

# DIMSE command fields (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
#: Command Data Set Type "no dataset" (PS3.7 E.1).
NO_DATASET = 0x0101
#: Status "Unrecognized Operation" (PS3.7 C.4.1.1.3).
UNRECOGNIZED_OPERATION = 0x0211
_NAMES = {0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE", 0x0030: "C-ECHO",
          0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET", 0x0130: "N-ACTION",
          0x0140: "N-CREATE", 0x0150: "N-DELETE", 0x0FFF: "C-CANCEL"}

# Command elements read and written (group 0000, PS3.7 E.1).
AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED = 0x0002, 0x0100, 0x0110, 0x0120
DATASET_TYPE, STATUS, ERROR_COMMENT, AFFECTED_SOP_INSTANCE = 0x0800, 0x0900, 0x0902, 0x1000
_US = {COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED, DATASET_TYPE, STATUS, 0x0700}

VERIFICATION = "1.2.840.10008.1.1"


class ProtocolError(Exception):
    """The peer broke the protocol: the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = INVALID_PDU_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Context:
    """An accepted presentation context."""

    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class Command:
    """The elements of a DIMSE command set this node reads."""

    field: int
    message_id: int
    has_dataset: bool
    sop_class_uid: str | None
    sop_instance_uid: str | None

    @property
    def name(self) -> str:
        return _NAMES.get(self.field, f"command 0x{self.field:04X}")


@dataclass(frozen=True)
class StoreRequest:
    """A whole C-STORE request: its command, its context and the dataset as received."""

    command: Command
    context: Context
    dataset: bytearray


@dataclass(frozen=True)
class Answer:
    """A response's status (and an optional comment without patient data)."""

    status: int
    comment: str | None = None


def read_command(encoded: bytes | bytearray | memoryview) -> Command:
    """Decode a command set (implicit VR little endian, group 0000 only, PS3.7 6.3.1)."""
    values: dict[int, bytes] = {}
    view = memoryview(encoded)
    at = 0
    while at + 8 <= len(view):
        group, element, length = struct.unpack_from("<HHI", view, at)
        at += 8
        if group != 0x0000 or at + length > len(view):
            raise ProtocolError("a command set with an element outside group 0000 or past its end")
        values[element] = bytes(view[at:at + length])
        at += length
    if at != len(view):
        raise ProtocolError("a command set that ends inside an element")

    def us(element: int) -> int | None:
        value = values.get(element)
        if value is None:
            return None
        if len(value) != 2:
            raise ProtocolError(f"command element (0000,{element:04X}) is not 2 bytes long")
        return int.from_bytes(value, "little")

    def ui(element: int) -> str | None:
        value = values.get(element)
        return value.rstrip(b"\x00 ").decode("ascii", "replace") if value is not None else None

    command_field, message_id, dataset_type = us(COMMAND_FIELD), us(MESSAGE_ID), us(DATASET_TYPE)
    if command_field is None or message_id is None or dataset_type is None:
        raise ProtocolError("a command set without Command Field, Message ID or Command Data Set Type")
    return Command(command_field, message_id, dataset_type != NO_DATASET,
                   ui(AFFECTED_SOP_CLASS), ui(AFFECTED_SOP_INSTANCE))


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def response_command(request: Command, field: int, answer: Answer) -> bytes:
    """The encoded command set answering ``request`` (PS3.7 9.3.1.2, 9.3.5.2): its SOP
    class and instance, the Message ID it responds to, no dataset, the status."""
    body = b""
    if request.sop_class_uid:
        body += _element(AFFECTED_SOP_CLASS, _uid(request.sop_class_uid))
    body += _element(COMMAND_FIELD, struct.pack("<H", field))
    body += _element(MESSAGE_ID_RESPONDED, struct.pack("<H", request.message_id))
    body += _element(DATASET_TYPE, struct.pack("<H", NO_DATASET))
    body += _element(STATUS, struct.pack("<H", answer.status))
    if answer.comment:
        comment = answer.comment.encode("ascii", "replace")[:64]
        body += _element(ERROR_COMMENT, comment + b" " if len(comment) % 2 else comment)
    if request.sop_instance_uid and field == C_STORE_RSP:
        body += _element(AFFECTED_SOP_INSTANCE, _uid(request.sop_instance_uid))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data_tf(context_id: int, command: bytes, peer_max_pdu: int) -> bytes:
    """``command`` as P-DATA-TF PDUs of one command fragment each, within the peer's
    maximum PDU length (0: no limit)."""
    room = max(1, peer_max_pdu - 6) if peer_max_pdu else len(command)
    pdus = []
    for at in range(0, len(command), room):
        fragment = command[at:at + room]
        last = at + room >= len(command)
        item = struct.pack(">IBB", len(fragment) + 2, context_id, 0x03 if last else 0x01) + fragment
        pdus.append(struct.pack(">BBI", P_DATA_TF, 0, len(item)) + item)
    return b"".join(pdus)


@dataclass
class _Message:
    """The DIMSE message arriving now."""

    context_id: int
    command_bytes: bytearray = field(default_factory=bytearray)
    command: Command | None = None
    dataset: bytearray = field(default_factory=bytearray)


class DataPhase:
    """Serves one established storage association until it is released or aborted."""

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        contexts: dict[int, Context],
        peer_max_pdu: int,
        limits: PduLimits,
        idle_timeout_s: float,
        max_instance_bytes: int,
        store: Callable[[StoreRequest, int], Answer],
        should_stop: Callable[[], bool],
    ) -> None:
        """``store(request, association_bytes)`` keeps one instance and says what to
        answer; ``association_bytes``: dataset bytes this association brought so far.
        ``should_stop()``: true when the node aborts its associations (shutdown)."""
        self._sock = sock
        self._host = host
        self._contexts = contexts
        self._peer_max_pdu = peer_max_pdu
        self._limits = limits
        self._idle_timeout_s = idle_timeout_s
        self._max_instance_bytes = max_instance_bytes
        self._store = store
        self._should_stop = should_stop
        self._message: _Message | None = None
        self._received = 0  # dataset bytes on this association
        self._header = bytearray(6)

    def serve(self) -> str:
        """Serve PDUs until the association ends: "released", "aborted" (by the peer or
        by this node) or "closed" (the connection ended without either)."""
        try:
            while True:
                if not self._read_into(memoryview(self._header)):
                    return "closed"
                pdu_type, length = self._header[0], int.from_bytes(self._header[2:6], "big")
                if pdu_type not in _KNOWN_PDUS:
                    raise ProtocolError(f"a PDU of unknown type 0x{pdu_type:02X}", UNRECOGNIZED_PDU)
                limit = self._limits.of(pdu_type)
                if length > limit:
                    raise ProtocolError(f"a PDU of type 0x{pdu_type:02X} announced {length} bytes, more than "
                                        f"the {limit} accepted (max_pdu_size)")
                body = bytearray(length)
                if not self._read_into(memoryview(body)):
                    return "closed"
                if pdu_type == P_DATA_TF:
                    self._p_data(body)
                elif pdu_type == A_RELEASE_RQ:
                    self._send(struct.pack(">BBI", A_RELEASE_RP, 0, 4) + bytes(4))
                    return "released"
                elif pdu_type == A_ABORT:
                    return "aborted"
                else:
                    raise ProtocolError(f"an unexpected PDU of type 0x{pdu_type:02X}", UNEXPECTED_PDU)
        except ProtocolError as error:
            log.warning("association from %s aborted: %s", self._host, error)
            self._send(a_abort(error.reason))
            return "aborted"
        except _Stopped:
            self._send(a_abort(0x00))
            return "aborted"
        except _Silent:
            log.warning("association from %s aborted: nothing arrived for %.0f s (network_timeout_s)",
                        self._host, self._idle_timeout_s)
            self._send(a_abort(0x00))
            return "aborted"
        except OSError:
            return "closed"
        finally:
            self._close()

    # --- reading ----------------------------------------------------------------------

    def _read_into(self, view: memoryview) -> bool:
        """Fill ``view`` from the socket; False when the peer closed the connection. Waits
        in short steps to notice a shutdown; raises after ``idle_timeout_s`` of silence."""
        silent_since = time.monotonic()
        while view:
            try:
                got = self._sock.recv_into(view)
            except TimeoutError:
                if self._should_stop():
                    raise _Stopped() from None
                if time.monotonic() - silent_since > self._idle_timeout_s:
                    raise _Silent() from None
                continue
            if got == 0:
                return False
            view = view[got:]
            silent_since = time.monotonic()
        return True

    def _p_data(self, body: bytearray) -> None:
        """Each presentation data value item of a P-DATA-TF (PS3.8 9.3.5.1, E.2)."""
        view = memoryview(body)
        at = 0
        if len(view) < 6:
            raise ProtocolError("a P-DATA-TF without a presentation data value")
        while at < len(view):
            if at + 6 > len(view):
                raise ProtocolError("a P-DATA-TF item header past the PDU's end")
            item_length, context_id, control = struct.unpack_from(">IBB", view, at)
            if item_length < 2 or at + 4 + item_length > len(view):
                raise ProtocolError("a P-DATA-TF item whose length does not fit the PDU")
            self._fragment(context_id, bool(control & 0x01), bool(control & 0x02),
                           view[at + 6:at + 4 + item_length])
            at += 4 + item_length

    def _fragment(self, context_id: int, is_command: bool, is_last: bool, value: memoryview) -> None:
        if context_id not in self._contexts:
            raise ProtocolError(f"a message on presentation context {context_id}, which was not accepted")
        message = self._message
        if message is None:
            if not is_command:
                raise ProtocolError("a dataset fragment without a command before it", UNEXPECTED_PDU)
            message = self._message = _Message(context_id)
        elif message.context_id != context_id:
            raise ProtocolError("a message's fragments on two presentation contexts", UNEXPECTED_PDU)
        if is_command:
            if message.command is not None:
                raise ProtocolError("a command fragment after the command was complete", UNEXPECTED_PDU)
            message.command_bytes += value
            if len(message.command_bytes) > 65536:
                raise ProtocolError("a command set over 64 KiB")
            if is_last:
                message.command = read_command(message.command_bytes)
                if not message.command.has_dataset:
                    self._dispatch(message)
            return
        if message.command is None or not message.command.has_dataset:
            raise ProtocolError("a dataset fragment where none was announced", UNEXPECTED_PDU)
        message.dataset += value
        self._received += len(value)
        if len(message.dataset) > self._max_instance_bytes:
            raise ProtocolError(f"an instance exceeds max_instance_mb ({self._max_instance_bytes >> 20} MB)")
        if is_last:
            self._dispatch(message)

    # --- answering --------------------------------------------------------------------

    def _dispatch(self, message: _Message) -> None:
        self._message = None
        command = message.command
        assert command is not None
        context = self._contexts[message.context_id]
        if command.field == C_ECHO_RQ and context.abstract_syntax == VERIFICATION:
            self._answer(message.context_id, command, C_ECHO_RSP, Answer(0x0000))
        elif command.field == C_STORE_RQ and context.abstract_syntax != VERIFICATION:
            if not command.sop_instance_uid or not command.has_dataset:
                raise ProtocolError("a C-STORE-RQ without Affected SOP Instance UID or dataset")
            answer = self._store(StoreRequest(command, context, message.dataset), self._received)
            self._answer(message.context_id, command, C_STORE_RSP, answer)
        elif command.field == C_CANCEL_RQ:
            return  # nothing of this node's can be cancelled, and a C-CANCEL has no response
        elif command.field & 0x8000:
            raise ProtocolError(f"a {command.name} response where only requests are expected", UNEXPECTED_PDU)
        else:
            log.warning("association from %s: %s on a %s context is not a service of this node; "
                        "answered 0x%04X", self._host, command.name, context.abstract_syntax,
                        UNRECOGNIZED_OPERATION)
            self._answer(message.context_id, command, command.field | 0x8000, Answer(UNRECOGNIZED_OPERATION))

    def _answer(self, context_id: int, request: Command, field: int, answer: Answer) -> None:
        self._send(p_data_tf(context_id, response_command(request, field, answer), self._peer_max_pdu))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError:
            pass

    def _close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Stopped(Exception):
    """The node is shutting down."""


class _Silent(Exception):
    """The peer sent nothing for network_timeout_s."""
