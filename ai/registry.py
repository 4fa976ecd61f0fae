"""Finding the installed models: the entry-point group ``ainode.models``, and model
folders (TorchScript or ONNX with an ``ainode-model.toml``) named in the settings.

Built-in models register through the entry point too (in this project's
``pyproject.toml``), so a model from another package is installed the same way:
``pip install`` it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ai.manifest import MANIFEST_NAME, ManifestError, ManifestModel, read_manifest
from ai.protocol import Model

GROUP = "ainode.models"


class RegistryError(ValueError):
    """The installed models are inconsistent (a bad folder, a name used twice)."""


@dataclass(frozen=True)
class InstalledModel:
    name: str
    #: Where it comes from, for people: "entry point pkg.module:Class" or "folder /path".
    source: str
    _factory: Callable[..., Any]

    def create(self, options: Mapping[str, Any] | None = None) -> Model:
        """Make an instance with the ``[models.<name>.options]`` given; raises with the
        reason if the plugin is broken or the options do not fit it."""
        options = dict(options or {})
        try:
            model = self._factory(**options)
        except TypeError as exc:
            if options:
                raise TypeError(f"models.{self.name}.options do not fit the model: {exc}") from None
            raise
        if not isinstance(model, Model):
            raise TypeError(f"{self.source} does not provide the ainode Model protocol")
        if model.name != self.name:
            raise TypeError(f"{self.source} made a model named {model.name!r}, not {self.name!r}")
        return model


def _entry_point_models() -> dict[str, InstalledModel]:
    found = {}
    for ep in entry_points(group=GROUP):
        found[ep.name] = InstalledModel(ep.name, f"entry point {ep.value}", lambda ep=ep, **kw: ep.load()(**kw))
    return found


def _model_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RegistryError(f"model folder {folder} does not exist; fix model_folders")
    if (folder / MANIFEST_NAME).is_file():
        return [folder]
    inner = sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file())
    if not inner:
        raise RegistryError(f"model folder {folder} holds no {MANIFEST_NAME}; fix model_folders")
    return inner


def _folder_factory(folder: Path) -> Callable[..., Model]:
    def make(**options: Any) -> Model:
        if options:
            raise TypeError(f"a model folder takes no options (got {', '.join(sorted(options))})")
        return ManifestModel(read_manifest(folder), folder)
    return make


def installed_models(folders: Sequence[Path] = ()) -> dict[str, InstalledModel]:
    """Every model available: entry points, then model folders, by name.

    Raises:
        RegistryError: a folder is missing or its manifest is invalid, or two models
            have the same name.
    """
    models = _entry_point_models()
    for folder in folders:
        for model_dir in _model_folders(Path(folder)):
            try:
                manifest = read_manifest(model_dir)
            except ManifestError as exc:
                raise RegistryError(str(exc)) from None
            if manifest.name in models:
                raise RegistryError(
                    f"model {manifest.name!r} in {model_dir} has the name of "
                    f"{models[manifest.name].source}; rename it in its {MANIFEST_NAME}")
            models[manifest.name] = InstalledModel(
                manifest.name, f"folder {model_dir}", _folder_factory(model_dir))
    return models

