"""dcmtk's storescu sends a whole study to a real `ainode serve`; SIGKILL loses nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.conftest import SHARED_DATA, Node, peer_env
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration


def _chest_ct(tmp_path: Path) -> Path:
    """The public two-series chest CT when present, else a synthetic one of the same shape."""
    public = SHARED_DATA / "ct-chest-tcia-a0001"
    if public.exists():
        return public
    folder = tmp_path / "synthetic-chest"
    write_ct_study(folder, series=2, slices=64, size=128)
    return folder


def _source_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.rglob("*.dcm")):
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return files


def _status(node: Node) -> dict[str, int]:
    return json.loads(node.run("status", "--json").stdout)


def test_storescu_study_survives_sigkill(node_factory, storescu: str, tmp_path: Path) -> None:
    study = _chest_ct(tmp_path)
    sources = _source_files(study)
    assert len(sources) == 128

    node: Node = node_factory().start()
    sent = subprocess.run(
        [storescu, "-aec", "AINODE", "-aet", "CTSCANNER", "+sd", "+r", "+sp", "*.dcm",
         "127.0.0.1", str(node.port), str(study)],
        capture_output=True, text=True, env=peer_env(), timeout=300,
    )
    assert sent.returncode == 0, sent.stderr
    assert "Failed" not in sent.stderr and "Error" not in sent.stderr
    counts = _status(node)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 128)

    node.kill()  # right after storescu returned: no clean shutdown
    node.start()
    counts = _status(node)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 128)

    stored = sorted((node.data_dir / "studies").rglob("*.dcm"))
    assert len(stored) == 128
    assert counts["bytes"] == sum(p.stat().st_size for p in stored)
    assert not list((node.data_dir / "tmp").iterdir())
    for path in stored:
        ds = dcmread(path)
        source = dcmread(sources[str(ds.SOPInstanceUID)])
        assert ds.file_meta.SourceApplicationEntityTitle == "CTSCANNER"
        assert ds.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert np.array_equal(ds.pixel_array, source.pixel_array)
    assert node.stop() == 0


def test_resent_instances_count_once(node_factory, storescu: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_ct_study(study, series=1, slices=5)
    node: Node = node_factory().start()
    for _ in range(2):
        sent = subprocess.run(
            [storescu, "-aec", "AINODE", "+sd", "+r", "127.0.0.1", str(node.port), str(study)],
            capture_output=True, text=True, env=peer_env(), timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
    counts = _status(node)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 1, 5)
    assert len(list((node.data_dir / "studies").rglob("*.dcm"))) == 5
