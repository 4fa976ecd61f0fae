"""Attacks on the DICOM port of a running node, as the hostile-network issue measured
them: connections that never finish their A-ASSOCIATE-RQ, PDU headers claiming
gigabytes, a deflate bomb, one SOP Instance UID sent at once on five associations,
UIDs that try to forge log lines, and DIMSE services the node does not offer.

The node runs on its documented settings with allowed peers on 127.0.0.1; the
attackers are on other loopback addresses (127.0.0.2-9) and on 127.0.0.1 itself.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import Node, dcmtk, free_port
from tests.faults.pipeline import database
from tests.integration.scu import associate, raw_associate_rq, send_raw_c_store, send_request
from tests.procs import child_pids, peak_rss_mib
from tests.synthetic import TEST_UID_ROOT, ct_slice, deflate_bomb, encode_dataset, write_ct_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFLATED = "1.2.840.10008.1.2.1.99"
HANDSHAKE_TIMEOUT_S = 8
MAX_INSTANCE_MB = 256
#: How much the peak RSS of any node process may grow during one attack.
RSS_BOUND_MIB = 200
SENDERS = ("STORESCU", "W0", "W1", "W2", "W3", "W4")

CONFIG = "\n".join(f'[[peers]]\nae_title = "{ae}"\nhost = "127.0.0.1"\n' for ae in SENDERS)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("hostile")
    config = folder / "ainode.toml"
    config.write_text(CONFIG)
    node = Node(data_dir=folder / "node", port=free_port(), config=config, extra_env={
        "AINODE_API_PORT": "0", "AINODE_INFERENCE_WORKERS_PER_DEVICE": "0", "AINODE_LISTENER_PROCESSES": "2",
        "AINODE_HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_TIMEOUT_S), "AINODE_MAX_INSTANCE_MB": str(MAX_INSTANCE_MB),
        "AINODE_QUIET_PERIOD_S": "1", "AINODE_COMPLETION_SWEEP_S": "0.5"})
    node.start()
    yield node
    node.stop()


def _peaks(node: Node) -> dict[int, float]:
    assert node.proc is not None
    pids = [node.proc.pid, *child_pids(node.proc.pid)]
    return {pid: peak_rss_mib(pid) for pid in pids}


def _growth(before: dict[int, float], node: Node) -> float:
    after = _peaks(node)
    return max(after[pid] - before.get(pid, after[pid]) for pid in after)


def _connect(node: Node, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", node.port))
    return sock


def _closed_by_node(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed as well
    return True


def _storescu(node: Node, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1", str(node.port),
                           "+sd", "+r", str(folder)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})


def _instances(node: Node, study: str) -> int:
    with database(node) as db:
        return int(db.execute("SELECT count(*) FROM instances i JOIN series s ON i.series_id = s.id "
                              "JOIN studies st ON s.study_id = st.id WHERE st.study_instance_uid = ?",
                              (study,)).fetchone()[0])


def test_stalled_and_idle_connections_keep_no_allowed_sender_out(node: Node, tmp_path: Path) -> None:
    # 32 connections that send the first 13 bytes of an A-ASSOCIATE-RQ and stall, from
    # the allowed sender's own address, and 32 that send nothing, from eight others:
    # far more than max_associations (16) and max_associations_per_peer (8).
    request = raw_associate_rq("STORESCU")
    stalled = []
    for _ in range(32):
        sock = _connect(node, "127.0.0.1")
        sock.sendall(request[:13])
        stalled.append(sock)
    idle = [_connect(node, f"127.0.0.{2 + i % 8}") for i in range(32)]
    trickling = _connect(node, "127.0.0.9")  # one byte a second: does not extend its deadline
    opened = time.monotonic()

    study = generate_uid(TEST_UID_ROOT)
    write_ct_study(tmp_path / "study", series=1, slices=20, size=64, study_uid=study)
    sent = _storescu(node, tmp_path / "study")
    sent_after = time.monotonic() - opened
    assert sent.returncode == 0, sent.stderr
    assert "Association Rejected" not in sent.stderr and "rejected" not in sent.stderr.lower()
    assert _instances(node, study) == 20
    assert sent_after < HANDSHAKE_TIMEOUT_S, "the study only got in once the stalled connections timed out"

    for byte in request[:HANDSHAKE_TIMEOUT_S + 6]:
        try:
            trickling.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(1.0)
    # Every pending handshake is closed by its deadline (or to make room): none holds on.
    waited = HANDSHAKE_TIMEOUT_S + 10 - (time.monotonic() - opened)
    still_open = [s for s in [*stalled, *idle, trickling] if not _closed_by_node(s, max(0.5, waited))]
    assert still_open == [], f"{len(still_open)} pending connections outlived handshake_timeout_s"
    for sock in [*stalled, *idle, trickling]:
        sock.close()
    assert "sent no complete A-ASSOCIATE-RQ" in node.log()


def test_a_burst_of_two_hundred_connections_needs_no_syn_retry(node: Node) -> None:
    # A listen backlog of 5 dropped the SYNs of a burst: the kernel retries them after
    # 1 s, then 3 s (accepting 200 connections took 18 s). All 200 at once, non-blocking:
    socks = []
    try:
        for i in range(200):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind((f"127.0.0.{2 + i % 8}", 0))
            sock.connect_ex(("127.0.0.1", node.port))
            socks.append(sock)
        started = time.monotonic()
        pending = set(socks)
        while pending and time.monotonic() - started < 0.9:  # under the first SYN retry
            _, writable, _ = select.select([], list(pending), [], 0.1)
            pending -= set(writable)
        assert not pending, f"{len(pending)} of 200 connections waited for a SYN retry"
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in socks)
    finally:
        for sock in socks:
            sock.close()


def _flood(sock: socket.socket, header: bytes, total: int) -> tuple[int, bytes]:
    """Send ``header`` then zeros until ``total`` bytes or the node ends the connection;
    (bytes sent, what the node answered)."""
    zeros = bytes(1024 * 1024)
    sent = 0
    sock.settimeout(10)
    try:
        sock.sendall(header)
        while sent < total:
            sock.sendall(zeros)
            sent += len(zeros)
    except OSError:
        pass
    try:
        answer = sock.recv(64)
    except OSError:
        answer = b""
    return sent, answer


@pytest.mark.parametrize("after_association", [False, True])
def test_a_pdu_claiming_gigabytes_is_aborted_before_it_is_read(node: Node, after_association: bool) -> None:
    before = _peaks(node)
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    try:
        if after_association:
            sock.sendall(raw_associate_rq("STORESCU"))
            assert sock.recv(65536)[:1] == b"\x02", "the allowed sender was not accepted"
            header = struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0)  # P-DATA-TF
        else:
            header = struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0)  # A-ASSOCIATE-RQ
        sent, answer = _flood(sock, header, 400 * 1024 * 1024)
    finally:
        sock.close()
    assert sent < 64 * 1024 * 1024, f"the node read {sent >> 20} MB of a PDU it should have refused at its header"
    assert answer[:1] in (b"\x07", b""), answer  # an A-ABORT, or the connection reset
    assert _growth(before, node) < RSS_BOUND_MIB
    assert "PDU" in node.log() or "A-ASSOCIATE-RQ of" in node.log()


def test_a_deflate_bomb_is_refused_and_nothing_is_stored(node: Node) -> None:
    study = generate_uid(TEST_UID_ROOT)
    ds = ct_slice(study, generate_uid(TEST_UID_ROOT), 0, size=64)
    bomb = deflate_bomb(ds, 2 * 1024 * 1024 * 1024)  # 2 GiB from ~2 MB
    assert len(bomb) < 3 * 1024 * 1024
    before = _peaks(node)
    assoc = associate(node.port, [(CTImageStorage, DEFLATED)], "STORESCU")
    assert assoc.is_established
    try:
        status = send_raw_c_store(assoc, CTImageStorage, str(ds.SOPInstanceUID), DEFLATED, bomb)
    finally:
        if assoc.is_established:
            assoc.release()
    assert status == 0xA700
    assert _instances(node, study) == 0
    assert not list((node.data_dir / "studies").rglob(f"{ds.SOPInstanceUID}*"))
    assert _growth(before, node) < RSS_BOUND_MIB
    assert "inflates beyond max_instance_mb" in node.log()


def _variant(study: str, series: str, sop: str, index: int) -> Dataset:
    ds = ct_slice(study, series, 0, size=16 + 8 * index, sop_uid=sop)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def test_the_same_instance_sent_at_once_on_five_associations_leaves_row_and_file_agreeing(node: Node) -> None:
    senders = SENDERS[1:]
    associations = [associate(node.port, [(CTImageStorage, "1.2.840.10008.1.2.1")], ae) for ae in senders]
    assert all(a.is_established for a in associations)
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    agreeing = 0
    try:
        for _ in range(50):
            sop = generate_uid(TEST_UID_ROOT)
            variants = [_variant(study, series, sop, i) for i in range(len(senders))]
            barrier = threading.Barrier(len(senders))
            statuses: list[int] = []

            def send(i: int, variants: list[Dataset] = variants, barrier: threading.Barrier = barrier,
                     statuses: list[int] = statuses) -> None:
                barrier.wait()
                statuses.append(int(associations[i].send_c_store(variants[i]).Status))

            threads = [threading.Thread(target=send, args=(i,)) for i in range(len(senders))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert statuses == [0] * len(senders)
            with database(node) as db:
                rows = db.execute("SELECT path, size_bytes, calling_ae_title FROM instances "
                                  "WHERE sop_instance_uid = ?", (sop,)).fetchall()
            assert len(rows) == 1
            path, size, calling = rows[0]
            stored = node.data_dir / path
            written = dcmread(stored)
            pixels = {hashlib.sha256(v.PixelData).hexdigest(): senders[i] for i, v in enumerate(variants)}
            # The row describes the file that won: its size, and who sent that file.
            if (stored.stat().st_size == size and calling == written.file_meta.SourceApplicationEntityTitle.strip()
                    == pixels[hashlib.sha256(written.PixelData).hexdigest()]):
                agreeing += 1
    finally:
        for a in associations:
            a.release()
    assert agreeing == 50


FORGED = "FORGED ERROR [MainProcess] node.network.listener: all good"


def test_uids_with_line_breaks_cannot_forge_log_lines(node: Node) -> None:
    study = f"1.2.826.0.1.3680043.10.1234.8\n{FORGED}"[:64]
    series = generate_uid(TEST_UID_ROOT)
    good_uid = generate_uid(TEST_UID_ROOT)
    # The dataset's SOP Instance UID differs from the request's: the refusal names both.
    ds = ct_slice(study, series, 0, size=16, sop_uid=f"1.2.3\n{FORGED}"[:64])
    assoc = associate(node.port, [(CTImageStorage, "1.2.840.10008.1.2.1")], "STORESCU")
    assert assoc.is_established
    try:
        status = send_raw_c_store(assoc, CTImageStorage, good_uid, "1.2.840.10008.1.2.1", encode_dataset(ds))
        # And one the node accepts: the study UID goes through completion and its log lines.
        ds.SOPInstanceUID = good_uid
        accepted = send_raw_c_store(assoc, CTImageStorage, good_uid, "1.2.840.10008.1.2.1", encode_dataset(ds),
                                    message_id=2)
    finally:
        assoc.release()
    assert status == 0xC000 and accepted == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and node.log().count("FORGED") < 2:
        time.sleep(0.5)
    log = node.log()
    assert "\\x0aFORGED" in log  # it was logged, escaped
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]


def test_a_service_the_node_does_not_offer_gets_a_status_not_a_traceback(node: Node) -> None:
    assoc = associate(node.port, [(CTImageStorage, "1.2.840.10008.1.2.1")], "STORESCU")
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel, query.PatientID = "STUDY", "*"
        request = C_FIND()
        request.MessageID, request.Priority, request.AffectedSOPClassUID = 7, 2, CTImageStorage
        request.Identifier = BytesIO(encode_dataset(query))
        response = send_request(assoc, request, "1.2.840.10008.1.2.1")
        assert response is not None and int(response.Status) == 0x0211
        assert assoc.is_established  # and the association goes on
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    assert "C-FIND on a 1.2.840.10008.5.1.4.1.1.2 context is not a service" in node.log()
    assert "Traceback" not in node.log()
