"""TID 1500 Measurement Report (Comprehensive 3D SR): the measurements of each segment,
referencing the segment in the SEG, and the model's findings with their scores as
qualitative evaluations, each group carrying the algorithm identification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset

from ai.encoders.identity import MANUFACTURER, ResultIdentity
from ai.encoders.seg import coded
from ai.protocol import Code, Finding, Measurement, Outputs

PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
#: CID 42 Numeric Value Qualifier: the value is given but not to be relied on.
VALUE_INDETERMINATE = hd.sr.CodedConcept("114011", "DCM", "Value indeterminate")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
#: Identifies every AINode as the observing device (TID 1004).
DEVICE_UID = "2.25.188207935744392006744343925358447412085"


def _score_concept(finding: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept("AISCORE", "99AINODE", f"AI score: {finding}"[:64])


def _measurement(spec_concept: Code, unit: Code, measured: Measurement,
                 algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=coded(spec_concept), value=float(measured.value), unit=coded(unit),
        qualifier=None if measured.reliable else VALUE_INDETERMINATE,
        algorithm_id=algorithm,
    )


def encode_measurement_report(
    identity: ResultIdentity,
    outputs: Outputs,
    measurements: Sequence[Measurement],
    findings: Sequence[Finding],
    sources: Sequence[Dataset],
    segmentation: Dataset | None,
) -> hd.sr.Comprehensive3DSR:
    algorithm = hd.sr.AlgorithmIdentification(name=identity.model, version=identity.model_version)
    values = {m.name: m for m in measurements}
    numbers = {}
    if segmentation is not None:
        numbers = {str(item.SegmentLabel): int(item.SegmentNumber) for item in segmentation.SegmentSequence}
    groups: list[Any] = []
    unplaced = []
    for spec in outputs.measurements:
        if spec.name not in values:
            continue
        segment = next((s for s in outputs.segments if s.label == spec.segment), None)
        if segment is None or segment.name[:64] not in numbers:
            unplaced.append(spec)
    for segment in outputs.segments:
        number = numbers.get(segment.name[:64])
        if number is None or segmentation is None:
            continue
        own = [s for s in outputs.measurements if s.segment == segment.label and s.name in values]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=identity.uid(f"group-{segment.label}"), identifier=segment.name[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(identity.source_series_instance_uid)),
            finding_type=coded(segment.type),
            finding_sites=[hd.sr.FindingSite(coded(segment.type), laterality=coded(segment.laterality))]
            if segment.laterality else None,
            algorithm_id=algorithm,
            measurements=[_measurement(s.concept, s.unit, values[s.name], algorithm) for s in own],
        ))
    found = {f.name: f for f in findings}
    specs = [f for f in outputs.findings if f.name in found]
    if specs or unplaced:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.uid("group-findings"),
                                                         identifier="AI findings"),
            algorithm_id=algorithm,
            measurements=[_measurement(s.concept, s.unit, values[s.name], algorithm) for s in unplaced]
            + [hd.sr.Measurement(name=_score_concept(f.name), value=float(found[f.name].score),
                                 unit=NO_UNITS, algorithm_id=algorithm) for f in specs] or None,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(coded(f.concept), PRESENT if found[f.name].present else ABSENT)
                for f in specs] or None,
        ))
    device = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name="AINode", manufacturer_name=MANUFACTURER,
            model_name=identity.model[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    evidence = [*sources, *([segmentation] if segmentation is not None else [])]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.uid("sr-series"),
        series_number=identity.series_number(2),
        sop_instance_uid=identity.uid("sr-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=identity.series_description("SR"),
    )
