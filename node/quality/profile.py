"""The case profile kept with each prediction: what a model saw, in the terms subgroups
and drift are about. Scanner, protocol and image statistics, and the patient group
(sex, age band) without identifiers: no name, ID, birth date or exact age is kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from ai.kernels import kernel_class
from ai.volume import Volume

#: Age bands (years, lower bound inclusive); a hospital's usual reporting groups.
AGE_BANDS: tuple[tuple[int, str], ...] = ((0, "0-17"), (18, "18-39"), (40, "40-64"), (65, "65-79"), (80, "80+"))
#: Slice thickness bands (mm, upper bound inclusive).
THICKNESS_BANDS: tuple[tuple[float, str], ...] = ((1.5, "<=1.5 mm"), (3.0, "1.5-3 mm"), (float("inf"), ">3 mm"))

#: The subgroup attributes of a profile, with the names pages show.
SUBGROUPS: dict[str, str] = {
    "manufacturer": "Scanner manufacturer",
    "scanner": "Scanner model",
    "kernel": "Reconstruction kernel",
    "thickness_band": "Slice thickness",
    "contrast": "Contrast",
    "sex": "Sex",
    "age_band": "Age band",
    "department": "Requesting department",
}

_SAMPLE_VOXELS = 200_000


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value in (None, ""):
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit] or None


def age_years(ds: Dataset) -> float | None:
    """Patient's Age (``045Y``, ``006M``, ``003W``, ``010D``) in years, or from the birth
    and study dates; None when neither is usable."""
    age = _text(ds, "PatientAge", 8)
    if age:
        match = re.fullmatch(r"(\d{1,3})([DWMY])", age.upper())
        if match:
            return int(match[1]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match[2]]
    birth, study = _text(ds, "PatientBirthDate", 8), _text(ds, "StudyDate", 8)
    if birth and study and birth.isdigit() and study.isdigit() and len(birth) == len(study) == 8:
        years = int(study[:4]) - int(birth[:4]) - ((study[4:]) < (birth[4:]))
        return float(years) if 0 <= years < 130 else None
    return None


def age_band(years: float | None) -> str | None:
    if years is None:
        return None
    band = AGE_BANDS[0][1]
    for lower, name in AGE_BANDS:
        if years >= lower:
            band = name
    return band


def thickness_band(thickness: float | None) -> str | None:
    if thickness is None:
        return None
    return next(name for upper, name in THICKNESS_BANDS if thickness <= upper)


def _contrast(ds: Dataset) -> str | None:
    """"with" or "without" contrast, from Contrast/Bolus Agent (0018,0010): present in
    the header as a value: with; present but empty: without; absent: unknown."""
    if "ContrastBolusAgent" not in ds:
        return None
    agent = _text(ds, "ContrastBolusAgent")
    return "without" if agent is None or agent.upper() in ("NONE", "NO", "N") else "with"


def _sex(ds: Dataset) -> str | None:
    sex = (_text(ds, "PatientSex", 4) or "").upper()
    return {"M": "M", "F": "F", "O": "O"}.get(sex)


def _department(ds: Dataset) -> str | None:
    """The requesting service: Requesting Service (0032,1033) of the request, else of
    the Request Attributes Sequence, else Institutional Department Name."""
    found = _text(ds, "RequestingService")
    if not found:
        try:
            for item in ds.get("RequestAttributesSequence") or []:
                found = found or _text(item, "RequestingService")
        except Exception:
            found = None
    return found or _text(ds, "InstitutionalDepartmentName")


def image_statistics(volume: Volume) -> dict[str, float]:
    """Intensity statistics of the volume in its modality's units (HU for CT), over a
    fixed sample of voxels (the same for every volume of a size, and cheap); for CT only
    voxels above -950 HU (the patient, not the air around them) count."""
    flat = volume.array.reshape(-1)
    step = max(1, flat.size // _SAMPLE_VOXELS)
    sample = flat[::step]
    if volume.modality == "CT":
        sample = sample[sample > -950]
    if sample.size == 0:
        return {}
    p5, p50, p95 = np.percentile(sample, [5, 50, 95])
    return {"mean": round(float(sample.mean()), 2), "p5": round(float(p5), 2),
            "p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def case_profile(header: Dataset, volume: Volume) -> dict[str, Any]:
    """The profile of the case ``volume`` (one series) was read from; ``header`` is one
    of its images (pixel data not needed)."""
    return {
        "manufacturer": _text(header, "Manufacturer"),
        "scanner": _text(header, "ManufacturerModelName"),
        "kernel": volume.convolution_kernel,
        "kernel_class": str(kernel_class(volume.convolution_kernel)),
        "slice_thickness_mm": volume.slice_thickness,
        "thickness_band": thickness_band(volume.slice_thickness or volume.spacing[0]),
        "pixel_spacing_mm": round(float(volume.spacing[1]), 4),
        "contrast": _contrast(header),
        "sex": _sex(header),
        "age_band": age_band(age_years(header)),
        "department": _department(header),
        "intensity": image_statistics(volume),
    }


def profile_of_files(first_file: Path, volume: Volume) -> dict[str, Any]:
    """:func:`case_profile` with the header read from ``first_file``."""
    return case_profile(dcmread(first_file, stop_before_pixels=True), volume)
