"""Models that come as container images: MONAI Application Packages, MHub.ai images,
mercure-style modules, or any image that follows AINode's simple contract.

A model folder holds an ``ainode-container.toml`` naming the image (pinned by digest),
the runtime (podman or docker), the path convention, the limits and what the model
produces. For each series the node

1. links or copies the series' DICOM files into a fresh input folder, mounted
   read-only at the convention's input path;
2. runs the image with no network, the memory, CPU and process limits, a GPU only
   where configured, and an empty output folder at the convention's output path;
3. stops it past ``timeout_s``, keeps its log (stdout and stderr) beside the job's
   results, and reads the output folder:

   - ``labelmap.nii.gz`` / ``labelmap.nii``: a label map in patient space (NIfTI's
     RAS affine), put back on the series' grid exactly or refused;
   - ``results.json``: findings, measurements and detections by the names the
     manifest declares (``{"findings": [{"name", "score"}], "measurements":
     [{"name", "value"}], "detections": [{"name", "centre", "score", "diameters_mm"}]}``);
   - or a DICOM SEG the container made (``*.dcm``): checked to reference the source
     series and its segments read back as the label map, so that AINode encodes the
     results with its own deterministic UIDs (a rerun never sends new copies).

A container that fails (exit status, timeout, nothing written, an output that does
not fit the series) raises :class:`~ai.protocol.ModelFailed` with the reason and the
end of its log: the job ends dead, the node serves on.

Example::

    name = "lung-nodules"
    version = "2.1.0"
    image = "localhost/lung-nodules@sha256:4f1c..."   # or "sha256:<image id>"
    runtime = "podman"                                # or "docker"
    convention = "ainode"                             # /input, /output; or "monai-deploy", "mhub", "mercure"
    memory_mb = 4096
    cpus = 2.0
    timeout_s = 600
    gpu = "none"                                      # "optional": GPU passthrough where the worker has one

    [accepts]
    modalities = ["CT"]

    [[detections]]
    name = "lung nodule"
    concept = { value = "27925004", scheme = "SCT", meaning = "Nodule" }
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ai.manifest import ML, VOLUME, CodeEntry, read_toml_model
from ai.protocol import (
    Accepts,
    Assessment,
    Detection,
    DetectionSpec,
    DeviceNeeds,
    Finding,
    FindingSpec,
    Measurement,
    MeasurementSpec,
    ModelFailed,
    Outputs,
    Prediction,
    SegmentSpec,
)
from ai.volume import Volume

CONTAINER_MANIFEST = "ainode-container.toml"

#: (input, output) paths inside the container, and environment, per convention:
#: AINode's own; MONAI Deploy / Holoscan application packages (HOLOSCAN_INPUT_PATH,
#: HOLOSCAN_OUTPUT_PATH); MHub.ai (/app/data/input_data, /app/data/output_data);
#: mercure modules (MERCURE_IN_DIR, MERCURE_OUT_DIR).
CONVENTIONS: dict[str, tuple[str, str, dict[str, str]]] = {
    "ainode": ("/input", "/output", {"AINODE_INPUT": "/input", "AINODE_OUTPUT": "/output"}),
    "monai-deploy": ("/var/holoscan/input", "/var/holoscan/output",
                     {"HOLOSCAN_INPUT_PATH": "/var/holoscan/input", "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output"}),
    "mhub": ("/app/data/input_data", "/app/data/output_data", {}),
    "mercure": ("/tmp/data", "/tmp/output", {"MERCURE_IN_DIR": "/tmp/data", "MERCURE_OUT_DIR": "/tmp/output"}),
}
#: What the tail of a container's log in an error message holds at most.
LOG_TAIL_LINES = 12
_DIGEST = re.compile(r"(@sha256:[0-9a-f]{64}$)|(^sha256:[0-9a-f]{64}$)|(^[0-9a-f]{64}$)")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ContainerError(ValueError):
    """The container model's manifest is wrong; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Accepts(_Strict):
    modalities: list[str] = Field(min_length=1)
    min_slices: int = Field(default=1, ge=1)


class _Segment(_Strict):
    label: int = Field(ge=1, le=255)
    name: str = Field(min_length=1)
    category: CodeEntry
    type: CodeEntry
    laterality: CodeEntry | None = None


class _Finding(_Strict):
    name: str = Field(min_length=1)
    concept: CodeEntry


class _Detection(_Strict):
    name: str = Field(min_length=1)
    concept: CodeEntry
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)


class _Measurement(_Strict):
    name: str = Field(min_length=1)
    concept: CodeEntry
    unit: CodeEntry


class ContainerManifest(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=32)
    image: str = Field(min_length=1, description="pinned: name@sha256:<digest> or sha256:<image id>")
    runtime: Literal["podman", "docker"] = "podman"
    convention: Literal["ainode", "monai-deploy", "mhub", "mercure"] = "ainode"
    command: list[str] = Field(default_factory=list, description="arguments after the image; default its own")
    memory_mb: int = Field(default=4096, ge=64)
    cpus: float = Field(default=2.0, gt=0)
    pids: int = Field(default=4096, ge=16)
    timeout_s: float = Field(default=900.0, gt=0)
    gpu: Literal["none", "optional", "required"] = "none"
    #: Extra runtime arguments this machine needs (e.g. podman's ["--runtime", "runc"]).
    runtime_args: list[str] = Field(default_factory=list)
    description: str = ""
    accepts: _Accepts
    segments: list[_Segment] = Field(default_factory=list)
    measurements: list[_Measurement] = Field(default_factory=list)
    findings: list[_Finding] = Field(default_factory=list)
    detections: list[_Detection] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ContainerManifest:
        if not _DIGEST.search(self.image):
            raise ValueError(f"image {self.image!r} is not pinned: give name@sha256:<digest> or sha256:<id> "
                             f"(`{self.runtime} image inspect --format '{{{{.Id}}}}' IMAGE`)")
        if not (self.segments or self.findings or self.detections or self.measurements):
            raise ValueError("a container model must declare what it produces ([[segments]], [[findings]], "
                             "[[detections]] or [[measurements]])")
        labels = [s.label for s in self.segments]
        if len(set(labels)) != len(labels):
            raise ValueError("each segment needs its own label")
        return self


def read_container_manifest(folder: Path) -> ContainerManifest:
    """Parse and check ``<folder>/ainode-container.toml``; raises :class:`ContainerError`."""
    return read_toml_model(folder / CONTAINER_MANIFEST, ContainerManifest, ContainerError)


def is_container_model(folder: Path) -> bool:
    return (folder / CONTAINER_MANIFEST).is_file()


@dataclass(frozen=True)
class ContainerRun:
    """How one run went: the exit status (None when stopped at the timeout), seconds,
    and the log (stdout and stderr together)."""

    status: int | None
    seconds: float
    log: str

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        kept = [line for line in self.log.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(kept)[-2000:] or "no output"


class ContainerModel:
    """Runs a container image as its manifest describes (see the module docstring)."""

    def __init__(self, manifest: ContainerManifest, folder: Path, work_dir: str | None = None,
                 runtime_args: list[str] | None = None) -> None:
        self.manifest = manifest
        self.folder = folder
        self.name = manifest.name
        self.version = manifest.version
        self.accepts = Accepts(tuple(manifest.accepts.modalities), manifest.accepts.min_slices)
        self.device_needs = DeviceNeeds(manifest.gpu)
        segments = tuple(SegmentSpec(s.label, s.name, s.category.code(), s.type.code(),
                                     s.laterality.code() if s.laterality else None) for s in manifest.segments)
        measured = tuple(MeasurementSpec(m.name, m.concept.code(), m.unit.code()) for m in manifest.measurements)
        volumes = tuple(MeasurementSpec(f"{s.name} volume", VOLUME, ML, s.label) for s in segments)
        self.outputs = Outputs(
            segments=segments, measurements=volumes + measured,
            findings=tuple(FindingSpec(f.name, f.concept.code()) for f in manifest.findings),
            detections=tuple(DetectionSpec(d.name, d.concept.code(), d.threshold) for d in manifest.detections))
        #: Where input and output folders and the kept logs go (default: the system's temp).
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "ainode-containers"
        #: Runtime arguments this machine needs beyond the manifest's (the
        #: ``runtime_args`` option), e.g. podman's ["--runtime", "runc"].
        self.runtime_args = [*manifest.runtime_args, *(runtime_args or [])]
        self.device = "cpu"
        self.last_run: ContainerRun | None = None

    # --- the runtime ---------------------------------------------------------------

    def _runtime(self) -> str:
        found = shutil.which(self.manifest.runtime)
        if found is None:
            raise ModelFailed(f"container runtime {self.manifest.runtime} is not installed on this machine")
        return found

    def load(self, device: str) -> None:
        """Check that the runtime is there and holds the pinned image (nothing is pulled)."""
        self.device = device
        if self.manifest.gpu == "required" and not device.startswith("cuda"):
            raise ModelFailed("it needs a GPU and this worker has none")
        inspected = subprocess.run([self._runtime(), "image", "inspect", "--format", "{{.Id}}", self.manifest.image],
                                   capture_output=True, text=True, timeout=60)
        if inspected.returncode != 0:
            raise ModelFailed(f"image {self.manifest.image} is not on this machine ({self.manifest.runtime} "
                              f"image inspect: {inspected.stderr.strip()[-300:] or 'not found'}); load it with "
                              f"`{self.manifest.runtime} load` or `{self.manifest.runtime} import` (nothing is pulled)")
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def run_arguments(self, name: str, input_dir: Path, output_dir: Path) -> list[str]:
        """The runtime command line for one run (no network, input read-only, limits)."""
        inside_in, inside_out, env = CONVENTIONS[self.manifest.convention]
        m = self.manifest
        args = [self._runtime(), "run", "--rm", "--name", name, *self.runtime_args,
                "--network", "none", "--memory", f"{m.memory_mb}m", "--cpus", f"{m.cpus:g}",
                "--pids-limit", str(m.pids), "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
                "-v", f"{input_dir}:{inside_in}:ro", "-v", f"{output_dir}:{inside_out}",
                "--user", f"{os.getuid()}:{os.getgid()}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if m.gpu != "none" and self.device.startswith("cuda"):
            index = self.device.partition(":")[2] or "0"
            args += ["--device", f"nvidia.com/gpu={index}"] if m.runtime == "podman" else \
                ["--gpus", f"device={index}"]
        return [*args, m.image, *m.command]

    def _run(self, name: str, input_dir: Path, output_dir: Path, log_path: Path) -> ContainerRun:
        started = time.monotonic()
        with log_path.open("w", encoding="utf-8", errors="replace") as log:
            proc = subprocess.Popen(self.run_arguments(name, input_dir, output_dir), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            stopped = threading.Event()
            timer = threading.Timer(self.manifest.timeout_s, self._stop, (name, stopped))
            timer.daemon = True
            timer.start()
            try:
                status = proc.wait()
            finally:
                timer.cancel()
        text = log_path.read_text(encoding="utf-8", errors="replace")
        return ContainerRun(None if stopped.is_set() else status, time.monotonic() - started, text)

    def _stop(self, name: str, stopped: threading.Event) -> None:
        stopped.set()
        subprocess.run([self._runtime(), "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)

    # --- one prediction ------------------------------------------------------------

    def predict(self, volume: Volume) -> Prediction:
        if not volume.files:
            raise ModelFailed("the series' files are not known to the container model")
        run_id = f"ainode-{self.name}-{uuid.uuid4().hex[:12]}"
        folder = self.work_dir / run_id
        input_dir, output_dir = folder / "input", folder / "output"
        input_dir.mkdir(parents=True)
        output_dir.mkdir()
        for number, path in enumerate(volume.files, start=1):
            target = input_dir / f"{number:05d}.dcm"
            try:
                os.link(path, target)
            except OSError:  # another file system: a copy
                shutil.copyfile(path, target)
        log_path = self.work_dir / f"{run_id}.log"
        try:
            run = self._run(run_id, input_dir, output_dir, log_path)
            self.last_run = run
            where = f"(log: {log_path})"
            if run.status is None:
                raise ModelFailed(f"container ran longer than its timeout_s ({self.manifest.timeout_s:g} s) and "
                                  f"was stopped {where}; last output: {run.tail()}")
            if run.status != 0:
                raise ModelFailed(f"container exited with status {run.status} {where}; last output: {run.tail()}")
            prediction = self._read_outputs(output_dir, volume)
            prediction.provenance.update({"runtime": self.manifest.runtime, "image": self.manifest.image,
                                          "convention": self.manifest.convention, "log": str(log_path),
                                          "container_seconds": round(run.seconds, 2)})
            return prediction
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _read_outputs(self, output_dir: Path, volume: Volume) -> Prediction:
        files = sorted(p for p in output_dir.rglob("*") if p.is_file())
        if not files:
            raise ModelFailed("container wrote nothing to its output folder "
                              f"({CONVENTIONS[self.manifest.convention][1]})")
        labelmap = None
        nifti = [p for p in files if p.name in ("labelmap.nii.gz", "labelmap.nii")]
        dicom = [p for p in files if p.suffix.lower() == ".dcm"]
        if nifti:
            labelmap = nifti_on_grid(nifti[0], volume)
        elif dicom and self.outputs.segments:
            labelmap = segmentation_on_grid(dicom, volume, self.outputs)
        elif self.outputs.segments:
            raise ModelFailed("container wrote no labelmap.nii(.gz) and no DICOM SEG, though the model declares "
                              "segments")
        prediction = Prediction(labelmap=labelmap)
        if labelmap is not None:
            for s in self.outputs.segments:
                prediction.measurements.append(
                    Measurement(f"{s.name} volume", float((labelmap == s.label).sum()) * volume.voxel_volume_ml))
        results = next((p for p in files if p.name == "results.json"), None)
        if results is not None:
            _read_results(results, prediction)
        elif not (self.outputs.segments and labelmap is not None):
            raise ModelFailed("container wrote no results.json, though the model declares findings, "
                              "measurements or detections")
        return prediction


def _read_results(path: Path, prediction: Prediction) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for f in data.get("findings", ()):
            score = float(f["score"])
            assessment = Assessment(f["assessment"]) if "assessment" in f else Assessment.of(score >= 0.5)
            prediction.findings.append(Finding(str(f["name"]), score, assessment, str(f.get("reason", ""))))
        for m in data.get("measurements", ()):
            prediction.measurements.append(Measurement(str(m["name"]), float(m["value"])))
        for d in data.get("detections", ()):
            prediction.detections.append(Detection.from_json(d))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFailed(f"container's results.json cannot be read ({type(exc).__name__}: {exc})"[:500]) from None


def nifti_on_grid(path: Path, volume: Volume) -> np.ndarray:
    """A NIfTI label map as (slice, row, column) on the series' grid: its voxel axes
    must be the series' axes, possibly permuted or flipped, at the same positions."""
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))
        data = np.asarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel's own errors for a broken file
        raise ModelFailed(f"container's {path.name} cannot be read ({type(exc).__name__})") from None
    data = np.squeeze(data)
    if data.ndim != 3:
        raise ModelFailed(f"container's {path.name} has {data.ndim} dimensions, not 3")
    # NIfTI voxel (i, j, k) -> the series' voxel (column, row, slice): a signed
    # permutation with the corner voxels matching, or the map is not on the grid.
    to_series = np.linalg.inv(volume.affine_lps()) @ LPS_TO_RAS @ affine
    linear, offset = to_series[:3, :3], to_series[:3, 3]
    permutation = np.rint(linear)
    target = (volume.shape[2], volume.shape[1], volume.shape[0])  # (column, row, slice)
    if not np.allclose(linear, permutation, atol=1e-3) or not np.array_equal(
            np.abs(permutation).sum(axis=0), np.ones(3)) or not np.array_equal(np.abs(permutation).sum(axis=1),
                                                                              np.ones(3)):
        raise ModelFailed(f"container's {path.name} is not on the series' grid (resampled or rotated)")
    sources = [int(np.nonzero(permutation[a])[0][0]) for a in range(3)]  # series axis a <- nifti axis
    arranged = np.transpose(data, sources)
    for a in range(3):
        sign = permutation[a, sources[a]]
        expected = 0.0 if sign > 0 else arranged.shape[a] - 1.0
        if arranged.shape[a] != target[a] or abs(offset[a] - expected) > 1e-3:
            raise ModelFailed(f"container's {path.name} covers another region than the series "
                              f"(shape {tuple(data.shape)}, series {target})")
        if sign < 0:
            arranged = np.flip(arranged, axis=a)
    out = np.asarray(arranged)
    if not np.allclose(out, np.rint(out)) or out.min() < 0 or out.max() > 255:
        raise ModelFailed(f"container's {path.name} holds values that are not labels 0-255")
    return np.ascontiguousarray(np.rint(out).astype(np.uint8).transpose(2, 1, 0))


def segmentation_on_grid(paths: list[Path], volume: Volume, outputs: Outputs) -> np.ndarray:
    """The label map of a DICOM SEG the container made: it must reference the source
    series; each segment is matched to a declared one by label (segment label, else
    the declared name's) and put on the source frame it references."""
    import highdicom as hd
    from pydicom import dcmread

    segs = []
    for path in paths:
        try:
            ds = dcmread(path)
        except Exception:
            continue
        if str(ds.get("Modality", "")) == "SEG":
            segs.append(ds)
    if not segs:
        raise ModelFailed("container wrote DICOM files but no SEG")
    labelmap = np.zeros(volume.shape, dtype=np.uint8)
    names = {s.name.lower(): s.label for s in outputs.segments}
    sources = list(dict.fromkeys(volume.sop_instance_uids))
    for ds in segs:
        referenced = {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])}
        if volume.series_instance_uid not in referenced:
            raise ModelFailed("container's SEG does not reference the source series")
        try:
            seg = hd.seg.Segmentation.from_dataset(ds)
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=sources, combine_segments=False, ignore_spatial_locations=True,
                assert_missing_frames_are_empty=True)
        except Exception as exc:
            raise ModelFailed(f"container's SEG cannot be read on the source images ({type(exc).__name__}: "
                              f"{exc})"[:500]) from None
        by_uid = {uid: n for n, uid in enumerate(sources)}
        for index, description in enumerate(seg.SegmentSequence):
            label = names.get(str(description.SegmentLabel).lower())
            if label is None:
                raise ModelFailed(f"container's SEG has segment {description.SegmentLabel!r}, which the model "
                                  "does not declare")
            for k, uid in enumerate(volume.sop_instance_uids):
                labelmap[k][pixels[by_uid[uid], ..., index] > 0] = label
    return labelmap

