"""The models an inference worker keeps loaded ("warm"): every one at start when no
memory budget is set, else as many as fit in ``inference_memory_budget_mb``, loaded
on first use and the least recently used unloaded first when the next one would not
fit. A model's footprint is what ``[models.<name>] memory_mb`` says, else what its
load took (GPU memory allocated on a GPU, resident memory on the CPU).

A model that fails to load is unavailable: its jobs end dead with the reason, the
others go on.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ai.protocol import Model

log = logging.getLogger(__name__)

_MB = 2**20


class ModelUnavailable(RuntimeError):
    """A model this worker cannot run (the message says why)."""


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _used_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / _MB
    return _resident_mb()


@dataclass
class WarmModel:
    """One model of the worker: how to make it, on which device, what it may use."""

    name: str
    make: Callable[[], Model]
    device: torch.device
    #: The most GPU memory one run may take beyond what is already held (MiB); 0: no
    #: bound; None: what the model declares, once it is made.
    memory_bound_mb: int | None = None
    #: PyTorch CPU threads while it runs ([models.<name>] cpu_threads); None: the worker's.
    cpu_threads: int | None = None
    #: The longest one run may take ([models.<name>] timeout_s); None: no limit.
    timeout_s: float | None = None
    #: What it keeps loaded ([models.<name>] memory_mb); None: measured at load.
    declared_mb: int | None = None
    model: Model | None = None
    footprint_mb: float = 0.0
    last_used: float = 0.0


class WarmModels:
    """The worker's models by name (see the module docstring)."""

    def __init__(self, models: dict[str, WarmModel], budget_mb: int = 0) -> None:
        self.models = models
        self.budget_mb = budget_mb
        #: Models that could not be made or loaded, with the reason.
        self.unavailable: dict[str, str] = {}

    def load_all(self) -> None:
        """Load every model now (no budget: they stay loaded)."""
        for name in sorted(self.models):
            try:
                self._load(self.models[name])
            except ModelUnavailable:
                continue

    def _load(self, warm: WarmModel) -> Model:
        before = _used_mb(warm.device)
        try:
            model = warm.make()
            if model.device_needs.gpu == "required" and warm.device.type != "cuda":
                raise ModelUnavailable("it needs a GPU and this worker has none")
            model.load(str(warm.device))
        except Exception as exc:  # the model's own code, or its files: this model only
            reason = str(exc) if isinstance(exc, ModelUnavailable) else f"{type(exc).__name__}: {exc}"
            log.error("model %s cannot be loaded on %s; its jobs fail until it is fixed: %s",
                      warm.name, warm.device, reason)
            self.unavailable[warm.name] = reason
            raise ModelUnavailable(reason) from None
        warm.model = model
        if warm.memory_bound_mb is None:
            warm.memory_bound_mb = model.device_needs.gpu_memory_mb
        warm.footprint_mb = float(warm.declared_mb) if warm.declared_mb is not None else \
            max(0.0, _used_mb(warm.device) - before)
        warm.last_used = time.monotonic()
        return model

    def get(self, name: str) -> WarmModel:
        """The model, loaded: loading it now (and unloading the least recently used
        others until it fits the budget) if it is not. Raises KeyError for a model
        this worker does not have, :class:`ModelUnavailable` for one that cannot load."""
        warm = self.models[name]
        if name in self.unavailable:
            raise ModelUnavailable(self.unavailable[name])
        if warm.model is None:
            if self.budget_mb > 0 and warm.declared_mb is not None:
                self._make_room(warm.declared_mb, keep=name)
            self._load(warm)
            log.info("model %s loaded on %s (%.0f MiB)", name, warm.device, warm.footprint_mb)
            if self.budget_mb > 0:
                self._make_room(0.0, keep=name)
        warm.last_used = time.monotonic()
        return warm

    def _make_room(self, needed_mb: float, keep: str) -> None:
        """Unload the least recently used models (not ``keep``) until the loaded ones
        and ``needed_mb`` fit the budget."""
        while True:
            loaded = [w for w in self.models.values() if w.model is not None]
            held = sum(w.footprint_mb for w in loaded)
            others = sorted((w for w in loaded if w.name != keep), key=lambda w: w.last_used)
            if held + needed_mb <= self.budget_mb or not others:
                return
            self.unload(others[0].name, "least recently used, to keep within inference_memory_budget_mb "
                                        f"({held + needed_mb:.0f} of {self.budget_mb} MiB)")

    def unload(self, name: str, why: str) -> None:
        warm = self.models[name]
        if warm.model is None:
            return
        warm.model = None
        gc.collect()
        if warm.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("model %s unloaded (%s)", name, why)

    def loaded(self) -> list[str]:
        return sorted(n for n, w in self.models.items() if w.model is not None)
