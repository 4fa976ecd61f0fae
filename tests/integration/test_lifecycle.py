"""A study's state moves with its jobs, in the transactions that move them, on real
SQLite and PostgreSQL databases (the queue tells node/pipeline/lifecycle.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, insert, select

from config.settings import load_settings
from node.jobs.kinds import EncodePayload, InferPayload, SendPayload, StudyWork, study_job
from node.pipeline.lifecycle import queue_for
from storage.db import writing
from storage.models import Study
from storage.queue import JobQueue
from storage.states import JobState, StudyState
from tests.synthetic import TEST_UID_ROOT

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)




def _queue(engine: Engine, tmp_path: Path) -> JobQueue:
    return queue_for(load_settings(data_dir=tmp_path / "data"), engine)


def _complete_study(engine: Engine) -> StudyWork:
    """A study as the completion sweep leaves it: complete, results version 1."""
    uid = generate_uid(TEST_UID_ROOT)
    with writing(engine) as conn:
        study_id = conn.execute(insert(Study).values(
            study_instance_uid=uid, state=StudyState.COMPLETE, results_version=1,
            first_received_at=NOW, last_received_at=NOW).returning(Study.id)).scalar_one()
    return StudyWork(study_id, uid, 1)


def _state(engine: Engine, work: StudyWork) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Study.state).where(Study.id == work.study_id)).scalar_one())


def _claim(queue: JobQueue, kind: str):  # noqa: ANN202 (a ClaimedJob)
    job = queue.claim("test", [kind])
    assert job is not None, f"no {kind} job to claim"
    return job


def test_a_study_goes_from_complete_to_done_with_its_jobs(engine: Engine, tmp_path: Path) -> None:
    queue = _queue(engine, tmp_path)
    work = _complete_study(engine)
    queue.enqueue(study_job(InferPayload("m", "r", ("1.2.3",), ("pacs", "backup")), work, 0))
    assert _state(engine, work) == StudyState.COMPLETE
    infer = _claim(queue, "infer")
    assert _state(engine, work) == StudyState.PROCESSING
    queue.enqueue(study_job(EncodePayload("m", "r", ("pacs", "backup")), work, 0))  # as inference does
    assert queue.complete(infer) and _state(engine, work) == StudyState.PROCESSING
    encode = _claim(queue, "encode")
    for destination in ("pacs", "backup"):
        queue.enqueue(study_job(SendPayload("m", destination), work, 0))
    assert queue.complete(encode) and _state(engine, work) == StudyState.PROCESSING
    first, second = _claim(queue, "send"), _claim(queue, "send")
    assert queue.complete(first) and _state(engine, work) == StudyState.PROCESSING
    assert queue.complete(second) and _state(engine, work) == StudyState.DONE


def test_a_dead_job_fails_the_study_and_a_retry_resumes_it(engine: Engine, tmp_path: Path) -> None:
    queue = _queue(engine, tmp_path)
    work = _complete_study(engine)
    queue.enqueue(study_job(SendPayload("m", "pacs"), work, 0))
    send = _claim(queue, "send")
    assert queue.fail(send, "archive down", permanent=True) == JobState.DEAD
    assert _state(engine, work) == StudyState.FAILED
    assert queue.retry(job_id=send.id) == 1
    assert _state(engine, work) == StudyState.PROCESSING
    assert queue.complete(_claim(queue, "send")) and _state(engine, work) == StudyState.DONE


def test_a_superseded_version_leaves_the_study_alone(engine: Engine, tmp_path: Path) -> None:
    queue = _queue(engine, tmp_path)
    work = _complete_study(engine)
    queue.enqueue(study_job(InferPayload("m", "r", ("1.2.3",)), work, 0))
    infer = _claim(queue, "infer")
    with writing(engine) as conn:  # a late image reopened the study
        conn.execute(Study.__table__.update().where(Study.id == work.study_id).values(
            state=StudyState.RECEIVING))
    assert queue.complete(infer) and _state(engine, work) == StudyState.RECEIVING


def test_two_deliveries_finishing_at_once_leave_the_study_done(engine: Engine, tmp_path: Path) -> None:
    """Each finishing job locks the study row before it looks at the others, so the
    second to commit sees the first: the study cannot stay processing for ever."""
    for _ in range(5):
        queue = _queue(engine, tmp_path)
        work = _complete_study(engine)
        for destination in ("pacs", "backup"):
            queue.enqueue(study_job(SendPayload("m", destination), work, 0))
        jobs = [_claim(queue, "send"), _claim(queue, "send")]
        start = threading.Barrier(2)

        def finish(job, start=start, queue=queue) -> None:  # noqa: ANN001
            start.wait()
            assert queue.complete(job)

        threads = [threading.Thread(target=finish, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert _state(engine, work) == StudyState.DONE
