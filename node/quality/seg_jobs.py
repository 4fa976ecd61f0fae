"""Queueing the comparison of a SEG the listener received (kept apart from the
comparison itself, which needs MONAI and highdicom: a listener process imports this)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

from node.jobs.kinds import ReferencePayload, node_job
from storage.queue import JobQueue


def comparison_queuer(queue: JobQueue) -> Callable[[Connection, str], None]:
    """What the listener calls in the transaction that records a SEG: queue its
    comparison. It may come before the study's models have run: the job then waits for
    them, retrying with backoff (up to hours with the default policy)."""
    def queue_comparison(conn: Connection, sop_instance_uid: str) -> None:
        queue.enqueue(node_job(ReferencePayload(sop_instance_uid), max_attempts=12), conn)
    return queue_comparison
