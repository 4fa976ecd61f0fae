"""Reconstruction kernels: how sharp a Convolution Kernel (0018,1210) value is.

Quantitative lung CT (%LAA-950 above all) depends on the kernel: sharp kernels spread
noise into very low values and raise the emphysema index by several points (about 7
points between the smooth and the sharp kernel of the same scan in COPDGene data,
Gallardo-Estrella et al., Eur Radiol 2016;26:478). Density indices are reliable on
smooth and standard (soft-tissue) kernels only. Routing prefers smooth kernels and
models flag results from sharp ones.

Where the classes come from:

- **Siemens** (B/Br/Bf/Bv/H/Hr/I/Qr/D..., e.g. B30f, Br40d, I31f, Qr40, Bl57): the two
  digits are the sharpness on Siemens' own scale (10 very smooth, 20 smooth, 30
  medium smooth, 40 medium, 50 medium sharp, 60 sharp, 70 very sharp, 80 ultra sharp;
  the same scale for the iterative Br/I/Qr kernels). The COPDGene protocol
  (Regan et al., COPD 2010;7:32) reconstructs Siemens scans with B31f as the standard
  kernel and B45f as the sharp one: medium (B40, Br40, I40) is standard here, 45 and
  above sharp. The letters Bl (lung) mark sharp kernels whatever their number.
- **GE**: SOFT and STANDARD are smooth/standard (COPDGene's standard GE kernel);
  DETAIL, CHEST, LUNG, BONE, BONEPLUS, EDGE, ULTRA are sharp (COPDGene's sharp GE
  kernel is LUNG/BONE).
- **Philips**: A, B, C (and UA/UB/UC) smooth to standard, B being COPDGene's standard;
  D, E, L (lung), Y* (YA-YD, enhanced) sharp.
- **Canon/Toshiba**: FC01-FC49 body and head kernels (FC10/FC18 body standard), FC50
  and above lung and bone kernels (FC51/FC52/FC55 lung, FC8x bone): sharp.
- Names with SOFT/SMOOTH/STANDARD/BODY or SHARP/LUNG/BONE/EDGE (United Imaging, AiCE
  and other deep-learning reconstructions) are classed by those words.

Anything else is unknown: density indices are then marked not reliable rather than
guessed. A site whose kernels are not here should add them (and say so in an issue).
"""

from __future__ import annotations

import re
from enum import StrEnum


class KernelClass(StrEnum):
    SMOOTH = "smooth"
    STANDARD = "standard"
    SHARP = "sharp"
    UNKNOWN = "unknown"


# Named kernels (GE, Philips, generic words): a sharpness rank on Siemens' scale / 10.
_NAMED_KERNELS = {
    "SOFT": 2.0, "SMOOTH": 2.0, "STANDARD": 3.0, "STND": 3.0, "STD": 3.0, "BODY": 3.0,
    "DETAIL": 5.0, "CHEST": 5.0, "LUNG": 6.0, "BONE": 6.5, "BONEPLUS": 7.0, "EDGE": 7.0,
    "ULTRA": 8.0, "SHARP": 6.0,
    "A": 2.0, "B": 3.0, "C": 3.5, "UA": 2.0, "UB": 3.0, "UC": 3.5,
    "D": 5.0, "E": 6.0, "L": 6.0, "YA": 5.0, "YB": 6.0, "YC": 6.5, "YD": 7.0,
}
#: Words looked for inside other names (B_SOFT_B, LUNG_SHARP), sharp ones first.
_WORDS = tuple((word, _NAMED_KERNELS[word]) for word in (
    "BONE", "LUNG", "SHARP", "EDGE", "DETAIL", "SOFT", "SMOOTH", "STANDARD", "STND", "BODY"))
#: Below this rank a kernel is smooth, up to SHARP_FROM (excluded) standard, then sharp.
SMOOTH_BELOW = 3.0
SHARP_FROM = 4.5


def kernel_sharpness(kernel: str | None) -> float | None:
    """A sharpness rank of a Convolution Kernel value on Siemens' scale / 10 (B30 -> 3.0),
    or None when the value is not one this table knows."""
    if not kernel:
        return None
    first = kernel.split("\\")[0].strip().upper()
    if first in _NAMED_KERNELS:
        return _NAMED_KERNELS[first]
    canon = re.fullmatch(r"FC(\d{2})", first)
    if canon:  # Canon/Toshiba
        number = int(canon.group(1))
        return 3.0 if number < 50 else 6.0
    siemens = re.fullmatch(r"([A-Z]{1,2})(\d{2})[A-Z]?(\d)?", first)
    if siemens:
        letters, number = siemens.group(1), int(siemens.group(2))
        if letters == "BL":  # Siemens lung kernels
            return max(number / 10.0, SHARP_FROM)
        return number / 10.0
    for word, rank in _WORDS:
        if word in first:
            return rank
    return None


def kernel_class(kernel: str | None) -> KernelClass:
    rank = kernel_sharpness(kernel)
    if rank is None:
        return KernelClass.UNKNOWN
    if rank < SMOOTH_BELOW:
        return KernelClass.SMOOTH
    return KernelClass.STANDARD if rank < SHARP_FROM else KernelClass.SHARP


def kernel_concern(kernel: str | None) -> str:
    """Why density indices from this kernel are not reliable ("" when they are)."""
    found = kernel_class(kernel)
    if found is KernelClass.SHARP:
        return f"sharp reconstruction kernel {kernel}"
    if found is KernelClass.UNKNOWN:
        return f"reconstruction kernel {kernel} not in the kernel table" if kernel else "reconstruction kernel unknown"
    return ""

