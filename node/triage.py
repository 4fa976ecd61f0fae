"""Triage: a study's level on the worklist (routine, urgent, critical) and how it
orders work.

A study starts at the level of what is known when it completes: the request's
priority where its images carry one (Requested Procedure Priority, e.g. STAT) and
the level of the routes it matched. Model findings raise it by the ``[[triage]]``
rules. A level never goes down on its own: a study once critical stays so until a
person decides otherwise. Jobs of a higher level are claimed first; aging
(``job_aging_s_per_priority``) keeps routine work moving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import Connection, select, update

from config.settings import Notification, Route, Settings, TriageRule
from storage.models import Study
from storage.queue import JobQueue, NewJob
from storage.timeline import PRIORITIZED, record

log = logging.getLogger(__name__)

LEVELS = ("routine", "urgent", "critical")
#: How much sooner a job of each level is claimed, in priority steps (each worth
#: ``job_aging_s_per_priority`` seconds of waiting, 5 minutes by default): an urgent
#: job goes before routine ones up to an hour older, a critical one up to two.
JOB_BOOST = {"routine": 0, "urgent": 12, "critical": 24}
#: Requested Procedure Priority (0040,1003) values and the level they start a study at.
REQUEST_LEVELS = {"STAT": "urgent", "HIGH": "urgent", "MEDIUM": "routine", "ROUTINE": "routine", "LOW": "routine"}
#: Without [[triage]] rules: a finding its model marks present, scored 0.5 or more, makes a study urgent.
DEFAULT_RULE = TriageRule(finding="*", min_score=0.5, level="urgent")


def rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 0


def highest(levels: Iterable[str]) -> str:
    return max(levels, key=rank, default="routine")


def job_priority(route_priority: int, level: str) -> int:
    return route_priority + JOB_BOOST.get(level, 0)


def requested_priority(path: Path) -> str | None:
    """The request's priority as an image carries it: Requested Procedure Priority at
    the top level or in the Request Attributes Sequence; None when absent or unreadable."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        values = [ds.get("RequestedProcedurePriority")]
        values += [item.get("RequestedProcedurePriority") for item in ds.get("RequestAttributesSequence", [])]
    except Exception:  # the image was accepted; a header we cannot read only loses the hint
        return None
    for value in values:
        if value and str(value).strip().upper() in REQUEST_LEVELS:
            return str(value).strip().upper()
    return None


@dataclass(frozen=True)
class Decision:
    level: str
    reason: str


def arrival_level(requested: str | None, routes: Sequence[Route]) -> Decision:
    """The level a study completes at: the higher of its request's and its routes'."""
    candidates = [Decision("routine", "routine")]
    if requested:
        candidates.append(Decision(REQUEST_LEVELS[requested], f"request priority {requested}"))
    for route in routes:
        candidates.append(Decision(route.level, f"route {route.name}"))
    return max(candidates, key=lambda d: rank(d.level))


def findings_level(rules: Sequence[TriageRule], model: str, findings: Sequence[dict[str, Any]]) -> Decision | None:
    """The highest level the findings of one model reach under the rules, or None."""
    rules = rules or [DEFAULT_RULE]
    reached = []
    for finding in findings:
        for rule in rules:
            if rule.model not in (None, model):
                continue
            if rule.finding == "*":
                applies = bool(finding.get("present")) and finding["score"] >= rule.min_score
            else:
                applies = rule.finding.lower() == str(finding["name"]).lower() and finding["score"] >= rule.min_score
            if applies:
                reached.append(Decision(rule.level, f"{model}: {finding['name']} (score {finding['score']:.2f})"))
    return max(reached, key=lambda d: rank(d.level)) if reached else None


def raise_level(conn: Connection, study_id: int, decision: Decision, results_version: int | None) -> str:
    """Raise the study to ``decision``'s level if that is higher (in the caller's
    transaction, the study row locked); the study's level after."""
    current = conn.execute(select(Study.priority).where(Study.id == study_id).with_for_update()).scalar()
    if current is not None and rank(decision.level) <= rank(current):
        return str(current)
    conn.execute(update(Study).where(Study.id == study_id).values(
        priority=decision.level, priority_reason=decision.reason[:200]))
    record(conn, study_id, PRIORITIZED, f"{decision.level}: {decision.reason}", results_version)
    return decision.level


def notify_jobs(conn: Connection, queue: JobQueue, notifications: Sequence[Notification], study_id: int,
                study_uid: str, results_version: int, level: str, reason: str) -> list[str]:
    """Queue one notification per configured receiver whose threshold ``level`` meets
    (at most one per study, results version, receiver and level); their names."""
    names = []
    for notification in notifications:
        if rank(level) < rank(notification.min_level):
            continue
        queue.enqueue(NewJob(
            kind="notify", dedupe_key=f"notify:{study_uid}:v{results_version}:{notification.name}:{level}",
            payload={"notification": notification.name, "level": level, "reason": reason[:200]},
            priority=job_priority(0, level), study_id=study_id, results_version=results_version,
        ), conn)
        names.append(notification.name)
    return names


def after_findings(conn: Connection, settings: Settings, queue: JobQueue, study_id: int, study_uid: str,
                   results_version: int, model: str, findings: Sequence[dict[str, Any]]) -> str:
    """Apply the triage rules to one model's findings (in the caller's transaction):
    raise the level, and queue a notification to each receiver whose threshold the
    findings' level meets (notifications are about results, so a study's level at
    arrival alone notifies no one); the study's level after."""
    decision = findings_level(settings.triage, model, findings)
    if decision is None:
        return str(conn.execute(select(Study.priority).where(Study.id == study_id)).scalar() or "routine")
    level = raise_level(conn, study_id, decision, results_version)
    log.info("study %s: %s reaches %s; the study is %s", study_uid, decision.reason, decision.level, level)
    sent = notify_jobs(conn, queue, settings.notifications, study_id, study_uid, results_version,
                       decision.level, decision.reason)
    if sent:
        log.info("study %s: notifying %s", study_uid, ", ".join(sent))
    return level
