"""One study's results as a radiologist reads them, for the study page, the API and
`ainode results`: which series each model used and why, every measurement with its
unit and reliability, each finding as present, absent or indeterminate, the result
objects, the key images, and the timeline with the jobs (dead ones with their reason).

Read from the database only, for the study's current results version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, select

from ai.kernels import kernel_class
from ai.protocol import Finding, Measurement, unit_symbol
from config.settings import Route
from node.pipeline.body_region import body_region
from node.pipeline.completion import load_study_view
from node.pipeline.feedback import FeedbackLine, feedback_for
from node.pipeline.route_explain import decision_lines
from storage.models import Job, PredictionRecord, ResultObject, SegmentComparison, Series, Study
from storage.timeline import timeline


class SeriesLine(BaseModel):
    series_instance_uid: str
    series_number: int | None
    description: str | None
    modality: str | None
    images: int
    slice_thickness_mm: float | None
    kernel: str | None
    kernel_class: str = Field(description="smooth, standard, sharp or unknown (for density measurements)")
    body_region: str | None = Field(description="as read from the header, e.g. CHEST (from study description 'Chest')")


class MeasurementLine(BaseModel):
    name: str
    value: float
    unit: str = Field(description="as people write it: HU, mL, %")
    ucum: str | None = Field(description="the UCUM code in the DICOM objects, e.g. [hnsf'U]")
    reliable: bool
    note: str = Field(description="why the value is not reliable")
    text: str = Field(description="the measurement in words")


class FindingLine(BaseModel):
    name: str
    assessment: str = Field(description="present, absent or indeterminate")
    score: float | None
    reason: str
    text: str


class DetectionLine(BaseModel):
    name: str
    centre: list[float] = Field(description="patient coordinates (LPS), mm")
    diameters_mm: list[float] | None = Field(description="along the patient x, y, z axes; none for a point")
    score: float
    text: str


class MapLine(BaseModel):
    name: str
    kind: str = Field(description="probability (of a segment) or explanation (of a finding)")
    of: str = Field(description="the segment or finding it is about")
    method: str
    text: str


class ReferenceLine(BaseModel):
    segment: str = Field(description="the model's segment")
    reference_segment: str = Field(description="the segment of the reference SEG it was matched to")
    reference_sop_instance_uid: str
    source: str = Field(description="seg: a reference or corrected SEG sent to the node")
    dice: float
    hd95_mm: float | None = Field(description="95% Hausdorff distance; none when a mask is empty")
    predicted_ml: float
    reference_ml: float
    text: str


class ResultObjectLine(BaseModel):
    kind: str = Field(description="seg, sr, sc or pm")
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


class TrendPointLine(BaseModel):
    """A model's values on one earlier study of the patient."""

    study_instance_uid: str
    study_date: str | None = Field(description="YYYY-MM-DD")
    values: dict[str, float]
    reliable: dict[str, bool] = Field(default_factory=dict)


class ComparisonLine(BaseModel):
    """The earlier study a model's changes are measured against."""

    study_instance_uid: str
    study_date: str | None = Field(description="YYYY-MM-DD")
    not_used: list[str] = Field(default_factory=list, description="later priors left out, and why")
    trend: list[TrendPointLine] = Field(
        default_factory=list, description="the model's values on each usable prior, oldest first")


def _day(when: Any) -> str | None:
    text = str(when or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 else None


def comparison_line(provenance: dict[str, Any] | None) -> ComparisonLine | None:
    prior = (provenance or {}).get("prior")
    if not isinstance(prior, dict) or not prior.get("study_instance_uid"):
        return None
    trend = [TrendPointLine(study_instance_uid=str(point.get("study_instance_uid", "")),
                            study_date=_day(point.get("study_date")),
                            values={str(k): float(v) for k, v in (point.get("values") or {}).items()},
                            reliable={str(k): bool(v) for k, v in (point.get("reliable") or {}).items()})
             for point in reversed((provenance or {}).get("trend") or []) if isinstance(point, dict)]
    return ComparisonLine(study_instance_uid=str(prior["study_instance_uid"]), study_date=_day(prior.get("study_date")),
                          not_used=[str(x) for x in (provenance or {}).get("priors_not_used") or []], trend=trend)


class ModelResultLine(BaseModel):
    prediction_id: int
    model: str
    model_version: str
    route: str | None
    series: SeriesLine | None
    device: str
    seconds: float
    measurements: list[MeasurementLine]
    findings: list[FindingLine]
    detections: list[DetectionLine] = Field(default_factory=list,
                                            description="the lesions reported, most certain first")
    maps: list[MapLine] = Field(default_factory=list, description="the voxel maps the model gives")
    shadow: bool = Field(default=False, description="made for shadow routes: not for clinical reading, never "
                                                    "triaged or sent to clinical destinations")
    feedback: list[FeedbackLine] = Field(default_factory=list, description="radiologists' word on its results")
    references: list[ReferenceLine] = Field(default_factory=list,
                                            description="its segments against reference or corrected SEGs")
    objects: list[ResultObjectLine]
    has_labelmap: bool
    compared_with: ComparisonLine | None = Field(
        default=None, description="the prior its change measurements are against (routes with priors)")


class StepLine(BaseModel):
    step: str
    at: float
    detail: str | None
    results_version: int | None


class JobLine(BaseModel):
    id: int
    kind: str
    state: str
    attempts: int
    last_error: str | None
    results_version: int | None


class StudyResults(BaseModel):
    study_instance_uid: str
    accession_number: str | None
    study_description: str | None
    state: str
    results_version: int
    priority: str
    priority_reason: str | None
    series: list[SeriesLine]
    routing: list[str] = Field(description="how the node's rules route the study now, line by line")
    results: list[ModelResultLine] = Field(description="of the current results version")
    declined: list[str] = Field(description="models that declined a series of the current version, and why")
    timeline: list[StepLine]
    jobs: list[JobLine]


def _series_line(s: Series) -> SeriesLine:
    region = body_region(s.body_part_examined, s.series_description, s.study.study_description)
    return SeriesLine(
        series_instance_uid=s.series_instance_uid, series_number=s.series_number,
        description=s.series_description, modality=s.modality,
        images=int(s.instance_count),  # type: ignore[attr-defined]
        slice_thickness_mm=s.slice_thickness, kernel=s.convolution_kernel,
        kernel_class=str(kernel_class(s.convolution_kernel)),
        body_region=region.describe() if region else None,
    )


def measurement_line(data: dict[str, object]) -> MeasurementLine:
    m = Measurement.from_json(data)
    ucum = str(data["unit"]) if data.get("unit") else None
    return MeasurementLine(name=m.name, value=m.value, unit=unit_symbol(ucum), ucum=ucum, reliable=m.reliable,
                           note=m.note, text=m.describe(ucum))


def finding_line(data: dict[str, object]) -> FindingLine:
    f = Finding.from_json(data)
    return FindingLine(name=f.name, assessment=str(f.assessment), score=f.score, reason=f.reason, text=f.describe())


def detection_lines(outputs: dict[str, object], detections: Sequence[dict[str, object]]) -> list[DetectionLine]:
    """The detections the SR reports (at or above their kind's threshold), most certain first."""
    from ai.encoders.sr import reported_detections
    from ai.protocol import Detection, outputs_from_dict

    kept = reported_detections(outputs_from_dict(dict(outputs)), [Detection.from_json(dict(d)) for d in detections])
    return [DetectionLine(name=d.name, centre=list(d.centre), score=d.score, text=d.describe(),
                          diameters_mm=list(d.diameters_mm) if d.diameters_mm else None) for d, _ in kept]


def map_lines(outputs: dict[str, object]) -> list[MapLine]:
    """The maps a model declares, in words: an explanation says it is not a finding."""
    from ai.protocol import MapKind, outputs_from_dict

    lines = []
    for m in outputs_from_dict(dict(outputs)).maps:
        how = m.method or "supplied by the model"
        text = (f"explanation of {m.of} ({how}): where the model looked, not a finding"
                if m.kind is MapKind.EXPLANATION else f"probability of {m.of} ({how})")
        lines.append(MapLine(name=m.name, kind=str(m.kind), of=m.of, method=m.method, text=text))
    return lines


def reference_line(c: SegmentComparison) -> ReferenceLine:
    hd95 = f", HD95 {c.hd95_mm:.1f} mm" if c.hd95_mm is not None else ""
    return ReferenceLine(
        segment=c.segment, reference_segment=c.reference_segment,
        reference_sop_instance_uid=c.reference_sop_instance_uid, source=c.source, dice=c.dice, hd95_mm=c.hd95_mm,
        predicted_ml=c.predicted_ml, reference_ml=c.reference_ml,
        text=f"{c.segment} against the reference's {c.reference_segment}: Dice {c.dice:.3f}{hd95}, "
             f"volume {c.predicted_ml:.0f} mL (model) vs {c.reference_ml:.0f} mL (reference)")


def study_results(conn: Connection, study_instance_uid: str, routes: Sequence[Route]) -> StudyResults | None:
    """The study's current results, or ``None`` when the node has no such study."""
    from sqlalchemy.orm import Session

    session = Session(bind=conn)
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_instance_uid)).one_or_none()
    if study is None:
        return None
    version = study.results_version
    series = {s.series_instance_uid: _series_line(s) for s in session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.series_number, Series.id))}
    objects: dict[tuple[str, str], list[ResultObjectLine]] = {}
    for o in session.scalars(select(ResultObject).where(
            ResultObject.study_id == study.id, ResultObject.results_version == version).order_by(ResultObject.id)):
        objects.setdefault((o.model, o.source_series_instance_uid), []).append(ResultObjectLine(
            kind=o.kind, sop_class_uid=o.sop_class_uid, sop_instance_uid=o.sop_instance_uid,
            series_instance_uid=o.series_instance_uid))
    results = [
        ModelResultLine(
            prediction_id=p.id, model=p.model, model_version=p.model_version, route=p.route,
            series=series.get(p.series_instance_uid), device=p.device,
            seconds=round(p.load_seconds + p.inference_seconds, 2),
            measurements=[measurement_line(m) for m in p.measurements],
            findings=[finding_line(f) for f in p.findings],
            detections=detection_lines(p.outputs, p.detections or []),
            maps=map_lines(p.outputs) if p.labelmap_path is not None else [],
            shadow=bool(p.shadow),
            objects=objects.get((p.model, p.series_instance_uid), []),
            has_labelmap=p.labelmap_path is not None,
            compared_with=comparison_line(p.provenance),
        )
        for p in session.scalars(select(PredictionRecord).where(
            PredictionRecord.study_id == study.id, PredictionRecord.results_version == version)
            .order_by(PredictionRecord.id))
    ]
    given = feedback_for(conn, [r.prediction_id for r in results])
    for line in results:
        line.feedback = given.get(line.prediction_id, [])
    for c in session.scalars(select(SegmentComparison).where(SegmentComparison.prediction_id.in_(
            [r.prediction_id for r in results])).order_by(SegmentComparison.id)):
        next(r for r in results if r.prediction_id == c.prediction_id).references.append(reference_line(c))
    steps = timeline(conn, study.id)
    jobs = [JobLine(id=j.id, kind=j.kind, state=j.state, attempts=j.attempts, last_error=j.last_error,
                    results_version=j.results_version)
            for j in session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id))]
    return StudyResults(
        study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
        study_description=study.study_description, state=study.state, results_version=version,
        priority=study.priority, priority_reason=study.priority_reason,
        series=list(series.values()),
        routing=decision_lines(routes, load_study_view(conn, study.id)),
        results=results,
        declined=[s.detail or "" for s in steps if s.step == "declined" and s.results_version == version],
        timeline=[StepLine(step=s.step, at=s.at, detail=s.detail, results_version=s.results_version) for s in steps],
        jobs=jobs,
    )


def headline(measurements: Sequence[dict[str, object]], most: int = 6) -> list[str]:
    """The numbers a worklist row shows, those of one unit together (both lung volumes,
    then both densities, ...), unreliable ones marked with *."""
    units = [str(m.get("unit") or "") for m in measurements]
    order = sorted(range(len(measurements)), key=lambda i: (units.index(units[i]), i))
    return [Measurement.from_json(measurements[i]).brief(units[i]) for i in order[:most]]
