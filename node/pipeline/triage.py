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

from pydicom import dcmread
from sqlalchemy import Connection, select, update

from ai.protocol import Finding
from config.settings import Notification, Route, Settings, TriageRule
from node.jobs.kinds import NotifyPayload, StudyWork, study_job
from storage.models import Study
from storage.queue import JobQueue
from storage.states import StudyLevel
from storage.timeline import PRIORITIZED, record

log = logging.getLogger(__name__)

LEVELS = tuple(StudyLevel)
#: How much sooner a job of each level is claimed, in priority steps (each worth
#: ``job_aging_s_per_priority`` seconds of waiting, 5 minutes by default): an urgent
#: job goes before routine ones up to an hour older, a critical one up to two.
JOB_BOOST = {StudyLevel.ROUTINE: 0, StudyLevel.URGENT: 12, StudyLevel.CRITICAL: 24}
#: Requested Procedure Priority (0040,1003) values and the level they start a study at.
REQUEST_LEVELS = {"STAT": StudyLevel.URGENT, "HIGH": StudyLevel.URGENT, "MEDIUM": StudyLevel.ROUTINE,
                  "ROUTINE": StudyLevel.ROUTINE, "LOW": StudyLevel.ROUTINE}
#: Without [[triage]] rules: a finding its model marks present, scored 0.5 or more, makes a study urgent.
DEFAULT_RULE = TriageRule(finding="*", min_score=0.5, level="urgent")


def rank(level: str) -> int:
    return StudyLevel.of(level).rank


def highest(levels: Iterable[str]) -> StudyLevel:
    return max((StudyLevel.of(level) for level in levels), key=rank, default=StudyLevel.ROUTINE)


def job_priority(route_priority: int, level: str) -> int:
    return route_priority + JOB_BOOST[StudyLevel.of(level)]


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
class LevelDecision:
    """A level a study should be at, and why."""

    level: StudyLevel
    reason: str


def arrival_level(requested: str | None, routes: Sequence[Route]) -> LevelDecision:
    """The level a study completes at: the higher of its request's and its routes'."""
    candidates = [LevelDecision(StudyLevel.ROUTINE, "routine")]
    if requested:
        candidates.append(LevelDecision(REQUEST_LEVELS[requested], f"request priority {requested}"))
    for route in routes:
        candidates.append(LevelDecision(StudyLevel(route.level), f"route {route.name}"))
    return max(candidates, key=lambda d: d.level.rank)


def findings_level(rules: Sequence[TriageRule], model: str, findings: Sequence[Finding]) -> LevelDecision | None:
    """The highest level the findings of one model reach under the rules, or None."""
    rules = rules or [DEFAULT_RULE]
    reached = []
    for finding in findings:
        if finding.indeterminate or finding.score is None:
            continue  # "could not judge" neither raises nor lowers a study's level
        for rule in rules:
            if rule.model not in (None, model):
                continue
            if rule.finding == "*":
                applies = finding.present and finding.score >= rule.min_score
            else:
                applies = rule.finding.lower() == finding.name.lower() and finding.score >= rule.min_score
            if applies:
                reached.append(LevelDecision(StudyLevel(rule.level),
                                             f"{model}: {finding.name} (score {finding.score:.2f})"))
    return max(reached, key=lambda d: d.level.rank) if reached else None


def raise_level(conn: Connection, study_id: int, decision: LevelDecision, results_version: int | None) -> StudyLevel:
    """Raise the study to ``decision``'s level if that is higher (in the caller's
    transaction, the study row locked); the study's level after."""
    current = conn.execute(select(Study.priority).where(Study.id == study_id).with_for_update()).scalar()
    if current is not None and decision.level.rank <= rank(current):
        return StudyLevel.of(current)
    conn.execute(update(Study).where(Study.id == study_id).values(
        priority=decision.level, priority_reason=decision.reason[:200]))
    record(conn, study_id, PRIORITIZED, f"{decision.level}: {decision.reason}", results_version)
    return decision.level


def notify_jobs(conn: Connection, queue: JobQueue, notifications: Sequence[Notification], work: StudyWork,
                decision: LevelDecision) -> list[str]:
    """Queue one notification per configured receiver whose threshold the decision's
    level meets (at most one per study, results version, receiver and level); their names."""
    names = []
    for notification in notifications:
        if decision.level.rank < rank(notification.min_level):
            continue
        payload = NotifyPayload(notification.name, decision.level, decision.reason[:200])
        queue.enqueue(study_job(payload, work, job_priority(0, decision.level)), conn)
        names.append(notification.name)
    return names


def after_findings(conn: Connection, settings: Settings, queue: JobQueue, work: StudyWork, model: str,
                   findings: Sequence[Finding]) -> StudyLevel:
    """Apply the triage rules to one model's findings (in the caller's transaction):
    raise the level, and queue a notification to each receiver whose threshold the
    findings' level meets (notifications are about results, so a study's level at
    arrival alone notifies no one); the study's level after."""
    decision = findings_level(settings.triage, model, findings)
    if decision is None:
        return StudyLevel.of(conn.execute(select(Study.priority).where(Study.id == work.study_id)).scalar())
    level = raise_level(conn, work.study_id, decision, work.results_version)
    log.info("study %s: %s reaches %s; the study is %s", work.study_instance_uid, decision.reason,
             decision.level, level)
    sent = notify_jobs(conn, queue, settings.notifications, work, decision)
    if sent:
        log.info("study %s: notifying %s", work.study_instance_uid, ", ".join(sent))
    return level
