"""The cases a model's quality is computed over: its current predictions (the latest
results version of each study), each with what it called, the reference standard for
it where one exists (and from which source), its case profile and its comparisons with
reference segmentations. Loaded in a few queries, so 100,000 predictions take seconds:
the JSON columns are read as text and parsed once with orjson (SQLAlchemy's JSON
type adds a processor call per value), references are joined on the model rather than
listed by prediction id, and a finding is a named tuple (a frozen dataclass costs
three times as much to make, 100,000 times over).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, Text, cast, select

from node.quality.reference import labels_by_case
from storage.db import json_value
from storage.models import Feedback, PredictionRecord, SegmentComparison, Study


class FindingCase(NamedTuple):
    """One finding of one prediction."""

    name: str
    #: The model's call: True present, False absent, None indeterminate.
    called: bool | None
    score: float | None
    #: The reference standard, where there is one, and its source.
    truth: bool | None = None
    source: str | None = None


@dataclass(frozen=True)
class SegmentCase:
    name: str
    dice: float
    hd95_mm: float | None
    predicted_ml: float
    reference_ml: float


@dataclass
class Case:
    """One prediction, as the quality report sees it."""

    prediction_id: int
    study_instance_uid: str
    model_version: str
    route: str
    shadow: bool
    created_at: float
    profile: dict[str, Any]
    findings: list[FindingCase] = field(default_factory=list)
    segments: list[SegmentCase] = field(default_factory=list)
    measurements: dict[str, float] = field(default_factory=dict)
    #: Latest feedback per (kind, target): (verdict, user, reason, at).
    feedback: dict[tuple[str, str], tuple[str, str, str, float]] = field(default_factory=dict)

    @property
    def group(self) -> tuple[str, str, bool]:
        """What metrics are given per: model version, route, shadow or clinical."""
        return self.model_version, self.route, self.shadow


def _truth_from_feedback(verdict: str, called: bool | None) -> bool | None:
    """Agree: the model's call is right; disagree or corrected: it is wrong. Nothing
    to learn from either about an indeterminate call."""
    if called is None:
        return None
    return called if verdict == "agree" else not called


def load_cases(conn: Connection, model: str, since: float | None = None,
               prediction_ids: Sequence[int] | None = None) -> list[Case]:
    """The model's current predictions (created at or after ``since``, or those of
    ``prediction_ids``), oldest first, with their references."""
    query = (select(PredictionRecord.id, PredictionRecord.model_version, PredictionRecord.route,
                    PredictionRecord.shadow, PredictionRecord.created_at, cast(PredictionRecord.findings, Text),
                    cast(PredictionRecord.measurements, Text), cast(PredictionRecord.case_profile, Text),
                    Study.study_instance_uid, Study.accession_number)
             .join(Study, Study.id == PredictionRecord.study_id)
             .where(PredictionRecord.model == model, PredictionRecord.results_version == Study.results_version)
             .order_by(PredictionRecord.created_at, PredictionRecord.id))
    if since is not None:
        query = query.where(PredictionRecord.created_at >= since)
    if prediction_ids is not None:
        query = query.where(PredictionRecord.id.in_(list(prediction_ids)))
    rows = conn.execute(query).all()
    if not rows:
        return []
    # The references of the model's predictions, joined on the model (the cases are
    # most of them; listing 100,000 ids as parameters costs more than the rows).
    feedback: dict[int, dict[tuple[str, str], tuple[str, str, str, float]]] = {}
    for f in conn.execute(select(Feedback.prediction_id, Feedback.target_kind, Feedback.target, Feedback.verdict,
                                 Feedback.user, Feedback.reason, Feedback.at)
                          .join(PredictionRecord, PredictionRecord.id == Feedback.prediction_id)
                          .where(PredictionRecord.model == model).order_by(Feedback.id)):
        feedback.setdefault(f.prediction_id, {})[(f.target_kind, f.target)] = (f.verdict, f.user, f.reason, f.at)
    segments: dict[int, list[SegmentCase]] = {}
    c = SegmentComparison
    for row in conn.execute(select(c.prediction_id, c.segment, c.dice, c.hd95_mm, c.predicted_ml, c.reference_ml)
                            .join(PredictionRecord, PredictionRecord.id == c.prediction_id)
                            .where(PredictionRecord.model == model).order_by(c.id)):
        segments.setdefault(row.prediction_id, []).append(
            SegmentCase(row.segment, row.dice, row.hd95_mm, row.predicted_ml, row.reference_ml))
    labels = labels_by_case(conn)
    cases = []
    for (prediction_id, model_version, route, shadow, created_at, predicted_text, measured_text, profile_text,
         study_uid, accession) in rows:
        case_labels = {**labels.get(f"accession:{accession}", {}), **labels.get(
            f"study:{study_uid}", {})} if labels else {}
        said = feedback.get(prediction_id)
        findings = []
        for f in json_value(predicted_text) or ():
            name = f["name"]
            assessment = f.get("assessment") or ("present" if f.get("present") else "absent")
            called = None if assessment == "indeterminate" else assessment == "present"
            truth, source = None, None
            if name in case_labels:
                truth, source = case_labels[name]
            elif said and ("finding", name) in said:
                truth = _truth_from_feedback(said[("finding", name)][0], called)
                source = "feedback" if truth is not None else None
            findings.append(FindingCase(name, called, f.get("score"), truth, source))
        measurements = {m["name"]: float(m["value"]) for m in json_value(measured_text) or ()
                        if m.get("reliable", True)}
        cases.append(Case(prediction_id, study_uid, model_version, route or "", bool(shadow), created_at,
                          json_value(profile_text) or {}, findings, segments.get(prediction_id, []),
                          measurements, said or {}))
    return cases
