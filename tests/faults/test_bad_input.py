"""Hostile and broken input against one running node: the public robustness samples,
then a hypothesis fuzzer sending mutated datasets over C-STORE and malformed PDUs over
raw TCP. Each input gets a status, a rejection or an abort; the node's processes stay
the same, it answers C-ECHO, and the images it held before are untouched."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import SHARED_DATA, Node, free_port, missing_peer
from tests.faults.pipeline import database
from tests.integration.scu import associate, raw_associate_rq, send_raw_c_store, store_datasets
from tests.procs import child_pids
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DATASET_EXAMPLES = int(os.environ.get("AINODE_FUZZ_DATASETS", "1000"))
PDU_EXAMPLES = 400


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, dict[Path, str]]]:
    """One node for the whole module, with a few images stored before any bad input."""
    folder = tmp_path_factory.mktemp("fuzz")
    node = Node(data_dir=folder / "node", port=free_port(), extra_env={
        "AINODE_API_PORT": "0", "AINODE_INFERENCE_WORKERS_PER_DEVICE": "0",
        "AINODE_NETWORK_TIMEOUT_S": "5", "AINODE_MAX_ASSOCIATIONS": "32",
        "AINODE_MAX_ASSOCIATIONS_PER_PEER": "32"})
    node.start()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    assert store_datasets(node.port, [ct_slice(study, series, i, size=64) for i in range(5)]) == [0] * 5
    with database(node) as db:
        paths = [node.data_dir / p for (p,) in db.execute("SELECT path FROM instances")]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    yield node, before
    node.stop()


def _encode(ds: object, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)  # type: ignore[arg-type]
    return fp.getvalue()


BASE = ct_slice("1.2.826.0.1.3680043.10.1234.9.1", "1.2.826.0.1.3680043.10.1234.9.2", 0, size=16,
                sop_uid="1.2.826.0.1.3680043.10.1234.9.3")
BASES = {EXPLICIT_LE: _encode(BASE, False), IMPLICIT_LE: _encode(BASE, True)}


@st.composite
def mutated_datasets(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid encoding with byte flips, overwritten lengths, insertions, cuts; sometimes
    sent under the other transfer syntax."""
    syntax = draw(st.sampled_from(sorted(BASES)))
    data = bytearray(BASES[syntax])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "length", "insert", "cut", "delete"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "length":  # a length field that lies: huge, odd, undefined, zero
            value = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0xFFFF, 1, 3, 0]))
            data[at : at + 4] = struct.pack("<I", value)
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "cut":  # (an empty dataset would just wait for the idle timeout)
            del data[max(1, at):]
        elif len(data) > 1:
            del data[at : at + draw(st.integers(1, min(32, len(data) - 1)))]
    if draw(st.booleans()) and len(data) > 0 and draw(st.integers(0, 4)) == 0:
        syntax = IMPLICIT_LE if syntax == EXPLICIT_LE else EXPLICIT_LE
    return syntax, bytes(data)


class _Sender:
    """One association reused across examples; reopened after an abort."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.assoc = None
        self.message_id = 0

    def store(self, syntax: str, payload: bytes) -> int | None:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = associate(self.port, [(CTImageStorage, EXPLICIT_LE), (CTImageStorage, IMPLICIT_LE)])
            assert self.assoc.is_established, "the node refused a new association"
        self.message_id = self.message_id % 60000 + 1
        return send_raw_c_store(self.assoc, CTImageStorage, str(BASE.SOPInstanceUID), syntax, payload,
                                self.message_id)


def _echo(port: int) -> bool:
    assoc = associate(port)
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


ASSOCIATE_RQ = raw_associate_rq()  # a valid request from FUZZ to AINODE, for Verification


#: What the node may answer to each kind of malformed PDU: anything but hanging, and
#: never an association for random bytes or a rejection once an association is open.
EXPECTED_OUTCOMES = {
    "random": {"rejected", "aborted", "closed", "reset"},
    "associate": {"accepted", "rejected", "aborted", "closed", "reset"},
    "pdata": {"aborted", "closed", "reset", "release answered", "data answered"},
}


@st.composite
def malformed_pdus(draw: st.DrawFn) -> tuple[str, bytes]:
    """(kind, bytes): random bytes and mutated A-ASSOCIATE-RQs on a fresh connection;
    P-DATA-TF / release / abort PDUs with wrong lengths inside an association ("pdata")."""
    kind = draw(st.sampled_from(sorted(EXPECTED_OUTCOMES)))
    if kind == "random":
        return kind, draw(st.binary(min_size=0, max_size=256))
    if kind == "associate":
        data = bytearray(ASSOCIATE_RQ)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            del data[draw(st.integers(0, len(data) - 1)):]
        return kind, bytes(data)
    pdu_type = draw(st.sampled_from([0x04, 0x05, 0x06, 0x07, 0x01, 0x09, 0xFF]))
    body = draw(st.binary(min_size=0, max_size=128))
    length = draw(st.sampled_from([len(body), len(body) + 1, max(0, len(body) - 1), 0, 0xFFFFFFFF, 6]))
    return kind, struct.pack(">BBI", pdu_type, 0, length) + body


def _raw_exchange(port: int, after_association: bool, data: bytes) -> str:
    """Send ``data`` on a fresh connection, half-close, and read what the node answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        if after_association:
            sock.sendall(ASSOCIATE_RQ)
            answer = sock.recv(65536)
            assert answer[:1] == b"\x02", "the node did not accept a valid association request"
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the node answered and closed before all was sent: read its answer
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            return "reset"
    return {b"\x03": "rejected", b"\x07": "aborted", b"\x02": "accepted", b"\x06": "release answered",
            b"\x04": "data answered"}.get(received[:1], "closed")


def test_robustness_samples_get_an_answer(fuzzed: tuple[Node, dict[Path, str]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = SHARED_DATA / "robustness"
    if not folder.exists():
        missing_peer(f"robustness samples not found under {folder} (set AINODE_SHARED_DATA)")
    node, _ = fuzzed
    outcomes: Counter[str] = Counter()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in {".md", ".txt", ".gz"}
                   and p.name != "LICENSE")
    for path in files:
        try:
            ds = dcmread(path, force=True, stop_before_pixels=True)
            meta, offset = split_dataset(path)
        except Exception:  # not even a sender could read it: nothing to send
            outcomes["unreadable by the sender"] += 1
            continue
        syntax = str(meta.get("TransferSyntaxUID", IMPLICIT_LE))
        sop_class = str(meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", SECONDARY_CAPTURE)))
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", ds.get("SOPInstanceUID", "1.2.3.4")))
        assoc = associate(node.port, [(sop_class, syntax)])
        if not any(c.abstract_syntax == sop_class for c in assoc.accepted_contexts):
            outcomes["not a storage SOP class: context refused"] += 1
            if assoc.is_established:
                assoc.release()
            continue
        payload = path.read_bytes()[offset:]
        status = send_raw_c_store(assoc, sop_class, sop_uid, syntax, payload)
        outcomes["aborted" if status is None else f"0x{status:04X}"] += 1
        if assoc.is_established:
            assoc.release()
    assert _echo(node.port)
    assert sum(outcomes.values()) == len(files) >= 200
    with capsys.disabled():
        print(f"\nrobustness samples: {len(files)} files -> {dict(sorted(outcomes.items()))}")


def _assert_whole(node: Node, before: dict[Path, str], pids: set[int]) -> None:
    """After bad input: the same node processes, C-ECHO answered, earlier images
    byte-identical and still recorded, no traceback from the node's own code."""
    assert node.proc is not None and node.proc.poll() is None
    assert set(child_pids(node.proc.pid)) == pids, "a node process was restarted"
    assert _echo(node.port)
    for path, digest in before.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path.name} changed"
    with database(node) as db:
        held = {node.data_dir / p for (p,) in db.execute("SELECT path FROM instances")}
    assert set(before) <= held
    # pynetdicom logs tracebacks of the PDUs it cannot decode; none may come from the node's code.
    assert not re.search(r'File "[^"]*/(node|storage|config|ai)/[^"]+\.py"', node.log())
    crashed = [line for line in node.log().splitlines() if "exited" in line and "listener" in line]
    assert crashed == [], crashed  # no listener process died (the supervisor would restart it)


def test_mutated_datasets_get_a_status_or_an_abort(fuzzed: tuple[Node, dict[Path, str]],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    node, before = fuzzed
    assert node.proc is not None
    pids = set(child_pids(node.proc.pid))
    sender = _Sender(node.port)  # one association, reused across examples
    tally: Counter[str] = Counter()

    @settings(max_examples=DATASET_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=mutated_datasets())
    def one(case: tuple[str, bytes]) -> None:
        syntax, payload = case
        status = sender.store(syntax, payload)
        tally["aborted" if status is None else f"0x{status:04X}"] += 1
        assert status is None or status in (0x0000, 0x0110, 0xA700, 0xA900, 0xC000), hex(status)
        if sum(tally.values()) % 100 == 0:
            assert _echo(node.port), "the node stopped answering C-ECHO"

    one()
    assert sum(tally.values()) >= DATASET_EXAMPLES
    _assert_whole(node, before, pids)
    with capsys.disabled():
        print(f"\nfuzzed datasets: {sum(tally.values())} -> {dict(sorted(tally.items()))}")


def test_malformed_pdus_are_rejected_or_aborted(fuzzed: tuple[Node, dict[Path, str]],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    node, before = fuzzed
    assert node.proc is not None
    pids = set(child_pids(node.proc.pid))
    tally: Counter[str] = Counter()

    @settings(max_examples=PDU_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=malformed_pdus())
    def one(case: tuple[str, bytes]) -> None:
        kind, data = case
        outcome = _raw_exchange(node.port, kind == "pdata", data)
        tally[f"{kind}: {outcome}"] += 1
        assert outcome in EXPECTED_OUTCOMES[kind], f"{kind} PDU answered {outcome}"
        if sum(tally.values()) % 100 == 0:
            assert _echo(node.port), "the node stopped answering C-ECHO"

    one()
    assert sum(tally.values()) >= PDU_EXAMPLES * 0.9  # hypothesis may stop early on duplicates
    _assert_whole(node, before, pids)
    with capsys.disabled():
        print(f"\nmalformed PDUs: {sum(tally.values())} -> {dict(sorted(tally.items()))}")
