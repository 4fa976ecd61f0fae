"""Reading back what a container model wrote: a NIfTI label map in any axis order is
put on the series' grid exactly or refused; a SEG the container made is checked to
reference the source series and read back as the label map; unpinned images are
refused. (The containers themselves run in tests/integration/test_containers.py.)"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from ai.container import ContainerError, ModelFailed, nifti_on_grid, read_container_manifest, segmentation_on_grid
from ai.protocol import Code, Outputs, SegmentSpec
from ai.volume import Volume, volume_from_datasets
from tests.containers import container_model_folder
from tests.synthetic import TEST_UID_ROOT, ct_slice

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume() -> tuple[Volume, np.ndarray, list]:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    sources = [ct_slice(study, series, i, size=16) for i in range(6)]
    volume = volume_from_datasets(sources, 3)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[1:4, 2:9, 5:12] = 1
    labels[4, 10:14, 1:3] = 2
    return volume, labels, sources


def _write(path: Path, data: np.ndarray, lps_affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, LPS_TO_RAS @ lps_affine), str(path))
    return path


def test_a_nifti_label_map_in_any_axis_order_comes_back_on_the_series_grid(tmp_path: Path) -> None:
    volume, labels, _ = _volume()
    affine = volume.affine_lps()  # voxel (column, row, slice) -> LPS
    own = _write(tmp_path / "own.nii.gz", labels.transpose(2, 1, 0), affine)
    assert np.array_equal(nifti_on_grid(own, volume), labels)
    # (slice, row, column) axis order with the slices reversed: the affine says so.
    permute = np.zeros((4, 4))
    permute[2, 0], permute[1, 1], permute[0, 2], permute[3, 3] = -1, 1, 1, 1
    permute[2, 3] = volume.shape[0] - 1
    other = _write(tmp_path / "other.nii.gz", labels[::-1].copy(), affine @ permute)
    assert np.array_equal(nifti_on_grid(other, volume), labels)


def test_a_nifti_label_map_off_the_grid_is_refused(tmp_path: Path) -> None:
    volume, labels, _ = _volume()
    affine = volume.affine_lps()
    coarse = affine.copy()
    coarse[:3, :3] *= 2.0
    with pytest.raises(ModelFailed, match="not on the series' grid"):
        nifti_on_grid(_write(tmp_path / "coarse.nii.gz", labels.transpose(2, 1, 0), coarse), volume)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 2]
    with pytest.raises(ModelFailed, match="covers another region"):
        nifti_on_grid(_write(tmp_path / "shifted.nii.gz", labels.transpose(2, 1, 0), shifted), volume)
    smaller = labels[:, :, :10].transpose(2, 1, 0)
    with pytest.raises(ModelFailed, match="covers another region"):
        nifti_on_grid(_write(tmp_path / "smaller.nii.gz", smaller, affine), volume)
    values = labels.transpose(2, 1, 0).astype(np.float32) * 0.5
    with pytest.raises(ModelFailed, match="not labels"):
        nifti_on_grid(_write(tmp_path / "float.nii.gz", values, affine), volume)


OUTPUTS = Outputs(segments=(
    SegmentSpec(1, "liver", Code("91723000", "SCT", "Anatomical Structure"), Code("10200004", "SCT", "Liver")),
    SegmentSpec(2, "spleen", Code("91723000", "SCT", "Anatomical Structure"), Code("78961009", "SCT", "Spleen")),
))


def _container_seg(sources: list, labels: np.ndarray, names: tuple[str, ...], path: Path) -> Path:
    for ds in sources:  # Type 2 attributes highdicom copies from the source
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "ReferringPhysicianName"):
            setattr(ds, keyword, ds.get(keyword, ""))
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="their-model", version="1",
            family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")))
        for n, name in enumerate(names, start=1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="them", manufacturer_model_name="m",
        software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


def test_a_seg_the_container_made_is_read_back_on_the_source_images(tmp_path: Path) -> None:
    volume, labels, sources = _volume()
    seg = _container_seg(sources, labels, ("Liver", "spleen"), tmp_path / "seg.dcm")
    assert np.array_equal(segmentation_on_grid([seg], volume, OUTPUTS), labels)

    undeclared = _container_seg(sources, labels, ("liver", "kidney"), tmp_path / "other.dcm")
    with pytest.raises(ModelFailed, match="segment 'kidney', which the model does not declare"):
        segmentation_on_grid([undeclared], volume, OUTPUTS)
    study = sources[0].StudyInstanceUID
    other_series = generate_uid(TEST_UID_ROOT)
    elsewhere = [ct_slice(study, other_series, i, size=16) for i in range(6)]
    foreign = _container_seg(elsewhere, labels, ("liver", "spleen"), tmp_path / "foreign.dcm")
    with pytest.raises(ModelFailed, match="does not reference the source series"):
        segmentation_on_grid([foreign], volume, OUTPUTS)


def test_an_image_must_be_pinned_by_digest(tmp_path: Path) -> None:
    folder = container_model_folder(tmp_path / "m", "localhost/their-model:latest")
    with pytest.raises(ContainerError, match=r"image 'localhost/their-model:latest' is not pinned"):
        read_container_manifest(folder)
    pinned = container_model_folder(tmp_path / "p", "localhost/their-model@sha256:" + "ab" * 32)
    assert read_container_manifest(pinned).convention == "ainode"


def test_a_check_says_when_the_pinned_image_is_not_on_the_machine(tmp_path: Path) -> None:
    from ai.model_check import check_model_folder

    absent = container_model_folder(tmp_path / "absent", "sha256:" + "0f" * 32)
    report = check_model_folder(absent)
    assert report.kind == "container" and report.name == "dense-container"
    assert "segment 1 'dense tissue': Tissue (SCT 85756007), Anatomical Structure" in report.outputs
    [problem] = report.problems
    assert problem.startswith("does not load: ModelFailed: ")
    assert "nothing is pulled" in problem or "is not installed" in problem
