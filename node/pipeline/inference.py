"""Inference: the ``infer`` job, run by worker processes that each own one device and
keep their models loaded.

An ``infer`` job names a model and the series its route chose. For each series the
worker loads the volume, runs the model under ``torch.inference_mode`` (autocast on
a GPU when the model allows it, GPU memory bounded per model) and records a
:class:`storage.models.PredictionRecord` with its label map file. The job is idempotent: a
prediction already recorded is not computed again, and a job whose study has since
moved on to a newer results version does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, select

from ai.labelmap import LabelMap
from ai.protocol import (
    ComparesWithPriors,
    Finding,
    ModelCannotRun,
    ModelFailed,
    Prediction,
    PredictionMismatch,
    PriorVolume,
    check_prediction,
    declared_outputs,
    detection_findings,
)
from ai.registry import RegistryError, installed_models
from ai.volume import NotAVolume, Volume, load_volume
from config.settings import Settings
from node.jobs.context import JobContext, PermanentJobError, current_study
from node.jobs.kinds import EncodePayload, InferPayload, StudyWork, read_payload, study_job
from node.pipeline.lifecycle import queue_for
from node.pipeline.triage import after_findings, job_priority
from node.pipeline.warm_models import ModelUnavailable, WarmModel, WarmModels
from node.quality.profile import profile_of_files
from storage.db import dialect_insert, writing
from storage.files import FileStore
from storage.inventory import series_files
from storage.models import PredictionRecord, Series, Study, WorkerStatus
from storage.queue import ClaimedJob
from storage.states import StudyLevel
from storage.timeline import DECLINED, INFERRED, record, record_now

log = logging.getLogger(__name__)

_MB = 2**20


#: Exit status of an inference worker that ended a model run past its timeout_s.
MODEL_TIMEOUT_EXIT = 75


class InferenceStartupError(RuntimeError):
    """The worker cannot start: a route names a model that is not installed, or its
    device is absent. (A model that is installed but cannot load is :class:`ModelUnavailable`:
    its jobs fail, the worker starts.)"""


def _torch_device(device: str, configured: bool) -> torch.device:
    wanted = torch.device(device)
    if wanted.type != "cuda":
        return wanted
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = wanted.index or 0
    if index < available:
        return torch.device("cuda", index)
    if configured:
        raise InferenceStartupError(
            f"inference_devices names {device}, but torch sees {available} CUDA device(s); "
            "fix inference_devices or the CUDA installation")
    log.warning("%s was detected but torch cannot use it (a CPU-only torch build?); "
                "running inference on the CPU", device)
    return torch.device("cpu")


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` PyTorch CPU threads (intra-op), then restore the worker's."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def gpu_memory_bound(device: torch.device, bound_mb: int) -> Iterator[None]:
    """Cap the CUDA allocator at what the loaded models hold plus ``bound_mb`` for this
    run, so that models sharing a card cannot take each other's memory."""
    if device.type != "cuda" or bound_mb <= 0:
        yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    held = torch.cuda.memory_allocated(device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, (held + bound_mb * _MB) / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


class InferenceRunner:
    """The ``infer`` job handler of one worker process, with its models loaded."""

    def __init__(self, settings: Settings, engine: Engine, device: torch.device, models: WarmModels) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)
        self.device = device
        #: The worker's models: loaded at start, or on use within the memory budget.
        self.models = models
        self._queue = queue_for(settings, engine)

    @classmethod
    def start(cls, settings: Settings, engine: Engine, device: str, configured: bool) -> InferenceRunner:
        """Resolve the device and the models enabled routes use; load them all now, or,
        with ``inference_memory_budget_mb``, each on first use."""
        torch_device = _torch_device(device, configured)
        if torch_device.type == "cpu" and settings.inference_workers_per_device > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.inference_workers_per_device))
        try:
            available = installed_models(settings.model_folders)
        except RegistryError as exc:
            raise InferenceStartupError(str(exc)) from None
        models = {}
        for name in sorted({r.model for r in settings.routes if r.enabled}):
            if name not in available:
                raise InferenceStartupError(
                    f"a route uses model {name!r}, which is not installed (installed: "
                    f"{', '.join(sorted(available)) or 'none'}); fix the route or install the model")
            config = settings.models.get(name)
            options = dict(config.options) if config else {}
            if available[name].kind == "container":
                # a container's input, output and logs are kept under the data folder
                options.setdefault("work_dir", str(settings.data_dir / "containers"))
            models[name] = WarmModel(
                name, functools.partial(available[name].create, options or None),
                torch.device("cpu") if config and config.device == "cpu" else torch_device,
                memory_bound_mb=config.gpu_memory_mb if config else None,
                cpu_threads=config.cpu_threads if config else None,
                timeout_s=config.timeout_s if config else None,
                declared_mb=config.memory_mb if config else None)
        warm = WarmModels(models, settings.inference_memory_budget_mb)
        if settings.inference_memory_budget_mb == 0:
            warm.load_all()
        log.info("inference worker on %s with %s%s", torch_device,
                 ", ".join(f"{n} {m.model.version}" for n, m in models.items() if m.model) or "no models loaded",
                 f" (loaded on use within {settings.inference_memory_budget_mb} MiB: {', '.join(models)})"
                 if settings.inference_memory_budget_mb else "")
        return cls(settings, engine, torch_device, warm)

    def report_status(self, worker: str) -> None:
        """Record the GPU memory this worker holds (for /metrics); CPU workers record none."""
        used = int(torch.cuda.memory_reserved(self.device)) if self.device.type == "cuda" else None
        with writing(self._engine) as conn:
            conn.execute(dialect_insert(conn, WorkerStatus.__table__).values(
                name=worker, device=str(self.device), gpu_memory_bytes=used, updated_at=time.time(),
            ).on_conflict_do_update(index_elements=["name"], set_={
                "device": str(self.device), "gpu_memory_bytes": used, "updated_at": time.time()}))

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(InferPayload, job)
        if payload.model not in self.models.models:
            raise PermanentJobError(f"model {payload.model!r} is not used by any enabled route of this worker")
        try:
            loaded = self.models.get(payload.model)
        except ModelUnavailable as exc:
            raise PermanentJobError(f"model {payload.model} cannot be loaded: {exc}") from None
        work = current_study(self._engine, job)
        for series_uid in payload.series:
            if ctx.cancelled.is_set():
                raise RuntimeError("cancelled")
            self._run_series(job, payload, work, series_uid, loaded)
        # Triage on the findings, then the results are encoded and sent (the dedupe
        # keys make a rerun harmless). A model that declined every series has nothing
        # to encode: the study is not applicable to it. Findings of a version left
        # behind while the model ran change no priority and notify nobody.
        current_study(self._engine, job)
        with writing(self._engine) as conn:
            rows = conn.execute(select(PredictionRecord.findings).where(
                PredictionRecord.study_id == work.study_id, PredictionRecord.model == payload.model,
                PredictionRecord.results_version == work.results_version,
                PredictionRecord.series_instance_uid.in_(payload.series))).scalars().all()
            findings = [Finding.from_json(f) for row in rows for f in row]
            if payload.shadow:  # shadow results raise no study and notify no one
                level = StudyLevel.of(conn.execute(select(Study.priority).where(
                    Study.id == work.study_id)).scalar())
            else:
                level = after_findings(conn, self._settings, self._queue, work, payload.model, findings)
            if rows:
                # A study raised by its findings has its results delivered sooner too.
                encode = EncodePayload(payload.model, payload.route, payload.destinations, payload.series)
                self._queue.enqueue(study_job(encode, work, max(job.priority, job_priority(0, level))), conn)

    def _already_done(self, work: StudyWork, model: str, series_uid: str) -> bool:
        with self._engine.connect() as conn:
            return conn.execute(select(PredictionRecord.id).where(
                PredictionRecord.study_id == work.study_id, PredictionRecord.model == model,
                PredictionRecord.results_version == work.results_version,
                PredictionRecord.series_instance_uid == series_uid,
            )).first() is not None

    def _series_files(self, series_uid: str) -> tuple[int | None, list[Path]]:
        with self._engine.connect() as conn:
            number = conn.execute(select(Series.series_number).where(
                Series.series_instance_uid == series_uid)).scalar()
        return number, [self._store.absolute(p) for p in series_files(self._engine, series_uid)]

    def _run_series(self, job: ClaimedJob, payload: InferPayload, work: StudyWork, series_uid: str,
                    loaded: WarmModel) -> None:
        model = loaded.model
        assert model is not None
        version = work.results_version
        if self._already_done(work, model.name, series_uid):
            return
        number, paths = self._series_files(series_uid)
        label = f"series {number if number is not None else '?'}"
        if not paths:
            raise PermanentJobError(f"{label} has no stored images (removed by retention?)")
        started = time.perf_counter()
        # A series the model cannot take (not a regular volume, another modality, not
        # the anatomy it is for) is declined with the reason: the study is "not
        # applicable" to the model, which is no failure of the node.
        try:
            volume = load_volume(paths, model.accepts.min_slices)
            if volume.modality not in model.accepts.modalities:
                raise ModelCannotRun(f"it is {volume.modality or 'of no modality'}; the model accepts "
                                     f"{', '.join(model.accepts.modalities)}")
            priors = self._prior_volumes(payload, model) if isinstance(model, ComparesWithPriors) else None
            loaded_at = time.perf_counter()
            with self._watchdog(job, loaded, label):
                prediction = self._predict(loaded, volume, label, priors)
        except (NotAVolume, ModelCannotRun) as exc:
            what = "not a regular volume: " if isinstance(exc, NotAVolume) else ""
            reason = f"model {model.name} cannot run on {label}: {what}{exc}"
            record_now(self._engine, work.study_id, DECLINED, reason, version)
            log.info("study %s v%d: %s", work.study_instance_uid, version, reason)
            return
        finished = time.perf_counter()
        try:
            check_prediction(model.outputs, prediction, volume.shape)
        except PredictionMismatch as exc:
            raise PermanentJobError(f"model {model.name} {model.version} returned {exc} on {label}") from None
        relative = None
        # A model that only detects or explains still gets a (blank) label map file: it
        # is the series' grid the key images mark its lesions on, and its maps lie on.
        labelmap = prediction.labelmap if prediction.labelmap is not None else \
            (np.zeros(volume.shape, dtype=np.uint8) if prediction.detections or prediction.maps else None)
        if labelmap is not None:
            relative = self._store.result_path(
                work.study_instance_uid, f"{model.name}-v{version}-{job.id}-{series_uid[-24:]}.npz")
            self._store.write(relative, [LabelMap.of_volume(labelmap, volume, prediction.maps).to_npz()])
        units = {m.name: m.unit.value for m in model.outputs.measurements}
        profile = self._profile(paths[0], volume, label)
        findings = [*prediction.findings, *detection_findings(model.outputs, prediction)]
        row = dict(
            study_id=work.study_id, results_version=version, model=model.name,
            model_version=model.version, route=payload.route[:64],
            series_instance_uid=series_uid, job_id=job.id, device=str(loaded.device),
            outputs=dataclasses.asdict(declared_outputs(model.outputs)),
            measurements=[m.to_json(units.get(m.name)) for m in prediction.measurements],
            findings=[f.to_json() for f in findings],
            detections=[d.to_json() for d in prediction.detections],
            provenance=prediction.provenance, labelmap_path=relative, shadow=payload.shadow,
            load_seconds=loaded_at - started, inference_seconds=finished - loaded_at,
            created_at=time.time(), case_profile=profile,
        )
        with writing(self._engine) as conn:
            inserted = conn.execute(dialect_insert(conn, PredictionRecord.__table__).values(**row)
                                    .on_conflict_do_nothing()).rowcount
            if inserted:
                record(conn, work.study_id, INFERRED, f"{model.name} {model.version} on {label}: "
                       f"{loaded_at - started:.1f} s load + {finished - loaded_at:.1f} s on {loaded.device}",
                       version)
        present = [f.name for f in findings if f.present]
        log.info("study %s v%d: %s on %s (%d slices) in %.1f s load + %.1f s on %s; findings: %s",
                 work.study_instance_uid, version, model.name, label, volume.shape[0],
                 loaded_at - started, finished - loaded_at, loaded.device, ", ".join(present) or "none")

    def _prior_volumes(self, payload: InferPayload, model: Any) -> list[PriorVolume] | None:
        """The volumes of the priors the job names that the model can take, the most
        recent first; None when the job names none (the route asks for no priors, or
        none arrived: the model runs as on any study)."""
        if not payload.priors:
            return None
        volumes = []
        for prior in sorted(payload.priors, key=lambda p: p.study_date or "", reverse=True):
            _number, paths = self._series_files(prior.series_instance_uid)
            try:
                volume = load_volume(paths, model.accepts.min_slices) if paths else None
            except NotAVolume as exc:
                log.info("a prior series of study %s is not a regular volume (%s); left out",
                         prior.study_instance_uid, exc)
                continue
            if volume is not None:
                volumes.append(PriorVolume(volume, prior.study_date, prior.study_instance_uid))
        return volumes

    def _profile(self, first_file: Path, volume: Volume, label: str) -> dict[str, Any] | None:
        """The case profile kept for subgroups and drift; a header it cannot read costs
        the profile, never the prediction."""
        try:
            return profile_of_files(first_file, volume)
        except Exception as exc:  # noqa: BLE001 - the results matter more than their profile
            log.warning("%s: no case profile kept (%s)", label, type(exc).__name__)
            return None

    @contextlib.contextmanager
    def _watchdog(self, job: ClaimedJob, loaded: WarmModel, label: str) -> Iterator[None]:
        """Past the model's timeout_s, end its job dead with the reason and restart
        this worker: a thread stuck in a model's code cannot be stopped any other way
        (the supervisor starts a new worker; the GPU memory goes with the process)."""
        if loaded.timeout_s is None:
            yield
            return
        name, limit = loaded.name, loaded.timeout_s

        def expired() -> None:
            reason = (f"model {name} ran longer than its timeout_s ({limit:g} s) on {label}; "
                      "its worker was restarted")
            log.error("%s", reason)
            try:
                self._queue.fail(job, reason, permanent=True)
            finally:
                os._exit(MODEL_TIMEOUT_EXIT)

        timer = threading.Timer(limit, expired)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _predict(self, loaded: WarmModel, volume: Volume, label: str,
                 priors: list[PriorVolume] | None = None) -> Prediction:
        """Run the model (with ``priors`` when given); :class:`ModelCannotRun` passes
        through (the model declines)."""
        model = loaded.model
        assert model is not None
        device = loaded.device
        autocast = device.type == "cuda" and model.device_needs.mixed_precision
        try:
            with torch.inference_mode(), \
                    torch.autocast(device.type, enabled=autocast), \
                    gpu_memory_bound(device, loaded.memory_bound_mb or 0), \
                    cpu_threads(loaded.cpu_threads):
                if priors is not None and isinstance(model, ComparesWithPriors):
                    return model.predict_with_priors(volume, priors)
                return model.predict(volume)
        except ModelFailed as exc:
            raise PermanentJobError(f"model {model.name} {model.version} failed on {label}: {exc}") from None
        except torch.cuda.OutOfMemoryError:
            raise PermanentJobError(
                f"model {model.name} needed more than its {loaded.memory_bound_mb} MiB of GPU memory "
                f"on {label}; raise models.{model.name}.gpu_memory_mb") from None
