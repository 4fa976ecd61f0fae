"""Disk and database failures are answered 0xA700 and leave no file behind."""

from __future__ import annotations

import json
import resource
import signal
import sqlite3

import pytest
from pydicom.uid import generate_uid

from tests.conftest import Node
from tests.integration.scu import store_datasets
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

FILE_SIZE_LIMIT = 400_000  # bytes: a 512x512 slice (~525 kB) cannot be written


def _limit_file_size() -> None:
    # A real write failure from the kernel (EFBIG) in the node process only.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def _stored(node: Node) -> list:
    return list((node.data_dir / "studies").rglob("*")) + list((node.data_dir / "tmp").iterdir())


def test_write_failure_is_answered_a700_and_leaves_no_partial_file(node_factory) -> None:
    node: Node = node_factory(preexec=_limit_file_size).start()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    too_big = ct_slice(study, series, 0, size=512)
    assert store_datasets(node.port, [too_big]) == [0xA700]
    assert [p for p in _stored(node) if p.is_file()] == []
    assert "cannot write the file (File too large)" in node.log()

    # The node keeps serving: a small image fits.
    assert store_datasets(node.port, [ct_slice(study, series, 1, size=64)]) == [0]
    counts = json.loads(node.run("status", "--json").stdout)
    assert counts["instances"] == 1


def test_database_failure_is_answered_a700_and_removes_the_file(node_factory) -> None:
    node: Node = node_factory("db_busy_timeout_ms = 300\n").start()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    locker = sqlite3.connect(node.data_dir / "ainode.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        assert store_datasets(node.port, [ct_slice(study, series, 0)]) == [0xA700]
        assert [p for p in _stored(node) if p.is_file()] == []
        assert "cannot record it in the database (OperationalError)" in node.log()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert store_datasets(node.port, [ct_slice(study, series, 1)]) == [0]
