"""Synthetic CTs: a chest whose lung volumes and emphysema share are known exactly,
and a head and an abdomen that a chest model must decline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ai.volume import Volume
from tests.synthetic import TEST_UID_ROOT


@dataclass(frozen=True)
class CtPhantom:
    hu: np.ndarray  # (slices, rows, columns), int16
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class ChestPhantom(CtPhantom):
    right_ml: float  # truth: lung voxels (vessels included) times the voxel volume
    left_ml: float
    laa950_pct: float  # truth: share of lung voxels below -950 HU
    table: np.ndarray | None = None  # where the table is, when it has one


def _grid(slices: int, size: int, slice_mm: float, pixel_mm: float) -> tuple[np.ndarray, ...]:
    return tuple(np.meshgrid(np.arange(slices) * slice_mm, np.arange(size) * pixel_mm,
                             np.arange(size) * pixel_mm, indexing="ij"))


def _table(y: np.ndarray, x: np.ndarray, size: int, pixel_mm: float, body_bottom_mm: float) -> np.ndarray:
    """A patient table: a 3 mm carbon shell (300 HU) curving under the body and
    touching it, wider than the patient."""
    cx = size * pixel_mm / 2
    curve = body_bottom_mm + 0.0006 * (x - cx) ** 2 - 1.0
    mask: np.ndarray = (y >= curve) & (y <= curve + 3.0) & (np.abs(x - cx) <= 0.49 * size * pixel_mm)
    return mask


def head_phantom(slices: int = 60, size: int = 256, slice_mm: float = 2.5, pixel_mm: float = 0.8,
                 seed: int = 0) -> CtPhantom:
    """A head: brain (35 HU) in a 6 mm skull (1000 HU), small air cells (sinuses)."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid(slices, size, slice_mm, pixel_mm)
    c, zc = size * pixel_mm / 2, slices * slice_mm / 2
    r = np.sqrt(((x - c) / 75.0) ** 2 + ((y - c) / 90.0) ** 2 + ((z - zc) / (0.55 * slices * slice_mm)) ** 2)
    hu = np.full(z.shape, -1000, dtype=np.int16)
    hu[r <= 1.0] = 1000
    brain = r <= 0.93
    hu[brain] = rng.normal(35, 5, size=int(brain.sum())).astype(np.int16)
    sinus = ((x - c) ** 2 + (y - c + 70) ** 2 <= 12.0 ** 2) & (np.abs(z - 0.3 * zc) <= 12)
    hu[sinus] = -1000
    return CtPhantom(hu, (slice_mm, pixel_mm, pixel_mm))


def abdomen_phantom(slices: int = 60, size: int = 256, slice_mm: float = 5.0, pixel_mm: float = 1.4,
                    seed: int = 0) -> CtPhantom:
    """An abdomen from the lung bases down: soft tissue (40 HU), liver (60 HU), bowel
    gas, and the lowest parts of both lungs on the top tenth of the slices."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid(slices, size, slice_mm, pixel_mm)
    cy = cx = size * pixel_mm / 2
    top = slices * slice_mm
    hu = np.full(z.shape, -1000, dtype=np.int16)
    body = ((y - cy) / (0.40 * size * pixel_mm)) ** 2 + ((x - cx) / (0.46 * size * pixel_mm)) ** 2 <= 1
    hu[body] = 40
    liver = body & ((x - cx + 50) ** 2 + (y - cy) ** 2 <= 60 ** 2) & (z > 0.55 * top)
    hu[liver] = 60
    for side in (-1, +1):  # lung bases: domes reaching 10 % of the way down
        base = (((x - (cx + side * 0.21 * size * pixel_mm)) / 55.0) ** 2 + ((y - cy) / 80.0) ** 2
                + ((z - top) / (0.12 * top)) ** 2) <= 1
        hu[base & body] = rng.normal(-860, 25, size=int((base & body).sum())).clip(-940, -700).astype(np.int16)
    for _ in range(25):  # bowel gas
        gz, gy, gx = rng.uniform(0, 0.8 * top), rng.uniform(cy - 60, cy + 60), rng.uniform(cx - 90, cx + 90)
        bubble = (x - gx) ** 2 + (y - gy) ** 2 + (z - gz) ** 2 <= rng.uniform(8, 20) ** 2
        hu[bubble & body] = -1000
    return CtPhantom(hu, (slice_mm, pixel_mm, pixel_mm))


def chest_phantom(slices: int = 160, size: int = 320, slice_mm: float = 1.0, pixel_mm: float = 1.0,
                  emphysema_fraction: float = 0.0, seed: int = 0, table: bool = False) -> ChestPhantom:
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
    table_mask = None
    if table:
        table_mask = _table(y, x, size, pixel_mm, cy + 0.42 * size * pixel_mm) & ~body
        hu[table_mask] = 300
    voxel_ml = slice_mm * pixel_mm * pixel_mm / 1000
    low = (hu < -950) & lung_any
    return ChestPhantom(hu, (slice_mm, pixel_mm, pixel_mm), float(right.sum() * voxel_ml),
                        float(left.sum() * voxel_ml), float(100 * low.sum() / lung_any.sum()), table_mask)


def phantom_volume(phantom: CtPhantom, kernel: str = "B30f") -> Volume:
    dz, dy, dx = phantom.spacing
    return Volume(
        array=phantom.hu.astype(np.float32), spacing=phantom.spacing, origin=(0.0, 0.0, 0.0),
        direction=np.eye(3), modality="CT", series_instance_uid="1.2.3",
        frame_of_reference_uid="1.2.3.4", sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(len(phantom.hu))),
        frame_numbers=tuple([1] * len(phantom.hu)), convolution_kernel=kernel, slice_thickness=dz,
    )


def write_phantom_series(phantom: CtPhantom, folder: Path, kernel: str = "B30f",
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
        # Type 2 attributes the result objects copy: present (dcentvfy compares them).
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName, ds.StudyID = "19600101", "O", "", "1"
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
