"""The kernel table: which reconstruction kernels density indices can be trusted on."""

from __future__ import annotations

import pytest

from ai.kernels import KernelClass, kernel_class, kernel_concern


@pytest.mark.parametrize(("kernel", "expected"), [
    # Siemens: two digits on Siemens' sharpness scale; COPDGene: B31f standard, B45f sharp
    ("B20f", KernelClass.SMOOTH), ("B30f", KernelClass.STANDARD), ("B31f", KernelClass.STANDARD),
    ("B40f", KernelClass.STANDARD), ("Br40d", KernelClass.STANDARD), ("I31f\\3", KernelClass.STANDARD),
    ("Qr40", KernelClass.STANDARD), ("B45f", KernelClass.SHARP), ("B70f", KernelClass.SHARP),
    ("Br64d", KernelClass.SHARP), ("Bl57d", KernelClass.SHARP), ("I70f", KernelClass.SHARP),
    # GE
    ("SOFT", KernelClass.SMOOTH), ("STANDARD", KernelClass.STANDARD), ("LUNG", KernelClass.SHARP),
    ("BONE", KernelClass.SHARP), ("DETAIL", KernelClass.SHARP),
    # Philips
    ("B", KernelClass.STANDARD), ("C", KernelClass.STANDARD), ("D", KernelClass.SHARP),
    ("L", KernelClass.SHARP), ("YB", KernelClass.SHARP),
    # Canon/Toshiba
    ("FC10", KernelClass.STANDARD), ("FC18", KernelClass.STANDARD), ("FC51", KernelClass.SHARP),
    ("FC86", KernelClass.SHARP),
    # names with words, unknown values
    ("B_SOFT_B", KernelClass.SMOOTH), ("LUNG_SHARP", KernelClass.SHARP),
    ("XYZ", KernelClass.UNKNOWN), (None, KernelClass.UNKNOWN),
])
def test_vendor_kernels(kernel: str | None, expected: KernelClass) -> None:
    assert kernel_class(kernel) is expected


def test_concerns_name_the_kernel() -> None:
    assert kernel_concern("B40f") == ""
    assert kernel_concern("B70f") == "sharp reconstruction kernel B70f"
    assert kernel_concern("XYZ") == "reconstruction kernel XYZ not in the kernel table"
    assert kernel_concern(None) == "reconstruction kernel unknown"
