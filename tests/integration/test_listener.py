"""The listener against a real pynetdicom client: statuses, byte-exact storage, limits."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_preamble
from pydicom.uid import generate_uid

from tests.conftest import SHARED_DATA, Node
from tests.integration.scu import associate, store_datasets, store_files_raw
from tests.procs import child_pids
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, after its File Meta Information."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        meta_start = fp.tell()
        raw = fp.read()
    ds = dcmread(path, stop_before_pixels=True)
    # Group length (0002,0000) gives the size of the meta group after its own element.
    meta_len = 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_len:] if meta_start else raw


def _counts(node: Node) -> dict[str, int]:
    return json.loads(node.run("status", "--json").stdout)


def _stored_path(node: Node, source: Path) -> Path:
    ds = dcmread(source, stop_before_pixels=True)
    return (node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID
            / f"{ds.SOPInstanceUID}.dcm")


def test_every_transfer_syntax_is_stored_byte_exact(node: Node) -> None:
    folder = SHARED_DATA / "ct-slice-transfer-syntaxes"
    if not folder.exists():
        pytest.skip(f"public sample folder {folder} not found (set AINODE_SHARED_DATA)")
    sources = sorted(folder.glob("CTImage.dcm*"))
    assert len(sources) == 16  # uncompressed, deflated, big endian, JPEG, JPEG-LS, J2K, RLE
    for source in sources:
        assert store_files_raw(node.port, [source]) == [0], source.name
        stored = _stored_path(node, source)
        assert _dataset_bytes(stored) == _dataset_bytes(source), source.name
        src_ts = dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == src_ts


def test_dataset_without_study_or_series_uid_is_refused_and_node_keeps_serving(node: Node) -> None:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    no_study = ct_slice(study, series, 0)
    del no_study.StudyInstanceUID
    no_series = ct_slice(study, series, 1)
    del no_series.SeriesInstanceUID
    good = ct_slice(study, series, 2)
    statuses = store_datasets(node.port, [no_study, no_series, good])
    assert statuses[0] & 0xF000 == 0xC000 and statuses[1] & 0xF000 == 0xC000
    assert statuses[2] == 0
    log = node.log()
    assert "missing Study Instance UID" in log and "missing Series Instance UID" in log
    assert "Synthetic" not in log and "SYNTH-0001" not in log  # no patient data in the log
    assert _counts(node)["instances"] == 1


def test_resend_replaces_the_file(node: Node) -> None:
    study, series, sop = (generate_uid(TEST_UID_ROOT) for _ in range(3))
    first = ct_slice(study, series, 0, sop_uid=sop, seed=1)
    second = ct_slice(study, series, 0, sop_uid=sop, seed=2)
    assert store_datasets(node.port, [first]) == [0]
    assert store_datasets(node.port, [second]) == [0]
    stored = list((node.data_dir / "studies").rglob("*.dcm"))
    assert len(stored) == 1
    assert dcmread(stored[0]).PixelData == second.PixelData
    assert _counts(node)["instances"] == 1


def test_concurrent_associations_all_stored(node: Node) -> None:
    study = generate_uid(TEST_UID_ROOT)
    results: list[list[int]] = []

    def sender(n: int) -> None:
        series = generate_uid(TEST_UID_ROOT)
        results.append(store_datasets(node.port, [ct_slice(study, series, i) for i in range(20)]))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(map(len, results)) == [20] * 4
    assert all(s == 0 for r in results for s in r)
    counts = _counts(node)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 4, 80)


def test_associations_beyond_the_maximum_are_rejected(node_factory) -> None:
    node: Node = node_factory("max_associations = 2\n").start()
    held = [associate(node.port) for _ in range(2)]
    assert all(a.is_established for a in held)
    extra = associate(node.port)
    assert extra.is_rejected
    for a in held:
        a.release()
    again = associate(node.port)
    assert again.is_established
    again.release()


def test_echo(node: Node) -> None:
    assoc = associate(node.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def _listener_pids(node: Node) -> list[int]:
    assert node.proc is not None
    return child_pids(node.proc.pid)


def test_a_killed_listener_process_is_replaced_and_the_node_keeps_serving(node_factory) -> None:
    import os
    import signal
    import time

    node: Node = node_factory("listener_processes = 2\nworkers = 0\n", extra_env={"AINODE_API_PORT": "0"}).start()
    listeners = _listener_pids(node)
    assert len([p for p in listeners if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]) == 2
    victim = next(p for p in listeners if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "restarted" not in node.log():
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    for i in range(6):  # new associations reach whichever processes are alive
        assert store_datasets(node.port, [ct_slice(study, series, i)]) == [0]
    assert _counts(node)["instances"] == 6
    assert node.stop() == 0
    node.start()
    assert "did not stop cleanly" in node.log()  # files of the dead process get reconciled


def _established_per_listener(node: Node) -> dict[str, int]:
    """Connections to the node's port each listener process holds (from /proc)."""
    assert node.proc is not None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == node.port and fields[3] == "01":  # ESTABLISHED
                inodes.add(fields[9])
    held: dict[str, int] = {}
    for pid in child_pids(node.proc.pid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            if not name.startswith("listener"):
                continue
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        held[name] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return held


def test_associations_are_spread_evenly_over_the_listener_processes(node_factory) -> None:
    # The kernel's SO_REUSEPORT hash alone puts eight connections four and four on two
    # processes about one time in four; the node places each on the process serving fewest.
    node: Node = node_factory("listener_processes = 2\nworkers = 0\n", extra_env={"AINODE_API_PORT": "0"}).start()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    slices = [ct_slice(study, series, i) for i in range(8)]
    context = (str(slices[0].SOPClassUID), str(slices[0].file_meta.TransferSyntaxUID))
    associations = []
    try:
        for _ in range(8):
            assoc = associate(node.port, [context])
            assert assoc.is_established
            associations.append(assoc)
        assert sorted(_established_per_listener(node).values()) == [4, 4]
        for ds, assoc in zip(slices, associations, strict=True):  # each served where it was placed
            assert int(assoc.send_c_store(ds).Status) == 0
    finally:
        for assoc in associations:
            assoc.release()
    assert _counts(node)["instances"] == 8
