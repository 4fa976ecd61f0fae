"""Comparing a model's segmentation with a reference one: Dice, 95% Hausdorff distance
(MONAI's metrics) and the two volumes, per structure; and reading a DICOM SEG's
segments on the grid of the series it was made on (highdicom)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from ai.labelmap import LabelMap


@dataclass(frozen=True)
class Comparison:
    dice: float
    hd95_mm: float | None  # None when either mask is empty
    predicted_ml: float
    reference_ml: float


def compare_masks(predicted: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]) -> Comparison:
    """Dice and HD95 of two boolean masks on the same grid (``spacing`` per axis, mm)."""
    # Imported here: MONAI takes seconds to import, and every listener and worker
    # process imports this module's callers at start.
    import torch
    from monai.metrics.hausdorff_distance import compute_hausdorff_distance
    from monai.metrics.meandice import compute_dice

    if predicted.shape != reference.shape:
        raise ValueError(f"masks of shapes {predicted.shape} and {reference.shape} are not on one grid")
    p = torch.from_numpy(np.ascontiguousarray(predicted, dtype=bool))[None, None].float()
    r = torch.from_numpy(np.ascontiguousarray(reference, dtype=bool))[None, None].float()
    dice = float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])
    hd95 = None
    if predicted.any() and reference.any():
        value = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                 spacing=list(spacing))[0, 0])
        hd95 = value if math.isfinite(value) else None
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return Comparison(dice, hd95, float(predicted.sum()) * voxel_ml, float(reference.sum()) * voxel_ml)


@dataclass(frozen=True)
class ReferenceSegment:
    number: int
    label: str
    #: (scheme, value) of its Segmented Property Type, and of its laterality modifier.
    type_code: tuple[str, str]
    laterality: tuple[str, str] | None
    mask: np.ndarray  # bool, on the label map's grid


class NotOnTheGrid(ValueError):
    """A SEG whose frames cannot be placed on the series' slices."""


def _code(item: object) -> tuple[str, str]:
    return str(getattr(item, "CodingSchemeDesignator", "")), str(getattr(item, "CodeValue", ""))


def reference_segments(dataset: Dataset, grid: LabelMap) -> list[ReferenceSegment]:
    """The segments of a SEG as boolean masks on ``grid``'s slices (its source images,
    in its order). Slices the SEG has no frame for are empty; fractional segments are
    read at 0.5."""
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as exc:  # highdicom raises several kinds for a malformed SEG
        raise NotOnTheGrid(f"not a readable Segmentation ({type(exc).__name__})") from None
    numbers = list(seg.segment_numbers)
    multi_frame = any(f != 1 for f in grid.frame_numbers)
    try:
        if multi_frame:
            sources = sorted(set(grid.sop_instance_uids))
            if len(sources) != 1:
                raise NotOnTheGrid("the series mixes multi-frame instances")
            pixels = seg.get_pixels_by_source_frame(sources[0], list(grid.frame_numbers), segment_numbers=numbers,
                                                    assert_missing_frames_are_empty=True)
        else:
            pixels = seg.get_pixels_by_source_instance(list(grid.sop_instance_uids), segment_numbers=numbers,
                                                       assert_missing_frames_are_empty=True)
    except NotOnTheGrid:
        raise
    except Exception as exc:
        raise NotOnTheGrid(f"its frames do not reference the series' images ({type(exc).__name__}: "
                           f"{str(exc)[:120]})") from None
    if pixels.shape[1:3] != grid.array.shape[1:]:
        raise NotOnTheGrid(f"its frames are {pixels.shape[1:3]}, the images {grid.array.shape[1:]}")
    found = []
    for index, number in enumerate(numbers):
        description = seg.get_segment_description(number)
        laterality = None
        for modifier in getattr(description.SegmentedPropertyTypeCodeSequence[0],
                                "SegmentedPropertyTypeModifierCodeSequence", []) or []:
            laterality = _code(modifier)
        found.append(ReferenceSegment(number, str(description.SegmentLabel), _code(
            description.SegmentedPropertyTypeCodeSequence[0]), laterality, pixels[..., index] >= 0.5))
    return found
