from __future__ import annotations

import zlib

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from storage.header import InstanceTooLarge, InvalidInstance, read_header
from tests.synthetic import TEST_UID_ROOT, ct_slice, deflate_bomb


def _encode(ds, implicit: bool, little: bool = True) -> bytes:
    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = implicit, little
    write_dataset(buf, ds)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("ts", "implicit", "little"),
    [("1.2.840.10008.1.2", True, True), ("1.2.840.10008.1.2.1", False, True),
     ("1.2.840.10008.1.2.2", False, False)],
)
def test_reads_uids_in_each_encoding(ts: str, implicit: bool, little: bool) -> None:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    ds = ct_slice(study, series, 4, series_number=3)
    h = read_header(_encode(ds, implicit, little), ts)
    assert (h.study_instance_uid, h.series_instance_uid) == (study, series)
    assert (h.modality, h.series_number, h.instance_number) == ("CT", 3, 5)


def test_deflated() -> None:
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    raw = _encode(ds, False)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(raw) + compressor.flush()
    h = read_header(deflated, "1.2.840.10008.1.2.1.99")
    assert h.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_is_named(keyword: str) -> None:
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    delattr(ds, keyword)
    with pytest.raises(InvalidInstance, match=keyword):
        read_header(_encode(ds, True), "1.2.840.10008.1.2")


def test_garbage_is_invalid() -> None:
    with pytest.raises(InvalidInstance):
        read_header(b"\x08\x00\x16\x00\xff\xff\xff\x7f" + b"x" * 10, "1.2.840.10008.1.2")


def test_series_attributes_for_routing() -> None:
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    ds.ConvolutionKernel = ["B70f", "HEAD"]
    h = read_header(_encode(ds, True), "1.2.840.10008.1.2")
    assert (h.slice_thickness, h.convolution_kernel, h.orientation) == (1.0, "B70f\\HEAD", "AXIAL")


def test_plane_of() -> None:
    from storage.header import plane_of

    assert plane_of([1, 0, 0, 0, 1, 0]) == "AXIAL"
    assert plane_of([1, 0, 0, 0, 0, -1]) == "CORONAL"
    assert plane_of([0, 1, 0, 0, 0, -1]) == "SAGITTAL"
    assert plane_of([1, 0, 0, 0, 0.7071, 0.7071]) == "OBLIQUE"
    assert plane_of([1, 0, 0, 0, 0.9848, 0.1736]) == "AXIAL"  # 10 degree gantry tilt


def test_a_deflate_bomb_is_refused_without_inflating_it_whole() -> None:
    import resource

    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    bomb = deflate_bomb(ds, 1024 * 1024 * 1024)
    assert len(bomb) < 2 * 1024 * 1024  # 1 GiB in under 2 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InstanceTooLarge, match="inflates to more than"):
        read_header(bomb, "1.2.840.10008.1.2.1.99", max_inflated_bytes=64 * 1024 * 1024)
    # ru_maxrss is in KiB: inflating went chunk by chunk, not into one 1 GiB buffer
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024
    # Under the limit, the same kind of dataset is read (only its header is kept)
    header = read_header(deflate_bomb(ds, 32 * 1024 * 1024), "1.2.840.10008.1.2.1.99",
                         max_inflated_bytes=64 * 1024 * 1024)
    assert header.sop_instance_uid == ds.SOPInstanceUID


def test_a_truncated_deflate_stream_is_invalid() -> None:
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    with pytest.raises(InvalidInstance, match="ends before"):
        read_header(deflate_bomb(ds, 1024 * 1024)[:500], "1.2.840.10008.1.2.1.99")


# --- The fast path gives pydicom's values, and leaves the unusual to pydicom ---------------

_IMPLICIT, _EXPLICIT, _JPEG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"


def _both(encoded: bytes, ts: str) -> tuple[object, object]:
    """What read_header answers and what pydicom alone answers: a header or the error."""
    from pydicom.uid import UID

    from storage.header import _read_with_pydicom

    def outcome(read) -> object:
        try:
            return repr(read())  # repr: a NaN slice thickness equals itself
        except (InvalidInstance, InstanceTooLarge) as exc:
            return f"{type(exc).__name__}: {exc}"

    return (outcome(lambda: read_header(encoded, ts)),
            outcome(lambda: _read_with_pydicom(encoded, UID(ts), 2**31)))


def _slice_with(**values: object):
    from pydicom.dataset import Dataset

    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 7, series_number=2)
    ds.StudyDate, ds.AccessionNumber, ds.StudyDescription = "20260101", "ACC1", "CT CHEST"
    ds.SeriesDescription, ds.BodyPartExamined, ds.ConvolutionKernel = "AXIAL 1MM", "CHEST", "B30f"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid(TEST_UID_ROOT)
    ds.ReferencedImageSequence = [item, item]  # (0008,1140): a sequence before the indexed tags end
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _raw(ds, implicit: bool, replace: dict[int, bytes]) -> bytes:
    """The dataset encoded, with some values replaced by raw bytes as a sender may write them."""
    from pydicom.dataelem import RawDataElement

    for tag, value in replace.items():
        vr = None if implicit else ds[tag].VR
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, implicit, True)  # type: ignore[index]
    return _encode(ds, implicit)


_ODD_VALUES = [
    (0x00080060, b"CT"), (0x00080060, b"CT\0"), (0x00080060, b" CT "), (0x00080060, b""),
    (0x00080060, b"CT\\MR"), (0x00081030, b"Thorax \xe4 "), (0x00081030, b"\x1b$B"),
    (0x00081030, b"  leading "), (0x00081030, b"tab\t "), (0x00080050, b"1234567890123456789X"),
    (0x00200011, b"3 "), (0x00200011, b" +3"), (0x00200011, b"3.0 "), (0x00200011, b"3.5 "),
    (0x00200011, b"x "), (0x00200011, b"1\\2 "), (0x00200011, b"  "), (0x00200013, b"0012"),
    (0x00180050, b"1.25"), (0x00180050, b".5"), (0x00180050, b"5."), (0x00180050, b"1e1 "),
    (0x00180050, b"nan "), (0x00180050, b" 2 "), (0x00180050, b"1\\2 "), (0x00180050, b""),
    (0x00181210, b"B30f\\HEAD"), (0x00181210, b" B30f \\ \\X\0"), (0x00181210, b"\\"),
    (0x00181210, b""), (0x00200037, b"1\\0\\0\\0\\1\\0 "), (0x00200037, b"0\\1\\0\\0\\0\\-1"),
    (0x00200037, b"1\\0\\0\\0\\1"), (0x00200037, b"1\\0\\0\\0\\\\0 "), (0x00200037, b"1\\0\\0\\0\\1\\x"),
    (0x00200037, b"1"), (0x0020000D, b"1.2.3\0"), (0x0020000D, b" 1.2.3 "), (0x0020000D, b"\0\0"),
    (0x0020000D, b"1.2\\3.4"), (0x0020000D, b"1." * 40), (0x00080016, b""),
]


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize(("tag", "value"), _ODD_VALUES)
def test_the_fast_path_gives_pydicoms_answer_for_odd_values(implicit: bool, tag: int, value: bytes) -> None:
    encoded = _raw(_slice_with(), implicit, {tag: value})
    fast, pydicom_alone = _both(encoded, _IMPLICIT if implicit else _EXPLICIT)
    assert fast == pydicom_alone


@pytest.mark.parametrize("ts", [_IMPLICIT, _EXPLICIT, _JPEG])
def test_the_fast_path_reads_a_usual_image_itself(ts: str) -> None:
    from storage.header import _fast_header, _fast_path_encoding

    implicit = ts == _IMPLICIT
    encoded = _encode(_slice_with(), implicit)
    assert _fast_path_encoding(ts) is implicit
    fast = _fast_header(memoryview(encoded), implicit)  # raises if it left the image to pydicom
    assert repr(fast) == _both(encoded, ts)[1]
    assert (fast.modality, fast.series_number, fast.instance_number, fast.convolution_kernel,
            fast.orientation, fast.slice_thickness) == ("CT", 2, 8, "B30f", "AXIAL", 1.0)


def test_sequences_of_undefined_length_are_skipped() -> None:
    """Implicit VR senders often write sequences and items of undefined length."""
    from storage.header import _fast_header

    ds = _slice_with()
    ds["ReferencedImageSequence"].is_undefined_length = True
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = True
    for implicit in (True, False):
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = implicit, True
        write_dataset(buf, ds)
        encoded = buf.getvalue()
        assert b"\xfe\xff\xdd\xe0" in encoded  # a sequence delimiter is there
        fast = _fast_header(memoryview(encoded), implicit)  # raises if it left the image to pydicom
        assert repr(fast) == _both(encoded, _IMPLICIT if implicit else _EXPLICIT)[1]


def test_damaged_headers_get_pydicoms_answer() -> None:
    """Every single-byte change in the header region (tags, VRs, lengths, values)."""
    import random

    rng = random.Random(7)
    for implicit in (True, False):
        encoded = _encode(_slice_with(), implicit)
        header_end = encoded.index(b"\xe0\x7f\x10\x00")  # Pixel Data
        for _ in range(1500):
            damaged = bytearray(encoded)
            damaged[rng.randrange(header_end)] = rng.randrange(256)
            fast, pydicom_alone = _both(bytes(damaged), _IMPLICIT if implicit else _EXPLICIT)
            assert fast == pydicom_alone
