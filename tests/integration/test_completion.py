"""Study completion and job creation on real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from config.settings import default_routes
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from storage.header import header_from_dataset
from storage.ingest import StoredFile, record_instance
from storage.models import Study
from storage.queue import JobQueue
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)




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
                           "destinations": [], "shadow": False, "priors": []}
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


def test_study_without_matching_route_is_not_applicable_without_jobs(engine: Engine) -> None:
    study = generate_uid(TEST_UID_ROOT)
    _receive(engine, study, generate_uid(TEST_UID_ROOT), 3, T0, "B")  # too few slices
    queue = JobQueue(engine)
    sweep = CompletionSweep(engine, queue, CompletionPolicy(30, 3600, tuple(default_routes())))
    assert sweep.run(T0 + timedelta(seconds=31)) == [study]
    with engine.connect() as conn:
        # No model applies: grey "not applicable", not "done" as if results existed.
        assert conn.execute(select(Study.state)).scalar_one() == "not_applicable"
    assert queue.list() == []


def test_retention_removes_old_studies_without_live_jobs(engine: Engine, tmp_path: Path) -> None:
    from storage.files import FileStore
    from storage.inventory import inventory
    from storage.queue import NewJob
    from storage.retention import purge_older_than

    store = FileStore(tmp_path / "data")
    store.prepare()
    queue = JobQueue(engine)

    def study_at(at: datetime) -> tuple[str, int]:
        uid, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
        for i in range(3):
            ds = ct_slice(uid, series, i)
            rel = store.relative_path(uid, series, ds.SOPInstanceUID)
            store.write(rel, [b"x"])
            record_instance(engine, header_from_dataset(ds),
                            StoredFile(rel, 1, "1.2.840.10008.1.2", None), now=at)
        with engine.connect() as conn:
            return uid, conn.execute(select(Study.id).where(Study.study_instance_uid == uid)).scalar_one()

    old, _ = study_at(T0 - timedelta(days=40))
    busy, busy_id = study_at(T0 - timedelta(days=40))
    finished, finished_id = study_at(T0 - timedelta(days=40))
    recent, _ = study_at(T0 - timedelta(days=2))
    queue.enqueue(NewJob("noop", "live", study_id=busy_id))
    done = queue.enqueue(NewJob("noop", "over", study_id=finished_id))
    job = queue.claim("w", ["noop"])
    while job is not None and job.id != done:
        job = queue.claim("w", ["noop"])
    assert job is not None and queue.complete(job)
    assert next(j for j in queue.list() if j.dedupe_key == "live").state == "running"  # live

    report = purge_older_than(engine, store, T0 - timedelta(days=30))
    assert (report.studies, report.files) == (2, 6)
    with engine.connect() as conn:
        left = set(conn.execute(select(Study.study_instance_uid)).scalars())
    assert left == {busy, recent}
    assert inventory(engine)["instances"] == 6
    assert len(list(store.iter_files())) == 6
    assert not (store.studies_dir / old).exists()
    # The finished job's history stays, detached from the removed study.
    assert next(j for j in queue.list() if j.id == done).study_id is None


def test_a_results_version_left_behind_is_superseded_everywhere(engine: Engine, tmp_path: Path) -> None:
    """The crash test's interleaving, on purpose: version 1 completes and its work is
    queued (an infer job, and a send job as if its objects were made), then a resent
    image reopens the study. Version 1's jobs end `superseded` without doing their
    work (nothing is sent), never `succeeded`; the timeline, the API's jobs and the
    metrics say so; version 2 is the study's work."""
    from config.settings import Destination, Settings
    from node.jobs.kinds import SendPayload, StudyWork, study_job
    from node.jobs.worker import Worker
    from node.pipeline.lifecycle import queue_for
    from node.runner.handlers import general_handlers
    from node.web.api import _jobs
    from node.web.metrics import metrics_text
    from storage.models import Job
    from storage.timeline import timeline

    settings = Settings(data_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        destinations=[Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=9)])
    queue = queue_for(settings, engine)
    sweep = CompletionSweep(engine, queue, CompletionPolicy(30, 3600, tuple(default_routes())))
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(engine, study, series, 64, T0, "B")
    assert sweep.run(T0 + timedelta(seconds=31)) == [study]
    with engine.connect() as conn:
        study_id = conn.execute(select(Study.id)).scalar_one()
    send = queue.enqueue(study_job(SendPayload("ct-chest", "archive"), StudyWork(study_id, study, 1), 0))

    _receive(engine, study, series, 1, T0 + timedelta(seconds=40), "B", start=3)  # the resend reopens it
    worker = Worker("w", settings, engine, queue, general_handlers(settings, engine))
    claimed = queue.claim("w", ["send"])
    assert claimed is not None and claimed.id == send
    worker.run_one(claimed)  # would deliver to a port where nothing listens: it must not try

    assert sweep.run(T0 + timedelta(seconds=80)) == [study]  # version 2
    with engine.connect() as conn:
        jobs = {(j.kind, j.results_version): (j.state, j.last_error) for j in conn.execute(select(Job))}
        steps = [(s.step, s.results_version, s.detail) for s in timeline(conn, study_id)]
        state = conn.execute(select(Study.state, Study.results_version)).one()
    assert jobs[("send", 1)][0] == "superseded" and "receiving images again" in jobs[("send", 1)][1]
    assert jobs[("infer", 1)][0] == "superseded" and "completed again as version 2" in jobs[("infer", 1)][1]
    assert jobs[("infer", 2)][0] == "queued"
    assert tuple(state) == ("complete", 2)
    assert not [s for s in steps if s[0] in ("delivered", "delivery_failed")]
    superseded = [s for s in steps if s[0] == "superseded"]
    assert len(superseded) == 1 and superseded[0][1] == 1 and "by results version 2" in superseded[0][2]
    assert sorted(j.state for j in _jobs(engine, Job.study_id == study_id, 10)) == ["queued", "superseded",
                                                                                    "superseded"]
    body, _ = metrics_text(settings, engine)
    assert 'ainode_jobs{kind="infer",state="superseded"} 1.0' in body.decode()
    assert 'ainode_jobs{kind="send",state="superseded"} 1.0' in body.decode()
