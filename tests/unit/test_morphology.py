"""The fast in-plane morphology gives exactly scipy.ndimage's answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ai.morphology import (
    bounding_box,
    components,
    dilate_disk,
    disk_rectangles,
    erode_disk,
    fill_holes_2d,
)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    disk = np.zeros((1, 2 * radius + 1, 2 * radius + 1), dtype=bool)
    disk[0] = yy ** 2 + xx ** 2 <= radius ** 2
    return disk


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 6, 9])
def test_disk_erosion_and_dilation_match_scipy(radius: int) -> None:
    rng = np.random.default_rng(radius)
    for density in (0.3, 0.6, 0.9):
        mask = rng.random((4, 23, 31)) < density
        assert np.array_equal(dilate_disk(mask, radius), ndimage.binary_dilation(mask, _disk(radius)))
        assert np.array_equal(erode_disk(mask, radius), ndimage.binary_erosion(mask, _disk(radius)))
        assert np.array_equal(dilate_disk(erode_disk(mask, radius), radius),
                              ndimage.binary_opening(mask, _disk(radius)))


def test_disk_rectangles_cover_the_disk_exactly() -> None:
    for radius in range(1, 12):
        covered = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=bool)
        for height, width in disk_rectangles(radius):
            covered[radius - height:radius + height + 1, radius - width:radius + width + 1] = True
        assert np.array_equal(covered, _disk(radius)[0])


def test_holes_are_filled_per_slice_as_scipy_does() -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((5, 40, 40)) < 0.55
    expected = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    assert np.array_equal(fill_holes_2d(mask), expected)
    assert np.array_equal(fill_holes_2d(np.zeros((2, 5, 5), dtype=bool)), np.zeros((2, 5, 5), dtype=bool))


def test_components_and_bounding_box() -> None:
    mask = np.zeros((3, 10, 10), dtype=bool)
    mask[0, 1:3, 1:3] = True
    mask[2, 5:9, 4:6] = True
    labels, sizes = components(mask)
    assert sorted(sizes.tolist()) == [0, 4, 8]
    assert bounding_box(mask) == (slice(0, 3), slice(1, 9), slice(1, 6))
    assert bounding_box(np.zeros_like(mask)) is None



@pytest.mark.parametrize("threads", [1, 2, 3])
def test_masks_large_enough_for_threads_give_the_same_answers(threads: int) -> None:
    """Above a million voxels the in-plane operations run on slabs of slices in
    torch's threads, and component sizes are counted in parts: the answers are
    scipy's whatever the number of threads (and slab boundaries)."""
    import torch

    rng = np.random.default_rng(threads)
    mask = rng.random((17, 260, 250)) < 0.55  # 1.1 million voxels, 17 slices: uneven slabs
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert np.array_equal(erode_disk(mask, 3), ndimage.binary_erosion(mask, _disk(3)))
        assert np.array_equal(dilate_disk(mask, 2), ndimage.binary_dilation(mask, _disk(2)))
        assert np.array_equal(fill_holes_2d(mask), np.stack([ndimage.binary_fill_holes(s) for s in mask]))
        big = ndimage.binary_dilation(rng.random((24, 300, 300)) < 0.01)  # 2.2 million voxels
        labels, sizes = components(big)
        expected, count = ndimage.label(big)
        assert np.array_equal(labels, expected)
        assert np.array_equal(sizes[1:], np.bincount(expected.ravel(), minlength=count + 1)[1:])
    finally:
        torch.set_num_threads(before)
