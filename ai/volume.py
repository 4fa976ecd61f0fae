"""Series to volume: stored DICOM images to a 3-D array with its patient geometry.

Accepts single-frame series and enhanced multi-frame objects, in every transfer
syntax the installed pydicom pixel handlers (pylibjpeg codecs) decode. What is not
a regular volume is refused with :class:`NotAVolume` and a reason a person can act
on: mixed orientations, duplicate positions, uneven or missing slices, gantry tilt,
differing image sizes, undecodable pixel data.

Geometry follows DICOM's patient coordinate system (LPS, millimetres): the array is
``(slices, rows, columns)``; ``direction`` has the row direction, the column
direction and the slice normal as its columns; ``origin`` is the centre of the
first voxel of the first slice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

# Tolerances: positions in mm, orientations as direction cosines.
_ORIENTATION_TOLERANCE = 1e-3
_SPACING_RELATIVE_TOLERANCE = 0.02  # 2 % of the slice spacing
_TILT_TOLERANCE_DEG = 0.5


class NotAVolume(ValueError):
    """The images do not form a regular 3-D volume; the message says why."""


@dataclass(frozen=True)
class Volume:
    """A 3-D image in patient space; ``array`` in modality units (HU for CT)."""

    array: np.ndarray  # (slices, rows, columns), float32
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    direction: np.ndarray  # 3x3: columns are row dir, column dir, slice normal
    modality: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_instance_uids: tuple[str, ...]  # per slice, in array order (repeats for multi-frame)
    frame_numbers: tuple[int, ...]  # per slice: 1-based frame in its instance
    convolution_kernel: str | None = None
    slice_thickness: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    #: The files it was read from (for models that take DICOM files, e.g. containers).
    files: tuple[str, ...] = ()

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def shape(self) -> tuple[int, int, int]:
        slices, rows, columns = self.array.shape
        return int(slices), int(rows), int(columns)

    def affine_lps(self) -> np.ndarray:
        return affine_lps(self.spacing, self.origin, self.direction)


def affine_lps(spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """The 4x4 voxel-to-patient (LPS, mm) matrix of a grid with ``spacing`` (slice, row,
    column), ``origin`` and ``direction`` as :class:`Volume` keeps them, for indices in
    (column, row, slice) order, the order NIfTI-style tools (MONAI, nnU-Net, ITK) use."""
    affine = np.eye(4)
    affine[:3, 0] = direction[:, 0] * spacing[2]
    affine[:3, 1] = direction[:, 1] * spacing[1]
    affine[:3, 2] = direction[:, 2] * spacing[0]
    affine[:3, 3] = origin
    return affine


@dataclass
class _Frame:
    position: np.ndarray
    orientation: np.ndarray  # 6 direction cosines
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    pixels: np.ndarray
    sop_instance_uid: str
    frame_number: int


def _floats(value: Any, n: int, what: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise NotAVolume(f"{what} is missing or not numeric") from None
    if out.shape != (n,):
        raise NotAVolume(f"{what} has {out.size} values, expected {n}")
    return out


#: Uncompressed little-endian transfer syntaxes: their pixel data is the array's bytes.
_NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}


def native_pixels(ds: Dataset) -> np.ndarray | None:
    """The pixels of a single-frame, single-sample image stored uncompressed in little
    endian, read straight from its bytes with the same values as ``pixel_array``
    (unused high bits cleared, or set from the sign bit, as pydicom does); None for
    anything else. pydicom's decoder pipeline takes about 0.5 ms per slice, a sixth
    of loading a 300-slice CT."""
    meta = ds.get("file_meta")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.PixelRepresentation) == 1
        single = int(ds.get("SamplesPerPixel", 1) or 1) == 1 and int(ds.get("NumberOfFrames", 1) or 1) == 1
    except (AttributeError, TypeError, ValueError):
        return None
    if not single or allocated not in (8, 16, 32) or not 0 < stored <= allocated or rows <= 0 or columns <= 0 \
            or str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    data = ds.PixelData
    if not isinstance(data, bytes) or len(data) < rows * columns * allocated // 8:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    pixels = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    if stored < allocated:
        shift = allocated - stored
        pixels = np.right_shift(np.left_shift(pixels, shift), shift)
    return pixels


def _pixels(ds: Dataset, name: str) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise NotAVolume(f"{name} has no pixel data")
    fast = native_pixels(ds)
    if fast is not None:
        return fast
    try:
        return ds.pixel_array
    except Exception as exc:
        ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.get("file_meta", {}) else "?"
        raise NotAVolume(
            f"pixel data of {name} cannot be decoded (transfer syntax {ts}: {type(exc).__name__})"
        ) from None


def _functional(ds: Dataset, frame_item: Dataset | None, sequence: str) -> Dataset | None:
    """An item of a functional group macro, per-frame first, then shared."""
    for source in (frame_item, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if source is not None and sequence in source and len(source[sequence].value):
            item: Dataset = source[sequence].value[0]
            return item
    return None


def _frames_of(ds: Dataset, name: str) -> list[_Frame]:
    pixels = _pixels(ds, name)
    frames_count = int(ds.get("NumberOfFrames", 1) or 1)
    uid = str(ds.SOPInstanceUID)
    if frames_count > 1 and "PerFrameFunctionalGroupsSequence" in ds:
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        out = []
        for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            position = _functional(ds, item, "PlanePositionSequence")
            orientation = _functional(ds, item, "PlaneOrientationSequence")
            measures = _functional(ds, item, "PixelMeasuresSequence")
            transform = _functional(ds, item, "PixelValueTransformationSequence")
            if position is None or orientation is None or measures is None:
                raise NotAVolume(f"{name} frame {index + 1} lacks its plane position, "
                                 "orientation or pixel spacing")
            spacing = _floats(measures.get("PixelSpacing"), 2, f"{name} Pixel Spacing")
            out.append(_Frame(
                _floats(position.get("ImagePositionPatient"), 3, f"{name} Image Position"),
                _floats(orientation.get("ImageOrientationPatient"), 6, f"{name} Image Orientation"),
                (spacing[0], spacing[1]),
                float(transform.get("RescaleSlope", 1) if transform else ds.get("RescaleSlope", 1)),
                float(transform.get("RescaleIntercept", 0) if transform else ds.get("RescaleIntercept", 0)),
                pixels[index], uid, index + 1,
            ))
        return out
    if frames_count > 1:
        raise NotAVolume(f"{name} is multi-frame without per-frame geometry")
    spacing = _floats(ds.get("PixelSpacing"), 2, f"{name} Pixel Spacing")
    return [_Frame(
        _floats(ds.get("ImagePositionPatient"), 3, f"{name} Image Position (Patient)"),
        _floats(ds.get("ImageOrientationPatient"), 6, f"{name} Image Orientation (Patient)"),
        (spacing[0], spacing[1]),
        float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0),
        pixels, uid, 1,
    )]


def _check_stacking(frames: list[_Frame], distance: np.ndarray, normal: np.ndarray) -> float:
    """The slice spacing of sorted frames, or :class:`NotAVolume` saying what is wrong.

    Gantry tilt is named first: a tilted head CT often has two slice increments too,
    and "uneven spacing" alone would hide why it cannot be stacked."""
    steps = np.diff(distance)
    if np.any(steps < 1e-3):
        raise NotAVolume(f"{int(np.sum(steps < 1e-3)) + 1} slices share a position (duplicates, "
                         "or several acquisitions in one series)")
    spacing = float(np.median(steps))
    uneven = bool(np.any(np.abs(steps - spacing) > _SPACING_RELATIVE_TOLERANCE * spacing))
    spread = f"{steps.min():.3g} to {steps.max():.3g} mm"
    stack = frames[-1].position - frames[0].position
    cos_tilt = abs(float(np.dot(stack, normal))) / float(np.linalg.norm(stack))
    tilt = math.degrees(math.acos(min(1.0, cos_tilt)))
    if tilt > _TILT_TOLERANCE_DEG:
        raise NotAVolume(f"gantry tilt of {tilt:.1f} degrees: slices are sheared, not stacked along "
                         "their normal" + (f"; slice spacing also varies ({spread})" if uneven else ""))
    if uneven:
        raise NotAVolume(f"uneven slice spacing ({spread}): missing slices or a varying increment")
    return spacing


def volume_from_datasets(datasets: Sequence[Dataset], min_slices: int = 3) -> Volume:
    """Assemble a volume; raises :class:`NotAVolume` with the reason."""
    if not datasets:
        raise NotAVolume("the series has no images")
    first = datasets[0]
    frames: list[_Frame] = []
    for ds in datasets:
        frames += _frames_of(ds, f"instance {ds.get('InstanceNumber', '?')}")
    if len(frames) < min_slices:
        raise NotAVolume(f"only {len(frames)} slice(s); a volume needs at least {min_slices}")

    orientation = frames[0].orientation
    if any(np.abs(f.orientation - orientation).max() > _ORIENTATION_TOLERANCE for f in frames):
        raise NotAVolume("the slices have different orientations (mixed planes)")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if not math.isclose(np.linalg.norm(normal), 1.0, abs_tol=1e-2):
        raise NotAVolume("Image Orientation (Patient) is not two orthogonal unit vectors")
    shapes = {f.pixels.shape for f in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise NotAVolume(f"the slices differ in size or are not single-plane images: {sorted(shapes)}")
    if len({f.pixel_spacing for f in frames}) != 1:
        raise NotAVolume("the slices have different pixel spacings")

    distance = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(distance, kind="stable")
    frames = [frames[i] for i in order]
    distance = distance[order]
    thickness = first.get("SliceThickness")
    thickness = float(thickness) if thickness not in (None, "") else None
    if len(frames) == 1:  # a single image (min_slices=1): its thickness is the spacing
        spacing = thickness or 1.0
    else:
        spacing = _check_stacking(frames, distance, normal)
    array = np.empty((len(frames), *frames[0].pixels.shape), dtype=np.float32)
    for i, f in enumerate(frames):
        if f.slope == 1:  # (CT) one pass in float32
            np.add(f.pixels, np.float32(f.intercept), out=array[i], dtype=np.float32, casting="unsafe")
        else:
            np.multiply(f.pixels, f.slope, out=array[i], casting="unsafe")
            array[i] += f.intercept
    row_spacing, col_spacing = frames[0].pixel_spacing
    kernel = first.get("ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)
    x, y, z = (float(v) for v in frames[0].position)
    return Volume(
        array=array,
        spacing=(spacing, float(row_spacing), float(col_spacing)),
        origin=(x, y, z),
        direction=np.column_stack([row, col, normal]),
        modality=str(first.get("Modality", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.FrameOfReferenceUID) if "FrameOfReferenceUID" in first else None,
        sop_instance_uids=tuple(f.sop_instance_uid for f in frames),
        frame_numbers=tuple(f.frame_number for f in frames),
        convolution_kernel=str(kernel) if kernel else None,
        slice_thickness=thickness,
    )


def load_volume(paths: Iterable[Path], min_slices: int = 3) -> Volume:
    """Read the files of one series and assemble its volume."""
    datasets = []
    paths = list(paths)
    for path in paths:
        try:
            datasets.append(dcmread(path))
        except Exception as exc:
            raise NotAVolume(f"{Path(path).name} cannot be read ({type(exc).__name__})") from None
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise NotAVolume(f"the files belong to {len(series)} series")
    return dataclasses.replace(volume_from_datasets(datasets, min_slices), files=tuple(str(p) for p in paths))
