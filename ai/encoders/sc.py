"""Key images for archives and viewers that cannot show a SEG: a Secondary Capture
series with the segments' outlines drawn on the source slices where each segment is
largest, a legend, and a banner saying the images are derived and not for diagnosis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy import ndimage

from ai.encoders.identity import MANUFACTURER, SOFTWARE_VERSION, ResultIdentity
from ai.encoders.maps import maps_of
from ai.encoders.seg import PALETTE
from ai.labelmap import LabelMap
from ai.protocol import Detection, Finding, MapKind, MapSpec, Measurement, Outputs

#: The source slice behind label map slice ``i``, in modality units (HU for CT).
SliceValues = Callable[[int], np.ndarray]

BANNER = "AI RESULT - DERIVED IMAGE - NOT FOR DIAGNOSTIC USE"
MAX_KEY_IMAGES = 6
LESION_COLOUR = (255, 160, 0)


@dataclass(frozen=True)
class LesionMark:
    """A reported lesion as drawn on one slice: its number in the SR, and the box (in
    pixels: column and row from, to) of its ellipse's cross-section there."""

    number: int
    detection: Detection
    box: tuple[float, float, float, float]


def lesion_marks(labelmap: LabelMap, detections: Sequence[Detection]) -> dict[int, list[LesionMark]]:
    """Per slice, the lesions to mark on it: each on the slice nearest its centre, as
    the cross-section of its ellipse (a point as a 5 mm circle). ``detections`` are the
    reported ones, numbered in order as in the SR."""
    inverse = np.linalg.inv(labelmap.affine_lps())
    slices = labelmap.array.shape[0]
    marks: dict[int, list[LesionMark]] = {}
    for number, detection in enumerate(detections, start=1):
        column, row, index = (inverse @ np.array([*detection.centre, 1.0]))[:3]
        k = int(round(index))
        if not 0 <= k < slices:
            continue
        diameters = np.array(detection.diameters_mm or (5.0, 5.0, 5.0))
        # Half-extent of the ellipsoid along each voxel axis (axis-aligned in patient space).
        half = 0.5 * np.abs(labelmap.direction.T @ diameters)
        across = (k - index) * labelmap.spacing[0]
        shrink = np.sqrt(max(0.0, 1.0 - (across / max(half[2], 1e-6)) ** 2)) if half[2] else 1.0
        rx = max(2.0, half[0] * shrink / labelmap.spacing[2])
        ry = max(2.0, half[1] * shrink / labelmap.spacing[1])
        marks.setdefault(k, []).append(LesionMark(number, detection, (column - rx, row - ry, column + rx, row + ry)))
    return marks


def key_slices(labelmap: np.ndarray, labels: Sequence[int], most: int = MAX_KEY_IMAGES) -> list[int]:
    """For each label present, the slice where it covers the most pixels (one image per
    label, shared where two labels peak on the same slice), in slice order."""
    chosen: list[int] = []
    for label in labels:
        area = (labelmap == label).sum(axis=(1, 2))
        if area.max() > 0 and int(area.argmax()) not in chosen:
            chosen.append(int(area.argmax()))
    return sorted(chosen[:most])


def _grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = window
    low = centre - width / 2
    scaled = (values.astype(np.float32) - low) / max(width, 1.0) * 255.0
    grey: np.ndarray = np.clip(scaled, 0, 255).astype(np.uint8)
    return grey


def window_of(source: Dataset, values: np.ndarray) -> tuple[float, float]:
    if "WindowCenter" in source and "WindowWidth" in source:
        def first(value: Any) -> float:  # one value, or the first of several windows
            return float(value[0] if isinstance(value, MultiValue) else value)
        return first(source.WindowCenter), first(source.WindowWidth)
    low, high = np.percentile(values, (1, 99))
    return float(low + high) / 2, float(max(high - low, 1.0))


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (0020,0020) from Image Orientation (Patient): the directions
    of the rows and of the columns, e.g. ("L", "P") for an axial slice."""
    cosines = [float(v) for v in source.get("ImageOrientationPatient", (1, 0, 0, 0, 1, 0))]

    def letters(vector: Sequence[float]) -> str:
        names = (("R", "L"), ("A", "P"), ("F", "H"))
        axes = sorted(range(3), key=lambda a: -abs(vector[a]))
        return "".join(names[a][vector[a] > 0] for a in axes if abs(vector[a]) > 0.25) or "L"

    return letters(cosines[:3]), letters(cosines[3:])


def result_lines(outputs: Outputs, measurements: Sequence[Measurement], findings: Sequence[Finding],
                 labels_shown: Sequence[int] | None = None) -> list[str]:
    """The values a key image carries, one line per segment (its measurements, each
    marked when not reliable) and per finding (present, absent or indeterminate)."""
    values = {m.name: m for m in measurements}
    lines = []
    for spec in outputs.segments:
        if labels_shown is not None and spec.label not in labels_shown:
            continue
        own = [_short(values[m.name], m.unit.value, spec.name) for m in outputs.measurements
               if m.segment == spec.label and m.name in values]
        if own:
            lines.append(f"{spec.name}: " + ", ".join(own))
    lines += [_short(values[m.name], m.unit.value, "") for m in outputs.measurements
              if m.segment is None and m.name in values]
    notes = dict.fromkeys((m.note or "reason not given").removeprefix("not reliable: ")
                          for m in measurements if not m.reliable)
    lines += [f"* not reliable: {note}" for note in notes]
    lines += [f.describe() for f in findings]
    return lines


def _short(measured: Measurement, unit: str, segment_name: str) -> str:
    """"volume 3177 mL", "LAA-950 14.0 %*" (* not reliable): the segment's name, which
    the line starts with, left out of the measurement's."""
    name = measured.name
    if segment_name and name.lower().startswith(segment_name.lower()):
        name = name[len(segment_name):].strip()
    return measured.brief(unit, name)


def draw_key_image(values: np.ndarray, labels: np.ndarray, outputs: Outputs, window: tuple[float, float],
                   caption: str, lines: Sequence[str] = (), lesions: Sequence[LesionMark] = ()) -> np.ndarray:
    """One RGB key image: the slice in ``window``, every segment's outline in its colour,
    the banner at the top; at the bottom the legend (each segment with ``lines`` that
    start with its name), the other ``lines`` and ``caption``."""
    rgb = np.repeat(_grey(values, window)[..., None], 3, axis=2)
    legend = []
    rest = list(lines)
    for index, spec in enumerate(outputs.segments):
        mask = labels == spec.label
        if not mask.any():
            continue
        colour = PALETTE[index % len(PALETTE)]
        outline = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
        rgb[outline] = colour
        own = next((line for line in rest if line.startswith(spec.name + ":")), spec.name)
        if own in rest:
            rest.remove(own)
        legend.append((own, colour))
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(10, rgb.shape[0] // 40)
    font = ImageFont.load_default(size=size)
    for mark in lesions:
        x0, y0, x1, y1 = mark.box
        draw.ellipse((x0, y0, x1, y1), outline=LESION_COLOUR, width=max(1, rgb.shape[0] // 256))
        draw.text((x1 + 2, y0 - size), str(mark.number), fill=LESION_COLOUR, font=font)
        size_text = " x ".join(f"{d:.1f}" for d in mark.detection.diameters_mm) + " mm, " \
            if mark.detection.diameters_mm else ""
        legend.append((f"{mark.number}: {mark.detection.name}, {size_text}score {mark.detection.score:.2f}",
                       LESION_COLOUR))
    _frame(draw, rgb.shape, font, size, (BANNER, (255, 255, 0)),
           legend + [(line, (255, 255, 255)) for line in rest] + [(caption, (200, 200, 200))])
    return np.asarray(image)


def _frame(draw: ImageDraw.ImageDraw, shape: tuple[int, ...], font: Any, size: int,
           banner: tuple[str, tuple[int, int, int]], texts: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    """The banner on a black strip at the top, ``texts`` (each in its colour) on one
    at the bottom."""
    height, width = shape[0], shape[1]
    draw.rectangle((0, 0, width, size + 6), fill=(0, 0, 0))
    draw.text((4, 3), _fit(draw, banner[0], font, width - 8), fill=banner[1], font=font)
    y = height - len(texts) * (size + 4) - 4
    draw.rectangle((0, y - 2, width, height), fill=(0, 0, 0))
    for text, colour in texts:
        draw.text((4, y), _fit(draw, text, font, width - 8), fill=colour, font=font)
        y += size + 4


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text``, shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _key_image(identity: ResultIdentity, source: Dataset, pixels: np.ndarray, sop_instance_uid: str,
               number: int, frame_number: int) -> hd.sc.SCImage:
    """A Secondary Capture of ``pixels`` (RGB) drawn on ``source``'s slice (frame
    ``frame_number`` of a multi-frame source), in the key images' series."""
    spacing = source.get("PixelSpacing")
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=identity.uid("sc-series"),
        series_number=identity.series_number(3),
        sop_instance_uid=sop_instance_uid,
        instance_number=number,
        manufacturer=MANUFACTURER,
        # highdicom annotates pixel_spacing as tuple[int, int], yet means millimetres.
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,  # type: ignore[arg-type]
        patient_orientation=patient_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        content_date=identity.created.date(),
        content_time=identity.created.time(),
        series_date=identity.created.date(),
        series_time=identity.created.time(),
    )
    image.SeriesDescription = identity.series_description("KEY IMAGES")
    # Every Patient and Study attribute of the source, as the SEG and SR carry them
    # (dcentvfy: the objects of a study must agree on their patient and study).
    image.copy_patient_and_study_information(source)
    # Type 2C: the source's, else empty (dciodvfy holds an absent one an error in SC).
    image.Laterality = source.get("Laterality", "")
    image.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    image.BurnedInAnnotation = "YES"
    image.SoftwareVersions = [SOFTWARE_VERSION, identity.model_version]  # type: ignore[assignment]  # VR LO, multi-valued
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        reference.ReferencedFrameNumber = int(frame_number)
    image.SourceImageSequence = [reference]
    return image


def encode_key_images(
    identity: ResultIdentity,
    outputs: Outputs,
    labelmap: LabelMap,
    sources: Sequence[Dataset],
    slice_values: SliceValues,
    measurements: Sequence[Measurement] = (),
    findings: Sequence[Finding] = (),
    detections: Sequence[Detection] = (),
) -> list[hd.sc.SCImage]:
    """The key images of one prediction (none when no segment has a voxel and no lesion
    is reported), with the values measured on each segment shown and their
    reliability, and each reported lesion (``detections``, numbered as in the SR)
    outlined on the slice nearest its centre. ``slice_values(i)`` gives the label map's
    slice ``i`` of the source in modality units (HU for CT); ``sources`` are the
    series' headers."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    images = []
    labels = labelmap.array
    marks = lesion_marks(labelmap, detections)
    chosen = key_slices(labels, [s.label for s in outputs.segments])
    chosen = sorted(set(chosen) | set(sorted(marks)[:max(0, MAX_KEY_IMAGES - len(chosen))]))
    for number, index in enumerate(chosen, start=1):
        source = by_uid[labelmap.sop_instance_uids[index]]
        values = slice_values(index)
        window = outputs.display_window or window_of(source, values)
        caption = f"{identity.model} {identity.model_version} - slice {index + 1}/{labels.shape[0]}"
        shown = sorted(set(np.unique(labels[index]).tolist()) - {0})
        pixels = draw_key_image(values, labels[index], outputs, window, caption,
                                result_lines(outputs, measurements, findings, shown), marks.get(index, ()))
        image = _key_image(identity, source, pixels, identity.uid(f"sc-instance-{index}"), number,
                           labelmap.frame_numbers[index])
        image.ImageComments = "AI outlines on a source slice; derived image, not for diagnostic use"
        image.DerivationDescription = f"Outlines drawn by {identity.model} {identity.model_version}"[:1024]
        images.append(image)
    return images


EXPLANATION_BANNER = "AI EXPLANATION - WHERE THE MODEL LOOKED - NOT A FINDING"


def explanation_slice(values: np.ndarray) -> int:
    """The slice where an explanation map carries the most weight."""
    return int(np.asarray(values, dtype=np.float64).sum(axis=(1, 2)).argmax())


def draw_explanation(values: np.ndarray, fractions: np.ndarray, window: tuple[float, float],
                     caption: str, lines: Sequence[str] = ()) -> np.ndarray:
    """One RGB image: the slice in ``window`` with the explanation map (0..1) over it
    from red to yellow (transparent below 0.1), the explanation banner at the top and
    ``lines`` and ``caption`` at the bottom."""
    grey = np.repeat(_grey(values, window)[..., None], 3, axis=2).astype(np.float32)
    v = np.clip(fractions.astype(np.float32), 0.0, 1.0)
    # red (weak) to yellow (strong): never white or grey, so that it cannot pass for tissue
    heat = np.stack([np.ones_like(v), v, np.zeros_like(v)], axis=-1) * 255
    alpha = np.where(v >= 0.1, 0.25 + 0.35 * v, 0.0)[..., None]
    rgb = (grey * (1 - alpha) + heat * alpha).astype(np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(10, rgb.shape[0] // 40)
    font = ImageFont.load_default(size=size)
    _frame(draw, rgb.shape, font, size, (EXPLANATION_BANNER, (0, 255, 255)),
           [(line, (255, 255, 255)) for line in lines] + [(caption, (200, 200, 200))])
    return np.asarray(image)


def explanation_lines(spec: MapSpec, findings: Sequence[Finding]) -> list[str]:
    """What an explanation image says: which finding it explains, how it was made."""
    finding = next((f for f in findings if f.name == spec.of), None)
    about = finding.describe() if finding else spec.of
    return [f"explains: {about}", f"method: {spec.method or 'supplied by the model'}"]


def encode_explanation_images(
    identity: ResultIdentity,
    outputs: Outputs,
    labelmap: LabelMap,
    sources: Sequence[Dataset],
    slice_values: SliceValues,
    findings: Sequence[Finding] = (),
    first_number: int = 1,
) -> list[hd.sc.SCImage]:
    """One overlay key image per explanation map, on the slice where it weighs most."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    images = []
    for number, spec in enumerate(maps_of(outputs, labelmap, MapKind.EXPLANATION), start=first_number):
        index = explanation_slice(labelmap.maps[spec.name])
        source = by_uid[labelmap.sop_instance_uids[index]]
        values = slice_values(index)
        window = outputs.display_window or window_of(source, values)
        caption = f"{identity.model} {identity.model_version} - slice {index + 1}/{labelmap.array.shape[0]}"
        pixels = draw_explanation(values, labelmap.fraction(spec.name)[index], window, caption,
                                  explanation_lines(spec, findings))
        image = _key_image(identity, source, pixels, identity.uid(f"sc-explanation-{spec.name}"), number,
                           labelmap.frame_numbers[index])
        image.ImageComments = f"Explanation of {spec.of} by {identity.model}: where the model looked; " \
                              "not a finding, not for diagnostic use"
        image.DerivationDescription = f"Explanation map ({spec.method or 'model-supplied'}) " \
                                      f"by {identity.model} {identity.model_version}"[:1024]
        images.append(image)
    return images
