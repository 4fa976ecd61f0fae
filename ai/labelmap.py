"""A label map on the grid of the series it was computed on: what passes from the
model's prediction to the encoders, and what the node keeps on disk between them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai.volume import Volume, affine_lps


@dataclass(frozen=True)
class LabelMap:
    """``array[i]`` labels the source frame ``frame_numbers[i]`` of the instance
    ``sop_instance_uids[i]``; 0 is background. The geometry is the volume's."""

    array: np.ndarray  # uint8, (slices, rows, columns)
    sop_instance_uids: tuple[str, ...]
    frame_numbers: tuple[int, ...]
    series_instance_uid: str
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray  # 3x3, as Volume.direction

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a label map has 3 dimensions, not {self.array.ndim}")
        slices = self.array.shape[0]
        if len(self.sop_instance_uids) != slices or len(self.frame_numbers) != slices:
            raise ValueError(f"a label map of {slices} slices needs a source frame for each, "
                             f"not {len(self.sop_instance_uids)} / {len(self.frame_numbers)}")

    @classmethod
    def of_volume(cls, array: np.ndarray, volume: Volume) -> LabelMap:
        """A model's label map for ``volume`` (same shape), with the volume's sources."""
        if tuple(array.shape) != volume.shape:
            raise ValueError(f"a label map of shape {tuple(array.shape)} for a volume of {volume.shape}")
        return cls(array.astype(np.uint8, copy=False), volume.sop_instance_uids, volume.frame_numbers,
                   volume.series_instance_uid, volume.spacing, volume.origin, volume.direction)

    def affine_lps(self) -> np.ndarray:
        """Voxel (column, row, slice) to patient (LPS, mm), as :meth:`Volume.affine_lps`."""
        return affine_lps(self.spacing, self.origin, self.direction)

    @property
    def labels(self) -> set[int]:
        """The labels present (background excluded)."""
        return set(np.unique(self.array).tolist()) - {0}

    def to_npz(self) -> bytes:
        """The label map and its geometry as a compressed ``.npz`` file's bytes."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, labelmap=self.array, spacing=np.array(self.spacing), origin=np.array(self.origin),
            direction=self.direction, sop_instance_uids=np.array(self.sop_instance_uids),
            frame_numbers=np.array(self.frame_numbers), series_instance_uid=np.array(self.series_instance_uid),
        )
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, path: Path) -> LabelMap:
        with np.load(path) as saved:
            spacing = tuple(float(v) for v in saved["spacing"])
            origin = tuple(float(v) for v in saved["origin"])
            return cls(saved["labelmap"], tuple(str(u) for u in saved["sop_instance_uids"]),
                       tuple(int(f) for f in saved["frame_numbers"]), str(saved["series_instance_uid"]),
                       (spacing[0], spacing[1], spacing[2]), (origin[0], origin[1], origin[2]),
                       saved["direction"])
