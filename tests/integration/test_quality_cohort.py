"""A synthetic cohort whose right answers are known: 16 small CT phantoms from two
scanners, a test model (tests/plugins: lesion-finder, voxels above 100 HU) and the
mistakes planned into the data. On "BadScan" most lesions image at 90 HU and are
missed; on "GoodScan" two lesions have a faint rim the model leaves out (undersized)
and one lesion-free study has a single bright voxel (a false positive). Labels come
from a CSV, reference segmentations as DICOM SEGs. ``ainode validate`` must give the
confusion counts of the design, proportions with Wilson intervals within 0.01 of
statsmodels, the ROC AUC of scikit-learn, the Dice the test computes with numpy, and
show the worse scanner as worse."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from tests.conftest import AINODE, REPO
from tests.phantoms import CtPhantom, write_phantom_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLUGINS = REPO / "tests" / "plugins"
SHAPE, SPACING = (16, 40, 40), (2.0, 1.0, 1.0)
#: (scanner, kind) per study; kinds: lesion (200 HU), rim (200 HU core, 60 HU rim: the
#: reference includes the rim), faint (90 HU: missed), none, speck (one 300 HU voxel).
DESIGN = [("GoodScan", k) for k in ("lesion", "lesion", "lesion", "rim", "rim", "none", "none", "none", "none",
                                    "speck")] + \
         [("BadScan", k) for k in ("faint", "faint", "faint", "lesion", "none", "none")]


def _radius_mm() -> np.ndarray:
    z, y, x = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    return np.sqrt(((z - centre[0]) * SPACING[0]) ** 2 + ((y - centre[1]) * SPACING[1]) ** 2
                   + ((x - centre[2]) * SPACING[2]) ** 2)


def _case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (HU) and the reference lesion mask (None: no lesion)."""
    hu = np.random.default_rng(seed).integers(-5, 6, size=SHAPE).astype(np.int16)
    r = _radius_mm()
    truth = None
    if kind in ("lesion", "faint"):
        truth = r <= 6.0
        hu[truth] = 200 if kind == "lesion" else 90
    elif kind == "rim":
        truth = r <= 6.0
        hu[truth] = 60
        hu[r <= 4.0] = 200
    elif kind == "speck":
        hu[3, 5, 5] = 300
    return hu, truth


def _reference_seg(paths: list[Path], truth: np.ndarray, out: Path) -> None:
    images = sorted((dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2]))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Lesion",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    hd.seg.Segmentation(
        source_images=images, pixel_array=truth.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Reader", manufacturer_model_name="Manual",
        software_versions="1", device_serial_number="R1", omit_empty_frames=True).save_as(out)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.timeout(600)
def test_a_cohort_with_planned_mistakes_gives_the_known_figures(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    rows, truths, scores, dice = ["accession_number,finding,value"], [], [], {}
    for index, (scanner, kind) in enumerate(DESIGN):
        hu, truth = _case(kind, index)
        accession = f"Q{index:03d}"
        paths = write_phantom_series(CtPhantom(hu, SPACING), cohort / accession, kernel="B30f",
                                     attributes={"AccessionNumber": accession, "Manufacturer": scanner,
                                                 "ManufacturerModelName": f"{scanner} 64",
                                                 "PatientBirthDate": "19600101", "PatientSex": "FM"[index % 2],
                                                 "StudyID": accession, "ReferringPhysicianName": ""})
        rows.append(f"{accession},lesion,{'present' if truth is not None else 'absent'}")
        truths.append(truth is not None)
        scores.append(min(1.0, float(hu.max()) / 300.0))
        if truth is not None:
            _reference_seg(paths, truth, cohort / f"{accession}-reference.dcm")
            dice[accession] = (scanner, _dice(hu > 100, truth))
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([*AINODE, "validate", "lesion-finder", "--cohort", str(cohort), "--reference", str(labels),
                          "--report", str(tmp_path / "report"), "--data-dir", str(tmp_path / "node")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["cohort"]["studies"] == 16 and report["cohort"]["reference_segs"] == 9
    assert set(report["cohort"]["outcomes"].values()) == {"ran"}
    [group] = report["groups"]
    [finding] = group["findings"]
    assert (finding["tp"], finding["fp"], finding["fn"], finding["tn"]) == (6, 1, 3, 6)
    for key, (count, n) in {"sensitivity": (6, 9), "specificity": (6, 7), "ppv": (6, 7), "npv": (6, 9)}.items():
        low, high = proportion_confint(count, n, alpha=0.05, method="wilson")
        figure = finding[key]
        assert figure["value"] == pytest.approx(count / n, abs=1e-12)
        assert (figure["count"], figure["n"]) == (count, n)
        assert figure["low"] == pytest.approx(low, abs=0.01) and figure["high"] == pytest.approx(high, abs=0.01)
        assert figure["small_sample"]
    assert finding["auc"]["value"] == pytest.approx(roc_auc_score(truths, scores), abs=1e-9)
    assert finding["warnings"] and "only 9 reference-positive" in finding["warnings"][-1]

    [segment] = group["segments"]
    assert segment["compared"] == 9
    assert segment["dice"]["value"] == pytest.approx(np.mean([d for _, d in dice.values()]), abs=1e-6)
    assert segment["dice_median"] == pytest.approx(np.median([d for _, d in dice.values()]), abs=1e-6)
    assert segment["volume_bias_ml"] < 0  # undersized and missed lesions: the model's volumes are smaller

    by_scanner = {g["value"]: g for g in next(t for t in group["subgroups"] if t["attribute"] == "manufacturer")
                  ["groups"]}
    good, bad = by_scanner["GoodScan"], by_scanner["BadScan"]
    assert good["findings"]["lesion"]["sensitivity"]["value"] == pytest.approx(1.0)
    assert bad["findings"]["lesion"]["sensitivity"]["value"] == pytest.approx(0.25)
    for name, scanner_group in (("GoodScan", good), ("BadScan", bad)):
        expected = np.mean([d for s, d in dice.values() if s == name])
        assert scanner_group["segments"]["Lesion"]["dice"]["value"] == pytest.approx(expected, abs=1e-6)
    assert bad["segments"]["Lesion"]["dice"]["value"] < good["segments"]["Lesion"]["dice"]["value"] - 0.5
    # Nothing of the node's own: validation ran in a scratch node of its own.
    assert not (tmp_path / "node").exists()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "BadScan" in html and "<svg" in html
