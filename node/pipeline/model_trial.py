"""Run one installed model on a stored study and say what it finds, recording and
sending nothing (``ainode models try``): for an AI team trying a model on local
data before a route sends it every study."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from ai.protocol import Model, ModelCannotRun, PredictionMismatch, check_prediction
from ai.registry import installed_models
from ai.volume import NotAVolume, load_volume
from config.settings import Settings
from node.pipeline.route_explain import views_from_database
from node.pipeline.routing import SeriesView, StudyView, route_study
from storage.db import open_database
from storage.files import FileStore
from storage.inventory import series_files


class TrialError(ValueError):
    """The trial cannot run: unknown model or study, or the model does not load."""


class TrialOutcome(StrEnum):
    RAN = "ran"
    DECLINED = "declined"  # the model (or the volume check) turned the series down, with the reason
    ERROR = "error"  # the model raised, or its output does not match what it declares


@dataclass
class SeriesTrial:
    series_number: int | None
    series_instance_uid: str
    why: str  # why this series was tried
    outcome: TrialOutcome = TrialOutcome.RAN
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"series_number": self.series_number, "series_instance_uid": self.series_instance_uid,
                "why": self.why, "outcome": str(self.outcome), "lines": self.lines, "seconds": round(self.seconds, 2)}


def _series_to_try(settings: Settings, model: Model, study: StudyView) -> list[tuple[SeriesView, str]]:
    routes = [r for r in settings.routes if r.model == model.name and r.enabled]
    chosen = [(s, f"route {d.route.name} takes it") for d in route_study(routes, study) for s in d.chosen]
    if chosen:
        return chosen
    accepted = [s for s in study.series if s.modality in model.accepts.modalities
                and s.instance_count >= model.accepts.min_slices]
    because = (f"no route for {model.name} takes a series of this study" if routes
               else f"no route uses {model.name}")
    return [(s, f"{because}; a {s.modality} series of {s.instance_count} images") for s in accepted]


def try_model(settings: Settings, model_name: str, study_uid: str, device: str = "cpu") -> list[SeriesTrial]:
    """Run ``model_name`` on the series its routes would choose in the stored study
    (each series it accepts when no route takes one)."""
    import torch

    studies = views_from_database(settings, study_uid)  # before loading the model: a wrong UID fails fast
    if not studies:
        raise TrialError(f"{study_uid} is not a stored Study Instance UID")
    available = installed_models(settings.model_folders)
    if model_name not in available:
        raise TrialError(f"model {model_name!r} is not installed (installed: {', '.join(sorted(available)) or 'none'})")
    config = settings.models.get(model_name)
    try:
        model = available[model_name].create(config.options if config else None)
        model.load(device)
    except Exception as exc:  # the model's own code
        raise TrialError(f"model {model_name} does not load: {type(exc).__name__}: {exc}") from None
    candidates = _series_to_try(settings, model, studies[0])
    if not candidates:
        raise TrialError(f"the study has no {'/'.join(model.accepts.modalities)} series of at least "
                         f"{model.accepts.min_slices} images for {model_name}")
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    store = FileStore(settings.data_dir)
    units = {m.name: m.unit.value for m in model.outputs.measurements}
    names = {s.label: s.name for s in model.outputs.segments}
    trials = []
    try:
        for series, why in candidates:
            trial = SeriesTrial(series.series_number, series.series_instance_uid, why)
            trials.append(trial)
            started = time.perf_counter()
            try:
                volume = load_volume([store.absolute(p) for p in series_files(engine, series.series_instance_uid)],
                                     min_slices=model.accepts.min_slices)
                with torch.inference_mode():
                    prediction = model.predict(volume)
                check_prediction(model.outputs, prediction, volume.shape)
            except (NotAVolume, ModelCannotRun) as exc:
                trial.outcome, trial.lines = TrialOutcome.DECLINED, [str(exc)]
                continue
            except PredictionMismatch as exc:
                trial.outcome = TrialOutcome.ERROR
                trial.lines = [f"output does not match what the model declares: {exc}"]
                continue
            except Exception as exc:  # the model's own code: report it, try the next series
                trial.outcome, trial.lines = TrialOutcome.ERROR, [f"{type(exc).__name__}: {exc}"]
                continue
            finally:
                trial.seconds = time.perf_counter() - started
            trial.lines += [m.describe(units.get(m.name)) for m in prediction.measurements]
            trial.lines += [f.describe() for f in prediction.findings]
            trial.lines += [f"lesion: {d.describe()}" for d in prediction.detections]
            if prediction.labelmap is not None:
                labels, counts = np.unique(prediction.labelmap, return_counts=True)
                trial.lines += [f"label {int(v)} ({names.get(int(v), '?')}): {int(n)} voxels"
                                for v, n in zip(labels, counts, strict=True) if v]
    finally:
        engine.dispose()
    return trials
