"""Conformance of the result objects on a real chest CT: dciodvfy and dcentvfy find no
error, highdicom reads the TID 1500 report back into what it should say, SEG, SR and
key images agree on identity, and encoding again gives the same bytes.

The public sample (../shared/data/ct-chest-tcia-a0001, soft-tissue kernel, 5 mm) is
used where present; otherwise the phantom made the same way.
"""

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
from pydicom.pixels.processing import apply_modality_lut

from ai.encoders.identity import ResultIdentity
from ai.encoders.results import EncodedObject, ModelResult, encode_prediction
from ai.labelmap import LabelMap
from ai.models.ct_chest import CtChestModel
from ai.volume import load_volume
from tests.conftest import missing_peer
from tests.phantoms import chest_study

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_peer(f"{name} is not installed (apt-get install dicom3tools)")
    return str(path)


def _soft_series(tmp_path: Path) -> list[Path]:
    study, _ = chest_study(tmp_path)
    folder = study / "series-soft-tissue-kernel" if (study / "series-soft-tissue-kernel").exists() else study / "soft"
    return sorted(folder.glob("*.dcm"))


def _encode(paths: list[Path]) -> tuple[list[EncodedObject], list[Dataset]]:
    volume = load_volume(paths)
    model = CtChestModel()
    model.load("cpu")
    with torch.inference_mode():
        prediction = model.predict(volume)
    labelmap = LabelMap.of_volume(prediction.labelmap, volume)
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    files = {str(h.SOPInstanceUID): p for h, p in zip(headers, paths, strict=True)}

    def slice_values(index: int) -> np.ndarray:
        ds = dcmread(files[labelmap.sop_instance_uids[index]])
        return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)

    identity = ResultIdentity(str(headers[0].StudyInstanceUID), volume.series_instance_uid, model.name,
                              model.version, 1, source_series_number=int(headers[0].SeriesNumber),
                              created_at=1_790_000_000.0, device_serial_number="AINODE")
    result = ModelResult(model.outputs, tuple(prediction.measurements), tuple(prediction.findings), labelmap)
    return encode_prediction(identity, result, headers, slice_values), headers


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _content(ds: Dataset) -> list[Dataset]:
    found: list[Dataset] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            found.append(item)
            walk(item.get("ContentSequence", []))
    walk(ds.ContentSequence)
    return found


def test_results_on_a_real_chest_ct_conform_and_agree(tmp_path: Path) -> None:
    paths = _soft_series(tmp_path)
    objects, _headers = _encode(paths)
    kinds = [o.kind for o in objects]
    assert kinds[:2] == ["seg", "sr"] and kinds.count("sc") >= 2
    files = []
    for number, obj in enumerate(objects):
        path = tmp_path / f"{number:02d}-{obj.kind}.dcm"
        path.write_bytes(_bytes(obj.dataset))
        files.append(path)

    # dciodvfy: no error in any object (warnings left: the source's old-style name, no Study ID,
    # the private code of %LAA-950, for which no standard concept exists).
    for path in files:
        checked = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"
    # dcentvfy: every object says what the source says of patient and study.
    entities = subprocess.run([_tool("dcentvfy"), *map(str, files), *map(str, paths)],
                              capture_output=True, text=True)
    problems = [line for line in (entities.stdout + entities.stderr).splitlines()
                if line.startswith("Error") or "present in one instance but not" in line
                or "alue different" in line]
    assert problems == []

    seg = dcmread(files[0])
    sr = dcmread(files[1])
    key_images = [dcmread(f) for f, k in zip(files, kinds, strict=True) if k == "sc"]

    # The same ROI, the same Tracking UID and Tracking ID in the SEG and in the SR (TID 1411 rows 2-3).
    segments = {int(s.SegmentNumber): (str(s.TrackingUID), str(s.TrackingID), str(s.SegmentLabel))
                for s in seg.SegmentSequence}
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(segments) == 3
    for group in groups:
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        uid, tracking_id, _label = segments[segment.referenced_segment_numbers[0]]
        assert (group.tracking_uid, str(group.tracking_identifier)) == (uid, tracking_id)
        # TID 4019 algorithm identification in every group: the model and its version.
        named = {(i.ConceptNameCodeSequence[0].CodeValue, i.get("TextValue")) for i in _content(group[0])}
        assert ("111001", "ct-chest") in named and ("111003", "1.0.0") in named  # name, version

    # Units, derivation and method as declared; reliability as a qualifier (CID 42).
    items = _content(sr)
    numbers = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in items if i.ValueType == "NUM"}
    units = {name: i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for name, i in numbers.items()}
    assert units["Volume"] == "mL" and units["Attenuation Coefficient"] == "[hnsf'U]"
    modifiers = [(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
                 for i in items if i.ValueType == "CODE"]
    assert ("Derivation", "Mean") in modifiers
    assert ("Measurement Method", "Sum of segmented voxel method for volume") in modifiers
    qualifiers = [i.NumericValueQualifierCodeSequence[0].CodeMeaning for i in numbers.values()
                  if "NumericValueQualifierCodeSequence" in i]
    assert "Value indeterminate" in qualifiers  # 5 mm slices: the density indices
    # The emphysema finding on 5 mm slices: undetermined with its reason, no certainty.
    assert ("Pulmonary emphysema", "Undetermined") in modifiers
    assert any(i.ValueType == "TEXT" and "5 mm slices" in i.TextValue for i in items)
    assert "Certainty of Finding" not in numbers
    # Procedure reported (TID 1500 row 3) and the image library (row 4).
    assert ("Procedure reported", "Computed tomography of chest") in modifiers
    library = [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"]
    assert library

    # The key images: the source's patient and study, the values and their reliability drawn.
    for image in key_images:
        assert image.StudyInstanceUID == seg.StudyInstanceUID and image.PatientID == seg.PatientID
        assert image.BurnedInAnnotation == "YES"
    # Colours: the SEG recommends (CIELab) the colour the key images draw each outline in.
    assert all("RecommendedDisplayCIELabValue" in s for s in seg.SegmentSequence)

    # Encoding again gives the very same bytes under the same UIDs.
    again, _ = _encode(paths)
    assert [_bytes(o.dataset) for o in again] == [f.read_bytes() for f in files]
