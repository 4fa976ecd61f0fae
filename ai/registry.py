"""Finding the installed models: the entry-point group ``ainode.models``, and model
folders named in the settings: TorchScript or ONNX with an ``ainode-model.toml``,
MONAI bundles (``configs/metadata.json``), nnU-Net v2 result folders (``dataset.json``,
``plans.json``, ``fold_*``), or container images described by an ``ainode-container.toml``.

Built-in models register through the entry point too (in this project's
``pyproject.toml``), so a model from another package is installed the same way:
``pip install`` it.
"""

from __future__ import annotations

import functools
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


#: What a model folder holds, for people (``ainode models check``), by kind.
FOLDER_KINDS = {"container": "container", "folder": "manifest folder", "nnunet": "nnU-Net folder",
                "bundle": "MONAI bundle"}


def folder_kind(folder: Path) -> str | None:
    """Which kind of model folder ``folder`` is ("container", "folder" (a manifest),
    "nnunet", "bundle"), or None; in that order when a folder has several markers."""
    if (folder / CONTAINER_MANIFEST).is_file():
        return "container"
    if (folder / MANIFEST_NAME).is_file():
        return "folder"
    if is_nnunet_folder(folder):
        return "nnunet"
    return "bundle" if is_bundle(folder) else None


def _model_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RegistryError(f"model folder {folder} does not exist; fix model_folders")
    if folder_kind(folder):
        return [folder]
    inner = sorted(p for p in folder.iterdir() if folder_kind(p))
    if not inner:
        raise RegistryError(f"model folder {folder} holds no {MANIFEST_NAME} and no MONAI bundle "
                            "(configs/metadata.json); fix model_folders")
    return inner


def _manifest_model(folder: Path, **options: Any) -> Model:
    if options:
        raise TypeError(f"a model folder takes no options (got {', '.join(sorted(options))})")
    return ManifestModel(read_manifest(folder), folder)


def folder_model(folder: Path) -> tuple[InstalledModel, str]:
    """The model in one model folder, and how to rename it when its name is taken.
    Only what naming it needs is read here; the model checks the rest when made.
    Options: bundles take probabilities, explanations, explanation_layer, activation;
    nnU-Net folders folds, checkpoint, mirroring, tile_step_size; containers work_dir
    and runtime_args; manifest folders none.

    Raises:
        RegistryError: not a model folder, or its manifest or name is unusable.
    """
    kind = folder_kind(folder)
    try:
        if kind == "container":
            container = read_container_manifest(folder)
            return (InstalledModel(container.name, f"container {container.image} ({folder})",
                                   functools.partial(ContainerModel, container, folder), kind),
                    f"rename it in its {CONTAINER_MANIFEST}")
        if kind == "folder":
            manifest = read_manifest(folder)
            return (InstalledModel(manifest.name, f"folder {folder}", functools.partial(_manifest_model, folder),
                                   kind), f"rename it in its {MANIFEST_NAME}")
        if kind == "nnunet":
            return (InstalledModel(nnunet_name(folder), f"nnU-Net folder {folder}",
                                   functools.partial(NnUNetModel, folder), kind), "rename its folder")
        if kind == "bundle":
            return (InstalledModel(bundle_name(folder), f"MONAI bundle {folder}",
                                   functools.partial(BundleModel, folder), kind), "rename the bundle's folder")
    except (ContainerError, ManifestError, NnUNetError, BundleError) as exc:
        raise RegistryError(str(exc)) from None
    raise RegistryError(f"{folder} is not a model folder")


def installed_models(folders: Sequence[Path] = ()) -> dict[str, InstalledModel]:
    """Every model available: entry points, then model folders, by name.

    Raises:
        RegistryError: a folder is missing or its manifest is invalid, or two models
            have the same name.
    """
    models = _entry_point_models()
    for folder in folders:
        for model_dir in _model_folders(Path(folder)):
            found, rename = folder_model(model_dir)
            if found.name in models:
                raise RegistryError(f"model {found.name!r} in {model_dir} has the name of "
                                    f"{models[found.name].source}; {rename}")
            models[found.name] = found
    return models

