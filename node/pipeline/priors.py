"""Priors: the ``priors`` job of a route that compares with the patient's earlier studies.

When such a study completes, its infer job is held in a ``priors`` job instead. Its
first run asks the PACS for the patient's studies (C-FIND by Patient ID), chooses the
relevant ones (the route's ``[routes.priors]``: how many, how old, which modality),
records them and queues a ``retrieve`` job for each (throttled and de-duplicated like
backfill: a prior already held or already asked for is not fetched again). The job
then waits in the queue, holding no worker (the study is ``awaiting_priors``), and
looks again every few seconds: once every prior is here, or the route's
``timeout_s`` has passed since the study completed, it queues the infer job with the
series the route takes in each prior that arrived, and the timeline says what the
model got and what it did not.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import date, datetime

from pydicom import dcmread
from sqlalchemy import Engine, select

from config.settings import PriorsRule, Route, Settings
from node.jobs.context import Deferred, JobContext, current_study
from node.jobs.kinds import (
    PriorSeries,
    PriorsPayload,
    RetrievePayload,
    StudyWork,
    read_payload,
    study_job,
)
from node.network.archive import QueryFailed, StudyMatch
from node.network.query import find_studies
from node.pipeline.completion import load_study_view
from node.pipeline.lifecycle import queue_for
from node.pipeline.retrieval import held_instances, queue_retrievals
from node.pipeline.routing import route_study
from storage.db import writing
from storage.files import FileStore
from storage.inventory import first_instance_path
from storage.models import Job, Series, Study
from storage.priors import PRIORS_CHOSEN, PRIORS_READY, ChosenPrior, choose_priors, chosen_priors
from storage.queue import ClaimedJob
from storage.states import JobState
from storage.timeline import epoch, record, record_now

log = logging.getLogger(__name__)

#: How often a waiting ``priors`` job looks whether its priors are here.
POLL_S = 2.0
#: How soon a PACS that did not answer is asked again (within the route's timeout).
QUERY_RETRY_S = 15.0


def _day(dicom_date: str | None) -> date | None:
    try:
        return datetime.strptime(dicom_date or "", "%Y%m%d").date()
    except ValueError:
        return None


def _dates(priors: list[ChosenPrior]) -> str:
    return ", ".join(p.study_date or "undated" for p in priors)


def relevant_priors(matches: list[StudyMatch], current_uid: str, current_date: date, rule: PriorsRule,
                    modalities: set[str]) -> list[ChosenPrior]:
    """The studies of ``matches`` that are priors of the current one under ``rule``:
    another study, dated on or before it and at most ``max_age_days`` older, with one
    of ``modalities`` when ``same_modality`` (a study whose modalities the PACS does not
    list passes); the ``count`` most recent."""
    found = []
    for m in matches:
        day = _day(m.study_date)
        if m.study_instance_uid == current_uid or day is None or day > current_date:
            continue
        if (current_date - day).days > rule.max_age_days:
            continue
        if rule.same_modality and modalities and m.modalities and not modalities & set(m.modalities):
            continue
        found.append((day, m))
    found.sort(key=lambda item: item[0], reverse=True)
    return [ChosenPrior(m.study_instance_uid, m.study_date, m.instances) for _, m in found[:rule.count]]


def _for_priors(route: Route) -> Route:
    """The route as it chooses series in a prior: the archive, not a modality, sent it."""
    return route.model_copy(update={"match": route.match.model_copy(update={"calling_ae": []})})


class PriorsHandler:
    """The ``priors`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)
        self._queue = queue_for(settings, engine)
        self._routes = {r.name: r for r in settings.routes}

    def _route(self, payload: PriorsPayload) -> Route | None:
        """The first of the job's routes that asks for priors (as configured now)."""
        for name in payload.infer.route.split(", "):
            route = self._routes.get(name)
            if route is not None and route.priors is not None:
                return route
        return None

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(PriorsPayload, job)
        work = current_study(self._engine, job)
        route = self._route(payload)
        if route is None or route.priors is None or self._settings.pacs is None:
            self._release(payload, work, [], "no route of it asks for priors any more (configuration changed)")
            return
        rule = route.priors
        with self._engine.connect() as conn:
            completed_at = conn.execute(select(Study.completed_at).where(Study.id == work.study_id)).scalar()
        waited = time.time() - epoch(completed_at) if completed_at else 0.0
        chosen = chosen_priors(self._engine, work.study_id, work.results_version)
        if chosen is None:
            try:
                chosen = self._choose(work, route, rule, payload.priority)
            except QueryFailed as exc:
                if waited >= rule.timeout_s:
                    self._release(payload, work, [], f"ran without priors: {exc}")
                    return
                raise Deferred(time.time() + min(QUERY_RETRY_S, rule.timeout_s - waited),
                               f"asking the PACS for priors failed ({exc}); asked again until "
                               f"{rule.timeout_s:g} s after completion") from None
        ready, missing = self._partition(chosen)
        lost = [p for p in chosen if p not in ready and p not in missing]
        lost_note = (f"ran without {len(lost)} prior(s) ({_dates(lost)}): their retrieval failed (ainode jobs "
                     "--kind retrieve --state dead)") if lost else ""
        if not missing:
            self._release(payload, work, ready, lost_note)
            return
        if waited >= rule.timeout_s:
            late = (f"ran without {len(missing)} prior(s) ({_dates(missing)}): not retrieved within timeout_s "
                    f"({rule.timeout_s:g} s)")
            self._release(payload, work, ready, "; ".join(n for n in (late, lost_note) if n))
            return
        raise Deferred(time.time() + min(POLL_S, rule.timeout_s - waited),
                       f"waiting for {len(missing)} prior(s) from {self._settings.pacs.ae_title}")

    def _choose(self, work: StudyWork, route: Route, rule: PriorsRule, priority: int) -> list[ChosenPrior]:
        """Ask the PACS, record the chosen priors and queue their retrieval."""
        pacs = self._settings.pacs
        assert pacs is not None
        with self._engine.connect() as conn:
            study_date = conn.execute(select(Study.study_date).where(Study.id == work.study_id)).scalar()
            modalities = {m for m in conn.execute(select(Series.modality).where(
                Series.study_id == work.study_id)).scalars() if m}
            path = first_instance_path(conn, work.study_id)
        patient_id = ""
        if path:
            header = dcmread(self._store.absolute(path), stop_before_pixels=True, specific_tags=["PatientID"])
            patient_id = str(header.get("PatientID", "") or "").strip()
        if not patient_id or any(c in patient_id for c in "*?\\"):
            choose_priors(self._engine, work.study_id, work.results_version, [])
            record_now(self._engine, work.study_id, PRIORS_CHOSEN,
                       "no priors asked for: the study has no usable Patient ID", work.results_version)
            return []
        matches = find_studies(pacs, self._settings.ae_title, PatientID=patient_id)
        wanted = set(route.match.modality) or modalities
        chosen = relevant_priors(matches, work.study_instance_uid, _day(study_date) or date.today(), rule, wanted)
        choose_priors(self._engine, work.study_id, work.results_version, chosen)
        queued = queue_retrievals(
            self._queue, [StudyMatch(p.study_instance_uid, "", p.study_date or "", (), p.instances, "")
                          for p in chosen], "prior", priority=max(1, priority))
        # Asked for before but not here now (removed by retention since, or its retrieval
        # died): its retrieve job runs again.
        queued = [job or self._fetch_again(p) for p, job in zip(chosen, queued, strict=True)]
        record_now(self._engine, work.study_id, PRIORS_CHOSEN, (
            f"{len(chosen)} prior(s) on {pacs.ae_title}: " + _dates(chosen)
            + f"; {sum(1 for q in queued if q)} retrieval(s) queued") if chosen else
            f"{pacs.ae_title} holds no earlier study of the patient that the route takes", work.results_version)
        log.info("study %s v%d: %d prior(s) chosen on %s, %d retrieval(s) queued", work.study_instance_uid,
                 work.results_version, len(chosen), pacs.ae_title, sum(1 for q in queued if q))
        return chosen

    def _fetch_again(self, prior: ChosenPrior) -> int | None:
        """Requeue the finished retrieve job of a prior that is not (all) here; its id, or
        None when the prior is here or its retrieval is still to run."""
        if held_instances(self._engine, prior.study_instance_uid) >= (prior.instances or 1):
            return None
        job_id, state = self._retrieval(prior.study_instance_uid) or (None, None)
        if job_id is None or state not in (JobState.SUCCEEDED, JobState.DEAD):
            return None
        return job_id if self._queue.retry(job_id) else None

    def _retrieval(self, study_instance_uid: str) -> tuple[int, str] | None:
        """The study's ``retrieve`` job (one per study: its dedupe key), as (id, state)."""
        key = RetrievePayload(study_instance_uid).dedupe_key()
        with self._engine.connect() as conn:
            row = conn.execute(select(Job.id, Job.state).where(Job.dedupe_key == key)).one_or_none()
        return (row.id, row.state) if row is not None else None

    def _partition(self, chosen: list[ChosenPrior]) -> tuple[list[ChosenPrior], list[ChosenPrior]]:
        """(here, still missing): a prior is here when the node holds as many of its
        instances as the PACS listed (or its retrieval finished, when the PACS gave no
        count); one whose retrieval is dead is given up (neither)."""
        ready, missing = [], []
        for prior in chosen:
            held = held_instances(self._engine, prior.study_instance_uid)
            _job_id, state = self._retrieval(prior.study_instance_uid) or (None, None)
            if held and (held >= prior.instances if prior.instances else state == JobState.SUCCEEDED):
                ready.append(prior)
            elif state != JobState.DEAD:
                missing.append(prior)
        return ready, missing

    def _series(self, route: Route | None, prior: ChosenPrior) -> list[PriorSeries]:
        with self._engine.connect() as conn:
            study_id = conn.execute(select(Study.id).where(
                Study.study_instance_uid == prior.study_instance_uid)).scalar()
            if study_id is None or route is None:
                return []
            view = load_study_view(conn, study_id)
        decision = route_study([_for_priors(route)], view)[0]
        return [PriorSeries(prior.study_instance_uid, s.series_instance_uid, prior.study_date)
                for s in decision.chosen]

    def _release(self, payload: PriorsPayload, work: StudyWork, ready: list[ChosenPrior], note: str) -> None:
        """Queue the infer job with the priors that are here; the timeline says what it got."""
        route = self._route(payload)
        series: list[PriorSeries] = []
        untaken = []
        for prior in ready:
            taken = self._series(route, prior)
            series += taken
            if not taken:
                untaken.append(prior.study_date or "undated")
        infer = dataclasses.replace(payload.infer, priors=tuple(series))
        got = sorted({s.study_date or "undated" for s in series}, reverse=True)
        detail = (f"{payload.infer.model} gets {len(got)} prior(s)" + (f": {', '.join(got)}" if got else "")
                  + (f"; no series the route takes in {', '.join(untaken)}" if untaken else "")
                  + (f"; {note}" if note else ""))
        with writing(self._engine) as conn:
            self._queue.enqueue(study_job(infer, work, payload.priority), conn)
            record(conn, work.study_id, PRIORS_READY, detail, work.results_version)
        log.info("study %s v%d: %s gets %d prior(s)%s", work.study_instance_uid, work.results_version,
                 payload.infer.model, len(got), f" ({note})" if note else "")

