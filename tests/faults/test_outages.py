"""The archive down for a while, and the database locked by another process, while
studies arrive and are processed: the node keeps serving, answers C-STOREs it cannot
record with 0xA700, and delivers everything once the fault is gone."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Node, wait_until
from tests.faults.pipeline import (
    CONFIG,
    Trial,
    check_acknowledged,
    database,
    fresh_study,
    job_states,
    phantom_template,
    result_uids,
    send,
    settled,
)
from tests.integration.scu import associate, store_datasets
from tests.orthanc import Orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _in_archive(orthanc: Orthanc) -> dict[str, str]:
    return {i["Tags"]["SOPInstanceUID"]: i["Tags"]["SOPClassUID"] for i in orthanc.instances()}


def _send_jobs_failing(node: Node, count: int, attempts: int = 1) -> bool:
    """At least ``count`` deliveries have failed ``attempts`` times and wait to retry."""
    with database(node) as db:
        failing = db.execute("SELECT count(*) FROM jobs WHERE kind = 'send' AND attempts >= ? "
                             "AND state = 'queued' AND last_error IS NOT NULL", (attempts,)).fetchone()[0]
    return failing >= count


@pytest.mark.timeout(600)
def test_archive_down_for_a_while_then_everything_is_delivered(
    node_factory, orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = phantom_template(tmp_path / "phantom")
    node: Node = node_factory(CONFIG.format(ae=orthanc.ae_title, port=orthanc.dicom_port),
                              inference=True).start(timeout=120)
    orthanc.stop()
    down = time.monotonic()
    trials = [Trial(fresh_study(template)) for _ in range(3)]
    for trial in trials:
        send(node.port, trial, trial.datasets)
        assert len(trial.acknowledged) == len(trial.datasets)
    wait_until(lambda: _send_jobs_failing(node, 3), 120, "deliveries failing against the stopped archive")
    wait_until(lambda: _send_jobs_failing(node, 3, attempts=3), 120, "several more failed attempts")
    orthanc.start()
    outage = time.monotonic() - down
    wait_until(lambda: settled(node), 120, "every job to finish")
    states, held = job_states(node), result_uids(node)
    assert "dead" not in states, states
    assert len(held) == 6  # SEG + SR for each of the 3 studies
    assert wait_until(lambda: (a := _in_archive(orthanc)) == held and a, 60, "results in the archive") == held
    check_acknowledged(node, trials)
    with capsys.disabled():
        print(f"\narchive outage: {outage:.0f} s down, 3 studies, {len(held)} result objects delivered "
              f"once it was back, jobs {states}")


@pytest.mark.timeout(600)
def test_database_locked_by_another_process(
    node_factory, orthanc: Orthanc, tmp_path: Path
) -> None:
    template = phantom_template(tmp_path / "phantom")
    # A short busy timeout, as on a loaded machine where the node's own writers hold the
    # lock longer than it: a store rides that out for store_db_wait_s.
    config = ("db_busy_timeout_ms = 300\nstore_db_wait_s = 3\n"
              + CONFIG.format(ae=orthanc.ae_title, port=orthanc.dicom_port))
    node: Node = node_factory(config, inference=True).start(timeout=120)
    first = Trial(fresh_study(template))
    send(node.port, first, first.datasets)
    assert len(first.acknowledged) == len(first.datasets)

    locker = sqlite3.connect(node.data_dir / "ainode.db", isolation_level=None, check_same_thread=False)
    # A writer holds the lock for 1.5 s, five times the busy timeout: the store waits.
    locker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, lambda: locker.execute("ROLLBACK"))
    release.start()
    second = fresh_study(template)
    started = time.monotonic()
    assert store_datasets(node.port, second[:1], calling_ae="CT01") == [0x0000]
    assert time.monotonic() - started >= 1.2, "the store did not meet the lock"
    release.join()
    assert "C-STORE waits for the database" in node.log()

    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for long
    try:
        # While it is held past store_db_wait_s, an image cannot be recorded: 0xA700,
        # not a false success.
        assert store_datasets(node.port, second[1:3], calling_ae="CT01") == [0xA700, 0xA700]
        # Meanwhile the completion sweep and the workers' claims fail, and are retried.
        wait_until(lambda: "completion sweep failed" in (log := node.log()) and "cannot claim jobs" in log,
                   60, "the sweep and the workers to meet the locked database")
        assert node.proc is not None and node.proc.poll() is None, "the node stopped"
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    trial = Trial(second)
    send(node.port, trial, second)
    assert len(trial.acknowledged) == len(second)
    wait_until(lambda: len(result_uids(node)) >= 4 and settled(node), 180, "both studies' results")
    states, held = job_states(node), result_uids(node)
    assert "dead" not in states, states
    assert wait_until(lambda: (a := _in_archive(orthanc)) == held and a, 60, "results in the archive") == held
    check_acknowledged(node, [first, trial])
    assoc = associate(node.port)
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
