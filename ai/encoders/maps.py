"""A model's voxel maps as DICOM: its segments' probabilities as one fractional
(probability) SEG, and each explanation map (where the model looked for a finding) as
a Parametric Map labelled as an explanation, not a finding."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai.encoders.identity import ResultIdentity, equipment
from ai.encoders.seg import algorithm_identification, coded, segment_colour, source_frames
from ai.labelmap import MAP_STEPS, LabelMap
from ai.protocol import MapKind, MapSpec, Outputs

#: What an explanation map's values are (private: no standard code names a saliency).
SALIENCY = hd.sr.CodedConcept("SALIENCY", "99AINODE", "Saliency (AI explanation)")
#: The Parametric Map's LUT label and its explanation (shown by viewers).
EXPLANATION_LABEL = "AI EXPLAIN"


def maps_of(outputs: Outputs, labelmap: LabelMap, kind: MapKind) -> list[MapSpec]:
    """The declared maps of ``kind`` the label map file holds, in declaration order."""
    return [m for m in outputs.maps if m.kind is kind and m.name in labelmap.maps]


def _same_uids(dataset: Dataset, identity: ResultIdentity, what: str) -> None:
    """highdicom draws a random Dimension Organization UID: the same results make the
    same object, so it is derived like the other UIDs."""
    organisation = identity.uid(f"{what}-dimension-organization")
    for item in dataset.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = organisation
    for item in dataset.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = organisation


def encode_probability_segmentation(identity: ResultIdentity, outputs: Outputs, labelmap: LabelMap,
                                    sources: Sequence[Dataset]) -> hd.seg.Segmentation | None:
    """One fractional SEG (type PROBABILITY, 1/255 steps) with a segment per
    probability map; None when the model gives none or every map is empty."""
    specs = [m for m in maps_of(outputs, labelmap, MapKind.PROBABILITY) if labelmap.maps[m.name].any()]
    if not specs:
        return None
    segments = {s.name: s for s in outputs.segments}
    fractions = np.stack([labelmap.fraction(m.name) for m in specs], axis=-1)  # (slices, rows, cols, n)
    images, frames = source_frames(labelmap, fractions, sources)
    algorithm = algorithm_identification(identity)
    descriptions = []
    for number, spec in enumerate(specs, start=1):
        segment = segments[spec.of]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"{segment.name} probability"[:64],
            segmented_property_category=coded(segment.category),
            segmented_property_type=coded(segment.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=identity.uid(f"probability-{segment.label}"),
            tracking_id=f"{segment.name} probability"[:64],
            display_color=hd.color.CIELabColor.from_rgb(*segment_colour(outputs, segment.label)),
        ))
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAP_STEPS,
        segment_descriptions=descriptions,
        series_instance_uid=identity.uid("probability-series"),
        series_number=identity.series_number(4),
        sop_instance_uid=identity.uid("probability-instance"),
        instance_number=1,
        series_description=identity.series_description("PROBABILITIES"),
        content_label="AIPROB",
        content_description=f"{identity.model} {identity.model_version} probabilities"[:64],
        omit_empty_frames=True,
        **equipment(identity),
    )
    _same_uids(seg, identity, "probability")
    return seg


def encode_explanation_maps(identity: ResultIdentity, outputs: Outputs, labelmap: LabelMap,
                            sources: Sequence[Dataset]) -> list[hd.pm.ParametricMap]:
    """One Parametric Map per explanation map: 16-bit values 0..255 mapped to 0..1 by
    its Real World Value Mapping, labelled as an explanation of its finding."""
    maps = []
    for number, spec in enumerate(maps_of(outputs, labelmap, MapKind.EXPLANATION), start=1):
        method = spec.method or "model-supplied saliency"
        explanation = f"Where {identity.model} looked for {spec.of} ({method}); an explanation, not a finding"
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=EXPLANATION_LABEL, lut_explanation=f"not a finding: explains {spec.of}"[:64],
            unit=codes.UCUM.NoUnits, value_range=(0, MAP_STEPS), slope=1.0 / MAP_STEPS, intercept=0.0,
            quantity_definition=SALIENCY)
        images, frames = source_frames(labelmap, labelmap.maps[spec.name].astype(np.uint16), sources)
        pm = hd.pm.ParametricMap(
            source_images=images,
            pixel_array=frames,
            series_instance_uid=identity.uid("explanation-series"),
            series_number=identity.series_number(5),
            sop_instance_uid=identity.uid(f"explanation-instance-{spec.name}"),
            instance_number=number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=MAP_STEPS / 2,
                                                             window_width=float(MAP_STEPS))],
            content_label="AIEXPLAIN",
            content_description=f"Explanation: {spec.of}"[:64],
            derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.NONE,
            **equipment(identity),
        )
        pm.SeriesDescription = identity.series_description("EXPLANATION")
        # Type 2C: the source's, else empty (dciodvfy holds an absent one an error).
        pm.Laterality = images[0].get("Laterality", "")
        pm.ImageComments = explanation[:10240]
        _same_uids(pm, identity, f"explanation-{spec.name}")
        maps.append(pm)
    return maps
