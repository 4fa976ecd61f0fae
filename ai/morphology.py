"""Binary morphology on (slices, rows, columns) masks, in-plane, exact and fast.

scipy.ndimage's binary erosion and dilation visit every element of the structuring
element for every voxel; on a 300-slice CT that was a third of ct-chest's time. A disk
is the union of a few rectangles (one per distinct half-width of its rows), and a
rectangle is a row then a column of shifted ORs (dilation) or ANDs (erosion), so the
same result costs a few dozen whole-array boolean operations. Borders behave as
scipy's defaults: outside the array is background.

Every in-plane operation works slice by slice, so it is run on slabs of slices in as
many threads as torch may use (``torch.get_num_threads()``, which the node sets per
worker and model): numpy's whole-array operations and scipy's labelling release the
GIL, and the slabs' results are exactly the whole array's. On 2 cores: 0.30 -> 0.14 s
for an erosion of a 300 x 256 x 256 mask, 0.44 -> 0.23 s to fill a 512 x 512 one's holes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


#: Below this many voxels a mask is done in one piece (threads would cost more).
_SLAB_MIN_VOXELS = 1 << 20


def by_slabs(operation: Callable[[np.ndarray], np.ndarray], mask: np.ndarray) -> np.ndarray:
    """The boolean result of ``operation``, which works slice by slice (each output
    slice depends on its own input slice only), run on slabs of ``mask``'s slices in
    parallel threads and assembled in one array."""
    workers = min(torch.get_num_threads(), mask.shape[0])
    if workers <= 1 or mask.size < _SLAB_MIN_VOXELS:
        return operation(mask)
    bounds = np.linspace(0, mask.shape[0], workers + 1).astype(int)
    out = np.empty(mask.shape, dtype=bool)

    def slab(i: int) -> None:
        out[bounds[i]:bounds[i + 1]] = operation(mask[bounds[i]:bounds[i + 1]])

    with ThreadPoolExecutor(workers - 1) as pool:
        others = [pool.submit(slab, i) for i in range(1, workers)]
        slab(0)
        for done in others:
            done.result()
    return out


def disk_rectangles(radius: int) -> list[tuple[int, int]]:
    """The disk ``y**2 + x**2 <= radius**2`` as a union of centred rectangles, each
    given as (half-height, half-width)."""
    widest: dict[int, int] = {}
    for y in range(radius + 1):
        widest[math.isqrt(radius * radius - y * y)] = y
    return [(height, width) for width, height in widest.items()]


def _shift_combine(mask: np.ndarray, reach: int, axis: int, dilate: bool) -> np.ndarray:
    """OR (dilate) or AND (erode) of ``mask`` shifted by -reach..reach along ``axis``."""
    out = mask.copy()
    if reach == 0:
        return out
    size = mask.shape[axis]

    def part(start: int | None, stop: int | None) -> tuple[slice, ...]:
        index = [slice(None)] * mask.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    for step in range(1, min(reach, size - 1) + 1):
        if dilate:
            out[part(step, None)] |= mask[part(None, -step)]
            out[part(None, -step)] |= mask[part(step, None)]
        else:
            out[part(step, None)] &= mask[part(None, -step)]
            out[part(None, -step)] &= mask[part(step, None)]
    if not dilate:  # outside the array is background
        out[part(None, min(reach, size))] = False
        out[part(max(size - reach, 0), None)] = False
    return out


def _disk_operation(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    result: np.ndarray | None = None
    for height, width in disk_rectangles(radius):
        part = _shift_combine(_shift_combine(mask, width, 2, dilate), height, 1, dilate)
        if result is None:
            result = part
        elif dilate:
            result |= part
        else:
            result &= part
    assert result is not None
    return result


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane dilation of a 3-D boolean mask by a disk of ``radius`` pixels (as
    ``scipy.ndimage.binary_dilation`` with a (1, 2r+1, 2r+1) disk)."""
    return by_slabs(lambda slab: _disk_operation(slab, radius, dilate=True), np.ascontiguousarray(mask, dtype=bool))


def erode_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane erosion of a 3-D boolean mask by a disk of ``radius`` pixels (as
    ``scipy.ndimage.binary_erosion`` with a (1, 2r+1, 2r+1) disk)."""
    return by_slabs(lambda slab: _disk_operation(slab, radius, dilate=False), np.ascontiguousarray(mask, dtype=bool))


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected regions of ``mask``: their labels and each label's voxel count
    (label 0, the background, counts 0)."""
    labels, count = ndimage.label(mask)
    flat = torch.from_numpy(labels.reshape(-1))
    parts = flat.chunk(max(1, min(torch.get_num_threads(), flat.numel() // _SLAB_MIN_VOXELS)))
    with ThreadPoolExecutor(len(parts)) as pool:  # torch.bincount is single-threaded
        counts = list(pool.map(lambda part: torch.bincount(part, minlength=count + 1), parts))
    sizes = torch.stack(counts).sum(dim=0).numpy()
    sizes[0] = 0
    return labels, sizes


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every set voxel of ``mask``; None when it is empty."""
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if slices.size == 0:
        return None
    plane: np.ndarray = np.any(mask[slices[0]:slices[-1] + 1], axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return (slice(int(slices[0]), int(slices[-1]) + 1), slice(int(rows[0]), int(rows[-1]) + 1),
            slice(int(cols[0]), int(cols[-1]) + 1))


def holes_2d(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Holes of ``mask`` slice by slice (what ``binary_fill_holes`` on each slice adds),
    as (box, holes within the box): background regions are labelled within their
    slice inside the mask's bounding box, and those that do not reach the box's edge
    are enclosed. None when the mask is empty."""
    box = bounding_box(mask)
    if box is None:
        return None
    return box, by_slabs(_enclosed_background, np.ascontiguousarray(mask[box]))


def _enclosed_background(inner: np.ndarray) -> np.ndarray:
    """The background of each slice of ``inner`` that does not reach the slice's edge."""
    labels, count = ndimage.label(~inner, _IN_PLANE)
    reaches_edge = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        reaches_edge[edge] = True
    is_hole = ~reaches_edge
    is_hole[0] = False  # label 0: the mask itself
    enclosed: np.ndarray = is_hole[labels]
    return enclosed


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled slice by slice (see :func:`holes_2d`)."""
    out = mask.copy()
    found = holes_2d(mask)
    if found is not None:
        box, holes = found
        out[box] |= holes
    return out
