"""Reference segmentations the tests make by a method independent of the node's models:
lungs as the air inside the body (a fixed HU threshold, connected components with
scipy), split into right and left at the body's midline, written as a DICOM SEG with
highdicom that references the series' own images."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

LUNG = hd.sr.CodedConcept("39607008", "SCT", "Lung")
ANATOMY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
RIGHT = hd.sr.CodedConcept("24028007", "SCT", "Right")
LEFT = hd.sr.CodedConcept("7771000", "SCT", "Left")


def series_datasets(folder: Path, series_instance_uid: str | None = None) -> list[Dataset]:
    """The images of one series under ``folder`` (the first found, or the one named),
    from the feet up."""
    found = [dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    found = [d for d in found if getattr(d, "Modality", "") != "SEG"]
    uid = series_instance_uid or str(found[0].SeriesInstanceUID)
    chosen = [d for d in found if str(d.SeriesInstanceUID) == uid]
    return sorted(chosen, key=lambda d: float(d.ImagePositionPatient[2]))


def lungs_by_threshold(images: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) boolean masks: voxels under -400 HU inside the body (the body is
    everything over -500 HU with its holes filled, slice by slice), the two largest
    3D components, split at the body's midline column."""
    hu = np.stack([d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1))
                   + float(getattr(d, "RescaleIntercept", 0)) for d in images])
    body = np.stack([ndimage.binary_fill_holes(s > -500) for s in hu])
    labels, count = ndimage.label(body)
    if count > 1:  # the table and the like: keep the largest piece
        sizes = ndimage.sum(body, labels, range(1, count + 1))
        body = labels == (int(np.argmax(sizes)) + 1)
    air = (hu < -400) & body
    labels, count = ndimage.label(air)
    sizes = ndimage.sum(air, labels, range(1, count + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    lungs = np.isin(labels, keep)
    middle = int(round(np.nonzero(body.any(axis=(0, 1)))[0].mean()))
    columns = np.arange(hu.shape[2])[None, None, :]
    # Rows along +x (patient's left) in these axial images: the right lung is at low columns.
    return lungs & (columns < middle), lungs & (columns >= middle)


def write_reference_seg(images: list[Dataset], right: np.ndarray, left: np.ndarray, path: Path,
                        labels: tuple[str, str] = ("Right lung", "Left lung")) -> Dataset:
    """A binary SEG of the two lungs on ``images``, as a reader's workstation makes it."""
    descriptions = []
    for number, (label, side) in enumerate(zip(labels, (RIGHT, LEFT), strict=True), start=1):
        d = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=ANATOMY,
            segmented_property_type=LUNG, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [side]
        descriptions.append(d)
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=np.stack([right, left], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=990, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="Reader workstation", manufacturer_model_name="Threshold", software_versions="1",
        device_serial_number="REF1", omit_empty_frames=True)
    seg.save_as(path)
    return seg
