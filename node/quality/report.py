"""A model's quality report: its figures per model version and route, its subgroups,
its course over time, its drift signals and its disagreements, computed from the
database, stored for pages and /metrics, and recomputed on a schedule (``quality``
jobs) and on demand. Drift signals that cross their threshold raise an alert, once
per crossing, told to the webhooks that asked for drift alerts (``alert`` jobs)."""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from config.settings import QualitySettings, Settings
from node.jobs.context import JobContext, configured
from node.jobs.kinds import AlertPayload, QualityPayload, node_job, read_payload
from node.network.httpclient import post_json
from node.quality.cohort import Case, load_cases
from node.quality.drift import DriftWindows, drift_signals
from node.quality.performance import disagreements, group_figures, over_time, subgroup_table
from storage.db import dialect_insert, writing
from storage.models import DriftAlert, PredictionRecord, QualityReport
from storage.queue import ClaimedJob, JobQueue

log = logging.getLogger(__name__)


def windows_of(quality: QualitySettings) -> DriftWindows:
    def epoch(day: Any, end: bool = False) -> float | None:
        if day is None:
            return None
        return float(calendar.timegm(day.timetuple())) + (86400 if end else 0)

    return DriftWindows(quality.drift_window_days, quality.drift_reference_days,
                        epoch(quality.drift_reference_from), epoch(quality.drift_reference_to, end=True),
                        quality.drift_min_cases, quality.drift_threshold, quality.drift_p_value)


def report_of(model: str, cases: list[Case], windows: DriftWindows | None, now: float) -> dict[str, Any]:
    """The report of ``model`` over ``cases`` (``windows`` None: no drift, as for a
    validation cohort, which has no course in time)."""
    started = time.perf_counter()
    groups: dict[tuple[str, str, bool], list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.group].append(case)
    sources: dict[str, int] = defaultdict(int)
    for case in cases:
        for f in case.findings:
            if f.source:
                sources[f.source] += 1
        if case.segments:
            sources["seg"] += len(case.segments)
    report = {
        "model": model,
        "computed_at": now,
        "predictions": len(cases),
        "references": dict(sources),
        "groups": [{"model_version": version, "route": route, "shadow": shadow, **group_figures(members),
                    "subgroups": subgroup_table(members)}
                   for (version, route, shadow), members in sorted(groups.items())],
        "over_time": over_time(cases),
        "drift": drift_signals(cases, windows, now) if windows else [],
        "disagreements": disagreements(cases),
    }
    report["seconds"] = round(time.perf_counter() - started, 3)
    cleaned: dict[str, Any] = finite(report)
    return cleaned


def finite(value: Any) -> Any:
    """``value`` with every infinite or NaN number as None: JSON has no such numbers
    (the ROC curve starts at an infinite threshold; a statistic can be undefined)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def models_with_predictions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(PredictionRecord.model).distinct()).scalars())


def compute(engine: Engine, settings: Settings, model: str, now: float | None = None) -> dict[str, Any]:
    """Compute ``model``'s report from the database and store it."""
    now = time.time() if now is None else now
    started = time.perf_counter()
    with engine.connect() as conn:
        cases = load_cases(conn, model)
    report = report_of(model, cases, windows_of(settings.quality), now)
    report["seconds"] = round(time.perf_counter() - started, 3)
    with writing(engine) as conn:
        statement = dialect_insert(conn, QualityReport.__table__)
        conn.execute(statement.values(model=model, report=report, computed_at=now, seconds=report["seconds"])
                     .on_conflict_do_update(index_elements=["model"], set_={
                         "report": statement.excluded.report, "computed_at": statement.excluded.computed_at,
                         "seconds": statement.excluded.seconds}))
    return report


def stored(engine: Engine, model: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(QualityReport.report).where(QualityReport.model == model)).scalar()
    return dict(row) if row is not None else None


def stored_all(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(QualityReport.report).order_by(QualityReport.model)).scalars()]


def raise_alerts(engine: Engine, settings: Settings, queue: JobQueue, report: dict[str, Any]) -> list[int]:
    """Open an alert for each signal that crossed and has none open (and queue its
    notifications in the same transaction); close those that fell back. The new
    alerts' ids."""
    model, now = report["model"], float(report["computed_at"])
    receivers = [n.name for n in settings.notifications if n.drift_alerts]
    raised = []
    with writing(engine) as conn:
        open_alerts = {a.signal: a.id for a in conn.execute(select(DriftAlert.signal, DriftAlert.id).where(
            DriftAlert.model == model, DriftAlert.cleared_at.is_(None)))}
        for signal in report["drift"]:
            name = signal["signal"]
            if signal["crossed"] and name not in open_alerts:
                detail = (f"{model}: {name} shifted (population stability index {signal['psi']:.3f} >= "
                          f"{signal['threshold']:g}; {signal['reference_n']} reference and "
                          f"{signal['current_n']} current values)")
                alert_id = conn.execute(insert(DriftAlert).values(
                    model=model, signal=name, value=float(signal["psi"]), threshold=float(signal["threshold"]),
                    detail=detail[:300], raised_at=now).returning(DriftAlert.id)).scalar_one()
                raised.append(alert_id)
                log.warning("drift alert: %s", detail)
            elif signal["status"] == "stable" and name in open_alerts:
                conn.execute(update(DriftAlert).where(DriftAlert.id == open_alerts[name]).values(cleared_at=now))
                log.info("drift alert cleared: %s %s is stable again", model, name)
        if raised:  # one message per receiver for what shifted together
            for receiver in receivers:
                queue.enqueue(node_job(AlertPayload(receiver, tuple(raised))), conn)
    return raised


def open_alerts(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(DriftAlert.id, DriftAlert.model, DriftAlert.signal, DriftAlert.value, DriftAlert.threshold,
                   DriftAlert.detail, DriftAlert.raised_at).where(DriftAlert.cleared_at.is_(None))
            .order_by(DriftAlert.id))]


def refresh(engine: Engine, settings: Settings, queue: JobQueue, model: str,
            now: float | None = None) -> dict[str, Any]:
    """Recompute, store, and raise or clear the model's drift alerts."""
    report = compute(engine, settings, model, now)
    raise_alerts(engine, settings, queue, report)
    return report


def schedule(engine: Engine, queue: JobQueue, interval_s: float, now: float | None = None) -> int:
    """Queue this tick's ``quality`` job of every model with predictions; how many."""
    slot = int((time.time() if now is None else now) // interval_s)
    added = 0
    for model in models_with_predictions(engine):
        if queue.enqueue(node_job(QualityPayload(model, slot), max_attempts=2)) is not None:
            added += 1
    return added


class QualityHandler:
    """The ``quality`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine, queue: JobQueue) -> None:
        self._settings, self._engine, self._queue = settings, engine, queue

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(QualityPayload, job)
        report = refresh(self._engine, self._settings, self._queue, payload.model)
        log.info("quality report of %s: %d predictions in %.1f s", payload.model, report["predictions"],
                 report["seconds"])


class AlertHandler:
    """The ``alert`` job handler: one drift alert to one webhook."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings, self._engine = settings, engine

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(AlertPayload, job)
        notification = configured(self._settings.notifications, payload.notification, "notifications")
        with self._engine.connect() as conn:
            alerts = Session(bind=conn).scalars(select(DriftAlert).where(DriftAlert.id.in_(payload.alert_ids))
                                                .order_by(DriftAlert.id)).all()
        if not alerts:
            log.info("drift alerts %s are no longer recorded; nothing to tell", payload.alert_ids)
            return
        document = {"event": "model.drift", "model": alerts[0].model, "raised_at": alerts[0].raised_at,
                    "signals": [{"signal": a.signal, "population_stability_index": a.value,
                                 "threshold": a.threshold, "detail": a.detail} for a in alerts]}
        status = post_json(notification.url or "", document, notification.timeout_s)
        log.info("drift alert of %s (%s) told to %s (HTTP %d)", alerts[0].model,
                 ", ".join(a.signal for a in alerts), notification.name, status)
