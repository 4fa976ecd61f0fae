from __future__ import annotations

from pathlib import Path

import pytest

from storage.files import FileStore, safe_name


def test_safe_name_keeps_valid_uids_and_hashes_the_rest() -> None:
    assert safe_name("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
    for hostile in ("..", "../../etc/passwd", "1.2/3", "", "1..2", "a" * 80):
        name = safe_name(hostile)
        assert name.startswith("x") and "/" not in name and name not in (".", "..")
    assert safe_name("../x") != safe_name("../y")


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    rel = store.relative_path("1.2", "1.2.3", "1.2.3.4")
    assert rel == "studies/1.2/1.2.3/1.2.3.4.dcm"
    assert store.write(rel, [b"abc", memoryview(b"def")]) == 6
    assert store.write(rel, [b"new"]) == 3
    assert (tmp_path / rel).read_bytes() == b"new"
    assert list(store.iter_files()) == [rel]
    assert list(store.tmp_dir.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    rel = store.relative_path("1.2", "1.2.3", "1.2.3.4")
    with pytest.raises(TypeError):
        store.write(rel, [b"partial", object()])  # type: ignore[list-item]
    assert not (tmp_path / rel).exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_prepare_drops_leftover_temporary_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    (store.tmp_dir / "dead.part").write_bytes(b"half")
    store.prepare()
    assert list(store.tmp_dir.iterdir()) == []


def test_remove_prunes_empty_folders(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    rel = store.relative_path("1.2", "1.2.3", "1.2.3.4")
    store.write(rel, [b"x"])
    store.remove(rel)
    assert list(store.studies_dir.iterdir()) == []


@pytest.mark.parametrize("ae", ["CT01", "ODD", "A"])
@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"])
def test_file_meta_matches_pydicom(ae: str, ts: str) -> None:
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    from storage.files import (
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION_NAME,
        PREAMBLE,
        encode_file_meta,
    )

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.77"
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = ae
    expected = BytesIO()
    write_file_meta_info(expected, meta, enforce_standard=True)
    ours = encode_file_meta(meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, ts, ae)
    assert ours == PREAMBLE + expected.getvalue()
