"""The model inside the test container image (Debian's python3, numpy, pydicom only).

It reads the CT series in $AINODE_INPUT, labels every voxel above 0 HU as 1 and writes
``labelmap.nii.gz`` (slices in reverse order, with the affine that says so: the node
must put it back on the series' grid) and ``results.json`` with one detection, the
dense voxels' centre and extents in patient coordinates (LPS, mm).

``--mode``: ``fail`` exits 3 after a line on stderr, ``hang`` sleeps, ``nothing`` writes
nothing, ``shifted`` writes the label map one slice off the series' grid.
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pydicom


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The volume in HU as (slice, row, column) and its voxel (column, row, slice) to LPS matrix."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    first = datasets[0]
    orientation = np.array(first.ImageOrientationPatient, float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    datasets.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    hu = np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
                   for ds in datasets]).astype(np.float32)
    positions = [np.array(ds.ImagePositionPatient, float) for ds in datasets]
    step = float(np.dot(normal, positions[1] - positions[0])) if len(positions) > 1 else 1.0
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[0]
    return hu, affine


def write_nifti(path: Path, labels: np.ndarray, lps: np.ndarray) -> None:
    """A NIfTI-1 file of uint8 ``labels`` (slice, row, column), voxel (i, j, k) =
    (column, row, slice), with its RAS affine as the sform."""
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, labels.shape[2], labels.shape[1], labels.shape[0], 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)  # datatype uint8, 8 bits
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    struct.pack_into("<8f", header, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *ras[row])
    header[344:348] = b"n+1\0"
    with gzip.open(path, "wb") as out:
        out.write(bytes(header) + b"\0\0\0\0" + np.ascontiguousarray(labels, dtype=np.uint8).tobytes())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="normal", choices=["normal", "fail", "hang", "nothing", "shifted"])
    mode = parser.parse_args().mode
    source = Path(os.environ.get("AINODE_INPUT", "/input"))
    target = Path(os.environ.get("AINODE_OUTPUT", "/output"))
    print(f"test model: mode {mode}, {len(list(source.iterdir()))} files in", flush=True)
    if mode == "fail":
        print("test model: simulated failure", file=sys.stderr, flush=True)
        return 3
    if mode == "hang":
        time.sleep(600)
    if mode == "nothing":
        return 0
    hu, lps = read_series(source)
    dense = hu > 0
    # Slices in reverse order: the affine's third column and origin say so.
    flipped = lps.copy()
    flipped[:3, 3] = lps[:3, 3] + lps[:3, 2] * (hu.shape[0] - 1)
    flipped[:3, 2] = -lps[:3, 2]
    if mode == "shifted":
        flipped[:3, 3] += lps[:3, 2]
    write_nifti(target / "labelmap.nii.gz", dense[::-1].astype(np.uint8), flipped)
    k, j, i = np.nonzero(dense)
    corners = lps @ np.array([[i.min(), i.max()], [j.min(), j.max()], [k.min(), k.max()], [1, 1]], float)
    centre = corners[:3].mean(axis=1)
    extent = np.abs(corners[:3, 1] - corners[:3, 0]) + np.linalg.norm(lps[:3, :3], axis=0)
    results = {"findings": [{"name": "dense tissue", "score": 0.97}],
               "detections": [{"name": "dense lesion", "centre": centre.tolist(), "score": 0.9,
                               "diameters_mm": extent.tolist()}]}
    (target / "results.json").write_text(json.dumps(results))
    print("test model: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
