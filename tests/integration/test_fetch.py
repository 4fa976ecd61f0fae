"""Backfill: `ainode fetch` finds past studies on a real Orthanc playing the PACS (C-FIND)
and the node's workers have them sent to the node (C-MOVE), one retrieve job per
study, at the configured rate; retrieved studies complete at once and go through their
routes; a second fetch asks for nothing again."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from node.pipeline.retrieval import window_opens
from tests.conftest import Node, wait_until
from tests.orthanc import Orthanc
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration

INTERVAL_S = 3.0  # retrieve_per_minute = 20


def _study(folder: Path, accession: str, slices: int) -> list[Path]:
    files = write_ct_study(folder, series=1, slices=slices)
    for path in files:
        ds = dcmread(path)
        ds.AccessionNumber, ds.StudyDate = accession, "20250301"
        ds.save_as(path, enforce_file_format=True)
    return files


def _studies(node: Node) -> dict[str, tuple[str, str | None, float, int]]:
    """Per study UID: state, completion reason, first image time, instances."""
    with sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT s.study_instance_uid, s.state, s.completion_reason, s.first_received_at, "
                          "count(i.id) FROM studies s JOIN series r ON r.study_id = s.id JOIN instances i "
                          "ON i.series_id = r.id GROUP BY s.id").fetchall()
    return {uid: (state, reason, datetime.fromisoformat(first).replace(tzinfo=UTC).timestamp(), count)
            for uid, state, reason, first, count in rows}


def test_backfill_retrieves_the_asked_studies_at_the_configured_rate_and_only_once(
        node_factory, orthanc: Orthanc, tmp_path: Path) -> None:
    wanted = {f"ACC{n}": _study(tmp_path / f"acc{n}", f"ACC{n}", slices=4 + n) for n in range(1, 4)}
    other = _study(tmp_path / "other", "OTHER", slices=3)
    for files in [*wanted.values(), other]:
        orthanc.upload(files)
    config = (f'quiet_period_s = 60\ncompletion_sweep_s = 0.5\nworkers = 2\n'
              f'[pacs]\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
              f'retrieve_per_minute = {60 / INTERVAL_S:g}\n'
              '[[routes]]\nname = "ct"\nmodel = "ct-chest"\n[routes.match]\nmodality = ["CT"]\n')
    node: Node = node_factory(config).start()
    # The archive sends to the node: it knows the node's AE title and address.
    orthanc.knows("ainode", "AINODE", node.port)

    rows = json.loads(node.run("fetch", "--accession", "ACC1", "ACC2", "ACC3", "NOSUCH", "--json").stdout)
    uids = {str(dcmread(files[0]).StudyInstanceUID): len(files) for files in wanted.values()}
    assert {r["study_instance_uid"]: r["instances"] for r in rows} == uids
    assert all(r["job"] for r in rows)

    done = wait_until(lambda: len(s := {u: v for u, v in _studies(node).items() if v[0] != "receiving"}) == 3 and s,
                      60, "three retrieved studies complete")
    assert set(done) == set(uids)  # exactly the asked ones
    for uid, (state, reason, _first, count) in done.items():
        assert (state, reason, count) == ("complete", "retrieved", uids[uid])  # whole, and queued for its route
    starts = sorted(first for _s, _r, first, _c in done.values())
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= INTERVAL_S - 0.3, gaps  # the throttle's rate, across both workers
    assert max(gaps) < INTERVAL_S + 10, gaps

    # Asked again: everything is queued or retrieved already, nothing is fetched again.
    again = node.run("fetch", "--accession", "ACC1", "ACC2", "ACC3").stdout
    assert "3 studies found" in again and "0 queued" in again
    with sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True) as db:
        retrieves = db.execute("SELECT state, count(*) FROM jobs WHERE kind = 'retrieve' GROUP BY state").fetchall()
        steps = [d for (d,) in db.execute("SELECT detail FROM study_events WHERE step = 'retrieved'")]
    assert retrieves == [("succeeded", 3)]
    assert sorted(steps) == sorted(f"{n} instance(s) from ORTHANC (backfill)" for n in uids.values())
    assert node.log().count("retrieved from ORTHANC") == 3


def test_without_a_pacs_fetch_says_what_to_fix(node_factory) -> None:
    node: Node = node_factory()
    result = node.run("fetch", "--accession", "A1", check=False)
    assert result.returncode == 2 and "no [pacs] is configured" in result.stderr


def test_the_off_peak_window_may_pass_midnight() -> None:
    at = datetime(2026, 12, 4, 12, 30)
    assert window_opens("", at) is None
    assert window_opens("08:00-18:00", at) is None
    assert window_opens("20:00-06:00", at) == datetime(2026, 12, 4, 20, 0)
    assert window_opens("20:00-06:00", datetime(2026, 12, 4, 2, 0)) is None
    assert window_opens("20:00-06:00", datetime(2026, 12, 4, 6, 0)) == datetime(2026, 12, 4, 20, 0)
    assert window_opens("01:00-02:00", datetime(2026, 12, 4, 23, 0)) == datetime(2026, 12, 5, 1, 0)
