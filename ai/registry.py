"""Finding the installed models: the entry-point group ``ainode.models``.

Built-in models register there too (in this project's ``pyproject.toml``), so a
model from another package is installed the same way: ``pip install`` it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ai.protocol import Model

log = logging.getLogger(__name__)

GROUP = "ainode.models"


class ModelNotFound(LookupError):
    pass


@dataclass(frozen=True)
class InstalledModel:
    name: str
    entry_point: EntryPoint

    def create(self) -> Model:
        """Import the plugin and make an instance; raises with the reason if it is broken."""
        factory = self.entry_point.load()
        model = factory()
        if not isinstance(model, Model):
            raise TypeError(f"{self.entry_point.value} does not provide the ainode Model protocol")
        if model.name != self.name:
            raise TypeError(f"entry point {self.name!r} made a model named {model.name!r}")
        return model


def installed_models() -> dict[str, InstalledModel]:
    """Every model registered in the environment, by name."""
    return {ep.name: InstalledModel(ep.name, ep) for ep in entry_points(group=GROUP)}


def create_model(name: str) -> Model:
    models = installed_models()
    if name not in models:
        raise ModelNotFound(
            f"model {name!r} is not installed (installed: {', '.join(sorted(models)) or 'none'})"
        )
    return models[name].create()
