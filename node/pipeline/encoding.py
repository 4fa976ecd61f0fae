"""From predictions to DICOM objects: the ``encode`` job makes the SEG, SR (and key
images where a destination wants them) of one model's predictions, stores and records
them, then queues one ``send`` job per destination.

Idempotent: result UIDs are deterministic, so encoding again rewrites the same files
and finds the same rows.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ai.encoders.identity import ResultIdentity
from ai.encoders.results import ModelResult, encode_prediction
from ai.encoders.sc import SliceValues
from ai.labelmap import LabelMap
from ai.protocol import Detection, Finding, Measurement, outputs_from_dict
from config.settings import Settings
from node.jobs.context import JobContext, PermanentJobError, current_study
from node.jobs.kinds import EncodePayload, SendPayload, StudyWork, read_payload, study_job
from node.pipeline.lifecycle import queue_for
from storage.db import dialect_insert, writing
from storage.files import FileStore
from storage.inventory import series_files
from storage.models import PredictionRecord, ResultObject
from storage.queue import ClaimedJob
from storage.timeline import ENCODED, record

log = logging.getLogger(__name__)


def _read_series(engine: Engine, store: FileStore, series_uid: str) -> tuple[list[Dataset], dict[str, Path]]:
    """The source images' attributes and files: the encoders need their geometry and
    identifiers, not their pixels, so those are not read."""
    paths = [store.absolute(p) for p in series_files(engine, series_uid)]
    headers: list[Dataset] = [dcmread(p, stop_before_pixels=True) for p in paths]
    return headers, {str(ds.SOPInstanceUID): p for ds, p in zip(headers, paths, strict=True)}


def slice_reader(files: dict[str, Path], labelmap: LabelMap) -> SliceValues:
    """Label map slice ``i``'s source pixels in modality units (for key images)."""
    def values(index: int) -> np.ndarray:
        ds = dcmread(files[labelmap.sop_instance_uids[index]])
        pixels = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[labelmap.frame_numbers[index] - 1]
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    return values


def _prior_measurements(provenance: dict[str, Any], prior: dict[str, Any]) -> tuple[Measurement, ...]:
    """What the model measured on the prior it compared with (its point of the trend)."""
    for point in provenance.get("trend") or []:
        if isinstance(point, dict) and point.get("study_instance_uid") == prior.get("study_instance_uid"):
            reliable = point.get("reliable") or {}
            return tuple(Measurement(str(name), float(value), bool(reliable.get(name, True)))
                         for name, value in (point.get("values") or {}).items())
    return ()


def model_result(record: PredictionRecord, store: FileStore) -> ModelResult:
    """A recorded prediction, typed again, with its label map read from disk."""
    labelmap = LabelMap.from_npz(store.absolute(record.labelmap_path)) if record.labelmap_path else None
    return ModelResult(outputs_from_dict(record.outputs),
                       tuple(Measurement.from_json(m) for m in record.measurements),
                       tuple(Finding.from_json(f) for f in record.findings), labelmap,
                       tuple(Detection.from_json(d) for d in record.detections or ()))


class EncodeHandler:
    """The ``encode`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)
        self._queue = queue_for(settings, engine)

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(EncodePayload, job)
        work = current_study(self._engine, job)
        with Session(self._engine) as session:
            query = select(PredictionRecord).where(
                PredictionRecord.study_id == work.study_id, PredictionRecord.model == payload.model,
                PredictionRecord.results_version == work.results_version)
            if payload.series:
                query = query.where(PredictionRecord.series_instance_uid.in_(payload.series))
            predictions = session.scalars(query.order_by(PredictionRecord.id)).all()
            session.expunge_all()
        if not predictions:
            raise PermanentJobError(f"no {payload.model} prediction is recorded for results version "
                                    f"{work.results_version}")
        key_images = any("sc" in d.objects for d in self._settings.destinations if d.name in payload.destinations)
        made = []
        for prediction in predictions:
            if ctx.cancelled.is_set():
                raise RuntimeError("cancelled")
            made += self._encode_one(work, prediction, key_images)
        with writing(self._engine) as conn:
            record(conn, work.study_id, ENCODED, f"{payload.model}: {', '.join(made)}", work.results_version)
            for name in payload.destinations:
                send = SendPayload(payload.model, name, payload.series)
                self._queue.enqueue(study_job(send, work, job.priority), conn)
        log.info("study %s v%d: %s results encoded (%s); sending to %s", work.study_instance_uid,
                 work.results_version, payload.model, ", ".join(made),
                 ", ".join(payload.destinations) or "no destination (kept here)")

    def _encode_one(self, work: StudyWork, prediction: PredictionRecord, key_images: bool) -> list[str]:
        result = model_result(prediction, self._store)
        sources, files = _read_series(self._engine, self._store, prediction.series_instance_uid)
        if not sources:
            raise PermanentJobError("the source images were removed before the results were made")
        number = sources[0].get("SeriesNumber")
        identity = ResultIdentity(work.study_instance_uid, prediction.series_instance_uid,
                                  prediction.model, prediction.model_version, prediction.results_version,
                                  source_series_number=int(number) if number not in (None, "") else None,
                                  created_at=float(prediction.created_at),
                                  device_serial_number=self._settings.ae_title,
                                  patient_id=str(sources[0].get("PatientID", "") or ""))
        prior = (prediction.provenance or {}).get("prior")
        if isinstance(prior, dict) and prior.get("series_instance_uid"):
            # a prior removed since (retention) is no longer referenced
            prior_sources, _files = _read_series(self._engine, self._store, str(prior["series_instance_uid"]))
            result = dataclasses.replace(result, prior_sources=tuple(prior_sources),
                                         prior_measurements=_prior_measurements(prediction.provenance, prior),
                                         prior_study_date=prior.get("study_date"))
        started = time.perf_counter()
        slice_values = slice_reader(files, result.labelmap) if key_images and result.labelmap else None
        objects = encode_prediction(identity, result, sources, slice_values)
        made = []
        for obj in objects:
            buffer = io.BytesIO()
            obj.dataset.save_as(buffer, enforce_file_format=True)
            relative = self._store.result_path(
                work.study_instance_uid,
                f"{prediction.model}-v{prediction.results_version}-{obj.kind}-{obj.dataset.SOPInstanceUID}.dcm")
            self._store.write(relative, [buffer.getbuffer()])
            with writing(self._engine) as conn:
                conn.execute(dialect_insert(conn, ResultObject.__table__).values(
                    study_id=work.study_id, results_version=prediction.results_version,
                    model=prediction.model, kind=obj.kind, sop_class_uid=str(obj.dataset.SOPClassUID),
                    sop_instance_uid=str(obj.dataset.SOPInstanceUID),
                    series_instance_uid=str(obj.dataset.SeriesInstanceUID),
                    source_series_instance_uid=prediction.series_instance_uid, path=relative,
                    created_at=time.time()).on_conflict_do_nothing())
            made.append(obj.kind.upper())
        made = [f"{made.count(k)} {k}" if made.count(k) > 1 else k for k in dict.fromkeys(made)]
        log.info("study %s v%d: %s encoded in %.2f s", work.study_instance_uid,
                 prediction.results_version, "+".join(made), time.perf_counter() - started)
        return made
