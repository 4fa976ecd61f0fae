"""All the objects of one prediction, ready to store and send: the SEG (when there is
a label map with a segment in it), the TID 1500 SR, a fractional SEG of the segments'
probabilities and a Parametric Map per explanation map (when the model gives them),
and key images (outlines, and explanation overlays) when asked for."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from ai.encoders.identity import ResultIdentity
from ai.encoders.maps import encode_explanation_maps, encode_probability_segmentation
from ai.encoders.sc import SliceValues, encode_explanation_images, encode_key_images
from ai.encoders.seg import encode_segmentation
from ai.encoders.sr import encode_measurement_report, reported_detections
from ai.labelmap import LabelMap
from ai.protocol import Detection, Finding, Measurement, Outputs


@dataclass(frozen=True)
class ModelResult:
    """One model's result on one series, as the encoders need it: what the model
    declares, what it measured and found, and its label map on the source grid."""

    outputs: Outputs
    measurements: tuple[Measurement, ...] = ()
    findings: tuple[Finding, ...] = ()
    labelmap: LabelMap | None = None
    detections: tuple[Detection, ...] = ()
    #: The headers of the earlier study's series the model compared with (its changes
    #: are since then): referenced as the SR's Pertinent Other Evidence.
    prior_sources: tuple[Dataset, ...] = ()
    #: What the model measured on that earlier study, and its date (YYYYMMDD): the SR
    #: gives them at the prior's time point (TID 1502) beside this study's.
    prior_measurements: tuple[Measurement, ...] = ()
    prior_study_date: str | None = None


@dataclass(frozen=True)
class EncodedObject:
    """One DICOM object made from a result."""

    kind: str  # "seg" | "sr" | "sc" | "pm"
    dataset: Dataset


#: Patient and study attributes the results must share with their source (dcentvfy
#: checks that every object of a study says the same about its patient and study).
_SHARED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "EthnicGroup",
           "IssuerOfPatientID", "PatientAge", "PatientSize", "PatientWeight", "StudyID",
           "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyDescription")


def _copy_shared(ds: Dataset, source: Dataset) -> None:
    for keyword in _SHARED:
        if keyword in source and keyword not in ds:
            setattr(ds, keyword, source[keyword].value)


#: Type 2 attributes highdicom reads from the first source image; images in the wild
#: sometimes leave them out altogether.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
          "StudyTime", "AccessionNumber", "ReferringPhysicianName")


def _valid(keyword: str, value: Any) -> bool:
    """Whether a date/time the encoders parse is one (images in the wild carry
    19340229 and the like; highdicom would refuse the whole result over it)."""
    text = str(value or "").strip()
    if not text:
        return True
    try:
        if keyword.endswith("Date"):
            datetime.strptime(text[:8], "%Y%m%d")
        elif keyword.endswith("Time"):
            # HH[MM[SS[.FFFFFF]]] (pydicom's own check logs the value: not here).
            whole = text.split(".")[0]
            if len(whole) not in (2, 4, 6) or not whole.isdigit():
                return False
            datetime.strptime(whole, "%H%M%S"[:len(whole)])
    except ValueError:
        return False
    return True


def _complete_type2(sources: Sequence[Dataset]) -> None:
    """Absent Type 2 attributes become empty, and so do unusable dates and times
    (Type 2: empty means unknown, which an impossible date is)."""
    for ds in sources:
        for keyword in _TYPE2:
            if keyword not in ds or not _valid(keyword, ds[keyword].value):
                setattr(ds, keyword, "")


def _drop_incomplete_references(ds: Dataset) -> None:
    """Source images sometimes carry a Referenced Study Sequence without its Type 1
    attributes; highdicom copies it, and the result would not conform. It is optional
    (Type 3), so an incomplete one is left out."""
    items = ds.get("ReferencedStudySequence")
    if items is not None and any(
        "ReferencedSOPClassUID" not in i or "ReferencedSOPInstanceUID" not in i for i in items
    ):
        del ds.ReferencedStudySequence


def _private_schemes(ds: Dataset) -> set[str]:
    found: set[str] = set()

    def visit(dataset: Dataset, element: Any) -> None:
        if element.keyword == "CodingSchemeDesignator" and str(element.value).startswith("99"):
            found.add(str(element.value))

    ds.walk(visit)
    return found


def _identify_private_schemes(ds: Dataset) -> None:
    """Private coding schemes (designators "99...", PS3.16 8.2) used in an object are
    described in its Coding Scheme Identification Sequence, so readers know whose they are."""
    known = {str(i.CodingSchemeDesignator) for i in ds.get("CodingSchemeIdentificationSequence", [])}
    items = list(ds.get("CodingSchemeIdentificationSequence", []))
    for designator in sorted(_private_schemes(ds) - known):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = f"{designator} private codes of the AI models run by AINode"[:64]
        item.CodingSchemeResponsibleOrganization = "AINode"
        items.append(item)
    if items:
        ds.CodingSchemeIdentificationSequence = items


def encode_prediction(
    identity: ResultIdentity,
    result: ModelResult,
    sources: Sequence[Dataset],
    slice_values: SliceValues | None = None,
    workers: int = 0,
) -> list[EncodedObject]:
    """The SEG (when the label map has a segment), the SR and, with ``slice_values``
    (the source slice behind label map slice ``i``, in modality units), key images.

    ``sources`` (the source series' datasets, read for this) gain empty values for
    absent Type 2 patient and study attributes."""
    _complete_type2(sources)
    # highdicom and pydicom warn about source attributes, quoting their values (the
    # patient's name among them): those warnings must not reach a log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = None
        if result.labelmap is not None:
            seg = encode_segmentation(identity, result.outputs, result.labelmap, sources, workers=workers)
        sr = encode_measurement_report(identity, result.outputs, result.measurements, result.findings,
                                       sources, seg, result.detections, result.prior_sources,
                                       result.prior_measurements, result.prior_study_date)
        key_images: list[Dataset] = []
        probabilities = None
        explanations: list[Dataset] = []
        if result.labelmap is not None:
            probabilities = encode_probability_segmentation(identity, result.outputs, result.labelmap, sources)
            explanations = list(encode_explanation_maps(identity, result.outputs, result.labelmap, sources))
        if result.labelmap is not None and slice_values is not None:
            lesions = [d for d, _ in reported_detections(result.outputs, result.detections)]
            key_images = list(encode_key_images(identity, result.outputs, result.labelmap, sources, slice_values,
                                                result.measurements, result.findings, lesions))
            key_images += encode_explanation_images(identity, result.outputs, result.labelmap, sources,
                                                    slice_values, result.findings, len(key_images) + 1)
    objects = (([EncodedObject("seg", seg)] if seg is not None else []) + [EncodedObject("sr", sr)]
               + ([EncodedObject("seg", probabilities)] if probabilities is not None else [])
               + [EncodedObject("pm", pm) for pm in explanations]
               + [EncodedObject("sc", image) for image in key_images])
    for obj in objects:
        # the same results make the same bytes: no clock reading in the objects
        obj.dataset.InstanceCreationDate = identity.created.strftime("%Y%m%d")
        obj.dataset.InstanceCreationTime = identity.created.strftime("%H%M%S.%f")
        if "TimeOfSecondaryCapture" in obj.dataset:  # highdicom sets them from the clock
            obj.dataset.DateOfSecondaryCapture = identity.created.strftime("%Y%m%d")
            obj.dataset.TimeOfSecondaryCapture = identity.created.strftime("%H%M%S.%f")
        for equipment in obj.dataset.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in equipment:
                equipment.ContributionDateTime = identity.created.strftime("%Y%m%d%H%M%S.%f")
        _copy_shared(obj.dataset, sources[0])
        _drop_incomplete_references(obj.dataset)
        _identify_private_schemes(obj.dataset)
    return objects
