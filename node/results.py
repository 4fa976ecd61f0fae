"""From predictions to the archive: the ``encode`` job (SEG and SR made, stored and
recorded, then one ``send`` job per destination) and the ``send`` job (C-STORE or
STOW-RS, every instance's status checked).

Both are idempotent. Result UIDs are deterministic, so encoding again rewrites the
same files and finds the same rows, and sending again makes the archive replace,
not duplicate, what it has.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.pixels import apply_modality_lut
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ai.encoders.identity import ResultIdentity
from ai.encoders.results import encode_prediction
from ai.protocol import outputs_from_dict
from config.settings import Destination, Settings
from node.dicomweb import stow_rs
from node.scu import FAILURE, WARNING, destination_peer, send_files
from node.workers import JobContext, PermanentJobError, current_study, queue_for
from storage.db import dialect_insert, writing
from storage.files import FileStore
from storage.inventory import series_files
from storage.models import Prediction, ResultObject
from storage.queue import ClaimedJob, NewJob
from storage.timeline import DELIVERED, DELIVERY_FAILED, ENCODED, record, record_now

log = logging.getLogger(__name__)


def _read_series(engine: Engine, store: FileStore, series_uid: str) -> tuple[list[Any], dict[str, Path]]:
    """The source images' attributes and files: the encoders need their geometry and
    identifiers, not their pixels, so those are not read."""
    paths = [store.absolute(p) for p in series_files(engine, series_uid)]
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    return headers, {str(ds.SOPInstanceUID): p for ds, p in zip(headers, paths)}


def _slice_reader(files: dict[str, Path], uids: list[str], frames: list[int]) -> Callable[[int], np.ndarray]:
    """Label map slice ``i``'s source pixels in modality units (for key images)."""
    def values(index: int) -> np.ndarray:
        ds = dcmread(files[uids[index]])
        pixels = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[frames[index] - 1]
        return apply_modality_lut(pixels, ds).astype(np.float32)
    return values


class ResultsHandlers:
    """The ``encode`` and ``send`` job handlers of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)
        self._queue = queue_for(settings, engine)

    # --- encode ------------------------------------------------------------------------

    def encode(self, job: ClaimedJob, ctx: JobContext) -> None:
        study = current_study(self._engine, job)
        if study is None:
            return
        version = int(job.results_version or 0)
        model = job.payload["model"]
        with Session(self._engine) as session:
            predictions = session.scalars(select(Prediction).where(
                Prediction.study_id == study.id, Prediction.model == model,
                Prediction.results_version == version).order_by(Prediction.id)).all()
            session.expunge_all()
        if not predictions:
            raise PermanentJobError(f"no {model} prediction is recorded for results version {version}")
        destinations = list(job.payload.get("destinations", []))
        key_images = any("sc" in d.objects for d in self._settings.destinations if d.name in destinations)
        made = []
        for prediction in predictions:
            if ctx.cancelled.is_set():
                raise RuntimeError("cancelled")
            made += self._encode_one(study, prediction, key_images)
        with writing(self._engine) as conn:
            record(conn, study.id, ENCODED, f"{model}: {', '.join(made)}", version)
            for name in destinations:
                self._queue.enqueue(NewJob(
                    kind="send", dedupe_key=f"send:{study.study_instance_uid}:{model}:v{version}:{name}",
                    payload={"model": model, "destination": name}, priority=job.priority,
                    study_id=study.id, results_version=version,
                ), conn)
        log.info("study %s v%d: %s results encoded (%s); sending to %s", study.study_instance_uid,
                 version, model, ", ".join(made), ", ".join(destinations) or "no destination (kept here)")

    def _encode_one(self, study: Any, prediction: Prediction, key_images: bool) -> list[str]:
        identity = ResultIdentity(study.study_instance_uid, prediction.series_instance_uid,
                                  prediction.model, prediction.model_version, prediction.results_version)
        labelmap = uids = frames = None
        if prediction.labelmap_path:
            with np.load(self._store.absolute(prediction.labelmap_path)) as saved:
                labelmap = saved["labelmap"]
                uids = [str(u) for u in saved["sop_instance_uids"]]
                frames = [int(f) for f in saved["frame_numbers"]]
        sources, files = _read_series(self._engine, self._store, prediction.series_instance_uid)
        if not sources:
            raise PermanentJobError("the source images were removed before the results were made")
        started = time.perf_counter()
        objects = encode_prediction(
            identity, outputs_from_dict(prediction.outputs), prediction.measurements,
            prediction.findings, sources, labelmap, uids or (), frames or (),
            slice_values=_slice_reader(files, uids or [], frames or []) if key_images else None)
        made = []
        for obj in objects:
            buffer = io.BytesIO()
            obj.dataset.save_as(buffer, enforce_file_format=True)
            relative = self._store.result_path(
                study.study_instance_uid,
                f"{prediction.model}-v{prediction.results_version}-{obj.kind}-{obj.dataset.SOPInstanceUID}.dcm")
            self._store.write(relative, [buffer.getbuffer()])
            with writing(self._engine) as conn:
                conn.execute(dialect_insert(conn, ResultObject.__table__).values(
                    study_id=study.id, results_version=prediction.results_version,
                    model=prediction.model, kind=obj.kind, sop_class_uid=str(obj.dataset.SOPClassUID),
                    sop_instance_uid=str(obj.dataset.SOPInstanceUID),
                    series_instance_uid=str(obj.dataset.SeriesInstanceUID),
                    source_series_instance_uid=prediction.series_instance_uid, path=relative,
                    created_at=time.time()).on_conflict_do_nothing())
            made.append(obj.kind.upper())
        made = [f"{made.count(k)} {k}" if made.count(k) > 1 else k for k in dict.fromkeys(made)]
        log.info("study %s v%d: %s encoded in %.2f s", study.study_instance_uid,
                 prediction.results_version, "+".join(made), time.perf_counter() - started)
        return made

    # --- send --------------------------------------------------------------------------

    def _destination(self, name: str) -> Destination:
        for destination in self._settings.destinations:
            if destination.name == name:
                return destination
        raise PermanentJobError(f"destination {name!r} is no longer configured; add it back to "
                                "[[destinations]] and retry the job")

    def send(self, job: ClaimedJob, ctx: JobContext) -> None:
        study = current_study(self._engine, job)
        if study is None:
            return
        version = int(job.results_version or 0)
        destination = self._destination(job.payload["destination"])
        with self._engine.connect() as conn:
            rows = conn.execute(select(ResultObject.path, ResultObject.kind).where(
                ResultObject.study_id == study.id, ResultObject.model == job.payload["model"],
                ResultObject.results_version == version).order_by(ResultObject.id)).all()
        if not rows:
            raise PermanentJobError("no result objects are recorded for this results version")
        files = [self._store.absolute(path) for path, kind in rows if kind in destination.objects]
        if not files:
            log.info("study %s v%d: none of the %s results is of a kind %s receives (%s)",
                     study.study_instance_uid, version, job.payload["model"], destination.name,
                     ", ".join(destination.objects))
            return
        try:
            if destination.type == "dicom":
                self._c_store(destination, files)
            else:
                stow_rs(destination.url or "", files, destination.timeout_s)
        except Exception as exc:
            record_now(self._engine, study.id, DELIVERY_FAILED,
                       f"{destination.name}: {type(exc).__name__}: {exc}", version)
            raise
        record_now(self._engine, study.id, DELIVERED,
                   f"{job.payload['model']}: {len(files)} object(s) to {destination.name}", version)
        log.info("study %s v%d: %d %s result object(s) delivered to %s", study.study_instance_uid,
                 version, len(files), job.payload["model"], destination.name)

    def _c_store(self, destination: Destination, files: list[Path]) -> None:
        peer = destination_peer(destination)
        report = send_files(files, peer, self._settings.ae_title, timeout_s=destination.timeout_s)
        for outcome in report.outcomes:
            if outcome.category == WARNING:
                log.warning("%s answered %s for %s", destination.name, outcome.detail, outcome.path.name)
        failures = [o for o in report.outcomes if o.category == FAILURE]
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(files)} object(s) not stored at "
                               f"{destination.name} ({peer}): {failures[0].detail}")
