"""TID 1500 Measurement Report (Comprehensive 3D SR): the measurements of each segment,
referencing the segment in the SEG, and the model's findings with their scores as
qualitative evaluations, each group carrying the algorithm identification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai.encoders.identity import MANUFACTURER, ResultIdentity, equipment
from ai.encoders.seg import coded
from ai.protocol import (
    Assessment,
    Detection,
    DetectionSpec,
    Finding,
    FindingSpec,
    Measurement,
    MeasurementSpec,
    Outputs,
    SegmentSpec,
)

# CID 240 Present-Absent: the values of a finding's qualitative evaluation (TID 1501 row 12).
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")
UNDETERMINED = hd.sr.CodedConcept("373068000", "SCT", "Undetermined")
#: TID 1501 row 13: a qualitative evaluation as text (here: why a finding is undetermined).
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: CID 42 Numeric Value Qualifier: the value is given but not to be relied on.
VALUE_INDETERMINATE = hd.sr.CodedConcept("114011", "DCM", "Value indeterminate")
#: TID 1500 row 3, Procedure Reported when the model names none (CID 100).
PROCEDURE_BY_MODALITY = {
    "CT": hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "MR": hd.sr.CodedConcept("25056-3", "LN", "MRI unspecified body region"),
    "PT": hd.sr.CodedConcept("44136-0", "LN", "PET unspecified body region"),
    "NM": hd.sr.CodedConcept("49118-3", "LN", "NM unspecified body region"),
}
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
#: Identifies every AINode as the observing device (TID 1004).
DEVICE_UID = "2.25.188207935744392006744343925358447412085"


#: A finding's score: DCM 111012 "Certainty of Finding" (CID 6048, as TID 4016 row 6
#: uses it for CAD findings), in percent. Before this standard concept AINode wrote a
#: private "AISCORE" (99AINODE) code.
CERTAINTY_OF_FINDING = hd.sr.CodedConcept("111012", "DCM", "Certainty of Finding")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "Percent")


def _certainty(finding: Finding, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    """TID 1501 row 5 (TID 300): the model's score as the certainty of the finding its
    group is about, in percent."""
    return hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=round(100.0 * float(finding.score or 0.0), 3),
                             unit=PERCENT, algorithm_id=algorithm)


def _measurement(spec: MeasurementSpec, measured: Measurement,
                 algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    """TID 300 via TID 1419: concept, value and unit, the Numeric Value Qualifier "Value
    indeterminate" (CID 42) when not reliable, Derivation (row 5) and Measurement
    Method (row 3) where the model declares them, Algorithm Identification (TID 4019)."""
    return hd.sr.Measurement(
        name=coded(spec.concept), value=float(measured.value), unit=coded(spec.unit),
        qualifier=None if measured.reliable else VALUE_INDETERMINATE,
        algorithm_id=algorithm,
        derivation=coded(spec.derivation) if spec.derivation else None,
        method=coded(spec.method) if spec.method else None,
    )


def _evaluation(spec: FindingSpec, finding: Finding) -> hd.sr.QualitativeEvaluation:
    value = {Assessment.PRESENT: PRESENT, Assessment.ABSENT: ABSENT}.get(finding.assessment, UNDETERMINED)
    return hd.sr.QualitativeEvaluation(coded(spec.concept), value)


def _reason_item(finding: Finding) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=QUALITATIVE_EVALUATIONS, value=f"{finding.name}: indeterminate ({finding.reason})"[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


#: CID 7470 Linear Measurements and CID 7469 Area/Volume (TID 1419 row 1).
LONG_AXIS = hd.sr.CodedConcept("103339001", "SCT", "Long axis")
SHORT_AXIS = hd.sr.CodedConcept("103340004", "SCT", "Short axis")
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
ML = hd.sr.CodedConcept("mL", "UCUM", "milliliter")


def _surface(detection: Detection, frame_of_reference_uid: str, source_series: str) -> hd.sr.VolumeSurface:
    """TID 1411 row 8 (SCOORD3D): the lesion's centre as a POINT, or its ellipsoid by the
    end points of its three axes (along the patient x, y and z axes)."""
    centre = np.array(detection.centre, dtype=np.float64)
    series = hd.sr.SourceSeriesForSegmentation(source_series)
    if detection.diameters_mm is None:
        return hd.sr.VolumeSurface(graphic_type=hd.sr.GraphicTypeValues3D.POINT, graphic_data=centre[None],
                                   frame_of_reference_uid=frame_of_reference_uid, source_series=series)
    ends = np.repeat(centre[None], 6, axis=0)
    for axis, diameter in enumerate(detection.diameters_mm):
        ends[2 * axis, axis] -= diameter / 2
        ends[2 * axis + 1, axis] += diameter / 2
    return hd.sr.VolumeSurface(graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID, graphic_data=ends,
                               frame_of_reference_uid=frame_of_reference_uid, source_series=series)


def _detection_group(number: int, detection: Detection, spec: DetectionSpec, identity: ResultIdentity,
                     algorithm: hd.sr.AlgorithmIdentification, frame_of_reference_uid: str
                     ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411, one per lesion: its own tracking identifier and UID (rows 2-3), its
    place (row 8), its finding type (row 4), the certainty of the finding and, for an
    ellipsoid, its long and short axes and volume (rows 9-10, TID 1419)."""
    measurements = [hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=round(100.0 * detection.score, 3),
                                      unit=PERCENT, algorithm_id=algorithm)]
    if detection.diameters_mm is not None and detection.volume_ml is not None:
        measurements += [
            hd.sr.Measurement(name=LONG_AXIS, value=round(max(detection.diameters_mm), 3), unit=MM,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=SHORT_AXIS, value=round(min(detection.diameters_mm), 3), unit=MM,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=VOLUME, value=round(detection.volume_ml, 4), unit=ML, algorithm_id=algorithm),
        ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.uid(f"detection-{number}"),
                                                     identifier=f"{spec.name} {number}"[:64]),
        referenced_volume_surface=_surface(detection, frame_of_reference_uid, identity.source_series_instance_uid),
        finding_type=coded(spec.concept),
        algorithm_id=algorithm,
        measurements=measurements,
    )


def reported_detections(outputs: Outputs, detections: Sequence[Detection]) -> list[tuple[Detection, DetectionSpec]]:
    """The detections at or above their kind's threshold, most certain first."""
    specs = {d.name: d for d in outputs.detections}
    kept = [(d, specs[d.name]) for d in detections if d.name in specs and d.score >= specs[d.name].threshold]
    return sorted(kept, key=lambda pair: -pair[0].score)


#: CID 29 Acquisition Modality by its code value ("CT": Computed Tomography).
_ACQUISITION_MODALITIES = {code.value: code for code in (getattr(codes.cid29, keyword) for keyword in dir(codes.cid29))
                           if isinstance(code, Code)}
#: TID 1602 rows: the descriptors an Image Library Group gives for all its images.
_MODALITY = hd.sr.CodedConcept("121139", "DCM", "Modality")
_FRAME_OF_REFERENCE = hd.sr.CodedConcept("112227", "DCM", "Frame of Reference UID")
_SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")


def image_library(sources: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group per modality and frame of reference, whose
    shared descriptors (TID 1602: modality, frame of reference) hold for all its
    images, and one TID 1601 entry per source image.

    Entries carry no descriptors of their own (TID 1601 row 2 is optional): highdicom's
    own library repeats eight of them for every image, which for a 300-slice series
    made the SR 1.2 MB and nine tenths of its encoding time, for positions a reader
    finds in the referenced images and the SEG."""
    library = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("111028", "DCM", "Image Library"),
                                         relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    groups: dict[tuple[str, str], list[Dataset]] = {}
    for ds in sources:
        groups.setdefault((str(ds.get("Modality", "")), str(ds.get("FrameOfReferenceUID", ""))), []).append(ds)
    for (modality, frame_of_reference), members in groups.items():
        group = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("126200", "DCM", "Image Library Group"),
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        group.ContentSequence = hd.sr.ContentSequence()
        acquisition = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
        if modality:  # a modality CID 29 does not know is left unsaid
            coded_modality = _ACQUISITION_MODALITIES.get(modality)
            if coded_modality is not None:
                group.ContentSequence.append(hd.sr.CodeContentItem(
                    name=_MODALITY, value=coded_modality, relationship_type=acquisition))
        if frame_of_reference:
            group.ContentSequence.append(hd.sr.UIDRefContentItem(
                name=_FRAME_OF_REFERENCE, value=frame_of_reference, relationship_type=acquisition))
        for ds in members:
            group.ContentSequence.append(hd.sr.ImageContentItem(
                name=_SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        library.ContentSequence.append(group)
    return library


def _add_image_library(report: hd.sr.MeasurementReport, sources: Sequence[Dataset]) -> None:
    """Put the image library at its place in TID 1500 (row 4: after the procedure
    reported, before the imaging measurements)."""
    content = report[0].ContentSequence
    measurements = next(i for i, item in enumerate(content)
                        if item.ConceptNameCodeSequence[0].CodeValue == "126010")  # Imaging Measurements
    content.insert(measurements, image_library(sources))


def _segment_context(identity: ResultIdentity, segment: SegmentSpec) -> dict[str, Any]:
    """What names a segment in a measurement group, the same at every time point: its
    tracking identifier and UID, its finding type and site (with laterality)."""
    return {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=identity.tracking_uid(segment.label),
                                                        identifier=segment.name[:64]),
        "finding_type": coded(segment.type),
        "finding_sites": [hd.sr.FindingSite(coded(segment.type), laterality=coded(segment.laterality))]
        if segment.laterality else None,
    }


def _time_point(study_date: str | None, otherwise: str) -> hd.sr.TimePointContext:
    """TID 1502 Time Point Context: the study's date (YYYY-MM-DD)."""
    day = str(study_date or "")
    return hd.sr.TimePointContext(time_point=f"{day[:4]}-{day[4:6]}-{day[6:8]}" if len(day) == 8 else otherwise)


def _prior_groups(identity: ResultIdentity, outputs: Outputs, measurements: Sequence[Measurement],
                  study_date: str | None, algorithm: hd.sr.AlgorithmIdentification) -> list[Any]:
    """The values the model measured on the prior, one TID 1501 group per segment at the
    prior's time point (TID 1502 Time Point Context: its study date), with the same
    tracking identifier and UID as this study's group of that segment, so that a reader
    follows each lung across time points."""
    values = {m.name: m for m in measurements}
    if not values:
        return []
    groups = []
    for segment in outputs.segments:
        specs = [s for s in outputs.measurements if s.segment == segment.label and s.name in values]
        if not specs:
            continue
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            **_segment_context(identity, segment),
            time_point_context=_time_point(study_date, "prior"),
            algorithm_id=algorithm,
            measurements=[_measurement(spec, values[spec.name], algorithm) for spec in specs],
        ))
    return groups


def encode_measurement_report(
    identity: ResultIdentity,
    outputs: Outputs,
    measurements: Sequence[Measurement],
    findings: Sequence[Finding],
    sources: Sequence[Dataset],
    segmentation: Dataset | None,
    detections: Sequence[Detection] = (),
    prior_sources: Sequence[Dataset] = (),
    prior_measurements: Sequence[Measurement] = (),
    prior_study_date: str | None = None,
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
            # TID 1411 rows 2-3: the same identifier and UID as the SEG's segment
            **_segment_context(identity, segment),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(identity.source_series_instance_uid)),
            algorithm_id=algorithm,
            measurements=[_measurement(s, values[s.name], algorithm) for s in own],
            # compared with a prior: each group says its time point
            time_point_context=_time_point(str(sources[0].get("StudyDate", "")) if sources else None, "current")
            if prior_measurements else None,
        ))
    groups += _prior_groups(identity, outputs, prior_measurements, prior_study_date, algorithm)
    # One group per finding (TID 1501): its tracking identifier names it, so that its
    # certainty (row 5), its qualitative evaluation (row 12) and, when indeterminate,
    # the reason as text (row 13) cannot be taken for another finding's.
    found = {f.name: f for f in findings}
    for finding_spec in (f for f in outputs.findings if f.name in found):
        finding = found[finding_spec.name]
        scored = finding.score is not None and not finding.indeterminate
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.uid(f"finding-{finding_spec.name}"),
                                                         identifier=finding_spec.name[:64]),
            algorithm_id=algorithm,
            measurements=[_certainty(finding, algorithm)] if scored else None,
            qualitative_evaluations=[_evaluation(finding_spec, finding)],
        )
        if finding.indeterminate:
            group[0].ContentSequence.append(_reason_item(finding))
        groups.append(group)
    frame_of_reference = str(sources[0].get("FrameOfReferenceUID", "")) if sources else ""
    for number, (detection, kind) in enumerate(reported_detections(outputs, detections), start=1):
        if not frame_of_reference:
            raise ValueError("detections need the source images' Frame of Reference UID")
        groups.append(_detection_group(number, detection, kind, identity, algorithm, frame_of_reference))
    if unplaced:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.uid("group-measurements"),
                                                         identifier="AI measurements"),
            algorithm_id=algorithm,
            measurements=[_measurement(s, values[s.name], algorithm) for s in unplaced],
        ))
    device = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name="AINode", manufacturer_name=MANUFACTURER,
            model_name=identity.model[:64]),
    )
    modality = str(sources[0].get("Modality", "")) if sources else ""
    procedure = coded(outputs.procedure) if outputs.procedure else PROCEDURE_BY_MODALITY.get(modality,
                                                                                            IMAGING_PROCEDURE)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    _add_image_library(report, sources)
    # The prior a change was measured against is evidence from another study: highdicom
    # lists it in the Pertinent Other Evidence Sequence.
    evidence = [*sources, *([segmentation] if segmentation is not None else []), *prior_sources]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.uid("sr-series"),
        series_number=identity.series_number(2),
        sop_instance_uid=identity.uid("sr-instance"),
        instance_number=1,
        is_complete=True,
        series_description=identity.series_description("SR"),
        **equipment(identity),
    )
