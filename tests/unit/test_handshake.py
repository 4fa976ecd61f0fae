"""The front door of the DICOM port: reading the A-ASSOCIATE-RQ within one deadline,
the caps on pending handshakes, PDU limits and throttled log lines."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest

from node.network.handshake import (
    MAX_ASSOCIATE_RQ,
    HandshakeRefused,
    PduLimits,
    PendingHandshakes,
    read_associate_request,
)
from node.network.throttled_log import ThrottledLog
from tests.integration.scu import raw_associate_rq


def test_a_whole_request_is_read_and_its_titles_decoded() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        pdu = raw_associate_rq("CT01", "AINODE")
        theirs.sendall(pdu)
        request = read_associate_request(ours, time.monotonic() + 5)
    assert request.pdu == pdu
    assert (request.calling_ae_title, request.called_ae_title) == ("CT01", "AINODE")


def test_trickling_bytes_do_not_extend_the_deadline() -> None:
    ours, theirs = socket.socketpair()
    pdu = raw_associate_rq()

    def trickle() -> None:
        for byte in pdu[:40]:
            try:
                theirs.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(0.05)

    with ours, theirs:
        threading.Thread(target=trickle, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(HandshakeRefused, match="no complete A-ASSOCIATE-RQ"):
            read_associate_request(ours, started + 0.5)
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(("header", "reason"), [
    (struct.pack(">BBI", 0x04, 0, 100), "type 0x04 instead of an A-ASSOCIATE-RQ"),
    (struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0), "A-ASSOCIATE-RQ of 4294967280 bytes"),
    (struct.pack(">BBI", 0x01, 0, 10), "A-ASSOCIATE-RQ of 10 bytes"),
])
def test_a_wrong_first_pdu_is_refused_at_its_header_with_an_abort(header: bytes, reason: str) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(header)
        with pytest.raises(HandshakeRefused, match=reason) as refused:
            read_associate_request(ours, time.monotonic() + 5)
    assert refused.value.answer is not None and refused.value.answer[:1] == b"\x07"  # A-ABORT


def _open(pending: PendingHandshakes, host: str) -> socket.socket:
    ours, theirs = socket.socketpair()
    pending.add(host, ours)
    return theirs


def test_the_oldest_pending_handshake_makes_room_per_host_then_in_total() -> None:
    pending = PendingHandshakes(total=4, per_peer=2)
    first, second = _open(pending, "10.0.0.1"), _open(pending, "10.0.0.1")
    third = _open(pending, "10.0.0.1")  # a third from that host: its oldest is closed
    assert first.recv(1) == b"" and len(pending) == 2
    others = [_open(pending, "10.0.0.2"), _open(pending, "10.0.0.3")]
    _open(pending, "10.0.0.4")  # a fifth in all: the oldest overall (second) is closed
    assert second.recv(1) == b"" and len(pending) == 4
    third.settimeout(0.1)
    with pytest.raises(TimeoutError):
        third.recv(1)  # still open
    for sock in (first, second, third, *others):
        sock.close()


def test_pdu_limits_follow_the_negotiated_maximum() -> None:
    limits = PduLimits.from_settings(16384, 1 << 30)
    assert limits.of(0x04) == 16384 + 16 and limits.of(0x01) == MAX_ASSOCIATE_RQ and limits.of(0x05) == 65536
    assert PduLimits.from_settings(0, 1 << 20).of(0x04) == (1 << 20) + 65536


def test_a_throttled_line_says_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("test"), 0.3)
    with caplog.at_level(logging.WARNING, "test"):
        for _ in range(5):
            throttled("connection from %s closed", "10.0.0.9")
        time.sleep(0.35)
        throttled("connection from %s closed", "10.0.0.9")
    assert [r.getMessage() for r in caplog.records] == [
        "connection from 10.0.0.9 closed",
        "connection from 10.0.0.9 closed (and 4 more like it in the last 0.3 s)"]
