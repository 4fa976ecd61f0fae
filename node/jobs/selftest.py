"""The queue's self-test job (``ainode selftest queue``): it touches no study."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node.jobs.context import JobContext
from node.jobs.kinds import NoopPayload, read_payload
from storage.queue import ClaimedJob


def run_noop(job: ClaimedJob, ctx: JobContext) -> None:
    """Wait ``seconds``, fail when told to, and append one line per run to
    ``<data_dir>/selftest-runs.log`` so that runs can be counted."""
    payload = read_payload(NoopPayload, job)
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        if ctx.cancelled.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            raise RuntimeError("cancelled")
    if payload.fail:
        raise RuntimeError("self-test job told to fail")
    line = f"{job.id} {job.attempts} {os.getpid()}\n".encode()
    fd = os.open(Path(ctx.settings.data_dir) / "selftest-runs.log",
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
