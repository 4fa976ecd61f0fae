"""A container image for the tests, built here with no registry: a Debian root file
system made by mmdebstrap from Debian's packages (python3, numpy, pydicom), cached
under pytest's cache directory, with tests/container_model/model.py as its entry
point, imported into podman. Its ID pins it in the test models' manifests."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_peer

MODEL_SCRIPT = REPO / "tests" / "container_model" / "model.py"
PACKAGES = "python3-minimal,python3-numpy,python3-pydicom"
#: What this machine's podman needs (crun refuses its hybrid cgroups; explicit ulimits).
PODMAN_ARGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_peer(f"{name} is not installed (apt-get install podman runc mmdebstrap)")
    return str(path)


def cache_folder(config: pytest.Config) -> Path:
    """Where the root file system is kept between runs: pytest's cache directory (or
    the system's temporary one when the cache is off)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("container-rootfs-v1"))
    folder = Path(tempfile.gettempdir()) / "ainode-test-cache" / "container-rootfs-v1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_folder_path() -> Path:
    """The cache folder outside a test session (benchmarks): pytest's, in the repository."""
    folder = REPO / ".pytest_cache" / "d" / "container-rootfs-v1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _rootfs(folder: Path) -> Path:
    """The root file system as a tar file in ``folder``, made once."""
    tar = folder / "rootfs.tar"
    if tar.is_file():
        return tar
    with tempfile.TemporaryDirectory(dir=folder) as work:
        root = Path(work) / "root"
        built = subprocess.run(
            [_tool("mmdebstrap"), "--variant=essential", f"--include={PACKAGES}",
             "--aptopt=APT::Install-Recommends \"false\"", "--dpkgopt=path-exclude=/usr/share/doc/*",
             "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
             "bookworm", str(root), "http://deb.debian.org/debian"],
            capture_output=True, text=True, timeout=900)
        if built.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed: {built.stderr[-2000:]}")
        partial = folder / "rootfs.tar.partial"
        with tarfile.open(partial, "w") as out:
            out.add(root, arcname=".")
        partial.rename(tar)
    return tar


def model_image(folder: Path) -> str:
    """The image's ID (``sha256:...``), imported into podman when it is not there yet
    (its root file system kept in ``folder``)."""
    podman = _tool("podman")
    _tool("runc")
    digest = hashlib.sha256(MODEL_SCRIPT.read_bytes()).hexdigest()[:16]
    tag = f"localhost/ainode-test-model:{digest}"
    found = subprocess.run([podman, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    if found.returncode == 0:
        return "sha256:" + found.stdout.strip().removeprefix("sha256:")
    rootfs = _rootfs(folder)
    with tempfile.TemporaryDirectory() as work:
        layered = Path(work) / "image.tar"
        shutil.copyfile(rootfs, layered)
        with tarfile.open(layered, "a") as out:
            out.add(MODEL_SCRIPT, arcname="./opt/ainode-test-model.py")
        imported = subprocess.run(
            [podman, "import", "--change", 'ENTRYPOINT ["python3", "/opt/ainode-test-model.py"]',
             str(layered), tag], capture_output=True, text=True, timeout=600)
    if imported.returncode != 0:
        raise RuntimeError(f"podman import failed: {imported.stderr[-2000:]}")
    return "sha256:" + imported.stdout.strip().splitlines()[-1].removeprefix("sha256:")


def container_model_folder(folder: Path, image: str, name: str = "dense-container", mode: str = "normal",
                           timeout_s: float = 120.0) -> Path:
    """A model folder with an ``ainode-container.toml`` for the test image in ``mode``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ainode-container.toml").write_text(f"""\
name = "{name}"
version = "1.0.0"
image = "{image}"
runtime = "podman"
convention = "ainode"
command = ["--mode", "{mode}"]
memory_mb = 512
cpus = 1.0
timeout_s = {timeout_s}

[accepts]
modalities = ["CT"]
min_slices = 5

[[segments]]
label = 1
name = "dense tissue"
category = {{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }}
type = {{ value = "85756007", scheme = "SCT", meaning = "Tissue" }}

[[findings]]
name = "dense tissue"
concept = {{ value = "85756007", scheme = "SCT", meaning = "Tissue" }}

[[detections]]
name = "dense lesion"
concept = {{ value = "52988006", scheme = "SCT", meaning = "Lesion" }}
threshold = 0.5
""")
    return folder
