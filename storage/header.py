"""Reading the few attributes the node indexes, without decoding pixel data."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import dcmread, read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# Everything we index has a tag at or below Image Orientation (Patient) (0020,0037).
_LAST_TAG = Tag(0x0020, 0x0037)


def _stop_after_indexed(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return bool(tag > _LAST_TAG)


class InvalidInstance(ValueError):
    """The dataset lacks, or has an unusable, identifying attribute."""


class InstanceTooLarge(ValueError):
    """The dataset, once inflated, is larger than the node accepts."""


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying and descriptive attributes of one received instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    instance_number: int | None = None
    slice_thickness: float | None = None
    convolution_kernel: str | None = None
    orientation: str | None = None  # AXIAL, CORONAL, SAGITTAL or OBLIQUE


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # an undecodable value is not worth refusing the image for
        return None
    if value is None or value == "":
        return None
    return str(value).strip()[:limit] or None


def _number(ds: Dataset, keyword: str, kind: type[int] | type[float]) -> Any:
    """The value as ``kind``, or None when absent or unreadable (never a refusal)."""
    try:
        value = ds.get(keyword)
        return kind(value) if value not in (None, "") else None
    except Exception:
        return None


def _kernel(ds: Dataset) -> str | None:
    try:
        value = ds.get("ConvolutionKernel")
    except Exception:
        return None
    if value in (None, ""):
        return None
    parts = [str(v).strip() for v in value] if not isinstance(value, str) else [value.strip()]
    return "\\".join(p for p in parts if p)[:64] or None


def plane_of(orientation: list[float]) -> str:
    """AXIAL, CORONAL, SAGITTAL or OBLIQUE from the six direction cosines of
    Image Orientation (Patient): the axis the slice normal mostly points along."""
    r, c = orientation[:3], orientation[3:6]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    largest = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[largest]) < 0.8:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[largest]


def _orientation(ds: Dataset) -> str | None:
    try:
        value = ds.get("ImageOrientationPatient")
        if value is None or len(value) != 6:
            return None
        return plane_of([float(v) for v in value])
    except Exception:
        return None


def _uid(ds: Dataset, keyword: str, name: str) -> str:
    if keyword not in ds:
        raise InvalidInstance(f"missing {name} ({keyword})")
    try:
        value = ds[keyword].value
    except Exception:
        raise InvalidInstance(f"{name} ({keyword}) cannot be read") from None
    text = str(value or "").strip("\0 ")
    if not text:
        raise InvalidInstance(f"missing {name} ({keyword})")
    if len(text) > 64:
        raise InvalidInstance(f"{name} ({keyword}) is longer than 64 characters")
    return text


def header_from_dataset(ds: Dataset) -> InstanceHeader:
    """Extract the indexed attributes; raises :class:`InvalidInstance` without the UIDs."""
    return InstanceHeader(
        study_instance_uid=_uid(ds, "StudyInstanceUID", "Study Instance UID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID", "Series Instance UID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID", "SOP Instance UID"),
        sop_class_uid=_uid(ds, "SOPClassUID", "SOP Class UID"),
        modality=_text(ds, "Modality", 16),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 64),
        accession_number=_text(ds, "AccessionNumber", 16),
        series_number=_number(ds, "SeriesNumber", int),
        series_description=_text(ds, "SeriesDescription", 64),
        body_part_examined=_text(ds, "BodyPartExamined", 16),
        instance_number=_number(ds, "InstanceNumber", int),
        slice_thickness=_number(ds, "SliceThickness", float),
        convolution_kernel=_kernel(ds),
        orientation=_orientation(ds),
    )


_PREFIX = 64 * 1024  # the indexed attributes nearly always lie in the first 64 KiB


def _parse(data: bytes, ts: UID) -> tuple[Dataset, bool]:
    """Parse up to Instance Number; also say whether the parse stopped before the end."""
    fp = BytesIO(data)
    ds = read_dataset(
        fp,
        is_implicit_VR=ts.is_implicit_VR,
        is_little_endian=ts.is_little_endian,
        stop_when=_stop_after_indexed,
    )
    return ds, fp.tell() < len(data)


_INFLATE_CHUNK = 4 * 1024 * 1024
#: Inflated bytes kept for parsing the header; the rest is only counted.
_INFLATED_HEADER = 16 * 1024 * 1024


def _inflate_header(encoded: bytes | memoryview, max_bytes: int) -> bytes:
    """The start of a Deflated Explicit VR dataset, inflated chunk by chunk: the
    whole stream is inflated to check its size against ``max_bytes`` (a 2 MB deflate
    bomb can expand to gigabytes), but only the first 16 MiB are kept."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept = bytearray()
    total = 0
    data: bytes | memoryview = encoded
    while True:
        chunk = inflater.decompress(data, _INFLATE_CHUNK)
        total += len(chunk)
        if total > max_bytes:
            raise InstanceTooLarge(f"the deflated dataset inflates to more than {max_bytes} bytes")
        if len(kept) < _INFLATED_HEADER:
            kept += chunk[: _INFLATED_HEADER - len(kept)]
        data = inflater.unconsumed_tail
        if inflater.eof:
            return bytes(kept)
        if not data and not chunk:
            raise InvalidInstance("the deflated dataset ends before its deflate stream does")


def read_header(encoded: bytes | memoryview, transfer_syntax_uid: str,
                max_inflated_bytes: int = 2**31) -> InstanceHeader:
    """Parse the header of a dataset as received in a C-STORE (no file meta).

    Only a prefix is parsed when it holds every indexed attribute, so that the
    pixel data of a large image is not copied for nothing. A deflated dataset is
    inflated as a stream, and refused (:class:`InstanceTooLarge`) once it exceeds
    ``max_inflated_bytes``.
    """
    ts = UID(transfer_syntax_uid)
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            inflated = _inflate_header(encoded, max_inflated_bytes)
        except zlib.error as exc:
            raise InvalidInstance(f"dataset cannot be inflated ({type(exc).__name__})") from None
    try:
        if ts == DeflatedExplicitVRLittleEndian:
            ds, _ = _parse(inflated, ts)
        else:
            ds, complete = _parse(bytes(encoded[:_PREFIX]), ts)
            if not complete and len(encoded) > _PREFIX:
                ds, _ = _parse(bytes(encoded), ts)
    except Exception as exc:
        raise InvalidInstance(f"dataset cannot be parsed ({type(exc).__name__})") from None
    return header_from_dataset(ds)


def read_file_header(path: Path) -> tuple[InstanceHeader, str]:
    """Header and transfer syntax UID of a stored Part 10 file."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=None)
    ts = str(ds.file_meta.TransferSyntaxUID)
    return header_from_dataset(ds), ts
