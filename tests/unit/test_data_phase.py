"""The data phase of a storage association served by the node: command sets read and
written as pynetdicom reads and writes them, and the protocol over a socket pair."""

from __future__ import annotations

import socket
import struct
import threading
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ as StoreRequestMessage
from pynetdicom.dimse_messages import C_STORE_RSP as StoreResponseMessage
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from node.network.data_phase import (
    C_STORE_RSP,
    UNRECOGNIZED_OPERATION,
    Answer,
    Command,
    Context,
    DataPhase,
    StoreRequest,
    p_data_tf,
    read_command,
    response_command,
)
from node.network.handshake import PduLimits

CT = "1.2.840.10008.5.1.4.1.1.2"
SUCCESS = Answer(0)
IMPLICIT = "1.2.840.10008.1.2"
SOP = "1.2.826.0.1.3680043.10.1234.99.1"


def _store_request(message_id: int = 7) -> C_STORE:
    request = C_STORE()
    request.MessageID, request.Priority = message_id, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CT, SOP
    request.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    return request


def _pdus(message: DIMSEMessage, context_id: int, max_pdu: int) -> bytes:
    out = b""
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


def test_a_command_set_written_by_pynetdicom_is_read() -> None:
    message = StoreRequestMessage()
    message.primitive_to_message(_store_request())
    encoded = b"".join(p.presentation_data_value_list[0][1][1:] for p in message.encode_msg(1, 0)
                       if p.presentation_data_value_list[0][1][0] & 0x01)
    command = read_command(encoded)
    assert command == Command(0x0001, 7, True, CT, SOP)


@pytest.mark.parametrize("comment", [None, "SOP Class differs from the context"])
def test_a_response_is_byte_for_byte_what_pynetdicom_writes(comment: str | None) -> None:
    request = read_command(_command_bytes(_store_request(message_id=12)))
    ours = response_command(request, C_STORE_RSP, Answer(0xA900 if comment else 0, comment))
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 12
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT, SOP
    primitive.Status = 0xA900 if comment else 0
    if comment:
        primitive.ErrorComment = comment
    message = StoreResponseMessage()
    message.primitive_to_message(primitive)
    theirs = _command_bytes_of(message)
    assert ours == theirs
    assert decode(BytesIO(ours), True, True).Status == primitive.Status


def _command_bytes(request: C_STORE) -> bytes:
    message = StoreRequestMessage()
    message.primitive_to_message(request)
    return _command_bytes_of(message)


def _command_bytes_of(message: DIMSEMessage) -> bytes:
    return b"".join(p.presentation_data_value_list[0][1][1:] for p in message.encode_msg(1, 0)
                    if p.presentation_data_value_list[0][1][0] & 0x01)


def test_a_response_is_cut_to_the_peers_maximum_pdu() -> None:
    command = bytes(range(200))
    data = p_data_tf(3, command, 64)
    at, fragments = 0, []
    while at < len(data):
        pdu_type, length = data[at], struct.unpack_from(">I", data, at + 2)[0]
        assert pdu_type == 0x04 and length <= 64  # the maximum length of the PDU's variable field (PS3.8 D.1)
        item_length, context_id, control = struct.unpack_from(">IBB", data, at + 6)
        assert context_id == 3
        fragments.append((control, data[at + 12:at + 6 + 4 + item_length]))
        at += 6 + length
    assert b"".join(f for _, f in fragments) == command
    assert [c for c, _ in fragments] == [0x01] * (len(fragments) - 1) + [0x03]


class _Peer:
    """The requestor's end of a socket pair; the node's end served by a DataPhase."""

    def __init__(self, max_instance: int = 1 << 20, idle_s: float = 5.0,
                 answer: Answer = SUCCESS) -> None:
        self.sock, node_end = socket.socketpair()
        node_end.settimeout(0.1)
        self.stored: list[StoreRequest] = []
        self.stop = threading.Event()

        def store(request: StoreRequest, _bytes: int) -> Answer:
            self.stored.append(request)
            return answer

        contexts = {1: Context(CT, IMPLICIT), 3: Context("1.2.840.10008.1.1", IMPLICIT)}
        phase = DataPhase(node_end, "127.0.0.1", contexts, 16384, PduLimits.from_settings(65536, max_instance),
                          idle_s, max_instance, store, self.stop.is_set)
        self.outcome: list[str] = []
        self.thread = threading.Thread(target=lambda: self.outcome.append(phase.serve()), daemon=True)
        self.thread.start()
        self.sock.settimeout(10)

    def send_store(self, dataset: bytes, pdu: int = 16384) -> None:
        request = _store_request()
        request.DataSet = BytesIO(dataset)
        message = StoreRequestMessage()
        message.primitive_to_message(request)
        self.sock.sendall(_pdus(message, 1, pdu))

    def read_pdu(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        if not header:
            return 0, b""
        return header[0], self._exactly(struct.unpack(">I", header[2:])[0])

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    def finish(self) -> str:
        self.thread.join(10)
        self.sock.close()
        return self.outcome[0]


def _status(body: bytes) -> int:
    return int(decode(BytesIO(body[6:]), True, True).Status)


def test_a_store_in_many_fragments_is_kept_whole_and_answered() -> None:
    peer = _Peer()
    dataset = bytes(range(256)) * 300  # 76,800 bytes: five PDUs of 16 KiB
    peer.send_store(dataset)
    pdu_type, body = peer.read_pdu()
    assert pdu_type == 0x04 and _status(body) == 0
    assert bytes(peer.stored[0].dataset) == dataset
    assert peer.stored[0].command.sop_instance_uid == SOP and peer.stored[0].context.transfer_syntax == IMPLICIT
    peer.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))  # A-RELEASE-RQ
    assert peer.read_pdu()[0] == 0x06
    assert peer.finish() == "released"


def test_a_refusal_carries_its_status_and_comment() -> None:
    peer = _Peer(answer=Answer(0xA900, "SOP Class differs from the context"))
    peer.send_store(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    _, body = peer.read_pdu()
    answered = decode(BytesIO(body[6:]), True, True)
    assert answered.Status == 0xA900 and answered.ErrorComment == "SOP Class differs from the context"
    peer.sock.close()
    assert peer.finish() == "closed"


def test_a_service_not_offered_gets_0211_and_the_association_goes_on() -> None:
    peer = _Peer()
    find = struct.pack("<HHIH", 0, 0x0100, 2, 0x0020) + struct.pack("<HHIH", 0, 0x0110, 2, 5) \
        + struct.pack("<HHIH", 0, 0x0800, 2, 0x0101)
    find = struct.pack("<HHII", 0, 0, 4, len(find)) + find
    peer.sock.sendall(p_data_tf(1, find, 0))
    _, body = peer.read_pdu()
    answered = decode(BytesIO(body[6:]), True, True)
    assert answered.Status == UNRECOGNIZED_OPERATION and answered.CommandField == 0x8020
    assert answered.MessageIDBeingRespondedTo == 5
    peer.send_store(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    assert _status(peer.read_pdu()[1]) == 0
    peer.sock.close()
    peer.finish()


@pytest.mark.parametrize("data, why", [
    (struct.pack(">BBI", 0x04, 0, 0x7FFFFFFF), "a PDU over the limit"),
    (struct.pack(">BBI", 0x09, 0, 4) + bytes(4), "an unknown PDU type"),
    (struct.pack(">BBI", 0x04, 0, 8) + struct.pack(">IBB", 4, 1, 0x00) + b"ab", "a dataset before its command"),
    (struct.pack(">BBI", 0x04, 0, 8) + struct.pack(">IBB", 4, 5, 0x03) + b"ab", "a context not accepted"),
    (struct.pack(">BBI", 0x04, 0, 8) + struct.pack(">IBB", 40, 1, 0x03) + b"ab", "an item past the PDU"),
    (struct.pack(">BBI", 0x01, 0, 4) + bytes(4), "a second A-ASSOCIATE-RQ"),
])
def test_a_broken_pdu_is_answered_with_an_abort(data: bytes, why: str) -> None:
    peer = _Peer()
    peer.sock.sendall(data)
    assert peer.read_pdu()[0] == 0x07, why
    assert peer.finish() == "aborted"
    assert not peer.stored


def test_an_instance_over_the_limit_is_aborted_before_it_is_whole() -> None:
    peer = _Peer(max_instance=40_000)
    try:
        peer.send_store(bytes(100_000))
    except OSError:
        pass  # the node may close before all was sent
    assert peer.read_pdu()[0] == 0x07
    assert peer.finish() == "aborted"
    assert not peer.stored


def test_a_silent_peer_is_aborted_after_the_network_timeout() -> None:
    peer = _Peer(idle_s=0.3)
    assert peer.read_pdu()[0] == 0x07
    assert peer.finish() == "aborted"


def test_shutdown_ends_the_association_with_an_abort() -> None:
    peer = _Peer()
    peer.stop.set()
    assert peer.read_pdu()[0] == 0x07
    assert peer.finish() == "aborted"
