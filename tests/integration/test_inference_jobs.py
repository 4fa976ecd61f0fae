"""The ``infer`` job on a real SQLite database and data folder: predictions recorded
once, superseded versions skipped, unusable input failing at once with its reason."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from ai.labelmap import LabelMap
from ai.protocol import Accepts, Code, DeviceNeeds, Outputs, Prediction, SegmentSpec
from ai.volume import Volume
from config.settings import Settings, load_settings
from node.jobs.context import JobContext
from node.jobs.kinds import JobKind
from node.jobs.worker import Worker
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from node.pipeline.inference import InferenceRunner
from node.pipeline.lifecycle import queue_for
from node.pipeline.warm_models import WarmModel, WarmModels
from storage.db import open_database
from storage.files import FileStore
from storage.header import header_from_dataset
from storage.ingest import StoredFile, record_instance
from storage.models import PredictionRecord, Study
from storage.timeline import timeline
from tests.model_files import onnx_segmenter
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _settings(tmp_path: Path, model: str = "dense-onnx") -> Settings:
    folder = onnx_segmenter(tmp_path / "models" / "dense")
    return load_settings(
        data_dir=tmp_path / "data", model_folders=[folder], job_max_attempts=3,
        routes=[{"name": "dense", "model": model, "match": {"modality": ["CT"], "min_instances": 5}}],
    )


def _receive(engine: Engine, store: FileStore, study: str, series: str, positions: list[float],
             at: datetime, hu: float = 1000.0) -> None:
    for i, z in enumerate(positions):
        ds = ct_slice(study, series, i, size=32, sop_uid=generate_uid(TEST_UID_ROOT, [series, str(z)]))
        ds.ImagePositionPatient = [0.0, 0.0, z]
        pixels = np.full((32, 32), -1000, dtype=np.int16)
        pixels[4:28, 4:28] = hu
        ds.PixelData = pixels.tobytes()
        header = header_from_dataset(ds)
        relative = store.relative_path(study, series, ds.SOPInstanceUID)
        store.absolute(relative).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(store.absolute(relative), enforce_file_format=True)
        record_instance(engine, header, StoredFile(relative, 1, ds.file_meta.TransferSyntaxUID, "CT01"),
                        now=at)


class Rig:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = FileStore(settings.data_dir)
        self.store.prepare()
        self.engine = open_database(settings.effective_database_url)
        self.queue = queue_for(settings, self.engine)
        self.sweep = CompletionSweep(self.engine, self.queue, CompletionPolicy.from_settings(settings))
        self.runner = InferenceRunner.start(settings, self.engine, "cpu", configured=True)
        self.worker = Worker("test-worker", settings, self.engine, self.queue, {JobKind.INFER: self.runner})

    def predictions(self) -> list[PredictionRecord]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(PredictionRecord)).all())


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(_settings(tmp_path))


def test_prediction_recorded_once_with_its_label_map(rig: Rig) -> None:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(rig.engine, rig.store, study, series, [float(z) for z in range(8)], T0)
    assert rig.sweep.run(T0 + timedelta(minutes=1)) == [study]
    job = rig.queue.claim("test-worker", ["infer"])
    assert job is not None
    rig.worker.run_one(job)
    rig.runner(job, JobContext(rig.settings, rig.engine, threading.Event()))  # a re-run does nothing
    [row] = rig.predictions()
    assert (row.model, row.model_version, row.results_version, row.series_instance_uid) == \
        ("dense-onnx", "0.1.0", 1, series)
    [volume] = row.measurements
    # 24 x 24 pixels of 0.7 mm on 8 slices of 1 mm; the model works at 2 mm, so the
    # edges of so small an object blur (the adapter's accuracy is checked in unit tests).
    assert volume["name"] == "Dense volume" and volume["unit"] == "mL"
    assert volume["value"] == pytest.approx(24 * 24 * 0.49 * 8 / 1000, rel=0.2)
    saved = LabelMap.from_npz(rig.store.absolute(row.labelmap_path))
    assert saved.array.shape == (8, 32, 32)
    assert saved.array[4, 16, 16] == 1 and saved.array[4, 0, 0] == 0
    assert list(saved.sop_instance_uids) == [
        generate_uid(TEST_UID_ROOT, [series, str(float(z))]) for z in range(8)]
    [done] = rig.queue.list(kinds=["infer"])
    assert done.state == "succeeded"


def test_a_superseded_results_version_is_not_computed(rig: Rig) -> None:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(rig.engine, rig.store, study, series, [float(z) for z in range(6)], T0)
    rig.sweep.run(T0 + timedelta(minutes=1))
    first = rig.queue.claim("test-worker", ["infer"])
    # A late image reopens the study, which completes again as version 2.
    _receive(rig.engine, rig.store, study, series, [6.0], T0 + timedelta(minutes=2))
    rig.sweep.run(T0 + timedelta(minutes=3))
    assert first is not None and first.results_version == 1
    rig.worker.run_one(first)
    assert rig.predictions() == []
    second = rig.queue.claim("test-worker", ["infer"])
    assert second is not None and second.results_version == 2
    rig.worker.run_one(second)
    [row] = rig.predictions()
    assert row.results_version == 2


def test_a_series_that_is_not_a_volume_is_declined_at_once_with_the_reason(rig: Rig) -> None:
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(rig.engine, rig.store, study, series, [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0], T0)  # one missing
    rig.sweep.run(T0 + timedelta(minutes=1))
    job = rig.queue.claim("test-worker", ["infer"])
    assert job is not None
    rig.worker.run_one(job)
    # The input, not the node, is at fault: no retry, no failure, the reason on the timeline.
    [infer] = rig.queue.list(kinds=["infer"])
    assert infer.state == "succeeded" and infer.attempts == 1
    with rig.engine.connect() as conn:
        study_id, state = conn.execute(select(Study.id, Study.state)).one()
        [declined] = [s for s in timeline(conn, study_id) if s.step == "declined"]
    assert state == "not_applicable"
    assert "series 1: not a regular volume: uneven slice spacing" in declined.detail
    assert rig.predictions() == []


def test_a_model_that_declines_the_input_makes_the_study_not_applicable(tmp_path: Path) -> None:
    rig = Rig(_settings(tmp_path, model="ct-chest"))
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(rig.engine, rig.store, study, series, [float(z) for z in range(24)], T0, hu=40.0)
    rig.sweep.run(T0 + timedelta(minutes=1))
    job = rig.queue.claim("test-worker", ["infer"])
    assert job is not None
    rig.worker.run_one(job)
    # Declining is the model's answer, not a failure: nothing to retry, nothing to encode.
    [infer] = rig.queue.list(kinds=["infer"])
    assert infer.state == "succeeded" and infer.attempts == 1
    assert rig.predictions() == [] and rig.queue.list(kinds=["encode"]) == []
    with rig.engine.connect() as conn:
        study_id, state = conn.execute(select(Study.id, Study.state)).one()
        declined = [s for s in timeline(conn, study_id) if s.step == "declined"]
    assert state == "not_applicable"
    assert len(declined) == 1
    assert declined[0].detail.startswith("model ct-chest cannot run on series 1: no lungs found")


class _UndeclaredLabel:
    """A model whose label map holds a label it does not declare."""

    name, version = "liar", "2"
    accepts = Accepts(modalities=("CT",), min_slices=3)
    device_needs = DeviceNeeds(gpu="none")
    outputs = Outputs(segments=(SegmentSpec(1, "Dense", Code("91723000", "SCT", "Anatomical Structure"),
                                            Code("85756007", "SCT", "Tissue")),))

    def load(self, device: str) -> None:
        pass

    def predict(self, volume: Volume) -> Prediction:
        labelmap = np.zeros(volume.shape, dtype=np.uint8)
        labelmap[:, 4:8, 4:8] = 7
        return Prediction(labelmap=labelmap)


def test_a_prediction_that_breaks_its_models_declaration_is_refused_with_the_reason(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", job_max_attempts=3, routes=[
        {"name": "liar", "model": "liar", "match": {"modality": ["CT"], "min_instances": 5}}])
    store = FileStore(settings.data_dir)
    store.prepare()
    engine = open_database(settings.effective_database_url)
    queue = queue_for(settings, engine)
    liar = WarmModels({"liar": WarmModel("liar", _UndeclaredLabel, torch.device("cpu"))})
    liar.load_all()
    runner = InferenceRunner(settings, engine, torch.device("cpu"), liar)
    worker = Worker("test-worker", settings, engine, queue, {JobKind.INFER: runner})
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    _receive(engine, store, study, series, [float(z) for z in range(6)], T0)
    CompletionSweep(engine, queue, CompletionPolicy.from_settings(settings)).run(T0 + timedelta(minutes=1))
    job = queue.claim("test-worker", ["infer"])
    assert job is not None
    worker.run_one(job)
    [dead] = queue.list(kinds=["infer"])
    assert dead.state == "dead" and dead.attempts == 1  # the model will not change its mind
    assert dead.last_error == "model liar 2 returned label(s) 7 that it does not declare on series 1"
    with engine.connect() as conn:
        assert conn.execute(select(PredictionRecord)).all() == []  # nothing recorded
        assert conn.execute(select(Study.state)).scalar_one() == "failed"
