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
    states = job_states(node)
    with database(node) as db:
        studies = db.execute("SELECT count(*) FROM studies").fetchone()[0]
        rows = db.execute("SELECT r.sop_instance_uid, r.sop_class_uid, r.study_id, r.results_version, "
                          "s.results_version FROM result_objects r JOIN studies s ON s.id = r.study_id").fetchall()
    assert "dead" not in states, states
    checked = check_acknowledged(node, trials)
    held = {uid: sop_class for uid, sop_class, *_ in rows}
    # A study reopened by a resent image is a new results version; the older version's
    # objects are sent only if its delivery ran before the reopening (results of two
    # versions are never mixed), so only each study's current version must be there.
    current = [(study, sop_class, uid) for uid, sop_class, study, version, latest in rows if version == latest]
    superseded = {(study, version) for _u, _c, study, version, latest in rows if version != latest}

    def in_archive() -> dict[str, str]:
        return {i["Tags"]["SOPInstanceUID"]: i["Tags"]["SOPClassUID"] for i in orthanc.instances()}

    archived = wait_until(lambda: {uid for *_, uid in current} <= set(a := in_archive()) and a, 60,
                          "every current result in the archive")
    # A version left behind (more images came) ends as superseded: its jobs either
    # finished before the study reopened or ended superseded without their work, so
    # the objects of a version whose delivery was superseded never reach the archive.
    with database(node) as db:
        sends = db.execute("SELECT study_id, results_version, state FROM jobs WHERE kind = 'send'").fetchall()
        marked = set(db.execute("SELECT study_id, results_version FROM study_events WHERE step = 'superseded'"))
    for study, version, state in sends:
        if (study, version) in superseded:
            assert state in ("succeeded", "superseded"), (study, version, state)
        else:
            assert state == "succeeded", (study, version, state)
    never_sent = {(study, version) for study, version, state in sends if state == "superseded"}
    assert not [uid for uid, _c, study, version, _l in rows if (study, version) in never_sent and uid in archived]
    older = {(study, version) for _u, _c, study, version, latest in rows if version < latest}
    assert older <= marked, "a superseded results version is missing from its study's timeline"
    # Nothing in the archive under UIDs the node did not make: a result encoded again
    # after a kill kept its UIDs, so the archive replaced rather than duplicated it.
    assert {uid: held.get(uid) for uid in archived} == archived, "the archive holds foreign objects"
    assert studies == TRIALS
    # Each study's current version: one SEG and one SR.
    per_study = Counter((study, sop_class) for study, sop_class, _uid in current)
    assert set(per_study.values()) == {1}
    assert Counter(sop_class for _study, sop_class in per_study) == {SEG_CLASS: TRIALS, SR_CLASS: TRIALS}
    versions = len({(study, version) for _u, _c, study, version, _l in rows})

    sent = sum(len(t.datasets) for t in trials)
    with capsys.disabled():
        print(f"\nfault injection: {TRIALS} SIGKILL trials (seed {SEED}) in {time.monotonic() - started:.0f} s; "
              f"{sent} instances sent, {checked} acknowledged and verified, 0 lost; "
              f"interrupted: {dict(sorted(interrupted.items()))}; jobs {states}; "
              f"{len(held)} result objects ({versions} results versions of {studies} studies, "
              f"{len(superseded)} superseded); {len(archived)} in the archive, each once, 0 under foreign UIDs")
