"""SEG and SR encoding: deterministic UIDs, segments and measurements as declared."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from ai.encoders.identity import ResultIdentity
from ai.encoders.results import ModelResult, encode_prediction
from ai.labelmap import LabelMap
from ai.models.ct_chest import OUTPUTS
from ai.protocol import Assessment, Finding, Measurement
from tests.synthetic import TEST_UID_ROOT, ct_slice


def _inputs(slices: int = 6, scale: int = 1) -> tuple[ResultIdentity, list, np.ndarray]:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    sources = [ct_slice(study, series, i, size=32 * scale) for i in range(slices)]
    labelmap = np.zeros((slices, 32 * scale, 32 * scale), dtype=np.uint8)
    k = scale
    labelmap[1:5, 4 * k:28 * k, 4 * k:28 * k] = 1
    labelmap[2:4, 8 * k:14 * k, 8 * k:14 * k] = 2
    labelmap[2:4, 18 * k:24 * k, 18 * k:24 * k] = 3
    return ResultIdentity(study, series, "ct-chest", "1.0.0", 1), sources, labelmap


MEASUREMENTS = (
    Measurement("right lung volume", 3100.0, reliable=True),
    Measurement("right lung LAA-950", 14.0, reliable=False, note="sharp kernel"),
)
FINDINGS = (Finding("emphysema suspected", score=0.2, assessment=Assessment.ABSENT),)


def _result(sources: list, labelmap: np.ndarray, measurements: tuple[Measurement, ...] = MEASUREMENTS) -> ModelResult:
    """The result as the node hands it to the encoders: the label map on the sources' grid."""
    uids = tuple(str(s.SOPInstanceUID) for s in sources)
    grid = LabelMap(labelmap, uids, (1,) * len(uids), str(sources[0].SeriesInstanceUID), (1.0, 1.0, 1.0),
                    (0.0, 0.0, 0.0), np.eye(3))
    return ModelResult(OUTPUTS, measurements, FINDINGS, grid)


def _encode(identity: ResultIdentity, sources: list, labelmap: np.ndarray) -> dict:
    objects = encode_prediction(identity, _result(sources, labelmap), sources)
    return {o.kind: o.dataset for o in objects}


def test_encoding_again_makes_the_same_objects() -> None:
    identity, sources, labelmap = _inputs()
    first, again = _encode(identity, sources, labelmap), _encode(identity, sources, labelmap)
    for kind in ("seg", "sr"):
        assert first[kind].SOPInstanceUID == again[kind].SOPInstanceUID
        assert first[kind].SeriesInstanceUID == again[kind].SeriesInstanceUID
    newer = ResultIdentity(identity.study_instance_uid, identity.source_series_instance_uid,
                           "ct-chest", "1.0.0", 2)
    assert _encode(newer, sources, labelmap)["seg"].SOPInstanceUID != first["seg"].SOPInstanceUID
    assert first["seg"].SOPInstanceUID.startswith("2.25.")


def test_segments_frames_and_measurements() -> None:
    identity, sources, labelmap = _inputs()
    objects = _encode(identity, sources, labelmap)
    seg, sr = objects["seg"], objects["sr"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Body", "Right lung", "Left lung"]
    assert int(seg.NumberOfFrames) == 4 + 2 + 2  # empty frames left out
    right = seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert right.CodeMeaning == "Lung"
    assert right.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert seg.SeriesDescription == "AI ct-chest 1.0.0 SEG" and seg.StudyInstanceUID == identity.study_instance_uid
    text = str(sr)
    assert "Value indeterminate" in text  # the unreliable %LAA-950 is marked so
    assert "Pulmonary emphysema" in text and "Absent" in text


def test_no_segment_in_the_label_map_gives_an_sr_only() -> None:
    identity, sources, labelmap = _inputs()
    objects = encode_prediction(identity, _result(sources, np.zeros_like(labelmap), ()), sources)
    assert [o.kind for o in objects] == ["sr"]


def test_key_images_outline_each_segment_where_it_is_largest() -> None:
    identity, sources, labelmap = _inputs(scale=8)  # 256 x 256
    uids = [s.SOPInstanceUID for s in sources]
    hu = np.full((256, 256), -800.0, dtype=np.float32)
    objects = encode_prediction(identity, _result(sources, labelmap), sources, slice_values=lambda i: hu)
    images = [o.dataset for o in objects if o.kind == "sc"]
    # Body peaks on slice 1 (the first of equal areas), both lungs on slice 2: two key images.
    assert [str(i.SourceImageSequence[0].ReferencedSOPInstanceUID) for i in images] == [uids[1], uids[2]]
    image = images[1]
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and image.PhotometricInterpretation == "RGB"
    assert list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"] and image.BurnedInAnnotation == "YES"
    assert image.SeriesDescription == "AI ct-chest 1.0.0 KEY IMAGES"
    assert image.StudyInstanceUID == identity.study_instance_uid and image.PatientOrientation == ["L", "P"]
    pixels = image.pixel_array
    # The right lung's outline (the second colour) runs along its square's edge; inside it
    # the slice is the grey of -800 HU in the source's window, untouched.
    assert tuple(pixels[88, 64]) == (64, 220, 64) and tuple(pixels[88, 63]) == (64, 220, 64)
    inside = set(map(tuple, pixels[70:100, 70:100].reshape(-1, 3)))
    assert len(inside) == 1 and len(set(inside.pop())) == 1  # one grey
    assert pixels[:16, :, 0].max() > 200 and pixels[:16, :, 2].max() == 0  # the yellow banner text
    again = encode_prediction(identity, _result(sources, labelmap), sources, slice_values=lambda i: hu)
    assert [o.dataset.SOPInstanceUID for o in again if o.kind == "sc"] == [i.SOPInstanceUID for i in images]


def test_an_impossible_birth_date_does_not_stop_the_results() -> None:
    identity, sources, labelmap = _inputs()
    with pytest.warns(UserWarning):  # pydicom warns as the bad time is set; images arrive with them
        for ds in sources:
            ds.PatientBirthDate, ds.StudyTime = "19340229", "256199"  # no 29 February in 1934; no hour 25
    objects = _encode(identity, sources, labelmap)
    assert objects["seg"].PatientBirthDate == "" and objects["sr"].PatientBirthDate == ""


def _encode_with(identity: ResultIdentity, sources: list, labelmap: np.ndarray,
                 findings: tuple[Finding, ...]) -> dict:
    result = _result(sources, labelmap)
    result = ModelResult(result.outputs, result.measurements, findings, result.labelmap)
    return {o.kind: o.dataset for o in encode_prediction(identity, result, sources)}


def _content(ds) -> list:  # type: ignore[no-untyped-def]
    found = []

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for item in items:
            found.append(item)
            walk(item.get("ContentSequence", []))
    walk(ds.ContentSequence)
    return found


def test_an_indeterminate_finding_is_encoded_as_undetermined_with_its_reason_never_absent() -> None:
    identity, sources, labelmap = _inputs()
    reason = "%LAA-950 not reliable: sharp reconstruction kernel B70f"
    sr = _encode_with(identity, sources, labelmap,
                      (Finding("emphysema suspected", None, Assessment.INDETERMINATE, reason),))["sr"]
    items = _content(sr)
    codes = [(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE" and "ConceptCodeSequence" in i]
    assert ("Pulmonary emphysema", "373068000") in codes  # CID 240 Undetermined
    assert not any(value in ("272519000", "2667000", "52101004") for _, value in codes)
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any("indeterminate" in t and reason in t for t in texts)
    assert not any(i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "111012"
                   for i in items)  # no certainty of 0 standing for "could not judge"


def test_a_scored_finding_has_its_certainty_in_its_own_group_with_standard_codes() -> None:
    identity, sources, labelmap = _inputs()
    sr = _encode_with(identity, sources, labelmap,
                      (Finding("emphysema suspected", 0.83, Assessment.PRESENT),))["sr"]
    items = _content(sr)
    [certainty] = [i for i in items if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "111012"]
    value = certainty.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(83.0)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    trackers = [i.TextValue for i in items if i.ValueType == "TEXT"
                and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"]
    assert "emphysema suspected" in trackers


def test_seg_sr_agree_on_tracking_and_encoding_again_gives_the_same_bytes() -> None:
    import io
    import time

    import highdicom as hd

    identity, sources, labelmap = _inputs()
    identity = ResultIdentity(identity.study_instance_uid, identity.source_series_instance_uid, "ct-chest",
                              "1.0.0", 1, source_series_number=3, created_at=1_800_000_000.0)
    first = _encode(identity, sources, labelmap)
    seg, sr = first["seg"], first["sr"]
    segments = {str(s.SegmentLabel): (str(s.TrackingUID), str(s.TrackingID)) for s in seg.SegmentSequence}
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(segments) == 3
    for group in groups:
        label = str(group.tracking_identifier)
        assert (group.tracking_uid, label) == segments[label]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert all("RecommendedDisplayCIELabValue" in s for s in seg.SegmentSequence)
    assert seg.DeviceSerialNumber == "AINODE" and sr.SoftwareVersions[1] == "1.0.0"
    assert sr.ManufacturerModelName == "ct-chest"
    assert seg.SeriesNumber != sr.SeriesNumber and "of series 3" in sr.SeriesDescription
    items = _content(sr)
    derivations = [i.ConceptCodeSequence[0].CodeMeaning for i in items
                   if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Derivation"]
    methods = [i.ConceptCodeSequence[0].CodeMeaning for i in items
               if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"]
    assert methods == ["Sum of segmented voxel method for volume"]  # the right lung volume given
    assert derivations == [] or set(derivations) == {"Mean"}
    # TID 1600: every source image is an entry of one group (CT, the source's frame of
    # reference); entries carry no per-image descriptors (what made a 300-slice SR 1.2 MB).
    [library] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"]
    [group] = library.ContentSequence
    entries = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == \
        [s.SOPInstanceUID for s in sources]
    assert all("ContentSequence" not in e for e in entries)
    shared = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in group.ContentSequence if i.ValueType != "IMAGE"}
    assert shared["Modality"].ConceptCodeSequence[0].CodeValue == "CT"
    assert shared["Frame of Reference UID"].UID == sources[0].FrameOfReferenceUID
    procedure = [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "169069000"

    def as_bytes(objects: dict) -> dict:
        out = {}
        for kind, ds in objects.items():
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out[kind] = buffer.getvalue()
        return out

    time.sleep(1.1)  # another second on the clock
    again = _encode(identity, sources, labelmap)
    assert as_bytes(first) == as_bytes(again)


def test_each_detected_lesion_is_its_own_group_with_its_place_and_size() -> None:
    import highdicom as hd

    from ai.encoders.results import ModelResult
    from ai.protocol import Code, Detection, DetectionSpec, Outputs

    identity, sources, _ = _inputs()
    nodule = Code("27925004", "SCT", "Nodule")
    outputs = Outputs(detections=(DetectionSpec("lung nodule", nodule, threshold=0.4),))
    detections = (
        Detection("lung nodule", (10.0, 12.5, 3.0), 0.91, (8.0, 6.0, 4.0)),  # an ellipsoid
        Detection("lung nodule", (20.0, 5.0, 2.0), 0.55),  # a point
        Detection("lung nodule", (1.0, 1.0, 1.0), 0.2),  # below the threshold: not reported
    )
    objects = encode_prediction(identity, ModelResult(outputs, detections=detections), sources)
    [sr] = [o.dataset for o in objects if o.kind == "sr"]
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["lung nodule 1", "lung nodule 2"]
    assert len({g.tracking_uid for g in groups}) == 2
    first, second = groups
    assert first.finding_type.value == "27925004"
    surface = first.roi
    assert surface.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
    assert surface.frame_of_reference_uid == sources[0].FrameOfReferenceUID
    ends = surface.graphic_data
    assert np.allclose(ends.mean(axis=0), (10.0, 12.5, 3.0))
    assert np.allclose(np.ptp(ends, axis=0), (8.0, 6.0, 4.0))
    values = {m.name.meaning: (m.value, m.unit.value) for m in first.get_measurements()}
    assert values["Certainty of Finding"] == (pytest.approx(91.0), "%")
    assert values["Long axis"] == (pytest.approx(8.0), "mm") and values["Short axis"] == (pytest.approx(4.0), "mm")
    assert values["Volume"][0] == pytest.approx(np.pi / 6 * 8 * 6 * 4 / 1000, rel=1e-3)
    assert second.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
    assert np.allclose(second.roi.graphic_data, [(20.0, 5.0, 2.0)])
    assert [m.name.meaning for m in second.get_measurements()] == ["Certainty of Finding"]


def test_a_lesion_is_marked_on_the_key_image_of_the_slice_nearest_its_centre() -> None:
    from ai.encoders.sc import LESION_COLOUR
    from ai.protocol import Code, Detection, DetectionSpec, Outputs

    identity, sources, _ = _inputs(scale=8)  # 6 slices of 256 x 256 at 0.7 mm, 1 mm apart
    uids = tuple(str(s.SOPInstanceUID) for s in sources)
    blank = LabelMap(np.zeros((6, 256, 256), dtype=np.uint8), uids, (1,) * 6, str(sources[0].SeriesInstanceUID),
                     (1.0, 0.7, 0.7), (0.0, 0.0, 0.0), np.eye(3))
    outputs = Outputs(detections=(DetectionSpec("lung nodule", Code("27925004", "SCT", "Nodule")),))
    # Centre at column 100, row 60, between slices 3 and 4 (z = 3.4 mm): slice 3 is nearest.
    lesion = Detection("lung nodule", (100 * 0.7, 60 * 0.7, 3.4), 0.91, (14.0, 14.0, 4.0))
    hu = np.full((256, 256), -800.0, dtype=np.float32)
    objects = encode_prediction(identity, ModelResult(outputs, labelmap=blank, detections=(lesion,)), sources,
                                slice_values=lambda i: hu)
    assert [o.kind for o in objects] == ["sr", "sc"]  # no SEG for a blank label map
    [image] = [o.dataset for o in objects if o.kind == "sc"]
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == uids[3]
    pixels = image.pixel_array
    ring = np.all(pixels == LESION_COLOUR, axis=2)
    rows, columns = np.nonzero(ring[20:200])  # the lesion, not the legend at the bottom
    # The cross-section 0.4 mm from the centre of a 14 mm ellipsoid is about 13.3 mm wide:
    # a ring of radius ~9.5 pixels around column 100, row 60.
    assert abs(columns.mean() - 100) < 1.5 and abs(rows.mean() + 20 - 60) < 1.5
    assert 8 < (columns.max() - columns.min()) / 2 < 11
    legend = pixels[200:].astype(int)
    orange = (legend[..., 0] > 150) & (legend[..., 1] > 60) & (legend[..., 1] < legend[..., 0] - 40) \
        & (legend[..., 2] < 40)
    assert orange.sum() > 20  # "1: lung nodule, 14.0 x 14.0 x 4.0 mm, score 0.91" in the lesion colour
