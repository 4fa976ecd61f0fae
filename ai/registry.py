"""Finding the installed models: the entry-point group ``ainode.models``, and model
folders named in the settings: TorchScript or ONNX with an ``ainode-model.toml``,
MONAI bundles (``configs/metadata.json``), nnU-Net v2 result folders (``dataset.json``,
``plans.json``, ``fold_*``), or container images described by an ``ainode-container.toml``.

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

from ai.bundle import BundleError, BundleModel, bundle_name, is_bundle
from ai.container import CONTAINER_MANIFEST, ContainerError, ContainerModel, read_container_manifest
from ai.manifest import MANIFEST_NAME, ManifestError, ManifestModel, read_manifest
from ai.nnunet import NnUNetError, NnUNetModel, is_nnunet_folder, nnunet_name
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
    #: "plugin" (entry point), "folder" (manifest), "bundle", "nnunet" or "container".
    kind: str = "plugin"

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


def _is_model(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file() or (folder / CONTAINER_MANIFEST).is_file() or is_bundle(folder) \
        or is_nnunet_folder(folder)


def _model_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RegistryError(f"model folder {folder} does not exist; fix model_folders")
    if _is_model(folder):
        return [folder]
    inner = sorted(p for p in folder.iterdir() if _is_model(p))
    if not inner:
        raise RegistryError(f"model folder {folder} holds no {MANIFEST_NAME} and no MONAI bundle "
                            "(configs/metadata.json); fix model_folders")
    return inner


def _bundle_factory(folder: Path) -> Callable[..., Model]:
    def make(**options: Any) -> Model:
        """Options: probabilities, explanations, explanation_layer, activation."""
        return BundleModel(folder, **options)
    return make


def _container_factory(folder: Path) -> Callable[..., Model]:
    def make(**options: Any) -> Model:
        """Options: work_dir (input, output and logs), runtime_args (e.g. ["--runtime", "runc"])."""
        return ContainerModel(read_container_manifest(folder), folder, **options)
    return make


def _nnunet_factory(folder: Path) -> Callable[..., Model]:
    def make(**options: Any) -> Model:
        """Options: folds, checkpoint, mirroring, tile_step_size."""
        return NnUNetModel(folder, **options)
    return make


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
            if (model_dir / CONTAINER_MANIFEST).is_file():
                try:
                    container = read_container_manifest(model_dir)
                except ContainerError as exc:
                    raise RegistryError(str(exc)) from None
                if container.name in models:
                    raise RegistryError(f"container model {container.name!r} in {model_dir} has the name of "
                                        f"{models[container.name].source}; rename it in its {CONTAINER_MANIFEST}")
                models[container.name] = InstalledModel(container.name, f"container {container.image} ({model_dir})",
                                                        _container_factory(model_dir), "container")
                continue
            if is_nnunet_folder(model_dir) and not (model_dir / MANIFEST_NAME).is_file():
                try:
                    name = nnunet_name(model_dir)
                except NnUNetError as exc:
                    raise RegistryError(str(exc)) from None
                if name in models:
                    raise RegistryError(f"nnU-Net folder {model_dir} has the name of {models[name].source}; "
                                        "rename its folder")
                models[name] = InstalledModel(name, f"nnU-Net folder {model_dir}", _nnunet_factory(model_dir), "nnunet")
                continue
            if not (model_dir / MANIFEST_NAME).is_file():
                try:
                    name = bundle_name(model_dir)
                except BundleError as exc:
                    raise RegistryError(str(exc)) from None
                if name in models:
                    raise RegistryError(f"MONAI bundle {model_dir} has the name of {models[name].source}; "
                                        "rename the bundle's folder")
                models[name] = InstalledModel(name, f"MONAI bundle {model_dir}", _bundle_factory(model_dir), "bundle")
                continue
            try:
                manifest = read_manifest(model_dir)
            except ManifestError as exc:
                raise RegistryError(str(exc)) from None
            if manifest.name in models:
                raise RegistryError(
                    f"model {manifest.name!r} in {model_dir} has the name of "
                    f"{models[manifest.name].source}; rename it in its {MANIFEST_NAME}")
            models[manifest.name] = InstalledModel(
                manifest.name, f"folder {model_dir}", _folder_factory(model_dir), "folder")
    return models

