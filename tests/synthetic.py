"""Synthetic DICOM data for tests and benchmarks: no patient, no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

TEST_UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # synthetic data only


def ct_slice(
    study_uid: str,
    series_uid: str,
    index: int,
    size: int = 64,
    series_number: int = 1,
    sop_uid: str | None = None,
    seed: int | None = None,
) -> Dataset:
    """One synthetic CT slice with a deterministic pixel pattern."""
    rng = np.random.default_rng(seed if seed is not None else index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid(TEST_UID_ROOT)
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(TEST_UID_ROOT, entropy_srcs=[study_uid, "frame"])
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYNTH-0001"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "SYN0001"
    ds.Modality = "CT"
    ds.StudyDescription = "Synthetic chest CT"
    ds.SeriesDescription = f"Synthetic series {series_number}"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 1.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    pixels = rng.integers(-1000, 1000, size=(size, size), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def write_ct_study(
    folder: Path,
    series: int = 2,
    slices: int = 64,
    size: int = 64,
    explicit: bool = False,
    study_uid: str | None = None,
) -> list[Path]:
    """Write a synthetic CT study (``series`` x ``slices``) as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(TEST_UID_ROOT)
    paths = []
    for s in range(series):
        series_uid = generate_uid(TEST_UID_ROOT)
        for i in range(slices):
            ds = ct_slice(study_uid, series_uid, i, size=size, series_number=s + 1, seed=s * 10_000 + i)
            if explicit:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"s{s + 1:02d}" / f"{i + 1:04d}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def deflate_bomb(ds: Dataset, inflated_bytes: int) -> bytes:
    """``ds`` (without its pixel data) as Deflated Explicit VR Little Endian, followed by
    a Pixel Data element of ``inflated_bytes`` zeros: a few MB that inflate to that many."""
    import struct
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    header = ds.copy()
    if "PixelData" in header:
        del header.PixelData
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, header)
    length = inflated_bytes - inflated_bytes % 2
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflater.compress(fp.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))]
    zeros = bytes(16 * 1024 * 1024)
    left = length
    while left:
        step = min(left, len(zeros))
        out.append(deflater.compress(zeros[:step] if step < len(zeros) else zeros))
        left -= step
    out.append(deflater.flush())
    return b"".join(out)


def encode_dataset(ds: Dataset, implicit: bool = False) -> bytes:
    """``ds`` encoded as a C-STORE carries it (little endian, no file meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()
