"""Built-in model ``ct-chest``: body and lungs on chest CT, lung volume, density and
emphysema index, without learned weights.

Method (classic threshold-and-topology segmentation; the thresholds and pooling run in
torch on the model's device, the morphology and labelling in numpy/scipy on the CPU,
slice by slice in torch's threads where the step allows, see ai.morphology):

1. At about 1.5 mm in-plane (average pooling), the body is the largest connected
   region above -500 HU, holes filled slice by slice.
2. Air inside the body (below -400 HU) in large connected regions is lung plus
   airways; bowel gas is left out by size.
3. The trachea and main bronchi are tracked from the top slice downwards as
   small air regions that continue from slice to slice; where a region suddenly
   grows it has entered the lung and tracking stops. They are removed.
4. Left and right: two separate regions are told apart by their side (+x is the
   patient's left in DICOM's LPS space); lungs that touch are split at the valley of
   the lung profile across the body.
5. At full resolution a lung voxel is one of the lung region's voxels below -400 HU
   or a vessel enclosed by lung in its slice; measurements are taken there.

%LAA-950 is reliable only on a smooth/standard kernel with slices of at most
``max_reliable_slice_thickness_mm``; otherwise it is reported as not reliable and
the emphysema finding is indeterminate (with the reason), never absent. On thicker
slices volumes still hold; the mean density is marked not reliable too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai.kernels import kernel_class, kernel_concern
from ai.morphology import (
    bounding_box,
    by_slabs,
    components,
    dilate_disk,
    erode_disk,
    fill_holes_2d,
    holes_2d,
)
from ai.protocol import (
    Accepts,
    Assessment,
    Code,
    DeviceNeeds,
    Finding,
    FindingSpec,
    Measurement,
    MeasurementSpec,
    ModelCannotRun,
    Outputs,
    Prediction,
    PriorVolume,
    SegmentSpec,
)
from ai.volume import Volume

BODY, RIGHT_LUNG, LEFT_LUNG = 1, 2, 3

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
ML = Code("mL", "UCUM", "milliliter")
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
PERCENT = Code("%", "UCUM", "percent")
VOLUME = Code("118565006", "SCT", "Volume")
MEAN_DENSITY = Code("112031", "DCM", "Attenuation Coefficient")
LAA950 = Code("LAA950", "99AINODE", "Percent of lung below -950 HU")
EMPHYSEMA = Code("87433001", "SCT", "Pulmonary emphysema")
MEAN = Code("373098007", "SCT", "Mean")  # CID 7464 (derivation)
SUM_OF_VOXELS = Code("126030", "DCM", "Sum of segmented voxel method for volume")  # CID 7474
VOLUME_CHANGE = Code("VOLCHG", "99AINODE", "Percent change of volume since the prior study")
LAA950_CHANGE = Code("LAA950CHG", "99AINODE", "Change of percent of lung below -950 HU since the prior study")

OUTPUTS = Outputs(
    segments=(
        SegmentSpec(BODY, "Body", ANATOMICAL_STRUCTURE, Code("38266002", "SCT", "Entire body")),
        SegmentSpec(RIGHT_LUNG, "Right lung", ANATOMICAL_STRUCTURE, Code("39607008", "SCT", "Lung"),
                    Code("24028007", "SCT", "Right")),
        SegmentSpec(LEFT_LUNG, "Left lung", ANATOMICAL_STRUCTURE, Code("39607008", "SCT", "Lung"),
                    Code("7771000", "SCT", "Left")),
    ),
    measurements=tuple(
        MeasurementSpec(f"{side} lung {what}", concept, unit, label, derivation, method)
        for side, label in (("right", RIGHT_LUNG), ("left", LEFT_LUNG))
        for what, concept, unit, derivation, method in (
            ("volume", VOLUME, ML, None, SUM_OF_VOXELS),
            ("mean density", MEAN_DENSITY, HU, MEAN, None),
            ("LAA-950", LAA950, PERCENT, None, None),
            # Against the most recent usable prior (routes with [routes.priors] only):
            # volume in percent of the prior's, %LAA-950 in percentage points.
            ("volume change", VOLUME_CHANGE, PERCENT, None, None),
            ("LAA-950 change", LAA950_CHANGE, PERCENT, None, None))
    ),
    findings=(FindingSpec("emphysema suspected", EMPHYSEMA),),
    display_window=(-600.0, 1500.0),  # lung window, for key images
    procedure=Code("169069000", "SCT", "Computed tomography of chest"),
)


class LungSegmentationError(ModelCannotRun):
    """No lungs where a chest CT should have them; the message says what was seen."""


#: Structures thinner than twice this are cut from the body mask (table top, shell).
_TABLE_CUT_MM = 4.0
#: A chest CT shows lungs on most of its slices: an abdomen CT with the lung bases on
#: its first slices, or a head CT with air in the sinuses, is declined.
_MIN_LUNG_SLICE_SHARE = 0.4
_MIN_LUNG_AREA_SHARE = 0.05


def _check_chest_coverage(lungs: np.ndarray, body: np.ndarray) -> None:
    """The cheap anatomy check: lungs on at least 40 % of the slices that show the
    body, each time over at least 5 % of the body's cross-section."""
    body_area = body.sum(axis=(1, 2))
    with_body = body_area > 0
    share = lungs.sum(axis=(1, 2)) / np.maximum(body_area, 1)
    lung_slices = int(np.sum(with_body & (share >= _MIN_LUNG_AREA_SHARE)))
    total = int(with_body.sum())
    if lung_slices < _MIN_LUNG_SLICE_SHARE * total:
        raise LungSegmentationError(
            f"not a chest CT: lungs on {lung_slices} of {total} slices (a chest CT shows them on most; "
            "an abdomen CT with the lung bases, or air in a head CT, does not)")


def _track_airways(air: np.ndarray, voxel_mm2: float) -> np.ndarray:
    """Trachea and main bronchi: small air regions continuing down from the top slice."""
    airway = np.zeros_like(air)
    top = next((z for z in range(air.shape[0] - 1, -1, -1) if air[z].any()), None)
    if top is None:
        return airway
    labels, n = ndimage.label(air[top])
    if n == 0:
        return airway
    areas = np.bincount(labels.ravel())[1:] * voxel_mm2
    # In the top slice the trachea is an air region of 0.5 to 8 cm^2 (apices may show too).
    candidates = [i + 1 for i, a in enumerate(areas) if 50 <= a <= 800]
    if not candidates:
        return airway
    centre = np.array(air.shape[1:]) / 2
    trachea = min(candidates, key=lambda c: np.linalg.norm(
        np.argwhere(labels == c).mean(axis=0) - centre))
    current = [labels == trachea]
    airway[top] = current[0]
    for z in range(top - 1, -1, -1):
        labels, n = ndimage.label(air[z])
        if n == 0:
            break
        following = []
        for region in current:
            grown = ndimage.binary_dilation(region, iterations=2)
            for c in np.unique(labels[grown & (labels > 0)]):
                candidate = labels == c
                if candidate.sum() <= 2.0 * region.sum() + 30:  # not (yet) in the lung
                    following.append(candidate)
        if not following:
            break
        current = following
        for region in current:
            airway[z] |= region
    return airway


def _upsample(coarse: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Each coarse pixel repeated ``factor`` x ``factor`` times in-plane, cut to ``shape``."""
    if factor == 1:
        return coarse.copy()
    d, ch, cw = coarse.shape
    columns = np.repeat(coarse, factor, axis=2)  # then whole rows: copying rows is fast
    full = np.empty((d, ch, factor, cw * factor), dtype=coarse.dtype)
    full[...] = columns[:, :, None, :]
    full = full.reshape(d, ch * factor, cw * factor)
    return full if full.shape[1:] == shape else np.ascontiguousarray(full[:, :shape[0], :shape[1]])


def _mean_column(mask: np.ndarray) -> float:
    profile = np.count_nonzero(mask, axis=(0, 1))
    return float((profile * np.arange(mask.shape[2])).sum() / profile.sum())


def _chosen(labels: np.ndarray, chosen: np.ndarray, count: int) -> np.ndarray:
    """The voxels whose label is one of ``chosen`` (a lookup table: ``np.isin`` sorts)."""
    table = np.zeros(count + 1, dtype=bool)
    table[chosen] = True
    table[0] = False
    return by_slabs(lambda slab: table[slab], labels)


def _split_left_right(lung: np.ndarray, column_x_sign: float) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lung masks. ``column_x_sign``: +1 when the column index grows
    towards the patient's left (+x), -1 when towards the right."""
    labels, sizes = components(lung)
    order = np.argsort(sizes)[::-1]
    big = [i for i in order[:2] if sizes[i] > 0.15 * sizes[order[0]]]
    if len(big) == 2:
        a, b = (labels == big[0]), (labels == big[1])
        ca, cb = _mean_column(a), _mean_column(b)
        left_first = (ca - cb) * column_x_sign > 0
        return (b, a) if left_first else (a, b)
    # One region: split at the emptiest column between the two halves.
    profile = lung.sum(axis=(0, 1)).astype(np.float64)
    cols = np.nonzero(profile)[0]
    lo, hi = cols.min(), cols.max()
    inner = slice(lo + (hi - lo) // 4, hi - (hi - lo) // 4 + 1)
    split = inner.start + int(np.argmin(profile[inner]))
    columns = np.arange(lung.shape[2])[None, None, :]
    on_left = (columns > split) if column_x_sign > 0 else (columns <= split)
    return lung & ~on_left, lung & on_left


class CtChestModel:
    """Body and lung segmentation with lung volume, density and %LAA-950."""

    name = "ct-chest"
    version = "1.0.0"
    accepts = Accepts(modalities=("CT",), min_slices=20)
    device_needs = DeviceNeeds(gpu="optional", gpu_memory_mb=2048, mixed_precision=False)
    outputs = OUTPUTS

    def __init__(self, emphysema_threshold_pct: float = 6.0,
                 max_reliable_slice_thickness_mm: float = 3.0) -> None:
        self.emphysema_threshold_pct = float(emphysema_threshold_pct)
        self.max_reliable_slice_thickness_mm = float(max_reliable_slice_thickness_mm)
        self.device = torch.device("cpu")

    def load(self, device: str) -> None:
        self.device = torch.device(device)

    def predict(self, volume: Volume) -> Prediction:
        hu = torch.from_numpy(volume.array).to(self.device)
        dz, dy, dx = volume.spacing
        factor = max(1, int(round(1.5 / min(dy, dx))))
        coarse = F.avg_pool2d(hu[:, None], factor, ceil_mode=True)[:, 0] if factor > 1 else hu
        c_dy, c_dx = dy * factor, dx * factor

        body = self._body((coarse > -500).cpu().numpy(), c_dy)
        air = (coarse < -400).cpu().numpy() & body
        labels, sizes = components(air)
        voxel_ml = dz * c_dy * c_dx / 1000
        if sizes.max(initial=0) * voxel_ml < 200:
            raise LungSegmentationError(
                f"no lungs found: the largest air region inside the body is "
                f"{sizes.max(initial=0) * voxel_ml:.0f} mL")
        keep = np.nonzero(sizes >= max(0.3 * sizes.max(), 100 / voxel_ml))[0]
        lungs_and_airways = _chosen(labels, keep, len(sizes) - 1)
        _check_chest_coverage(lungs_and_airways, body)
        airways = _track_airways(lungs_and_airways, c_dy * c_dx)
        lung = lungs_and_airways & ~airways
        column_x_sign = float(np.sign(volume.direction[0, 0]) or 1.0)
        right, left = _split_left_right(lung, column_x_sign)
        right, left = fill_holes_2d(right), fill_holes_2d(left)

        values = np.asarray(volume.array)  # the HU on the CPU (hu may be on a GPU)
        labelmap, lungs_box = self._full_resolution(values, factor, body, right, left)
        return self._measure(values, labelmap, lungs_box, volume)

    def predict_with_priors(self, volume: Volume, priors: list[PriorVolume]) -> Prediction:
        """As :meth:`predict`, plus the change of each lung's volume and %LAA-950 since
        the most recent usable prior: one reconstructed with the same kernel class (a
        sharp kernel's %LAA-950 is not comparable with a smooth one's) on which the
        lungs are found. A change is reliable when both values it compares are.

        Every usable prior is measured, so that provenance's ``trend`` gives the
        patient's values over time (most recent first) besides the one change."""
        prediction = self.predict(volume)
        current = {m.name: m for m in prediction.measurements}
        wanted = kernel_class(volume.convolution_kernel)
        skipped: list[str] = []
        trend: list[dict[str, Any]] = []
        prediction.provenance["prior"] = None
        for prior in priors:
            when = prior.study_date or "undated"
            if kernel_class(prior.volume.convolution_kernel) != wanted:
                skipped.append(f"{when}: kernel {prior.volume.convolution_kernel or 'unknown'} is not "
                               f"{wanted} like the current series'")
                continue
            try:
                before = {m.name: m for m in self.predict(prior.volume).measurements}
            except ModelCannotRun as exc:
                skipped.append(f"{when}: {exc}")
                continue
            trend.append({"study_instance_uid": prior.study_instance_uid, "study_date": prior.study_date,
                          "values": {name: m.value for name, m in before.items()},
                          "reliable": {name: m.reliable for name, m in before.items()}})
            if prediction.provenance["prior"] is None:
                self._add_changes(prediction, current, before, when)
                prediction.provenance["prior"] = {
                    "study_instance_uid": prior.study_instance_uid, "study_date": prior.study_date,
                    "series_instance_uid": prior.volume.series_instance_uid,
                    "convolution_kernel": prior.volume.convolution_kernel,
                    "volumes_ml": {side: before[f"{side} lung volume"].value for side in ("right", "left")},
                }
        prediction.provenance["trend"] = trend
        if skipped:
            prediction.provenance["priors_not_used"] = skipped
        return prediction

    @staticmethod
    def _add_changes(prediction: Prediction, current: dict[str, Measurement], before: dict[str, Measurement],
                     when: str) -> None:
        for side in ("right", "left"):
            now_v, then_v = current[f"{side} lung volume"], before[f"{side} lung volume"]
            now_l, then_l = current[f"{side} lung LAA-950"], before[f"{side} lung LAA-950"]
            laa_reliable = now_l.reliable and then_l.reliable
            prediction.measurements += [
                Measurement(f"{side} lung volume change", 100.0 * (now_v.value - then_v.value) / then_v.value),
                Measurement(f"{side} lung LAA-950 change", now_l.value - then_l.value, laa_reliable,
                            "" if laa_reliable else "not reliable: %LAA-950 of "
                            + ("this study" if not now_l.reliable else f"the prior of {when}")
                            + " is not reliable"),
            ]

    @staticmethod
    def _body(candidate: np.ndarray, pixel_mm: float) -> np.ndarray:
        """The patient: the largest region above -500 HU once thin structures are cut
        (the table top, its shell and cables touch the body through a few pixels),
        grown back to its own edge, holes filled slice by slice."""
        radius = max(1, int(round(_TABLE_CUT_MM / pixel_mm)))
        opened = dilate_disk(erode_disk(candidate, radius), radius)
        labels, sizes = components(opened if opened.any() else candidate)
        if sizes.max(initial=0) == 0:
            raise LungSegmentationError("no body found (nothing above -500 HU)")
        core = labels == int(np.argmax(sizes))
        # What the opening took back: pieces of the body's own edge lie within the
        # radius of the core; a piece reaching further out (the table) is not body.
        near = dilate_disk(core, radius)
        rest, count = ndimage.label(candidate & ~core)
        is_edge = np.ones(count + 1, dtype=bool)
        is_edge[rest[~near]] = False
        is_edge[0] = False
        return fill_holes_2d(core | by_slabs(lambda slab: is_edge[slab], rest))

    @staticmethod
    def _full_resolution(values: np.ndarray, factor: int, body: np.ndarray, right: np.ndarray,
                         left: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
        """The label map at the series' resolution, and the box holding its lung voxels.
        Only that box needs the full-resolution HU: elsewhere the coarse labels hold."""
        d, h, w = values.shape
        coarse = np.zeros(body.shape, dtype=np.uint8)
        coarse[body] = BODY
        coarse[right] = RIGHT_LUNG
        coarse[left] = LEFT_LUNG
        labelmap = _upsample(coarse, factor, (h, w))
        found = bounding_box(right | left)
        if found is None:
            return labelmap, (slice(0, 0),) * 3
        zs, ys, xs = found
        box = (zs, slice(ys.start * factor, min(ys.stop * factor, h)),
               slice(xs.start * factor, min(xs.stop * factor, w)))
        inside = labelmap[box]
        # Boundary voxels the coarse grid called lung but that are tissue go to the body.
        inside[(inside >= RIGHT_LUNG) & (values[box] >= -400)] = BODY
        for label in (RIGHT_LUNG, LEFT_LUNG):  # vessels enclosed by lung are lung
            holes = holes_2d(inside == label)
            if holes is not None:
                region = inside[holes[0]]
                region[holes[1] & (region == BODY)] = label
        return labelmap, box

    def _measure(self, values: np.ndarray, labelmap: np.ndarray, lungs_box: tuple[slice, ...],
                 volume: Volume) -> Prediction:
        voxel_ml = volume.voxel_volume_ml
        kernel, thickness = volume.convolution_kernel, volume.slice_thickness or volume.spacing[0]
        kernel_problem = kernel_concern(kernel)
        thick = thickness > self.max_reliable_slice_thickness_mm
        thickness_problem = (f"{thickness:g} mm slices (density indices reliable up to "
                             f"{self.max_reliable_slice_thickness_mm:g} mm)") if thick else ""
        # %LAA-950 depends on the kernel (sharp kernels spread noise below -950 HU) and on
        # partial volume; the mean density on partial volume only.
        laa_problems = [p for p in (kernel_problem, thickness_problem) if p]
        laa_reliable = not laa_problems
        laa_note = "" if laa_reliable else "not reliable: " + "; ".join(laa_problems)
        density_note = f"not reliable: {thickness_problem}" if thick else ""
        labels, lung_values = labelmap[lungs_box], values[lungs_box]
        measurements, laa_total, lung_total = [], 0, 0
        for side, label in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
            voxels = lung_values[labels == label]
            count = int(voxels.size)
            if count == 0:
                raise LungSegmentationError(f"no {side} lung found")
            low = int((voxels < -950).sum())
            laa_total, lung_total = laa_total + low, lung_total + count
            measurements += [
                Measurement(f"{side} lung volume", count * voxel_ml),
                Measurement(f"{side} lung mean density", float(voxels.mean()), not thick, density_note),
                Measurement(f"{side} lung LAA-950", 100.0 * low / count, laa_reliable, laa_note),
            ]
        laa = 100.0 * laa_total / lung_total
        if laa_reliable:
            finding = Finding("emphysema suspected", min(1.0, laa / (2 * self.emphysema_threshold_pct)),
                              Assessment.of(laa > self.emphysema_threshold_pct))
        else:  # could not judge: never "absent" (and never a reason to lower a priority)
            finding = Finding("emphysema suspected", None, Assessment.INDETERMINATE,
                              f"%LAA-950 {laa_note}")
        return Prediction(
            labelmap=labelmap,
            measurements=measurements,
            findings=[finding],
            provenance={"convolution_kernel": kernel, "kernel_class": str(kernel_class(kernel)),
                        "slice_thickness_mm": thickness,
                        "laa950_both_lungs_pct": laa, "laa950_reliable": laa_reliable,
                        "laa950_note": laa_note},
        )
