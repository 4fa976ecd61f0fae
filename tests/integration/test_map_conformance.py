"""A model's maps as DICOM, on a phantom with a dense sphere: a classification
bundle's Grad-CAM explanation as a Parametric Map and an overlay key image, a
segmentation bundle's probabilities as a fractional SEG. dciodvfy finds no error in
any of them, and highdicom reads back the values on the right source images."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ai.bundle import BundleModel
from ai.encoders.identity import ResultIdentity
from ai.encoders.maps import EXPLANATION_LABEL
from ai.encoders.results import EncodedObject, ModelResult, encode_prediction
from ai.encoders.sc import EXPLANATION_BANNER
from ai.labelmap import MAP_STEPS, LabelMap
from ai.volume import load_volume
from tests.conftest import missing_peer
from tests.model_files import monai_bundle, monai_classifier_bundle
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

SHAPE = (16, 128, 128)  # slices, rows, columns: 1 mm slices of 0.7 mm pixels


def _sphere_series(folder: Path) -> tuple[list[Path], np.ndarray]:
    """A CT series of air with a 500 HU sphere of 6 mm radius off centre."""
    k, j, i = np.indices(SHAPE)
    dense = (k - 8) ** 2 + ((j - 60) * 0.7) ** 2 + ((i - 80) * 0.7) ** 2 <= 36
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(SHAPE[0]):
        ds = ct_slice(study, series, index, size=SHAPE[1])
        ds.PixelData = np.where(dense[index], 500, -1000).astype(np.int16).tobytes()
        path = folder / f"{index + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, dense


def _run(model: BundleModel, paths: list[Path]) -> tuple[ModelResult, list[Dataset]]:
    volume = load_volume(paths)
    model.load("cpu")
    with torch.inference_mode():
        prediction = model.predict(volume)
    blank = np.zeros(volume.shape, dtype=np.uint8)
    labelmap = LabelMap.of_volume(prediction.labelmap if prediction.labelmap is not None else blank, volume,
                                  prediction.maps)
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    return ModelResult(model.outputs, tuple(prediction.measurements), tuple(prediction.findings), labelmap), headers


def _encode(model: BundleModel, paths: list[Path]) -> tuple[list[EncodedObject], LabelMap]:
    result, headers = _run(model, paths)
    files = {str(h.SOPInstanceUID): p for h, p in zip(headers, paths, strict=True)}
    assert result.labelmap is not None
    uids = result.labelmap.sop_instance_uids

    def slice_values(index: int) -> np.ndarray:
        ds = dcmread(files[uids[index]])
        return ds.pixel_array.astype(np.float32)

    identity = ResultIdentity(str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID), model.name,
                              model.version, 1, source_series_number=1, created_at=1_790_000_000.0)
    return encode_prediction(identity, result, headers, slice_values), result.labelmap


def _dciodvfy_errors(ds: Dataset, path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        missing_peer("dciodvfy is not installed (apt-get install dicom3tools)")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    checked = subprocess.run([str(tool), str(path)], capture_output=True, text=True)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def test_an_explanation_is_a_conforming_parametric_map_and_an_overlay_not_a_finding(tmp_path: Path) -> None:
    paths, dense = _sphere_series(tmp_path / "series")
    objects, labelmap = _encode(BundleModel(monai_classifier_bundle(tmp_path / "nodule_ct")), paths)
    assert sorted(o.kind for o in objects) == ["pm", "sc", "sr"]  # no SEG: a classifier segments nothing
    by_kind = {o.kind: o.dataset for o in objects}
    for kind, ds in by_kind.items():
        assert _dciodvfy_errors(ds, tmp_path / f"{kind}.dcm") == [], kind

    pm = hd.pm.ParametricMap.from_dataset(by_kind["pm"])
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == EXPLANATION_LABEL and "not a finding" in mapping.LUTExplanation
    assert float(mapping.RealWorldValueSlope) == pytest.approx(1 / MAP_STEPS)
    assert pm.ContentLabel == "AIEXPLAIN" and "EXPLANATION" in pm.SeriesDescription
    # Each frame lies on its source image; its values, as real-world values, are the map's.
    sources = labelmap.sop_instance_uids
    for number, frame in enumerate(pm.PerFrameFunctionalGroupsSequence, start=1):
        derived = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        index = sources.index(derived)
        values = pm.get_stored_frame(number).astype(np.float64) * float(mapping.RealWorldValueSlope)
        assert np.allclose(values, labelmap.fraction("nodule explanation")[index], atol=1e-6)
    explained = labelmap.fraction("nodule explanation")
    assert np.median(explained[dense]) > 0.5 and explained[~dense].mean() < 0.1

    # The overlay is on the slice where the map weighs most (the sphere's centre), and
    # says it is an explanation; the heat scale is drawn there, the air elsewhere stays grey.
    sc = by_kind["sc"]
    shown = sources.index(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert abs(shown - 8) <= 1  # resized by the bundle to 12 slices and back
    assert "not a finding" in sc.ImageComments and sc.BurnedInAnnotation == "YES"
    pixels = sc.pixel_array.astype(int)
    warm = (pixels[..., 0] - pixels[..., 2]) > 60
    assert warm[56:64, 76:84].mean() > 0.5 and not warm[40:80, 10:40].any()
    assert EXPLANATION_BANNER.startswith("AI EXPLANATION")

    # The SR reports the finding with its score, as any classifier's.
    report = hd.sr.Comprehensive3DSR.from_dataset(by_kind["sr"])
    [group] = report.content.get_image_measurement_groups()
    assert str(group.tracking_identifier) == "nodule"
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.value.meaning == "Present"


def test_probabilities_are_a_conforming_fractional_seg_on_the_source_images(tmp_path: Path) -> None:
    paths, dense = _sphere_series(tmp_path / "series")
    model = BundleModel(monai_bundle(tmp_path / "dense_ct", pixdim=(0.7, 0.7, 1.0)), probabilities=True)
    objects, labelmap = _encode(model, paths)
    segs = [o.dataset for o in objects if o.kind == "seg"]
    assert len(segs) == 2  # the binary SEG and the probabilities
    [fractional] = [s for s in segs if s.SegmentationType == "FRACTIONAL"]
    assert fractional.SegmentationFractionalType == "PROBABILITY" and fractional.MaximumFractionalValue == 255
    assert fractional.SeriesInstanceUID != next(s for s in segs if s is not fractional).SeriesInstanceUID
    assert _dciodvfy_errors(fractional, tmp_path / "fractional.dcm") == []
    seg = hd.seg.Segmentation.from_dataset(fractional)
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel == "spleen probability"
    sources = [str(u) for u in labelmap.sop_instance_uids]
    probabilities = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=[1],
                                                      combine_segments=False, rescale_fractional=True)[..., 0]
    inside, outside = 1 / (1 + np.exp(-0.25)), 1 / (1 + np.exp(0.5))
    assert np.allclose(probabilities[dense], inside, atol=1 / 255)
    assert np.allclose(probabilities[~dense], outside, atol=1 / 255)
