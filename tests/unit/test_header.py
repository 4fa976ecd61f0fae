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
