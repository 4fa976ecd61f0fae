"""Study completion: deciding when a study has arrived, and queueing its work.

A study is complete when the modality's procedure steps (MPPS) were reported completed
and every instance they list is here; otherwise by the rules of
:func:`completion_reason`, a pure function (expected series, quiet period, forced). The
sweep applies them to studies still receiving; a study that completes is marked
complete with a new results version, and its ``infer`` jobs are queued, in one
transaction. A whole-study STOW-RS request completes its study at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.orm import Session

from config.settings import Route, Settings
from node.jobs.kinds import PriorsPayload, StudyWork, study_job
from node.pipeline.routing import SeriesView, StudyView, expected_series_present, infer_jobs, route_study
from node.pipeline.triage import arrival_level, job_priority, raise_level, requested_priority
from storage.db import writing
from storage.files import FileStore
from storage.inventory import first_instance_path
from storage.models import Series, Study
from storage.mpps import StudySteps, study_steps
from storage.priors import PRIOR, is_a_prior
from storage.queue import JobQueue
from storage.states import StudyState
from storage.timeline import COMPLETED, SUPERSEDED, record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionPolicy:
    quiet_period_s: float
    force_complete_after_s: float
    routes: tuple[Route, ...]
    #: When this node started: a quiet period counts from then at the earliest. Images
    #: in flight when the node stopped were not acknowledged, and senders send them
    #: again after the restart; a study must not complete before they had the chance.
    counting_from: datetime | None = None

    @classmethod
    def from_settings(cls, settings: Settings, started: datetime | None = None) -> CompletionPolicy:
        return cls(settings.quiet_period_s, settings.force_complete_after_s, tuple(settings.routes), started)

    def quiet_period_for(self, study: StudyView) -> float:
        """The shortest quiet period among the rules that take a series of the study
        (a rule may ask for less than the default), else the default."""
        periods = [
            d.route.quiet_period_s for d in route_study(self.routes, study)
            if d.matched and d.route.quiet_period_s is not None
        ]
        return min(periods, default=self.quiet_period_s)


def completion_reason(
    policy: CompletionPolicy,
    study: StudyView,
    first_received: datetime,
    last_received: datetime,
    now: datetime,
) -> str | None:
    """Why the study is complete now ("expected-series", "quiet", "forced"), or None."""
    if any(expected_series_present(r, study) for r in policy.routes if r.enabled):
        return "expected-series"
    quiet_since = max(last_received, policy.counting_from) if policy.counting_from else last_received
    if (now - quiet_since).total_seconds() >= policy.quiet_period_for(study):
        return "quiet"
    if (now - first_received).total_seconds() >= policy.force_complete_after_s:
        return "forced"
    return None


def _steps_note(steps: StudySteps, reason: str) -> str:
    """What the modality's procedure steps said, when the study completed otherwise."""
    if not steps.steps or reason == "mpps":
        return ""
    if steps.completed < steps.steps:
        return f"; {steps.steps - steps.completed} of its {steps.steps} procedure step(s) not reported completed"
    return f"; its procedure steps listed {steps.missing} instance(s) that did not arrive" if steps.missing else ""


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def load_study_view(conn: Connection, study_id: int) -> StudyView:
    """The routing view of a stored study, with instance counts per series."""
    session = Session(bind=conn)
    study = session.get_one(Study, study_id)
    rows = session.scalars(
        select(Series).where(Series.study_id == study_id)
        .order_by(Series.series_number, Series.series_instance_uid)
    ).all()
    series = tuple(
        SeriesView(
            s.series_instance_uid, s.modality, s.sop_class_uid, s.series_number,
            s.series_description, s.body_part_examined, s.slice_thickness, s.convolution_kernel,
            s.orientation, int(s.instance_count), s.calling_ae_title,  # type: ignore[attr-defined]
        )
        for s in rows
    )
    return StudyView(study.study_instance_uid, study.study_description, series)


class CompletionSweep:
    """Completes studies that are ready and queues their jobs (run periodically)."""

    def __init__(self, engine: Engine, queue: JobQueue, policy: CompletionPolicy,
                 store: FileStore | None = None) -> None:
        """``store``: where the images are, to read the request's priority from one of
        them (without it, studies start at their routes' level)."""
        self._engine = engine
        self._queue = queue
        self._policy = policy
        self._store = store

    def _requested_priority(self, conn: Connection, study_id: int) -> str | None:
        if self._store is None:
            return None
        path = first_instance_path(conn, study_id)
        return requested_priority(self._store.absolute(path)) if path else None

    def run(self, now: datetime | None = None) -> list[str]:
        """One sweep; the UIDs of the studies it completed."""
        now = now or datetime.now(UTC)
        with self._engine.connect() as conn:
            candidates = list(conn.execute(select(Study.id).where(Study.state == StudyState.RECEIVING)).scalars())
        completed = []
        for study_id in candidates:
            uid = self._try_complete(study_id, now)
            if uid:
                completed.append(uid)
        return completed

    def complete_now(self, study_instance_uid: str, reason: str | None = None, now: datetime | None = None) -> bool:
        """Complete a study that is receiving now rather than at the next sweep, its
        jobs queued as the sweep would: for ``reason`` (a whole-study STOW-RS request),
        or, without one, if its procedure steps say it is complete (an MPPS N-SET whose
        instances are all here). False when it did not complete."""
        with self._engine.connect() as conn:
            study_id = conn.execute(select(Study.id).where(
                Study.study_instance_uid == study_instance_uid)).scalar_one_or_none()
        if study_id is None:
            return False
        return self._try_complete(study_id, now or datetime.now(UTC), reason, by_steps_only=reason is None) is not None

    def _try_complete(self, study_id: int, now: datetime, given_reason: str | None = None,
                      by_steps_only: bool = False) -> str | None:
        # One write transaction per study: on SQLite BEGIN IMMEDIATE keeps new images
        # out until it commits; on PostgreSQL the row lock makes their upsert wait.
        # Either way a late image reopens the study after, never during, completion.
        with writing(self._engine) as conn:
            row = conn.execute(
                select(Study.state, Study.first_received_at, Study.last_received_at,
                       Study.results_version, Study.study_instance_uid)
                .where(Study.id == study_id).with_for_update()
            ).one_or_none()
            if row is None or row.state != StudyState.RECEIVING:
                return None
            view = load_study_view(conn, study_id)
            steps = study_steps(conn, row.study_instance_uid)
            reason = given_reason or ("mpps" if steps.complete else None if by_steps_only else completion_reason(
                self._policy, view, _utc(row.first_received_at), _utc(row.last_received_at), now
            ))
            if reason is None:
                return None
            version = row.results_version + 1
            # An earlier study fetched as another study's prior is there to be compared
            # with: its models ran when it was new; it is not routed again.
            held_as_prior = is_a_prior(conn, row.study_instance_uid)
            if held_as_prior:
                reason = PRIOR
            decisions = [] if held_as_prior else [d for d in route_study(self._policy.routes, view) if d.matched]
            requested = self._requested_priority(conn, study_id)
            arrival = arrival_level(requested, [d.route for d in decisions])
            conn.execute(update(Study).where(Study.id == study_id).values(
                # No rule takes any of its series: no model applies to the study.
                state=StudyState.COMPLETE if decisions else StudyState.NOT_APPLICABLE, results_version=version,
                completed_at=now, completion_reason=reason, requested_priority=requested))
            if row.results_version:
                left = self._queue.supersede_older(
                    conn, study_id, version, f"results version {row.results_version} superseded: the study "
                                             f"completed again as version {version}")
                record(conn, study_id, SUPERSEDED, f"by results version {version} (more images arrived); "
                       f"{left} queued job(s) of it ended", row.results_version)
            record(conn, study_id, COMPLETED, f"{reason}; " + (
                ", ".join(f"{d.route.name} -> {d.route.model}" for d in decisions)
                or ("held as another study's prior, not routed" if held_as_prior else "no route matched"))
                + _steps_note(steps, reason), version)
            level = raise_level(conn, study_id, arrival, version)
            work = StudyWork(study_id, view.study_instance_uid, version)
            with_priors = {d.route.name for d in decisions if d.route.priors is not None}
            for payload, priority in infer_jobs(decisions):
                queued_priority = job_priority(priority, level)
                if with_priors & set(payload.route.split(", ")):
                    # The model waits for the patient's earlier studies (node.pipeline.priors).
                    self._queue.enqueue(study_job(PriorsPayload(payload, queued_priority), work, queued_priority),
                                        conn)
                else:
                    self._queue.enqueue(study_job(payload, work, queued_priority), conn)
        log.info(
            "study %s complete (%s), results version %d: %s", view.study_instance_uid, reason,
            version, ", ".join(f"{d.route.name} -> {d.route.model} on {len(d.chosen)} series"
                               for d in decisions) or "no route matched",
        )
        return view.study_instance_uid

