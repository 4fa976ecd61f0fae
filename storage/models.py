"""Database tables for what the node has received: studies, series and instances.

Counts and sizes are not stored: they are computed from the instance rows
(``column_property``), so a resent or reconciled instance can never leave them wrong.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

from storage.states import StudyState


class Base(DeclarativeBase):
    pass


UID = String(64)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: Raised each time the study completes; results and jobs carry the version they
    #: were made from, so a study reopened by a late image never mixes two versions.
    results_version: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completion_reason: Mapped[str | None] = mapped_column(String(32))
    #: routine | urgent | critical (node.pipeline.triage): from the request, the route, findings.
    priority: Mapped[str] = mapped_column(String(16), default="routine", server_default="routine")
    priority_reason: Mapped[str | None] = mapped_column(String(200))
    #: The request's priority as the images carry it (Requested Procedure Priority), e.g. STAT.
    requested_priority: Mapped[str | None] = mapped_column(String(16))

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    slice_thickness: Mapped[float | None] = mapped_column(Double)
    convolution_kernel: Mapped[str | None] = mapped_column(String(64))
    orientation: Mapped[str | None] = mapped_column(String(8))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(400), unique=True)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    series: Mapped[Series] = relationship(back_populates="instances")


Series.instance_count = column_property(
    select(func.count(Instance.id)).where(Instance.series_id == Series.id).scalar_subquery()
)
Series.total_bytes = column_property(
    select(func.coalesce(func.sum(Instance.size_bytes), 0))
    .where(Instance.series_id == Series.id)
    .scalar_subquery()
)
Study.series_count = column_property(
    select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
)
Study.instance_count = column_property(
    select(func.count(Instance.id))
    .join(Series, Instance.series_id == Series.id)
    .where(Series.study_id == Study.id)
    .scalar_subquery()
)
Study.total_bytes = column_property(
    select(func.coalesce(func.sum(Instance.size_bytes), 0))
    .join(Series, Instance.series_id == Series.id)
    .where(Series.study_id == Study.id)
    .scalar_subquery()
)


class Job(Base):
    """A unit of work in the durable queue; only ``storage.queue`` changes its state.

    Times are seconds since the epoch (UTC), compared in SQL the same way on SQLite
    and PostgreSQL. ``sort_key`` is the enqueue time minus ``priority`` times the
    aging step, so claiming in ``sort_key`` order serves urgent work first while
    routine work that has waited long enough overtakes newer urgent work.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "sort_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="SET NULL"), index=True
    )
    results_version: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    sort_key: Mapped[float] = mapped_column(Double)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[float] = mapped_column(Double)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[float | None] = mapped_column(Double)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)


class PredictionRecord(Base):
    """What a model found in one series of one results version of a study.

    Written once, by the inference job, together with the label map file it points
    to; a job run again finds the row and does nothing (unique key below).
    """

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("study_id", "model", "results_version", "series_instance_uid",
                         name="uq_predictions_run"),
        Index("ix_predictions_model_created", "model", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    results_version: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    route: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(UID)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    device: Mapped[str] = mapped_column(String(16))
    #: What the model declares it produces (segments, measurements, findings with
    #: their codes), so that results can be encoded without loading the model.
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: [{name, value, unit, reliable, note}], [{name, score, present}], {fact: value}
    measurements: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    #: [{name, centre (LPS mm), score, diameters_mm}]; None in rows recorded before detections.
    detections: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Made for shadow routes only: shown marked as shadow, never triaged or sent clinically.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The label map and its geometry (``.npz``), relative to the data folder.
    labelmap_path: Mapped[str | None] = mapped_column(String(400))
    load_seconds: Mapped[float] = mapped_column(Double)
    inference_seconds: Mapped[float] = mapped_column(Double)
    created_at: Mapped[float] = mapped_column(Double)
    #: The case the model saw, for subgroups and drift (see node.quality.profile):
    #: scanner, protocol, patient group (sex, age band: no identifiers) and image
    #: statistics. None in rows recorded before it was kept.
    case_profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ResultObject(Base):
    """A DICOM object the node made from a prediction (SEG, SR), kept under the data
    folder until it is delivered and the study ages out. Its UIDs are deterministic, so
    encoding again finds the same row."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    results_version: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # seg | sr | sc | pm
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    source_series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[float] = mapped_column(Double)


class StudyEvent(Base):
    """One step of a study's timeline: completed, inferred, encoded, delivered,
    delivery_failed, prioritized, notified (received comes from the study's own times)."""

    __tablename__ = "study_events"
    __table_args__ = (Index("ix_study_events_study_id", "study_id", "at"),
                      Index("ix_study_events_step", "step", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    results_version: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(32))
    #: What happened, without patient data (model, destination, level, error type).
    detail: Mapped[str | None] = mapped_column(String(400))
    at: Mapped[float] = mapped_column(Double)


class WorkerStatus(Base):
    """What an inference worker last reported about its device (GPU memory in use)."""

    __tablename__ = "worker_status"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(16))
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Double)


class RouteChange(Base):
    """A route entering or leaving shadow mode, as the node found it at a start."""

    __tablename__ = "route_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(64))
    shadow: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(String(200))
    at: Mapped[float] = mapped_column(Double)


class ApiUser(Base):
    """A named user of the API and the web pages: a role and the SHA-256 of a token
    (the token itself is shown once, when the user is added, and kept nowhere)."""

    __tablename__ = "api_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double)


class Feedback(Base):
    """A radiologist's word on one result of a prediction: a finding, a segment or a
    lesion agreed with, disagreed with, or corrected, with a reason, who and when."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    target_kind: Mapped[str] = mapped_column(String(16))  # finding | segment | lesion
    target: Mapped[str] = mapped_column(String(64))  # its name (a lesion: "<kind> <number>")
    verdict: Mapped[str] = mapped_column(String(16))  # agree | disagree | corrected
    reason: Mapped[str] = mapped_column(String(500), default="")
    user: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    at: Mapped[float] = mapped_column(Double)


class ReferenceLabel(Base):
    """A reference standard for one finding of one case, from a source other than the
    model: a report-derived label (CSV, HL7 result) or one read from a reference SEG.
    ``case_key`` is ``study:<Study Instance UID>`` or ``accession:<Accession Number>``.
    The same source saying it again about the same case replaces its earlier word."""

    __tablename__ = "reference_labels"
    __table_args__ = (UniqueConstraint("source", "case_key", "finding", name="uq_reference_labels_case"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_key: Mapped[str] = mapped_column(String(80), index=True)
    finding: Mapped[str] = mapped_column(String(64))
    present: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(16))  # csv | hl7 | seg
    detail: Mapped[str] = mapped_column(String(200), default="")
    recorded_at: Mapped[float] = mapped_column(Double)


class SegmentComparison(Base):
    """One segment of a prediction against the same structure in a reference or
    corrected SEG sent to the node (or read from a validation cohort)."""

    __tablename__ = "segment_comparisons"
    __table_args__ = (UniqueConstraint("prediction_id", "segment", "reference_sop_instance_uid",
                                       name="uq_segment_comparisons_pair"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    segment: Mapped[str] = mapped_column(String(64))
    reference_sop_instance_uid: Mapped[str] = mapped_column(UID)
    reference_segment: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # seg (sent to the node) | cohort
    dice: Mapped[float] = mapped_column(Double)
    hd95_mm: Mapped[float | None] = mapped_column(Double)
    predicted_ml: Mapped[float] = mapped_column(Double)
    reference_ml: Mapped[float] = mapped_column(Double)
    recorded_at: Mapped[float] = mapped_column(Double)


class DriftAlert(Base):
    """A drift signal of a model past its threshold, from when it crossed until it fell
    back (``cleared_at``); each crossing is notified once."""

    __tablename__ = "drift_alerts"
    __table_args__ = (Index("ix_drift_alerts_open", "model", "signal", "cleared_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    signal: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    detail: Mapped[str] = mapped_column(String(300))
    raised_at: Mapped[float] = mapped_column(Double)
    cleared_at: Mapped[float | None] = mapped_column(Double)


class QualityReport(Base):
    """The last computed quality report of a model (metrics, subgroups, drift), so
    that pages show it at once; recomputed on a schedule and on demand."""

    __tablename__ = "quality_reports"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    computed_at: Mapped[float] = mapped_column(Double)
    seconds: Mapped[float] = mapped_column(Double)


class PerformedProcedure(Base):
    """A Modality Performed Procedure Step (PS3.4 F.7) a modality reported: IN PROGRESS
    at N-CREATE, then COMPLETED or DISCONTINUED by N-SET, with the instances it made. A
    study whose completed steps' instances have all arrived is complete at once."""

    __tablename__ = "performed_procedures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    status: Mapped[str] = mapped_column(String(16))
    #: The SOP Instance UIDs of its Performed Series Sequence (images and other objects).
    instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


class Throttle(Base):
    """A rate shared by every process (one row per throttled activity): when its next
    turn comes. Backfill's retrievals take turns through it."""

    __tablename__ = "throttles"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_at: Mapped[float] = mapped_column(Double)


class PriorStudy(Base):
    """An earlier study of the patient chosen as a prior of a study's results version:
    retrieved from the PACS, then shown to the models its routes name. A study held as
    someone's prior is not routed itself."""

    __tablename__ = "prior_studies"
    __table_args__ = (UniqueConstraint("study_id", "results_version", "prior_study_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    results_version: Mapped[int] = mapped_column(Integer)
    prior_study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    #: How many instances the PACS said it holds (None: it did not say).
    instances: Mapped[int | None] = mapped_column(Integer)
    chosen_at: Mapped[float] = mapped_column(Double)
