"""Series to volume on synthetic series (always) and the public edge cases (when present)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from ai.volume import NotAVolume, load_volume, volume_from_datasets
from tests.conftest import SHARED_DATA
from tests.synthetic import TEST_UID_ROOT, ct_slice


def _series(n: int = 5, step: float = 2.0, **changes: object) -> list:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    out = []
    for i in range(n):
        ds = ct_slice(study, series, i, size=16)
        ds.ImagePositionPatient = [-10.0, -20.0, 100.0 - i * step]  # sent head first, descending
        ds.RescaleIntercept = -1024
        out.append(ds)
    return out


def test_sorted_along_the_normal_with_geometry_and_hu() -> None:
    datasets = _series()
    shuffled = [datasets[i] for i in (3, 0, 4, 1, 2)]
    volume = volume_from_datasets(shuffled)
    assert volume.shape == (5, 16, 16)
    assert volume.spacing == (2.0, 0.7, 0.7)
    assert volume.origin == (-10.0, -20.0, 92.0)  # the lowest slice first
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    raw = datasets[4].pixel_array.astype(np.float32)
    np.testing.assert_array_equal(volume.array[0], raw - 1024)
    assert volume.sop_instance_uids[0] == datasets[4].SOPInstanceUID


@pytest.mark.parametrize(
    ("break_it", "reason"),
    [
        (lambda s: s[2].__setattr__("ImagePositionPatient", s[1].ImagePositionPatient), "share a position"),
        (lambda s: s.pop(2), "uneven slice spacing"),
        (lambda s: s[1].__setattr__("ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "different orientations"),
        (lambda s: [d.__setattr__("ImagePositionPatient", [-10.0, -20.0 + 2 * i, 100.0 - 4 * i])
                    for i, d in enumerate(s)], "gantry tilt"),
        (lambda s: s.__delitem__(slice(2, None)), r"only 2 slice\(s\)"),
        (lambda s: s[0].__delattr__("PixelSpacing"), "Pixel Spacing"),
        (lambda s: s[0].__setattr__("PixelData", b"\x00" * 10), "cannot be decoded"),
    ],
)
def test_not_a_volume_says_why(break_it, reason: str) -> None:
    datasets = _series()
    break_it(datasets)
    with pytest.raises(NotAVolume, match=reason):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume_from_datasets(datasets)


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"public sample {name} not found under {SHARED_DATA}")
    return path


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("gantrytilting/001", "gantry tilt of 14.0 degrees"),
        ("notavolume/001", "share a position"),
        ("slicecount/001", "only 2 slice"),
        ("sliceincrement/001", "uneven slice spacing"),
        # Tilted and with two increments: the tilt is named first, the spacing as well.
        ("sliceincrement/002", r"gantry tilt of 15.5 degrees.*; slice spacing also varies \(0.75 to 1.5 mm\)"),
        ("sliceorientation/001", "different orientations"),
    ],
)
def test_dicom2nifti_failing_cases(case: str, reason: str) -> None:
    folder = _shared("robustness/dicom2nifti_failing") / case
    with pytest.raises(NotAVolume, match=reason):
        load_volume(sorted(folder.glob("*.dcm")))


def test_every_decodable_transfer_syntax_gives_the_same_hu() -> None:
    folder = _shared("ct-slice-transfer-syntaxes")
    reference = load_volume([folder / "CTImage.dcm"], min_slices=1).array
    lossy = {"4.50", "4.51", "4.81", "4.91"}
    for path in sorted(folder.glob("CTImage.dcm_*")):
        ts = path.name.rsplit("1.2.840.10008.1.2.", 1)[-1].removesuffix(".dcm")
        if ts in ("4.53", "4.55"):
            with pytest.raises(NotAVolume, match="cannot be decoded"):
                load_volume([path], min_slices=1)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = load_volume([path], min_slices=1).array
        tolerance = 100 if ts in lossy else 0
        assert float(np.abs(array - reference).max()) <= tolerance, path.name


def test_enhanced_multiframe_ct() -> None:
    path = _shared("ct-enhanced") / "eCT_Supplemental.dcm"
    volume = load_volume([path], min_slices=2)
    assert volume.shape == (2, 512, 512) and sorted(volume.frame_numbers) == [1, 2]


def test_chest_ct_series() -> None:
    folder = _shared("ct-chest-tcia-a0001") / "series-soft-tissue-kernel"
    volume = load_volume(sorted(folder.glob("*.dcm")))
    assert volume.shape == (64, 512, 512) and volume.spacing[0] == 5.0
    assert volume.convolution_kernel == "B" and volume.array.min() >= -1024


@pytest.mark.parametrize(("allocated", "stored", "signed"), [
    (16, 16, True), (16, 12, True), (16, 12, False), (16, 16, False), (8, 8, False), (8, 6, True),
    (32, 32, True), (32, 20, False)])
def test_native_pixels_read_from_the_bytes_equal_pydicoms_pixel_array(allocated: int, stored: int,
                                                                       signed: bool) -> None:
    """The fast path gives pydicom's values, unused high bits included (set at random
    here: a scanner may leave anything in them), from both little-endian syntaxes
    and with the pad byte an odd-length 8-bit image carries."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from ai.volume import native_pixels

    rng = np.random.default_rng(allocated + stored)
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0, size=16)
        ds.Rows, ds.Columns = 15, 13  # odd: 8-bit pixel data gets a pad byte
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
        ds.PixelRepresentation = int(signed)
        raw = rng.integers(0, 2 ** allocated, size=15 * 13, dtype=np.uint64).astype(f"<u{allocated // 8}")
        ds.PixelData = raw.tobytes() + (b"\0" if len(raw.tobytes()) % 2 else b"")
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        read = dcmread(DicomBytesIO(buffer.getvalue()))
        fast = native_pixels(read)
        assert fast is not None
        expected = read.pixel_array
        assert fast.dtype == expected.dtype
        np.testing.assert_array_equal(fast, expected)


def test_native_pixels_leave_what_they_do_not_read_to_pydicom() -> None:
    from ai.volume import native_pixels

    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0, size=8)
    assert native_pixels(ds) is not None
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    assert native_pixels(ds) is None
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0, size=8)
    ds.NumberOfFrames = 2
    assert native_pixels(ds) is None
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0, size=8)
    ds.PixelData = ds.PixelData[:-2]  # short: pydicom says why
    assert native_pixels(ds) is None
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"  # big endian
    assert native_pixels(ds) is None
