"""The states a study and a job go through, and a study's level on the worklist.

They are stored as their string values; :class:`enum.StrEnum` members compare equal
to those strings, so rows read back compare with the members directly.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job in the durable queue (see :mod:`storage.queue` for the transitions)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    #: Work for a results version the study has left behind (more images arrived, so a
    #: newer version will be computed): ended without running, or without its effect.
    SUPERSEDED = "superseded"


#: Jobs that still hold work: waiting for a worker, or running under a lease.
LIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class StudyState(StrEnum):
    """A study's lifecycle::

        receiving -> complete [-> awaiting_priors] -> processing -> done | failed | not_applicable
            ^-------- a late image reopens it (the next results version) --------'

    - ``receiving``: images are arriving; the study is not yet complete.
    - ``complete``: it arrived; its jobs are queued and none has started.
    - ``awaiting_priors``: its model waits for earlier studies from the PACS (no job
      is running; the wait ends when they are here or the route's timeout passes).
    - ``processing``: a job of its current results version has started.
    - ``done``: every job of that version succeeded and a model gave results.
    - ``failed``: a job of that version is dead (a person must look; a retry resumes it).
    - ``not_applicable``: no rule took any of its series, or every model routed to it
      declined it (e.g. no lungs in the volume): not a failure.
    """

    RECEIVING = "receiving"
    COMPLETE = "complete"
    AWAITING_PRIORS = "awaiting_priors"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"


class StudyLevel(StrEnum):
    """A study's level on the reading worklist, lowest first."""

    ROUTINE = "routine"
    URGENT = "urgent"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(StudyLevel).index(self)

    @classmethod
    def of(cls, value: str | None) -> StudyLevel:
        """The level a stored value names; routine for none or an unknown one."""
        try:
            return cls(value) if value is not None else cls.ROUTINE
        except ValueError:
            return cls.ROUTINE
