"""Reconstruction kernels: how sharp a Convolution Kernel (0018,1210) value is.

Quantitative CT (lung density, emphysema index) depends on the kernel: sharp
kernels spread noise into very low values. Routing prefers smooth kernels and
models flag results from sharp ones.
"""

from __future__ import annotations

import re

# Reconstruction kernels by sharpness, from the vendors' naming. Higher is sharper.
_NAMED_KERNELS = {
    "SOFT": 1, "SMOOTH": 1, "STANDARD": 2, "STND": 2, "DETAIL": 4, "CHEST": 5, "LUNG": 6,
    "BONE": 6, "BONEPLUS": 7, "EDGE": 7, "SHARP": 6,
    # Philips single letters: A-C soft/standard, D-E sharp, L lung, Y* enhanced sharp
    "A": 1, "B": 2, "C": 3, "D": 5, "E": 6, "L": 6, "YA": 5, "YB": 6, "YC": 6, "YD": 7,
}


def kernel_sharpness(kernel: str | None) -> float:
    """A rough sharpness rank of a Convolution Kernel value (unknown: middle).

    Siemens (B30f, Br40d, Bl57, I70f) and Canon (FC03, FC51) carry the sharpness
    in their number; GE and Philips use names and letters.
    """
    if not kernel:
        return 3.0
    first = kernel.split("\\")[0].strip().upper()
    if first in _NAMED_KERNELS:
        return float(_NAMED_KERNELS[first])
    digits = re.search(r"(\d{2})", first)
    if digits:
        number = int(digits.group(1))
        if first.startswith("FC"):  # Canon: FC01-FC30 body, FC50+ lung/bone
            return 2.0 if number < 30 else 6.0
        return number / 10.0  # Siemens: B30 -> 3, B70 -> 7
    return 3.0


#: At or below this rank a kernel counts as smooth or standard (soft tissue, body).
SMOOTH_KERNEL_MAX = 3.5


def is_smooth_kernel(kernel: str | None) -> bool | None:
    """True for a smooth/standard kernel, False for a sharp one, None when unknown."""
    if not kernel:
        return None
    return kernel_sharpness(kernel) <= SMOOTH_KERNEL_MAX
