"""DICOM Segmentation from a label map: one segment per model output present, coded
category and type, algorithm identification, referencing the source images in the
same Frame of Reference, empty frames omitted."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai.encoders.identity import ResultIdentity, equipment
from ai.labelmap import LabelMap
from ai.protocol import Code, Outputs

#: Segment colours (RGB), one per segment in declaration order: the SEG's recommended
#: display colours and the key images' outlines.
PALETTE = ((255, 64, 64), (64, 220, 64), (80, 140, 255), (255, 220, 0), (0, 230, 230), (255, 80, 255))


def segment_colour(outputs: Outputs, label: int) -> tuple[int, int, int]:
    index = next((i for i, s in enumerate(outputs.segments) if s.label == label), 0)
    return PALETTE[index % len(PALETTE)]


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm_identification(identity: ResultIdentity) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=identity.model, version=identity.model_version,
        family=codes.cid7162.ArtificialIntelligence)


def source_frames(labelmap: LabelMap, segments: np.ndarray,
                   sources: Sequence[Dataset]) -> tuple[list[Dataset], np.ndarray]:
    """The source images and the ``segments`` slices in the order highdicom pairs them:
    single-frame images one per slice; one multi-frame image with its frames in order."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    uids = labelmap.sop_instance_uids
    if len(set(uids)) == 1 and len(uids) > 1:
        order = np.argsort(np.asarray(labelmap.frame_numbers))
        return [by_uid[uids[0]]], segments[order]
    return [by_uid[uid] for uid in uids], segments


def encode_segmentation(
    identity: ResultIdentity,
    outputs: Outputs,
    labelmap: LabelMap,
    sources: Sequence[Dataset],
    workers: int = 0,
) -> hd.seg.Segmentation | None:
    """The SEG of one prediction, or None when no segment has a voxel."""
    present = labelmap.labels
    specs = [s for s in outputs.segments if s.label in present]
    if not specs:
        return None
    # Segment numbers are 1..N in the order the model declares its segments.
    lut = np.zeros(256, dtype=np.uint8)
    for number, spec in enumerate(specs, start=1):
        lut[spec.label] = number
    # (ct-chest's labels are already 1..N: the map is used as it is, not looked up voxel by voxel)
    identical = labelmap.array.dtype == np.uint8 and all(lut[v] == v for v in present)
    numbered = labelmap.array if identical else lut[labelmap.array]
    images, frames = source_frames(labelmap, numbered, sources)
    algorithm = algorithm_identification(identity)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=spec.name[:64],
            segmented_property_category=coded(spec.category),
            segmented_property_type=coded(spec.type),
            anatomic_regions=None,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=identity.tracking_uid(spec.label),
            tracking_id=spec.name[:64],
            # the colour the key images outline it in, so that viewers agree with them
            display_color=hd.color.CIELabColor.from_rgb(*segment_colour(outputs, spec.label)),
        )
        for number, spec in enumerate(specs, start=1)
    ]
    for description, spec in zip(descriptions, specs, strict=True):
        if spec.laterality is not None:
            # Laterality qualifies the property type (PS3.3 C.8.20.2: Segmented
            # Property Type Modifier Code Sequence).
            modifier = Dataset()
            modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = (
                spec.laterality.value, spec.laterality.scheme, spec.laterality.meaning)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=identity.uid("seg-series"),
        series_number=identity.series_number(1),
        sop_instance_uid=identity.uid("seg-instance"),
        instance_number=1,
        series_description=identity.series_description("SEG"),
        content_label="AI",
        content_description=f"{identity.model} {identity.model_version}"[:64],
        omit_empty_frames=True,
        workers=workers,
        **equipment(identity),
    )
    # highdicom draws a random Dimension Organization UID: the same results make the
    # same object, so it is derived like the other UIDs.
    organisation = identity.uid("seg-dimension-organization")
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = organisation
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = organisation
    return seg
