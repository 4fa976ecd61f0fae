"""A study's state from its jobs (node/pipeline/lifecycle.py): the rule alone."""

from __future__ import annotations

import pytest

from node.jobs.kinds import JobKind
from node.pipeline.lifecycle import study_state
from storage.states import JobState, StudyState

INFER, ENCODE, SEND, PRIORS = JobKind.INFER, JobKind.ENCODE, JobKind.SEND, JobKind.PRIORS
QUEUED, RUNNING, SUCCEEDED, DEAD = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.DEAD


@pytest.mark.parametrize(("current", "jobs", "expected"), [
    # Queued at completion, nothing started yet: still complete.
    (StudyState.COMPLETE, [(INFER, QUEUED)], StudyState.COMPLETE),
    (StudyState.COMPLETE, [(INFER, RUNNING)], StudyState.PROCESSING),
    # A model waits in the queue for its priors (no worker held); another may run meanwhile.
    (StudyState.COMPLETE, [(PRIORS, QUEUED)], StudyState.AWAITING_PRIORS),
    (StudyState.AWAITING_PRIORS, [(PRIORS, QUEUED), (INFER, RUNNING)], StudyState.PROCESSING),
    (StudyState.AWAITING_PRIORS, [(PRIORS, SUCCEEDED), (INFER, QUEUED)], StudyState.PROCESSING),
    (StudyState.PROCESSING, [(PRIORS, SUCCEEDED), (INFER, SUCCEEDED), (ENCODE, SUCCEEDED)], StudyState.DONE),
    # Between steps (the encode job waits for a worker): still processing.
    (StudyState.PROCESSING, [(INFER, SUCCEEDED), (ENCODE, QUEUED)], StudyState.PROCESSING),
    (StudyState.PROCESSING, [(INFER, SUCCEEDED), (ENCODE, SUCCEEDED), (SEND, SUCCEEDED)], StudyState.DONE),
    # Results kept here (no destination): done once encoded.
    (StudyState.PROCESSING, [(INFER, SUCCEEDED), (ENCODE, SUCCEEDED)], StudyState.DONE),
    (StudyState.PROCESSING, [(INFER, SUCCEEDED), (ENCODE, SUCCEEDED), (SEND, DEAD)], StudyState.FAILED),
    # One delivery dead, another still trying: not settled yet.
    (StudyState.PROCESSING, [(ENCODE, SUCCEEDED), (SEND, DEAD), (SEND, RUNNING)], StudyState.PROCESSING),
    # An operator's retry resumes a failed study.
    (StudyState.FAILED, [(INFER, SUCCEEDED), (ENCODE, SUCCEEDED), (SEND, QUEUED)], StudyState.PROCESSING),
    # Every model declined (its infer job succeeded without results to encode).
    (StudyState.PROCESSING, [(INFER, SUCCEEDED)], StudyState.NOT_APPLICABLE),
    # One model declined, another produced results: done.
    (StudyState.PROCESSING, [(INFER, SUCCEEDED), (INFER, SUCCEEDED), (ENCODE, SUCCEEDED)], StudyState.DONE),
])
def test_a_study_state_follows_its_jobs(current: StudyState, jobs: list[tuple[str, str]],
                                        expected: StudyState) -> None:
    assert study_state(current, jobs) == expected
