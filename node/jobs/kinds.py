"""The kinds of job, and what each carries.

Every kind has one payload type. A payload names the work within its study and
results version, and builds the job's dedupe key, so that enqueueing the same work
twice (a rerun after a crash, two sweeps racing) adds one job. Payloads are stored
as JSON in the job row and validated when read back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import TypeAdapter, ValidationError

from storage.queue import ClaimedJob, NewJob
from storage.states import StudyLevel


class JobKind(StrEnum):
    """What a job does; each kind has one handler (see :mod:`node.runner.handlers`)."""

    NOOP = "noop"  # the queue's self-test (``ainode selftest queue``)
    INFER = "infer"  # run a model on the series a route chose
    ENCODE = "encode"  # make the SEG, SR and key images of a model's predictions
    SEND = "send"  # deliver them to one destination
    NOTIFY = "notify"  # tell one receiver (RIS, webhook) about a study's level
    QUALITY = "quality"  # recompute a model's quality report (metrics, subgroups, drift)
    ALERT = "alert"  # tell one webhook that a model's drift signal crossed its threshold
    REFERENCE = "reference_seg"  # compare a reference or corrected SEG received with the model's segments
    RETRIEVE = "retrieve"  # have the PACS send the node an earlier study (backfill, priors)
    PRIORS = "priors"  # find a study's priors on the PACS, wait for them, then queue its infer job


@dataclass(frozen=True)
class StudyWork:
    """The study, and its results version, that a job is about."""

    study_id: int
    study_instance_uid: str
    results_version: int


def series_key(series: tuple[str, ...]) -> str:
    """A short, order-free name for a set of series in a dedupe key ("" for none:
    jobs written before keys named their series)."""
    if not series:
        return ""
    return ":" + hashlib.sha256("|".join(sorted(series)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PriorSeries:
    """The series of an earlier study a model compares with."""

    study_instance_uid: str
    series_instance_uid: str
    study_date: str | None = None


@dataclass(frozen=True)
class InferPayload:
    """One model on the series a route chose. Routes that choose the same series for
    the same model share one job (``route`` names them all, ``destinations`` is the
    union); routes that choose different series have a job each."""

    kind: ClassVar[JobKind] = JobKind.INFER

    model: str
    route: str
    series: tuple[str, ...]
    destinations: tuple[str, ...] = ()
    #: Every route of the job is a shadow route: no triage, no notification.
    shadow: bool = False
    #: Earlier studies' series to compare with, the most recent first (routes with priors).
    priors: tuple[PriorSeries, ...] = ()

    def dedupe_key(self, work: StudyWork) -> str:
        return f"infer:{work.study_instance_uid}:{self.model}{series_key(self.series)}:v{work.results_version}"


@dataclass(frozen=True)
class PriorsPayload:
    """The infer job ``infer`` of a route that asks for priors, held back until they
    are here (or its routes' timeout passed); ``priority``: the infer job's."""

    kind: ClassVar[JobKind] = JobKind.PRIORS

    infer: InferPayload
    priority: int = 0

    def dedupe_key(self, work: StudyWork) -> str:
        return "priors:" + self.infer.dedupe_key(work).removeprefix("infer:")


@dataclass(frozen=True)
class EncodePayload:
    """The result objects of one infer job's predictions (``series``; empty: all of
    the model's, as jobs queued by earlier versions said)."""

    kind: ClassVar[JobKind] = JobKind.ENCODE

    model: str
    route: str
    destinations: tuple[str, ...] = ()
    series: tuple[str, ...] = ()

    def dedupe_key(self, work: StudyWork) -> str:
        return f"encode:{work.study_instance_uid}:{self.model}{series_key(self.series)}:v{work.results_version}"


@dataclass(frozen=True)
class SendPayload:
    """The result objects made from ``series`` (empty: all of the model's) to one destination."""

    kind: ClassVar[JobKind] = JobKind.SEND

    model: str
    destination: str
    series: tuple[str, ...] = ()

    def dedupe_key(self, work: StudyWork) -> str:
        return (f"send:{work.study_instance_uid}:{self.model}{series_key(self.series)}:v{work.results_version}:"
                f"{self.destination}")


@dataclass(frozen=True)
class NotifyPayload:
    kind: ClassVar[JobKind] = JobKind.NOTIFY

    notification: str
    level: StudyLevel
    reason: str = ""

    def dedupe_key(self, work: StudyWork) -> str:
        return f"notify:{work.study_instance_uid}:v{work.results_version}:{self.notification}:{self.level}"


@dataclass(frozen=True)
class NoopPayload:
    """The queue self-test: wait ``seconds``, fail when told to. ``batch`` and
    ``index`` tell the jobs of one ``ainode selftest queue`` apart."""

    kind: ClassVar[JobKind] = JobKind.NOOP

    batch: str
    index: int
    seconds: float = 0.0
    fail: bool = False

    def dedupe_key(self) -> str:
        return f"noop:{self.batch}:{self.index}"


@dataclass(frozen=True)
class QualityPayload:
    """Recompute ``model``'s quality report; ``slot`` (the schedule's tick) makes the
    schedule's jobs one per tick however many processes enqueue them."""

    kind: ClassVar[JobKind] = JobKind.QUALITY

    model: str
    slot: int

    def dedupe_key(self) -> str:
        return f"quality:{self.model}:{self.slot}"


@dataclass(frozen=True)
class AlertPayload:
    """The drift alerts one quality report raised (``alert_ids``, one model's) to the
    webhook ``notification``: one message for what shifted together."""

    kind: ClassVar[JobKind] = JobKind.ALERT

    notification: str
    alert_ids: tuple[int, ...]

    def dedupe_key(self) -> str:
        return f"alert:{','.join(map(str, self.alert_ids))}:{self.notification}"[:200]


@dataclass(frozen=True)
class ReferencePayload:
    """The SEG ``sop_instance_uid`` received: compare it with the predictions on the
    series it was made on."""

    kind: ClassVar[JobKind] = JobKind.REFERENCE

    sop_instance_uid: str

    def dedupe_key(self) -> str:
        return f"reference:{self.sop_instance_uid}"


@dataclass(frozen=True)
class RetrievePayload:
    """Have the PACS send the node one study (C-MOVE), throttled; ``instances``: how
    many the PACS said it holds (None: not said), so a study already here is not
    fetched again; ``reason``: why ("backfill", and who asked)."""

    kind: ClassVar[JobKind] = JobKind.RETRIEVE

    study_instance_uid: str
    instances: int | None = None
    reason: str = "backfill"

    def dedupe_key(self) -> str:
        return f"retrieve:{self.study_instance_uid}"


StudyPayload = InferPayload | EncodePayload | SendPayload | NotifyPayload | PriorsPayload
NodePayload = NoopPayload | QualityPayload | AlertPayload | ReferencePayload | RetrievePayload
Payload = StudyPayload | NodePayload
P = TypeVar("P", InferPayload, EncodePayload, SendPayload, NotifyPayload, NoopPayload, QualityPayload, AlertPayload,
            ReferencePayload, RetrievePayload, PriorsPayload)


class BadPayload(ValueError):
    """A job row's payload is not what its kind carries (a job written by another
    version of the node, or by hand)."""


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {
    cls: TypeAdapter(cls) for cls in (InferPayload, EncodePayload, SendPayload, NotifyPayload, NoopPayload,
                                      QualityPayload, AlertPayload, ReferencePayload, RetrievePayload,
                                      PriorsPayload)}


def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    return _ADAPTERS[cls]


def payload_json(payload: Payload) -> dict[str, Any]:
    """The payload as stored in the job row."""
    data: dict[str, Any] = _adapter(type(payload)).dump_python(payload, mode="json")
    return data


def read_payload(cls: type[P], job: ClaimedJob) -> P:
    """The payload of a claimed job, validated against its kind's type."""
    if job.kind != cls.kind:
        raise BadPayload(f"job {job.id} is a {job.kind} job, not {cls.kind}")
    try:
        payload: P = _adapter(cls).validate_python(job.payload)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "payload" for e in exc.errors())
        raise BadPayload(f"job {job.id} ({job.kind}) has an unusable payload ({fields})") from None
    return payload


def study_job(payload: StudyPayload, work: StudyWork, priority: int) -> NewJob:
    """The job that does ``payload``'s work for one study and results version."""
    return NewJob(kind=payload.kind, dedupe_key=payload.dedupe_key(work), payload=payload_json(payload),
                  priority=priority, study_id=work.study_id, results_version=work.results_version)


def node_job(payload: NodePayload, max_attempts: int | None = None, priority: int = 0) -> NewJob:
    """A job about the node as a whole, not one study (self-tests, quality, alerts)."""
    return NewJob(kind=payload.kind, dedupe_key=payload.dedupe_key(), payload=payload_json(payload),
                  priority=priority, max_attempts=max_attempts)
