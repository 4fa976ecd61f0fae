"""A full disk: the node's data folder on a small tmpfs. The free-space reserve is
answered 0xA700 before the disk is full; with no reserve, the real "no space left" is
answered 0xA700 too, without a partial file; both recover once space returns."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from tests.conftest import Node, missing_peer
from tests.faults.pipeline import database
from tests.integration.scu import associate, store_datasets
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

MB = 1024 * 1024
DISK_MB = 48


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "node-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing_peer(f"cannot mount a tmpfs for the full-disk test (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_mb: float) -> Path:
    """A filler file that leaves about ``leave_mb`` free."""
    filler = disk / "filler.bin"
    free = shutil.disk_usage(disk).free
    with open(filler, "ab") as fp:
        fp.write(b"\0" * max(0, int(free - leave_mb * MB)))
        fp.flush()
        os.fsync(fp.fileno())
    return filler


PAGE = 4096  # tmpfs allocates whole pages


def _fill_to(disk: Path, free_bytes: int) -> Path:
    """A filler file that leaves exactly ``free_bytes`` (a multiple of the page size) free."""
    filler = _fill(disk, free_bytes / MB)
    with open(filler, "r+b") as fp:
        while (free := shutil.disk_usage(disk).free) != free_bytes:
            size = os.fstat(fp.fileno()).st_size
            fp.truncate(size + PAGE if free > free_bytes else size - PAGE)
            fp.seek(0, os.SEEK_END)
            if free > free_bytes:
                os.posix_fallocate(fp.fileno(), size, PAGE)
    return filler


def _encoded_length(ds: Dataset) -> int:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return len(fp.getvalue())


def _padded_to_page(ds: Dataset, short_by: int) -> Dataset:
    """``ds`` with Image Comments padded so that its encoding ends ``short_by`` bytes
    before a page boundary."""
    ds.ImageComments = "padding"
    missing = (-_encoded_length(ds) - short_by) % PAGE
    ds.ImageComments = "padding" + "x" * missing
    assert _encoded_length(ds) % PAGE == PAGE - short_by
    return ds


def _send_until_refused(node: Node, study: str, series: str, start: int) -> tuple[list[int], int]:
    """~525 kB slices one by one until one is refused; the statuses and free bytes then."""
    statuses: list[int] = []
    for index in range(start, start + 200):
        status = store_datasets(node.port, [ct_slice(study, series, index, size=512)])[0]
        statuses.append(status)
        if status != 0:
            return statuses, shutil.disk_usage(node.data_dir).free
    raise AssertionError("the disk never filled")


def _recorded(node: Node) -> int:
    with database(node) as db:
        return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


def _partial_files(node: Node) -> list[Path]:
    return [p for p in (node.data_dir / "tmp").rglob("*") if p.is_file()]


@pytest.mark.timeout(300)
def test_reserve_then_full_disk_answer_a700_and_recover(node_factory, small_disk: Path) -> None:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    node: Node = node_factory("min_free_disk_mb = 8\n")
    node.data_dir = small_disk
    node.start()

    # 1. The reserve: refused while 8 MB are still free.
    filler = _fill(small_disk, 14)
    statuses, free = _send_until_refused(node, study, series, 0)
    assert statuses[-1] == 0xA700 and set(statuses[:-1]) == {0}
    assert free >= 7 * MB, f"refused only when {free / MB:.1f} MB were left"
    accepted = len(statuses) - 1
    assert _recorded(node) == accepted
    filler.unlink()  # space returns
    assert store_datasets(node.port, [ct_slice(study, series, 500, size=512)]) == [0]
    node.stop()

    # 2. No reserve, and an image that passes the free-space check (it fits) but whose
    # file (meta header and page rounding) does not: the kernel's ENOSPC, answered 0xA700.
    node.extra_env["AINODE_MIN_FREE_DISK_MB"] = "0"
    node.start()
    recorded = _recorded(node)
    image = _padded_to_page(ct_slice(study, series, 1000, size=512), short_by=64)
    filler = _fill_to(small_disk, _encoded_length(image) + 64)
    assert store_datasets(node.port, [image]) == [0xA700]
    assert _partial_files(node) == []
    assert "cannot write the file (No space left on device)" in node.log() \
        or "cannot record it in the database" in node.log()
    assoc = associate(node.port)  # still serving
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert _recorded(node) == recorded
    filler.unlink()
    assert store_datasets(node.port, [image]) == [0]
    assert _recorded(node) == recorded + 1
    node.stop()
