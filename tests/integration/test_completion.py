"""Study completion and job creation on real SQLite and PostgreSQL databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from config.settings import default_routes
from node.completion import CompletionPolicy, CompletionSweep
from storage.db import open_database
from storage.header import header_from_dataset
from storage.ingest import StoredFile, record_instance
from storage.models import Study
from storage.queue import JobQueue
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_postgres_url"))
    engine = open_database(url)
    yield engine
    engine.dispose()


def _receive(engine: Engine, study: str, series: str, n: int, at: datetime, kernel: str,
             start: int = 0) -> None:
    for i in range(start, start + n):
        ds = ct_slice(study, series, i, sop_uid=generate_uid(TEST_UID_ROOT, entropy_srcs=[series, str(i)]))
        ds.ConvolutionKernel = kernel
        ds.SliceThickness = 5.0
        header = header_from_dataset(ds)
        record_instance(engine, header, StoredFile(f"{series}/{i}.dcm", 1, "1.2.840.10008.1.2", "CT01"),
                        now=at)


def test_two_series_complete_once_after_quiet_period_then_reopen(engine: Engine) -> None:
    study = generate_uid(TEST_UID_ROOT)
    lung, soft = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(engine, study, lung, 64, T0, "L")
    _receive(engine, study, soft, 64, T0, "B")
    queue = JobQueue(engine)
    sweep = CompletionSweep(engine, queue, CompletionPolicy(30, 3600, tuple(default_routes())))

    assert sweep.run(T0 + timedelta(seconds=29)) == []  # still within the quiet period
    assert sweep.run(T0 + timedelta(seconds=31)) == [study]
    assert sweep.run(T0 + timedelta(seconds=60)) == []  # completed once
    [job] = queue.list(kinds=["infer"])
    assert job.payload == {"model": "ct-chest", "route": "ct-chest", "series": [soft],
                           "destinations": []}
    assert (job.state, job.results_version) == ("queued", 1)

    # Resending one instance later reopens the study; its next completion is version 2.
    late = T0 + timedelta(seconds=120)
    _receive(engine, study, soft, 1, late, "B", start=5)
    with engine.connect() as conn:
        assert conn.execute(select(Study.state)).scalar_one() == "receiving"
    assert sweep.run(late + timedelta(seconds=31)) == [study]
    jobs = sorted(queue.list(kinds=["infer"]), key=lambda j: j.results_version)
    assert [j.results_version for j in jobs] == [1, 2]
    assert jobs[1].dedupe_key.endswith(":v2")


def test_study_without_matching_route_is_done_without_jobs(engine: Engine) -> None:
    study = generate_uid(TEST_UID_ROOT)
    _receive(engine, study, generate_uid(TEST_UID_ROOT), 3, T0, "B")  # too few slices
    queue = JobQueue(engine)
    sweep = CompletionSweep(engine, queue, CompletionPolicy(30, 3600, tuple(default_routes())))
    assert sweep.run(T0 + timedelta(seconds=31)) == [study]
    with engine.connect() as conn:
        assert conn.execute(select(Study.state)).scalar_one() == "done"
    assert queue.list() == []
