"""Inference in a real node: a chest CT from C-STORE to a recorded ct-chest prediction
on the defaults, plugin and folder models, a worker crash, and `ainode worker`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ai.labelmap import LabelMap
from tests.conftest import AINODE, REPO, Node, send_study, wait_until
from tests.model_files import onnx_segmenter
from tests.phantoms import chest_study
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration

PLUGINS = REPO / "tests" / "plugins"


def _predictions(node: Node) -> list[dict]:
    return json.loads(node.run("predictions", "--json").stdout)


def _jobs(node: Node) -> list[dict]:
    return json.loads(node.run("jobs", "--json", "--kind", "infer").stdout)


def test_chest_ct_from_c_store_to_a_ct_chest_prediction_on_the_defaults(
    node_factory, tmp_path: Path
) -> None:
    node: Node = node_factory(inference=True).start()  # nothing configured but where to keep data
    study, (right_ml, left_ml) = chest_study(tmp_path)
    send_study(node, study)
    # The default quiet period is 30 s; then the built-in route picks the soft-kernel series.
    [prediction] = wait_until(lambda: _predictions(node), 150, "the ct-chest prediction")
    assert (prediction["model"], prediction["route"], prediction["results_version"]) == \
        ("ct-chest", "ct-chest", 1)
    values = {m["name"]: m for m in prediction["measurements"]}
    right, left = values["right lung volume"]["value"], values["left lung volume"]["value"]
    assert right == pytest.approx(right_ml, rel=0.05) and left == pytest.approx(left_ml, rel=0.05)
    assert -900 < values["right lung mean density"]["value"] < -700
    assert prediction["provenance"]["convolution_kernel"] in ("B", "B30f")  # the smooth one
    # 5 mm slices: the emphysema index is recorded but marked not reliable, no finding.
    assert not values["right lung LAA-950"]["reliable"]
    assert "5 mm slices" in values["right lung LAA-950"]["note"]
    assert [f["present"] for f in prediction["findings"]] == [False]
    labelmap = LabelMap.from_npz(node.data_dir / prediction["labelmap_path"]).array
    assert labelmap.shape[0] == 64 and set(np.unique(labelmap)) == {0, 1, 2, 3}
    [job] = _jobs(node)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert "PHANTOM" not in node.log() and "Phantom" not in node.log()


def _ct_route(name: str, model: str) -> str:
    """A [[routes]] table sending every CT series of 5 images or more to ``model``."""
    return f'\n[[routes]]\nname = "{name}"\nmodel = "{model}"\n[routes.match]\nmodality = ["CT"]\nmin_instances = 5\n'


def _plugin_config(tmp_path: Path, extra: str = "") -> str:
    models = tmp_path / "models"
    onnx_segmenter(models / "dense")
    return f"""\
{extra}quiet_period_s = 1
completion_sweep_s = 0.5
job_lease_s = 3
job_retry_base_delay_s = 0.5
model_folders = ["{models}"]

[models.crash-once]
cpu_threads = 1
[models.crash-once.options]
marker_dir = "{tmp_path}"

""" + _ct_route("crash", "crash-once") + _ct_route("dense", "dense-onnx")


def test_plugin_and_folder_models_and_a_worker_crash_costs_one_attempt(
    node_factory, tmp_path: Path
) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    node: Node = node_factory(_plugin_config(tmp_path), inference=True, extra_env=env).start()
    listed = {m["name"]: m for m in json.loads(node.run("models", "--json").stdout)}
    assert listed["crash-once"]["source"] == "entry point ainode_test_models:CrashOnceModel"
    assert listed["dense-onnx"]["source"].startswith("folder ")

    write_ct_study(tmp_path / "study", series=1, slices=8)
    node.run("send", str(tmp_path / "study"), "--to", node.address)
    rows = wait_until(lambda: len(p := _predictions(node)) == 2 and p, 90, "both predictions")
    assert {r["model"] for r in rows} == {"crash-once", "dense-onnx"}
    attempts = {j["payload"]["model"]: (j["state"], j["attempts"]) for j in _jobs(node)}
    # The first run of crash-once killed its worker: that attempt failed, the lease ran
    # out, the job ran again on the restarted worker; the other job was not affected.
    assert attempts == {"crash-once": ("succeeded", 2), "dense-onnx": ("succeeded", 1)}
    # [models.crash-once] cpu_threads = 1: the model ran on one PyTorch thread.
    assert {r["model"]: r["provenance"].get("cpu_threads") for r in rows}["crash-once"] == 1
    assert "inference-cpu-1 exited unexpectedly" in node.log()
    assert node.run("echo", node.address).returncode == 0


def test_ainode_worker_computes_for_a_node_on_shared_postgresql(
    node_factory, fresh_postgres_url: str, tmp_path: Path
) -> None:
    config = _plugin_config(tmp_path, f'database_url = "{fresh_postgres_url}"\n').replace(
        'name = "crash"\nmodel = "crash-once"', 'name = "crash"\nmodel = "crash-once"\nenabled = false')
    node: Node = node_factory(config).start()  # receives, completes and queues; infers nothing
    assert "0 inference workers" in node.log()
    write_ct_study(tmp_path / "study", series=1, slices=8)
    node.run("send", str(tmp_path / "study"), "--to", node.address)
    wait_until(lambda: _jobs(node), 30, "the infer job")
    # The node's job worker is running and claims what it can: a self-test job queued
    # after the infer job runs to the end, and the infer job is still waiting untouched.
    assert node.run("selftest", "queue", "--jobs", "1", "--wait", "30").returncode == 0
    [infer] = _jobs(node)
    assert _predictions(node) == [] and (infer["state"], infer["attempts"]) == ("queued", 0)

    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([*AINODE, "worker", "--config", str(node.config), "--data-dir",
                               str(node.data_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        [row] = wait_until(lambda: _predictions(node), 60, "the prediction from `ainode worker`")
        assert row["model"] == "dense-onnx" and row["device"] == "cpu"
        assert _jobs(node)[0]["state"] == "succeeded"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    text = (tmp_path / "worker.log").read_text()
    assert "AINode workers running" in text and "AINode workers stopped" in text


def test_the_built_in_rule_takes_a_thick_chest_ct_and_leaves_head_and_abdomen_not_applicable(
    node_factory, tmp_path: Path
) -> None:
    """On the built-in rule: a 30-slice, 8 mm chest CT on two kernels is processed on the
    soft one, its emphysema assessment indeterminate (8 mm: density indices not
    reliable); a head CT (Body Part Examined HEAD) is taken by no rule; an abdomen CT
    whose header names no region reaches ct-chest, which declines it. Nothing fails."""
    from tests.phantoms import abdomen_phantom, chest_phantom, head_phantom, write_phantom_series

    chest = chest_phantom(slices=30, size=192, slice_mm=8.0, pixel_mm=1.8, seed=11)
    chest_uid = "1.2.826.0.1.3680043.10.1234.301"
    write_phantom_series(chest, tmp_path / "chest" / "sharp", kernel="B70f", study_uid=chest_uid,
                         description="CT Thorax", attributes={"SeriesNumber": 2, "AccessionNumber": "CHEST8"})
    write_phantom_series(chest, tmp_path / "chest" / "soft", kernel="B31f", study_uid=chest_uid,
                         description="CT Thorax", attributes={"SeriesNumber": 3, "AccessionNumber": "CHEST8"})
    write_phantom_series(head_phantom(), tmp_path / "head", kernel="H31s", description="CT Kopf",
                         attributes={"BodyPartExamined": "HEAD", "AccessionNumber": "HEAD1"})
    write_phantom_series(abdomen_phantom(), tmp_path / "abdomen", kernel="B30f", description="",
                         attributes={"AccessionNumber": "ABD1"})
    node: Node = node_factory("quiet_period_s = 1\ncompletion_sweep_s = 0.5\n", inference=True).start()
    for folder in ("chest", "head", "abdomen"):
        send_study(node, tmp_path / folder)

    def states() -> dict[str, str] | None:
        studies = json.loads(urllib.request.urlopen(node.api_url + "/api/studies", timeout=10).read())
        found = {s["accession_number"]: s["state"] for s in studies}
        return found if len(found) == 3 and not {"receiving", "complete", "processing"} & set(found.values()) \
            else None
    assert wait_until(states, 150, "three studies settled") == {
        "CHEST8": "done", "HEAD1": "not_applicable", "ABD1": "not_applicable"}

    [prediction] = _predictions(node)
    assert prediction["provenance"]["convolution_kernel"] == "B31f"  # the soft kernel of the two
    values = {m["name"]: m for m in prediction["measurements"]}
    assert values["right lung volume"]["value"] == pytest.approx(chest.right_ml, rel=0.05)
    assert values["right lung volume"]["reliable"] and not values["right lung LAA-950"]["reliable"]
    assert [f["assessment"] for f in prediction["findings"]] == ["indeterminate"]
    assert all(j["state"] == "succeeded" for j in json.loads(node.run("jobs", "--json").stdout))
    abdomen = [s for s in json.loads(urllib.request.urlopen(node.api_url + "/api/studies", timeout=10).read())
               if s["accession_number"] == "ABD1"][0]["study_instance_uid"]
    report = json.loads(node.run("results", abdomen, "--json").stdout)
    assert any("not a chest CT" in d for d in report["declined"])


def test_a_monai_bundle_segments_a_received_series_voxel_for_voxel(node_factory, tmp_path: Path) -> None:
    """A MONAI bundle in the Model Zoo layout, among the model folders: its own
    transforms (reorientation to RAS, resampling, intensity scaling, inversion) and
    network run on a received series, and the SEG marks exactly the voxels above
    0 HU, each on the source image it belongs to."""
    import highdicom as hd
    from pydicom import dcmread

    from tests.model_files import monai_bundle

    monai_bundle(tmp_path / "models" / "dense_ct_bundle", pixdim=(0.7, 0.7, 1.0))  # the series' own grid
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{tmp_path / 'models'}"]
""" + _ct_route("dense", "dense_ct_bundle")
    node: Node = node_factory(config, inference=True).start()
    listed = {m["name"]: m for m in json.loads(node.run("models", "--json").stdout)}
    assert listed["dense_ct_bundle"]["source"].startswith("MONAI bundle ")
    sources = write_ct_study(tmp_path / "study", series=1, slices=10, size=48)
    send_study(node, tmp_path / "study")
    [prediction] = wait_until(lambda: _predictions(node), 90, "the bundle's prediction")
    assert prediction["model"] == "dense_ct_bundle" and prediction["model_version"] == "0.3.1"

    def seg_file() -> Path | None:
        return next((p for p in (node.data_dir / "results").rglob("*.dcm")
                     if dcmread(p, stop_before_pixels=True).Modality == "SEG"), None)
    seg = hd.seg.segread(wait_until(seg_file, 60, "the SEG"))
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel == "spleen"  # the bundle's metadata names channel 1
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    images = [dcmread(p) for p in sources]
    marked = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in images], segment_numbers=[1],
        combine_segments=True, ignore_spatial_locations=False)
    expected = np.stack([ds.pixel_array > 0 for ds in images])
    assert marked.shape == expected.shape and np.array_equal(marked > 0, expected)


def test_a_model_that_cannot_load_fails_its_jobs_with_the_reason_and_the_node_serves_on(
        node_factory, tmp_path: Path) -> None:
    import torch

    from tests.model_files import monai_bundle

    broken = monai_bundle(tmp_path / "models" / "broken_bundle")
    torch.save(torch.nn.Conv3d(1, 3, 1).state_dict(), broken / "models" / "model.pt")  # 3 channels, not 2
    onnx_segmenter(tmp_path / "models" / "dense")
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{tmp_path / 'models'}"]
""" + _ct_route("broken_bundle", "broken_bundle") + _ct_route("dense-onnx", "dense-onnx")
    node: Node = node_factory(config, inference=True).start()
    assert "model broken_bundle cannot be loaded on cpu" in node.log()
    write_ct_study(tmp_path / "study", series=1, slices=8)
    send_study(node, tmp_path / "study")
    jobs = wait_until(lambda: len(j := _jobs(node)) == 2 and all(x["state"] in ("succeeded", "dead") for x in j)
                      and j, 90, "both infer jobs settled")
    states = {j["payload"]["model"]: (j["state"], j["last_error"] or "") for j in jobs}
    assert states["dense-onnx"][0] == "succeeded"
    assert states["broken_bundle"][0] == "dead"
    assert "model broken_bundle cannot be loaded" in states["broken_bundle"][1]
    assert "size mismatch" in states["broken_bundle"][1]
    assert [p["model"] for p in _predictions(node)] == ["dense-onnx"]
    assert node.run("echo", node.address).returncode == 0


def test_a_detected_lesion_is_one_sr_group_at_its_place_and_raises_the_study(node_factory, tmp_path: Path) -> None:
    """A detection model (tests/plugins: one nodule at the centre of the voxels above
    0 HU) on a received series: the SR holds one TID 1411 group for the lesion with
    its ellipsoid in patient space, and a [[triage]] rule on the lesion's kind raises
    the study."""
    import highdicom as hd
    from pydicom import dcmread

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    config = "quiet_period_s = 1\ncompletion_sweep_s = 0.5\n" + _ct_route("nodules", "blob-detector") + """
[[triage]]
finding = "lung nodule"
min_score = 0.5
level = "urgent"
"""
    node: Node = node_factory(config, inference=True, extra_env=env).start()
    sources = write_ct_study(tmp_path / "study", series=1, slices=6, size=32)
    send_study(node, tmp_path / "study")

    def sr_file() -> Path | None:
        return next((p for p in (node.data_dir / "results").rglob("*.dcm")
                     if dcmread(p, stop_before_pixels=True).Modality == "SR"), None)
    report = hd.sr.Comprehensive3DSR.from_dataset(dcmread(wait_until(sr_file, 90, "the SR")))
    [group] = report.content.get_volumetric_roi_measurement_groups()
    assert str(group.tracking_identifier) == "lung nodule 1" and group.finding_type.value == "27925004"
    points = []
    for path in sources:
        ds = dcmread(path)
        j, i = np.nonzero(ds.pixel_array > 0)
        x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
        points.append(np.stack([x0 + i * float(ds.PixelSpacing[1]), y0 + j * float(ds.PixelSpacing[0]),
                                np.full(i.shape, z0)], axis=1))
    expected = np.concatenate(points).mean(axis=0)
    assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
    assert np.allclose(group.roi.graphic_data.mean(axis=0), expected, atol=1e-3)
    studies = json.loads(urllib.request.urlopen(node.api_url + "/api/studies", timeout=10).read())
    [study] = studies
    assert study["priority"] == "urgent"
    [prediction] = _predictions(node)
    assert [(f["name"], f["assessment"]) for f in prediction["findings"]] == [("lung nodule", "present")]
    [result] = json.loads(node.run("results", study["study_instance_uid"], "--json").stdout)["results"]
    [lesion] = result["detections"]
    assert lesion["name"] == "lung nodule" and np.allclose(lesion["centre"], expected, atol=1e-3)
    assert lesion["text"].startswith("lung nodule at (") and "(score 0.90)" in lesion["text"]
    # The study page's key image marks it, on the slice nearest its centre.
    import io

    from PIL import Image

    png = urllib.request.urlopen(
        f"{node.api_url}/api/studies/{study['study_instance_uid']}/key-images/{prediction['id']}.png", timeout=30)
    pixels = np.asarray(Image.open(io.BytesIO(png.read())).convert("RGB")).astype(int)
    orange = (pixels[..., 0] > 200) & (pixels[..., 1] > 120) & (pixels[..., 1] < 200) & (pixels[..., 2] < 40)
    assert orange.sum() > 50


def test_a_model_past_its_timeout_ends_dead_with_the_reason_and_its_worker_comes_back(
        node_factory, tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    onnx_segmenter(tmp_path / "models" / "dense")
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{tmp_path / 'models'}"]

[models.hangs]
timeout_s = 3
""" + _ct_route("stuck", "hangs") + _ct_route("dense", "dense-onnx")
    node: Node = node_factory(config, inference=True, extra_env=env).start()
    write_ct_study(tmp_path / "study", series=1, slices=8)
    send_study(node, tmp_path / "study")
    jobs = wait_until(lambda: len(j := _jobs(node)) == 2 and all(x["state"] in ("succeeded", "dead") for x in j)
                      and j, 120, "both infer jobs settled")
    states = {j["payload"]["model"]: (j["state"], j["last_error"] or "", j["attempts"]) for j in jobs}
    assert states["hangs"][:2] == ("dead", "model hangs ran longer than its timeout_s (3 s) on series 1; "
                                           "its worker was restarted")
    assert states["hangs"][2] == 1  # not retried: it would hang again
    assert states["dense-onnx"][0] == "succeeded"
    assert "inference-cpu-1 exited unexpectedly (status 75)" in node.log()
    assert node.run("echo", node.address).returncode == 0


def test_a_classifier_bundle_raises_the_study_and_its_explanation_reaches_the_archive(
        node_factory, orthanc, tmp_path: Path) -> None:
    """A classification bundle with Grad-CAM explanations: its finding raises the study
    by a triage rule, and the archive receives the SR, the explanation as a Parametric
    Map and its overlay key image, each on the received series."""
    from tests.integration.test_map_conformance import _sphere_series
    from tests.model_files import monai_classifier_bundle

    monai_classifier_bundle(tmp_path / "models" / "nodule_ct")
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{tmp_path / 'models'}"]

[[destinations]]
name = "pacs"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
objects = ["sr", "pm", "sc"]

[[triage]]
finding = "nodule"
min_score = 0.5
level = "urgent"

[[routes]]
name = "nodules"
model = "nodule_ct"
destinations = ["pacs"]
[routes.match]
modality = ["CT"]
min_instances = 5
"""
    node: Node = node_factory(config, inference=True).start()
    paths, _dense = _sphere_series(tmp_path / "study" / "s01")
    send_study(node, tmp_path / "study")
    [prediction] = wait_until(lambda: _predictions(node), 90, "the classifier's prediction")
    assert [(f["name"], f["assessment"]) for f in prediction["findings"]] == [("nodule", "present")]
    kinds = {"1.2.840.10008.5.1.4.1.1.88.34": "sr", "1.2.840.10008.5.1.4.1.1.30": "pm",
             "1.2.840.10008.5.1.4.1.1.7": "sc"}

    def archived() -> dict[str, str] | None:
        found = {kinds.get(i["Tags"]["SOPClassUID"], "?"): i["Tags"]["SOPInstanceUID"]
                 for i in orthanc.instances() if i["Tags"]["SOPClassUID"] in kinds}
        return found if len(found) == 3 else None
    found = wait_until(archived, 90, "SR, Parametric Map and key image in the archive")
    assert set(found) == {"sr", "pm", "sc"}
    [study] = [s for s in json.loads(urllib.request.urlopen(node.api_url + "/api/studies", timeout=10).read())]
    assert study["priority"] == "urgent"
    results = node.run("results", study["study_instance_uid"]).stdout
    assert "nodule: present" in results
    assert "explanation of nodule (Grad-CAM (MONAI) on the last convolution): where the model looked, " \
        "not a finding" in results
    # The study page's explanation image: the heat scale over the sphere; no such map, no image.
    from PIL import Image
    base = f"{node.api_url}/api/studies/{study['study_instance_uid']}/key-images/{prediction['id']}.png"
    with urllib.request.urlopen(base + "?explanation=" + urllib.parse.quote("nodule explanation"),
                                timeout=30) as response:
        image = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(int)
    warm = (image[..., 0] - image[..., 2]) > 60
    scale = image.shape[0] / 128  # enlarged for the text
    assert warm[int(56 * scale):int(64 * scale), int(76 * scale):int(84 * scale)].mean() > 0.5
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(base + "?explanation=nothing", timeout=30)
    assert missing.value.code == 404


def test_an_nnunet_folder_segments_a_received_series_on_its_grid(
        node_factory, nnunet_model_folder: Path, tmp_path: Path) -> None:
    """An nnU-Net v2 result folder among the model folders, run by nnunetv2's predictor
    in the node: the SEG marks exactly the dense voxels, each on its source image."""
    import shutil

    import highdicom as hd
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from tests.synthetic import TEST_UID_ROOT, ct_slice

    models = tmp_path / "models" / "Dataset990_DenseTissue"
    shutil.copytree(nnunet_model_folder, models / nnunet_model_folder.name)
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    k, j, i = np.indices((20, 48, 48))
    dense = ((k - 10) * 1.5) ** 2 + ((j - 20) * 0.8) ** 2 + ((i - 28) * 0.8) ** 2 <= 49
    folder = tmp_path / "study" / "s01"
    folder.mkdir(parents=True)
    for index in range(20):  # the plans' spacing: 1.5 mm slices of 0.8 mm pixels
        ds = ct_slice(study, series, index, size=48)
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 1.5
        ds.ImagePositionPatient = [0.0, 0.0, 1.5 * index]
        ds.PixelData = np.where(dense[index], 500, -1000).astype(np.int16).tobytes()
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
model_folders = ["{models}"]
""" + _ct_route("dense", "Dataset990_DenseTissue-3d_fullres")
    node: Node = node_factory(config, inference=True).start()
    send_study(node, tmp_path / "study")
    [prediction] = wait_until(lambda: _predictions(node), 120, "the nnU-Net prediction")
    assert prediction["provenance"]["runtime"] == "nnunetv2" and prediction["provenance"]["mirroring"]

    def seg_file() -> Path | None:
        return next((p for p in (node.data_dir / "results").rglob("*.dcm")
                     if dcmread(p, stop_before_pixels=True).Modality == "SEG"), None)
    seg = hd.seg.segread(wait_until(seg_file, 60, "the SEG"))
    images = sorted((dcmread(p) for p in folder.glob("*.dcm")), key=lambda ds: float(ds.ImagePositionPatient[2]))
    marked = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in images], segment_numbers=[1],
        combine_segments=True, ignore_spatial_locations=False)
    assert np.array_equal(marked > 0, dense)


def test_within_a_memory_budget_models_load_on_use_and_the_least_recently_used_goes(
        node_factory, tmp_path: Path) -> None:
    """Two models that together exceed inference_memory_budget_mb: both run on the
    study, one after the other, the first unloaded to make room for the second."""
    onnx_segmenter(tmp_path / "models" / "first", name="first-onnx")
    onnx_segmenter(tmp_path / "models" / "second", name="second-onnx")
    config = f"""\
quiet_period_s = 1
completion_sweep_s = 0.5
inference_memory_budget_mb = 1000
model_folders = ["{tmp_path / 'models'}"]

[models.first-onnx]
memory_mb = 600
device = "cpu"

[models.second-onnx]
memory_mb = 600
""" + _ct_route("first", "first-onnx") + _ct_route("second", "second-onnx")
    node: Node = node_factory(config, inference=True).start()
    assert "loaded on use within 1000 MiB" in node.log()
    write_ct_study(tmp_path / "study", series=1, slices=8)
    send_study(node, tmp_path / "study")
    predictions = wait_until(lambda: len(p := _predictions(node)) == 2 and p, 120, "both models' predictions")
    assert sorted(p["model"] for p in predictions) == ["first-onnx", "second-onnx"]
    assert all(p["device"] == "cpu" for p in predictions)
    log = node.log()
    assert "model first-onnx loaded on cpu (600 MiB)" in log and "model second-onnx loaded on cpu (600 MiB)" in log
    assert "unloaded (least recently used, to keep within inference_memory_budget_mb (1200 of 1000 MiB))" in log
