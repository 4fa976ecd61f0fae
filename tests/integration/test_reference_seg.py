"""A corrected segmentation sent back as DICOM SEG: a workstation edits AINode's lung
segmentation of the chest CT and sends the result to the node, which matches it to the
model's segments (by label, or by coded type and laterality), compares them on the
series' grid and records Dice, HD95 and both volumes with the prediction. The Dice is
checked against one the test computes from the two SEGs' own pixels (highdicom),
independently of the node's MONAI metrics. AINode's own SEG coming back from an
archive is recognised and not taken for a reference, and neither SEG reopens the
study."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import Node, send_study, wait_until
from tests.phantoms import chest_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _results(node: Node, uid: str) -> dict:
    return json.loads(node.run("results", uid, "--json").stdout)


def _object(node: Node, uid: str, sop: str) -> Dataset:
    url = f"{node.api_url}/api/studies/{uid}/objects/{sop}"
    path = node.data_dir.parent / f"{sop}.dcm"
    with urllib.request.urlopen(url, timeout=30) as response:
        path.write_bytes(response.read())
    return dcmread(path)


def _corrected(ours: Dataset, sources: list[Dataset]) -> tuple[Dataset, dict[str, float]]:
    """A workstation's edit of ``ours``: the right lung's upper quarter of slices
    removed (relabelled, so it must be matched by its code and laterality), the left
    lung as it was, and a segment the model does not make. With the Dice each of the
    model's lungs should get."""
    seg = hd.seg.Segmentation.from_dataset(ours)
    numbers = {str(seg.get_segment_description(n).SegmentLabel): n for n in seg.segment_numbers}
    uids = [str(s.SOPInstanceUID) for s in sources]
    right = seg.get_pixels_by_source_instance(uids, segment_numbers=[numbers["Right lung"]])[..., 0] > 0
    left = seg.get_pixels_by_source_instance(uids, segment_numbers=[numbers["Left lung"]])[..., 0] > 0
    edited = right.copy()
    with_lung = np.flatnonzero(right.any(axis=(1, 2)))
    edited[with_lung[: len(with_lung) // 4]] = False
    nodule = np.zeros_like(right)
    nodule[len(sources) // 2, 200:210, 200:210] = True

    def description(number: int, label: str, of: int) -> hd.seg.SegmentDescription:
        model = seg.get_segment_description(of)
        return hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=model.segmented_property_category,
            segmented_property_type=model.segmented_property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)

    right_description = description(1, "RL corrected", numbers["Right lung"])
    right_description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = (
        seg.get_segment_description(numbers["Right lung"]).SegmentedPropertyTypeCodeSequence[0]
        .SegmentedPropertyTypeModifierCodeSequence)
    nodule_description = hd.seg.SegmentDescription(
        segment_number=3, segment_label="Nodule",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    corrected = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack([edited, left, nodule], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[right_description, description(2, "Left lung", numbers["Left lung"]),
                              nodule_description],
        series_instance_uid=generate_uid(), series_number=901, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="Workstation", manufacturer_model_name="Editor", software_versions="1",
        device_serial_number="WS1", omit_empty_frames=True)
    dice = {"Right lung": 2 * float(edited.sum()) / float(right.sum() + edited.sum()), "Left lung": 1.0}
    return corrected, dice


@pytest.mark.timeout(400)
def test_a_corrected_seg_is_matched_to_the_model_and_its_dice_recorded(node_factory, tmp_path: Path) -> None:
    study_folder, _volumes = chest_study(tmp_path)
    node: Node = node_factory("quiet_period_s = 1\ncompletion_sweep_s = 0.5\n", inference=True).start()
    send_study(node, study_folder)

    def done() -> dict | None:
        studies = json.loads(urllib.request.urlopen(node.api_url + "/api/studies", timeout=10).read())
        if len(studies) == 1 and studies[0]["state"] == "done":
            report = _results(node, studies[0]["study_instance_uid"])
            return report if report["results"] and report["results"][0]["objects"] else None
        return None
    report = wait_until(done, 240, "the chest CT's results")
    uid = report["study_instance_uid"]
    [result] = report["results"]
    [seg_line] = [o for o in result["objects"] if o["kind"] == "seg"]
    ours = _object(node, uid, seg_line["sop_instance_uid"])
    used = result["series"]["series_instance_uid"]
    sources = [ds for ds in (dcmread(p) for p in sorted(study_folder.rglob("*.dcm")))
               if str(ds.SeriesInstanceUID) == used]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))

    # The node's own SEG, back from an archive: not a reference.
    own = node.data_dir.parent / "own.dcm"
    ours.save_as(own)
    node.run("send", str(own), "--to", node.address)
    wait_until(lambda: "one of the node's own results" in node.log(), 60, "the node's own SEG to be recognised")

    corrected, expected = _corrected(ours, sources)
    path = node.data_dir.parent / "corrected.dcm"
    corrected.save_as(path)
    node.run("send", str(path), "--to", node.address)

    def compared() -> list[dict] | None:
        lines = _results(node, uid)["results"][0]["references"]
        return lines if len(lines) == 2 else None
    references = {r["segment"]: r for r in wait_until(compared, 90, "the comparison")}
    assert references["Right lung"]["reference_segment"] == "RL corrected"  # matched by code and laterality
    assert references["Right lung"]["dice"] == pytest.approx(expected["Right lung"], abs=1e-4)
    assert references["Right lung"]["dice"] < 0.95
    assert references["Right lung"]["reference_ml"] < references["Right lung"]["predicted_ml"]
    assert references["Left lung"]["dice"] == pytest.approx(1.0, abs=1e-6)
    assert references["Left lung"]["hd95_mm"] == pytest.approx(0.0, abs=1e-6)
    assert references["Right lung"]["hd95_mm"] > 0
    assert {r["reference_sop_instance_uid"] for r in references.values()} == {str(corrected.SOPInstanceUID)}

    after = _results(node, uid)
    assert after["state"] == "done" and after["results_version"] == 1  # neither SEG reopened the study
    assert len(after["results"]) == 1
    [step] = [s for s in after["timeline"] if s["step"] == "reference_compared"]
    assert "Right lung Dice" in step["detail"] and "Left lung Dice 1.000" in step["detail"]
    assert "reference: Right lung against the reference's RL corrected: Dice" in node.run("results", uid).stdout
    jobs = json.loads(node.run("jobs", "--json").stdout)
    assert all(j["state"] == "succeeded" for j in jobs)
    assert sum(j["kind"] == "reference_seg" for j in jobs) == 2
