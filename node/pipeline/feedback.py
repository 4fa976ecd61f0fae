"""Radiologists' feedback on a prediction's results: each finding, segment or reported
lesion agreed with, disagreed with or corrected, with an optional reason, recorded
with the user's name and role and the time. The latest word of each user on a result
counts; earlier ones stay on record."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.orm import Session

from ai.protocol import Detection, outputs_from_dict
from storage.db import writing
from storage.models import Feedback, PredictionRecord
from storage.timeline import record
from storage.users import User

TargetKind = Literal["finding", "segment", "lesion"]
Verdict = Literal["agree", "disagree", "corrected"]


class FeedbackIn(BaseModel):
    target_kind: TargetKind
    target: str = Field(min_length=1, max_length=64, description='a finding or segment name, or "<lesion kind> <n>"')
    verdict: Verdict
    reason: str = Field(default="", max_length=500)


class FeedbackLine(BaseModel):
    id: int
    prediction_id: int
    target_kind: str
    target: str
    verdict: str
    reason: str
    user: str
    role: str
    at: float


class FeedbackError(ValueError):
    """The feedback names no result of the prediction; the message says which exist."""


def _targets(record: PredictionRecord, kind: TargetKind) -> list[str]:
    outputs = outputs_from_dict(record.outputs)
    if kind == "finding":
        return [f["name"] for f in record.findings]
    if kind == "segment":
        return [s.name for s in outputs.segments]
    from ai.encoders.sr import reported_detections

    lesions = reported_detections(outputs, [Detection.from_json(d) for d in record.detections or ()])
    return [f"{d.name} {n}" for n, (d, _) in enumerate(lesions, start=1)]


def give_feedback(engine: Engine, prediction_id: int, given: FeedbackIn, user: User) -> FeedbackLine:
    """Record ``user``'s feedback on one result of prediction ``prediction_id`` (and a
    line in its study's timeline); raises KeyError for no such prediction,
    :class:`FeedbackError` for a result it does not have."""
    with Session(engine) as session:
        prediction = session.get(PredictionRecord, prediction_id)
        if prediction is None:
            raise KeyError(prediction_id)
        session.expunge(prediction)
    targets = _targets(prediction, given.target_kind)
    if given.target not in targets:
        raise FeedbackError(f"prediction {prediction_id} has no {given.target_kind} {given.target!r} "
                            f"({', '.join(targets) or 'none'})")
    with writing(engine) as conn:
        at = time.time()
        new_id = conn.execute(insert(Feedback).values(
            prediction_id=prediction_id, target_kind=given.target_kind, target=given.target,
            verdict=given.verdict, reason=given.reason.strip(), user=user.name, role=str(user.role), at=at,
        ).returning(Feedback.id)).scalar_one()
        record(conn, prediction.study_id, "feedback",
               f"{user.name} ({user.role}): {given.verdict} with {prediction.model}'s {given.target_kind} "
               f"{given.target}", prediction.results_version, at)
    return FeedbackLine(id=new_id, prediction_id=prediction_id, target_kind=given.target_kind, target=given.target,
                        verdict=given.verdict, reason=given.reason.strip(), user=user.name, role=str(user.role),
                        at=at)


def feedback_for(conn: Connection, prediction_ids: list[int]) -> dict[int, list[FeedbackLine]]:
    """The feedback on these predictions, oldest first, by prediction."""
    found: dict[int, list[FeedbackLine]] = {}
    if not prediction_ids:
        return found
    for f in conn.execute(select(*Feedback.__table__.columns).where(
            Feedback.prediction_id.in_(prediction_ids)).order_by(Feedback.id)):
        found.setdefault(f.prediction_id, []).append(FeedbackLine(
            id=f.id, prediction_id=f.prediction_id, target_kind=f.target_kind, target=f.target,
            verdict=f.verdict, reason=f.reason, user=f.user, role=f.role, at=f.at))
    return found
