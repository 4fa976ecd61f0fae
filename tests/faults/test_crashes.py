"""SIGKILL of `ainode serve` at random moments (fixed seed) while studies arrive, are
inferred, encoded and delivered to a real Orthanc; the node is restarted each time.

What must hold: every instance the node acknowledged is on disk and in the database,
intact; no job is left stuck; each study's results reach the archive, and nothing
reaches it under UIDs the node does not hold (a re-encoding after a crash makes the
same objects again, so a resend replaces rather than duplicates).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
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
from tests.orthanc import Orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 20
SEED = 20261122
TARGETS = ("send", "infer", "encode", "send", "send")
SEG_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _running(node: Node) -> list[str]:
    with database(node) as db:
        return [kind for (kind,) in db.execute("SELECT kind FROM jobs WHERE state = 'running'")]


@pytest.mark.timeout(1200)
def test_sigkill_at_random_moments_loses_nothing_and_delivers_once(
    node_factory, orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    template = phantom_template(tmp_path / "phantom")
    node: Node = node_factory(CONFIG.format(ae=orthanc.ae_title, port=orthanc.dicom_port),
                              inference=True).start(timeout=120)
    trials: list[Trial] = []
    interrupted: Counter[str] = Counter()
    started = time.monotonic()
    for number in range(TRIALS):
        trial = Trial(fresh_study(template))
        trials.append(trial)
        sender = threading.Thread(target=send, args=(node.port, trial, trial.datasets))
        sender.start()
        if number % 2 == 0:
            # A random moment: from this study's ingest to well into inference, encoding and
            # delivery of it and of earlier ones.
            time.sleep(rng.uniform(0.05, 4.0))
        else:
            # The moment a job of one kind runs (delivery takes ~0.1 s: random moments rarely hit it).
            target = TARGETS[(number // 2) % len(TARGETS)]
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and target not in _running(node):
                time.sleep(0.01)
        running = _running(node)  # what the node was doing, read just before the kill
        node.kill()
        interrupted.update(running)
        if trial.sending:
            interrupted["ingest"] += 1
        sender.join(30)
        node.start(timeout=120)
        check_acknowledged(node, trials)
        # The modality sends again what was not acknowledged.
        rest = [ds for ds in trial.datasets if str(ds.SOPInstanceUID) not in trial.acknowledged]
        if rest:
            send(node.port, trial, rest)
        assert trial.acknowledged == {str(ds.SOPInstanceUID) for ds in trial.datasets}

    # No job stuck: everything finishes, nothing dead.
    wait_until(lambda: settled(node), 300, "every job to finish")
    states, held = job_states(node), result_uids(node)
    with database(node) as db:
        studies = db.execute("SELECT count(*) FROM studies").fetchone()[0]
        versions = db.execute("SELECT count(DISTINCT study_id || '/' || results_version) "
                              "FROM result_objects").fetchone()[0]
    assert "dead" not in states, states
    checked = check_acknowledged(node, trials)

    archived = wait_until(lambda: len(i := orthanc.instances()) >= len(held) and i, 60,
                          "every result in the archive")
    in_archive = {i["Tags"]["SOPInstanceUID"]: i["Tags"]["SOPClassUID"] for i in archived}
    assert in_archive == held, "the archive holds objects the node does not (or lacks some)"
    per_study = Counter((i["ParentSeries"], i["Tags"]["SOPClassUID"]) for i in archived)
    assert studies == TRIALS
    assert sorted(Counter(c for (_s, c) in per_study.elements()).values()) == [versions, versions]
    assert set(Counter(c for (_s, c) in per_study.elements())) == {SEG_CLASS, SR_CLASS}

    sent = sum(len(t.datasets) for t in trials)
    with capsys.disabled():
        print(f"\nfault injection: {TRIALS} SIGKILL trials (seed {SEED}) in {time.monotonic() - started:.0f} s; "
              f"{sent} instances sent, {checked} acknowledged and verified, 0 lost; "
              f"interrupted: {dict(sorted(interrupted.items()))}; jobs {states}; "
              f"{len(held)} result objects ({versions} results versions of {studies} studies) "
              f"in the archive exactly once, 0 under foreign UIDs")
