"""The label map file the infer job writes and the encode job reads (LabelMap.to_npz,
LabelMap.from_npz)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ai.labelmap import LabelMap


def _labelmap(slices: int, maps: bool = False) -> LabelMap:
    rng = np.random.default_rng(slices)
    array = np.zeros((slices, 40, 30), dtype=np.uint8)
    array[:, 5:35, 4:26] = rng.integers(0, 4, size=(slices, 30, 22), dtype=np.uint8)
    return LabelMap(array, tuple(f"1.2.3.{i}" for i in range(slices)), tuple(range(1, slices + 1)), "1.2.3",
                    (1.0, 0.7, 0.7), (-10.0, -20.0, 30.0), np.eye(3),
                    {"probability": rng.integers(0, 256, size=array.shape, dtype=np.uint8)} if maps else {})


@pytest.mark.parametrize("slices", [1, 3, 8, 13, 300])
def test_a_label_map_file_reads_back_as_written(tmp_path: Path, slices: int) -> None:
    written = _labelmap(slices, maps=slices == 13)
    path = tmp_path / "map.npz"
    path.write_bytes(written.to_npz())
    read = LabelMap.from_npz(path)
    assert np.array_equal(read.array, written.array) and read.array.dtype == np.uint8
    assert (read.sop_instance_uids, read.frame_numbers, read.series_instance_uid) == (
        written.sop_instance_uids, written.frame_numbers, written.series_instance_uid)
    assert (read.spacing, read.origin) == (written.spacing, written.origin)
    assert np.array_equal(read.direction, written.direction)
    assert read.maps.keys() == written.maps.keys()
    for name in written.maps:
        assert np.array_equal(read.maps[name], written.maps[name])


def test_label_map_files_written_before_slabs_still_read(tmp_path: Path) -> None:
    """Files of earlier versions hold the map as one ``labelmap`` member."""
    written = _labelmap(6)
    buffer = io.BytesIO()
    arrays = {"labelmap": written.array, "spacing": np.array(written.spacing), "origin": np.array(written.origin),
              "direction": written.direction, "sop_instance_uids": np.array(written.sop_instance_uids),
              "frame_numbers": np.array(written.frame_numbers),
              "series_instance_uid": np.array(written.series_instance_uid)}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, values in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, values, allow_pickle=False)
    path = tmp_path / "old.npz"
    path.write_bytes(buffer.getvalue())
    read = LabelMap.from_npz(path)
    assert np.array_equal(read.array, written.array) and read.maps == {}


def test_a_damaged_label_map_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "map.npz"
    data = _labelmap(8).to_npz()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            if name == "labelmap_slab_bytes.npy":  # more slabs than slices
                inner = io.BytesIO()
                np.lib.format.write_array(inner, np.full(9, 10, dtype=np.int64))
                content = inner.getvalue()
            archive.writestr(name, content)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="slabs"):
        LabelMap.from_npz(path)
