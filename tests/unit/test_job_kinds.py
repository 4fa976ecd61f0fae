"""Job payloads: the JSON a job row keeps, read back typed, and the dedupe keys that make
enqueueing the same work twice add one job."""

from __future__ import annotations

import pytest

from node.jobs.kinds import (
    BadPayload,
    EncodePayload,
    InferPayload,
    JobKind,
    NotifyPayload,
    SendPayload,
    StudyWork,
    read_payload,
    series_key,
    study_job,
)
from storage.queue import ClaimedJob
from storage.states import StudyLevel

WORK = StudyWork(7, "1.2.3.4", 2)


def _claimed(kind: str, payload: dict) -> ClaimedJob:
    return ClaimedJob(1, kind, payload, WORK.study_id, WORK.results_version, 1, 5, "w")


def test_a_payload_goes_through_its_job_row_unchanged() -> None:
    payload = InferPayload("ct-chest", "chest", ("1.2.3.4.5", "1.2.3.4.6"), ("pacs",))
    job = study_job(payload, WORK, priority=12)
    assert (job.kind, job.priority, job.study_id, job.results_version) == (JobKind.INFER, 12, 7, 2)
    assert job.payload == {"model": "ct-chest", "route": "chest", "series": ["1.2.3.4.5", "1.2.3.4.6"],
                           "destinations": ["pacs"], "shadow": False, "priors": []}  # plain JSON in the row
    assert read_payload(InferPayload, _claimed(job.kind, job.payload)) == payload
    # A job queued before shadow mode existed reads as a clinical one.
    older = {k: v for k, v in job.payload.items() if k != "shadow"}
    assert read_payload(InferPayload, _claimed(job.kind, older)).shadow is False


def test_dedupe_keys_name_the_study_version_and_work() -> None:
    # The series are part of the work: one model on two series is two jobs, and the
    # encode and send jobs that follow each are apart too (a key was once per model).
    one, other = InferPayload("m", "r", ("s",)), InferPayload("m", "r2", ("t",))
    assert study_job(one, WORK, 0).dedupe_key != study_job(other, WORK, 0).dedupe_key
    assert study_job(one, WORK, 0).dedupe_key == f"infer:1.2.3.4:m{series_key(('s',))}:v2"
    both = study_job(InferPayload("m", "r", ("a", "b")), WORK, 0).dedupe_key
    assert both == study_job(InferPayload("m", "other route", ("b", "a")), WORK, 0).dedupe_key
    assert (study_job(EncodePayload("m", "r", (), ("s",)), WORK, 0).dedupe_key
            != study_job(EncodePayload("m", "r", (), ("t",)), WORK, 0).dedupe_key)
    assert (study_job(SendPayload("m", "pacs", ("s",)), WORK, 0).dedupe_key
            != study_job(SendPayload("m", "pacs", ("t",)), WORK, 0).dedupe_key)
    # jobs queued before keys named their series keep their keys
    assert study_job(EncodePayload("m", "r"), WORK, 0).dedupe_key == "encode:1.2.3.4:m:v2"
    assert study_job(SendPayload("m", "pacs"), WORK, 0).dedupe_key == "send:1.2.3.4:m:v2:pacs"
    assert study_job(NotifyPayload("ris", StudyLevel.URGENT), WORK, 0).dedupe_key == "notify:1.2.3.4:v2:ris:urgent"


def test_a_payload_that_does_not_fit_its_kind_is_refused_by_name() -> None:
    with pytest.raises(BadPayload, match=r"job 1 \(send\) has an unusable payload \(destination\)"):
        read_payload(SendPayload, _claimed("send", {"model": "m"}))
    with pytest.raises(BadPayload, match="is a send job, not encode"):
        read_payload(EncodePayload, _claimed("send", {"model": "m", "destination": "pacs"}))
    # A job written by an earlier version with more fields still reads.
    old = {"model": "m", "route": "r", "destinations": [], "retired_field": 1}
    assert read_payload(EncodePayload, _claimed("encode", old)) == EncodePayload("m", "r", ())
