"""Retrieving earlier studies from the PACS (backfill): ``retrieve`` jobs, one per study,
throttled to ``pacs.retrieve_per_minute`` across all workers and kept to
``pacs.retrieve_hours``; a study already here is not fetched again. The PACS sends the
study to the node's listener (C-MOVE), where it is stored like any other, or, for an
archive reached over DICOMweb, the worker fetches it (WADO-RS) and keeps each instance
through the same intake; once all are here the study completes at once and goes
through its routes (a prior's is not routed)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from config.settings import PacsSettings, Settings
from node.jobs.context import Deferred, JobContext, PermanentJobError
from node.jobs.kinds import JobKind, RetrievePayload, node_job, read_payload
from node.network.archive import StudyMatch
from node.network.intake import InstanceIntake
from node.network.query import get_study, move_study
from node.network.wado import retrieve_study
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from node.quality.seg_jobs import comparison_queuer
from storage.files import FileStore
from storage.models import Instance, Series, Study
from storage.queue import ClaimedJob, JobQueue
from storage.throttle import take_turn
from storage.timeline import record_now

log = logging.getLogger(__name__)

THROTTLE = str(JobKind.RETRIEVE)  # the shared rate of retrieve jobs
RETRIEVED = "retrieved"  # timeline step


def window_opens(hours: str, now: datetime) -> datetime | None:
    """None when ``now`` (local time) is inside ``hours`` ("HH:MM-HH:MM", may pass
    midnight; "" is always), else when the window next opens."""
    if not hours:
        return None
    start_text, end_text = hours.split("-")
    start = datetime.strptime(start_text, "%H:%M").time()
    end = datetime.strptime(end_text, "%H:%M").time()
    moment = now.time()
    inside = start <= moment < end if start <= end else (moment >= start or moment < end)
    if inside:
        return None
    opens = now.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    return opens if opens > now else opens + timedelta(days=1)


def held_instances(engine: Engine, study_instance_uid: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count(Instance.id)).join(Series, Series.id == Instance.series_id)
            .join(Study, Study.id == Series.study_id)
            .where(Study.study_instance_uid == study_instance_uid)).scalar_one())


def queue_retrievals(queue: JobQueue, matches: list[StudyMatch], reason: str, priority: int = 0) -> list[int | None]:
    """One ``retrieve`` job per study (a study already queued or retrieved is not queued
    again: None in its place). ``priority``: a study's priors are claimed before a
    backfill's retrievals (both take turns of the same rate)."""
    return [queue.enqueue(node_job(RetrievePayload(m.study_instance_uid, m.instances, reason), priority=priority))
            for m in matches]


class RetrieveHandler:
    """The ``retrieve`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine, queue: JobQueue) -> None:
        self._settings = settings
        self._engine = engine
        self._queue = queue
        self._store = FileStore(settings.data_dir)
        self._completion = CompletionSweep(engine, queue, CompletionPolicy.from_settings(settings), self._store)
        self._intake_of: InstanceIntake | None = None

    def _intake(self, door: str) -> InstanceIntake:
        """Where instances this worker fetches itself (WADO-RS, C-GET) are kept; made on
        first use: C-MOVE brings them to the listener instead."""
        if self._intake_of is None:
            self._intake_of = InstanceIntake(self._settings, self._engine, self._store, door,
                                             comparison_queuer(self._queue))
        return self._intake_of

    def _pacs(self) -> PacsSettings:
        if self._settings.pacs is None:
            raise PermanentJobError("no [pacs] is configured: set ae_title, host and port of the archive")
        return self._settings.pacs

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(RetrievePayload, job)
        pacs = self._pacs()
        uid = payload.study_instance_uid
        held = held_instances(self._engine, uid)
        if payload.instances is not None and held >= payload.instances:
            log.info("study %s: already here (%d instance(s)); not retrieved again", uid, held)
            return
        opens = window_opens(pacs.retrieve_hours, datetime.now())
        if opens is not None:
            raise Deferred(opens.timestamp(), f"outside pacs.retrieve_hours ({pacs.retrieve_hours}); "
                                              f"waits until {opens:%H:%M}")
        turn = take_turn(self._engine, THROTTLE, 60.0 / pacs.retrieve_per_minute, time.time())
        if turn is not None:
            raise Deferred(turn, f"pacs.retrieve_per_minute ({pacs.retrieve_per_minute:g}): next turn in "
                                 f"{turn - time.time():.1f} s")
        started = time.monotonic()
        if pacs.dicomweb_url:
            outcome = retrieve_study(pacs, uid, self._intake("WADO-RS"))
        elif pacs.retrieve == "get":
            outcome = get_study(pacs, self._settings.ae_title, uid, self._intake("C-GET"))
        else:
            outcome = move_study(pacs, self._settings.ae_title, uid, pacs.move_destination or self._settings.ae_title)
        # Every instance was kept and committed (a C-MOVE's sub-operations were each
        # acknowledged by a listener): the study is here as the archive holds it, and
        # completes now.
        completed = self._completion.complete_now(uid, "retrieved")
        with self._engine.connect() as conn:
            study_id = conn.execute(select(Study.id).where(Study.study_instance_uid == uid)).scalar_one_or_none()
        if study_id is not None:
            record_now(self._engine, study_id, RETRIEVED,
                       f"{outcome.completed} instance(s) from {pacs.ae_title} ({payload.reason})")
        log.info("study %s: %d instance(s) retrieved from %s in %.1f s (%s)%s", uid, outcome.completed,
                 pacs.ae_title, time.monotonic() - started, payload.reason,
                 "; complete" if completed else "")
