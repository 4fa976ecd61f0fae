"""A synthetic chest CT whose lung volumes and emphysema share are known exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ai.volume import Volume
from tests.synthetic import TEST_UID_ROOT


@dataclass(frozen=True)
class ChestPhantom:
    hu: np.ndarray  # (slices, rows, columns), int16
    spacing: tuple[float, float, float]
    right_ml: float  # truth: lung voxels (vessels included) times the voxel volume
    left_ml: float
    laa950_pct: float  # truth: share of lung voxels below -950 HU


def chest_phantom(slices: int = 160, size: int = 320, slice_mm: float = 1.0, pixel_mm: float = 1.0,
                  emphysema_fraction: float = 0.0, seed: int = 0) -> ChestPhantom:
    """Body (soft tissue) with two ellipsoid lungs (vessels, noise, optional emphysema),
    a trachea from the top and two main bronchi running into the lungs; the patient's
    right lung lies at low column indices (image left), as in a standard axial CT."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(slices) * slice_mm, np.arange(size) * pixel_mm,
                          np.arange(size) * pixel_mm, indexing="ij")
    cy, cx, zc = size * pixel_mm / 2, size * pixel_mm / 2, slices * slice_mm * 0.45
    hu = np.full(z.shape, -1000, dtype=np.int16)
    body = ((y - cy) / (0.42 * size * pixel_mm)) ** 2 + ((x - cx) / (0.47 * size * pixel_mm)) ** 2 <= 1
    hu[body] = 40
    lungs = []
    for side in (-1, +1):  # -1: patient's right (low columns); +1: left
        a, b, c = 0.17 * size * pixel_mm, 0.26 * size * pixel_mm, 0.42 * slices * slice_mm
        lung = (((x - (cx + side * 0.21 * size * pixel_mm)) / a) ** 2 + ((y - cy) / b) ** 2
                + ((z - zc) / c) ** 2) <= 1
        lungs.append(lung)
        parenchyma = rng.normal(-860, 25, size=int(lung.sum())).clip(-940, -700)
        hu[lung] = parenchyma.astype(np.int16)
    right, left = lungs
    lung_any = right | left
    # Vessels: short soft-tissue rods inside the lungs (lung volume includes them).
    for _ in range(40):
        vz, vy, vx = rng.integers(0, slices), rng.integers(0, size - 6), rng.integers(0, size - 6)
        rod = np.zeros_like(lung_any)
        rod[max(0, vz - 4):vz + 4, vy:vy + 3, vx:vx + 3] = True
        hu[rod & lung_any] = 40
    if emphysema_fraction:
        emph = lung_any & (rng.random(lung_any.shape) < emphysema_fraction) & (hu < -700)
        hu[emph] = -980
    # Trachea from the top slice down to the carina, then two bronchi into the lungs.
    carina = zc + 0.2 * slices * slice_mm
    radius = 9.0
    trachea = ((x - cx) ** 2 + (y - cy + 20) ** 2 <= radius ** 2) & (z >= carina)
    hu[trachea] = -1000
    for side in (-1, +1):
        t = np.clip((carina - z) / 25.0, 0, 1)  # 25 mm long, running sideways and down
        bx = cx + side * t * 0.21 * size * pixel_mm * 0.6
        bronchus = ((x - bx) ** 2 + (y - cy + 20) ** 2 <= 6.0 ** 2) & (z < carina) & (z >= carina - 25)
        hu[bronchus & ~lung_any] = -1000
    voxel_ml = slice_mm * pixel_mm * pixel_mm / 1000
    low = (hu < -950) & lung_any
    return ChestPhantom(hu, (slice_mm, pixel_mm, pixel_mm), float(right.sum() * voxel_ml),
                        float(left.sum() * voxel_ml), float(100 * low.sum() / lung_any.sum()))


def phantom_volume(phantom: ChestPhantom, kernel: str = "B30f") -> Volume:
    dz, dy, dx = phantom.spacing
    return Volume(
        array=phantom.hu.astype(np.float32), spacing=phantom.spacing, origin=(0.0, 0.0, 0.0),
        direction=np.eye(3), modality="CT", series_instance_uid="1.2.3",
        frame_of_reference_uid="1.2.3.4", sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(len(phantom.hu))),
        frame_numbers=tuple([1] * len(phantom.hu)), convolution_kernel=kernel, slice_thickness=dz,
    )


def write_phantom_series(phantom: ChestPhantom, folder: Path, kernel: str = "B30f",
                         study_uid: str | None = None, description: str = "Phantom chest",
                         attributes: dict[str, object] | None = None) -> list[Path]:
    """The phantom as a CT series of Part 10 files (explicit VR little endian);
    ``attributes`` (keyword: value) are set on every image."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(TEST_UID_ROOT)
    series_uid, frame_uid = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    dz, dy, dx = phantom.spacing
    paths = []
    for i, image in enumerate(phantom.hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(TEST_UID_ROOT)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID = "Phantom^Chest", "PHANTOM-1"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "PH0001"
        ds.Modality, ds.StudyDescription, ds.SeriesDescription = "CT", description, f"{dz:g}mm {kernel}"
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.ConvolutionKernel, ds.SliceThickness = kernel, dz
        ds.ImagePositionPatient = [0.0, 0.0, float(i * dz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [dy, dx]
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = image.astype(np.int16).tobytes()
        for keyword, value in (attributes or {}).items():
            setattr(ds, keyword, value)
        path = folder / f"{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def chest_study(tmp_path: Path) -> tuple[Path, tuple[float, float]]:
    """The public chest CT (lung and soft-tissue kernel series) and its lung volumes
    (right, left) in mL, or a phantom made the same way when the shared samples are
    absent, with its true volumes."""
    from tests.conftest import SHARED_DATA

    public = SHARED_DATA / "ct-chest-tcia-a0001"
    if public.exists():
        return public, (3177.0, 2273.0)  # ct-chest on it; plausibility: tests/unit/test_ct_chest.py
    phantom = chest_phantom(slices=64, size=256, slice_mm=5.0, pixel_mm=1.3)
    folder = tmp_path / "phantom-chest"
    study_uid = "1.2.826.0.1.3680043.10.1234.77"
    write_phantom_series(phantom, folder / "sharp", kernel="B70f", study_uid=study_uid)
    write_phantom_series(phantom, folder / "soft", kernel="B30f", study_uid=study_uid)
    return folder, (phantom.right_ml, phantom.left_ml)
