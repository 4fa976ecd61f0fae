"""What a model is to the node: its identity, what it accepts, what it needs and
what it produces, and the prediction it returns.

Models depend on this module, numpy and torch only: never on pynetdicom or
highdicom. The encoders turn a :class:`Prediction` into DICOM objects later.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ai.volume import Volume

#: How UCUM codes are written for people (the codes stay in the DICOM objects).
_UNIT_SYMBOLS = {"[hnsf'U]": "HU", "1": "", "{ratio}": "", "mm3": "mm³", "cm3": "cm³"}


def unit_symbol(ucum: str | None) -> str:
    """A UCUM unit code as people read it: ``[hnsf'U]`` is "HU", ``1`` nothing."""
    if not ucum:
        return ""
    return _UNIT_SYMBOLS.get(ucum, ucum)


def format_value(value: float) -> str:
    """A measured value with the digits it deserves: 3177, 14.0, 0.42."""
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 1 else f"{value:.2f}"


class ModelCannotRun(ValueError):
    """The model cannot give a result for this input (e.g. no lungs in the volume):
    running it again will not help. The message says why, without patient data."""


class ModelFailed(RuntimeError):
    """The model failed on this input in a way running it again will not mend (a
    container that exits non-zero, runs past its timeout or writes nothing usable):
    its job ends dead with this message (no patient data)."""


@dataclass(frozen=True)
class Code:
    """A coded concept: (value, coding scheme designator, meaning), e.g. SNOMED CT."""

    value: str
    scheme: str  # "SCT", "DCM", "UCUM", ...
    meaning: str

    def __post_init__(self) -> None:
        if not (self.value and self.scheme and self.meaning):
            raise ValueError("a code needs a value, a coding scheme and a meaning")


@dataclass(frozen=True)
class SegmentSpec:
    """One output segment: its label value in the label map and its coded description."""

    label: int
    name: str
    category: Code
    type: Code
    laterality: Code | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.label <= 255:
            raise ValueError(f"segment label {self.label} is outside 1-255")


@dataclass(frozen=True)
class MeasurementSpec:
    """One measurement a model makes. ``derivation`` (CID 7464, e.g. SCT 373098007
    "Mean") says how a value summarises a region; ``method`` (e.g. CID 7474 for
    volumes) how it was measured: both go into the SR (TID 1419 rows 5 and 3)."""

    name: str
    concept: Code
    unit: Code  # UCUM
    segment: int | None = None  # the label it is measured on
    derivation: Code | None = None
    method: Code | None = None


@dataclass(frozen=True)
class FindingSpec:
    name: str
    concept: Code


@dataclass(frozen=True)
class DetectionSpec:
    """A kind of lesion a detection model finds: its name, its finding type (e.g. SCT
    27925004 "Nodule") and the score from which a detection of it is reported."""

    name: str
    concept: Code
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"detection {self.name!r}: threshold {self.threshold} is outside 0..1")


class MapKind(StrEnum):
    """What a voxel map a model gives beside its results means."""

    #: A segment's probability per voxel: a fractional (probability) SEG.
    PROBABILITY = "probability"
    #: Where the model looked for a finding (a saliency map, e.g. Grad-CAM): a Parametric
    #: Map and an overlay key image, labelled as an explanation and never read as a finding.
    EXPLANATION = "explanation"


@dataclass(frozen=True)
class MapSpec:
    """A voxel map a model gives, values 0..1 on the series' grid. ``of`` names what it
    is about: the segment (probability) or the finding (explanation). ``method`` says
    how it is made, for readers (e.g. "Grad-CAM (MONAI) on layer 0")."""

    name: str
    kind: MapKind
    of: str
    method: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MapKind(self.kind))
        if not (self.name and self.of):
            raise ValueError("a map needs a name and the segment or finding it is about")


@dataclass(frozen=True, eq=False)
class ValueMap:
    """One map a model returns: a :class:`MapSpec`'s name and its values (float, the
    volume's shape, 0..1)."""

    name: str
    values: np.ndarray


@dataclass(frozen=True)
class Accepts:
    modalities: tuple[str, ...]
    min_slices: int = 1


@dataclass(frozen=True)
class DeviceNeeds:
    """``gpu``: "none" (CPU only), "optional" (faster on a GPU) or "required"."""

    gpu: Literal["none", "optional", "required"] = "optional"
    gpu_memory_mb: int = 0  # peak GPU memory the model expects to use
    mixed_precision: bool = False  # safe to run under autocast


@dataclass(frozen=True)
class Outputs:
    segments: tuple[SegmentSpec, ...] = ()
    measurements: tuple[MeasurementSpec, ...] = ()
    findings: tuple[FindingSpec, ...] = ()
    detections: tuple[DetectionSpec, ...] = ()
    #: (window centre, window width) to draw key images with, e.g. (-600, 1500) for lungs;
    #: None: the source images' own window.
    display_window: tuple[float, float] | None = None
    #: The imaging procedure the results report on (TID 1500 Procedure Reported), e.g.
    #: SCT 169069000 "Computed tomography of chest"; None: one for the source's modality.
    procedure: Code | None = None
    maps: tuple[MapSpec, ...] = ()

    def __post_init__(self) -> None:
        segments, findings = {s.name for s in self.segments}, {f.name for f in self.findings}
        findings |= {d.name for d in self.detections}
        for m in self.maps:
            known = segments if m.kind is MapKind.PROBABILITY else findings
            if m.of not in known:
                raise ValueError(f"{m.kind} map {m.name!r} is of {m.of!r}, which is not one of the model's "
                                 f"{'segments' if m.kind is MapKind.PROBABILITY else 'findings'}")
        if len({m.name for m in self.maps}) != len(self.maps):
            raise ValueError("each map needs its own name")


@dataclass(frozen=True)
class Measurement:
    name: str  # a MeasurementSpec's name
    value: float
    reliable: bool = True
    note: str = ""  # why it is not reliable, shown to readers

    def describe(self, unit: str | None = None) -> str:
        """For people: "right lung volume 3177 mL", "... 14.0 % (not reliable: 5 mm slices ...)"."""
        text = self.brief(unit).removesuffix("*")
        return text if self.reliable else f"{text} ({self.note or 'not reliable'})"

    def brief(self, unit: str | None = None, name: str | None = None) -> str:
        """Short: "right lung volume 3177 mL", "LAA-950 14.0 %*" (* not reliable);
        ``name`` in place of the measurement's own."""
        symbol = unit_symbol(unit)
        text = f"{self.name if name is None else name} {format_value(self.value)}" + (f" {symbol}" if symbol else "")
        return text if self.reliable else f"{text}*"

    def to_json(self, unit: str | None = None) -> dict[str, Any]:
        """As recorded with the prediction (with its unit, for people reading the record)."""
        return {"name": self.name, "value": self.value, "unit": unit, "reliable": self.reliable,
                "note": self.note}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        return cls(str(data["name"]), float(data["value"]), bool(data.get("reliable", True)),
                   str(data.get("note") or ""))


class Assessment(StrEnum):
    """What a model says of a finding. ``INDETERMINATE``: it could not judge (an
    unreliable input, say): never to be read, shown or triaged as absent."""

    PRESENT = "present"
    ABSENT = "absent"
    INDETERMINATE = "indeterminate"

    @classmethod
    def of(cls, present: bool) -> Assessment:
        return cls.PRESENT if present else cls.ABSENT


@dataclass(frozen=True)
class Finding:
    """One finding of a model: its assessment and its score (0..1).

    ``assessment`` also takes a bool (True: present, False: absent), as earlier
    plugins gave it. An indeterminate finding needs a ``reason`` (shown to readers,
    no patient data) and may have no score.
    """

    name: str  # a FindingSpec's name
    score: float | None
    assessment: Assessment = Assessment.ABSENT
    reason: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.assessment, bool):
            object.__setattr__(self, "assessment", Assessment.of(self.assessment))
        else:
            object.__setattr__(self, "assessment", Assessment(self.assessment))
        if self.assessment is Assessment.INDETERMINATE:
            if not self.reason.strip():
                raise ValueError(f"finding {self.name!r} is indeterminate without a reason")
        elif self.score is None:
            raise ValueError(f"finding {self.name!r} is {self.assessment} without a score")

    @property
    def present(self) -> bool:
        return self.assessment is Assessment.PRESENT

    @property
    def indeterminate(self) -> bool:
        return self.assessment is Assessment.INDETERMINATE

    def describe(self) -> str:
        """For people: "emphysema suspected: present (score 0.83)",
        "...: indeterminate (not reliable: sharp reconstruction kernel B70f)"."""
        if self.indeterminate:
            return f"{self.name}: indeterminate ({self.reason})"
        return f"{self.name}: {self.assessment} (score {self.score:.2f})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "score": self.score, "assessment": str(self.assessment),
                "present": self.present, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        """Also reads predictions recorded before assessments (``present`` only)."""
        score = None if data.get("score") is None else float(data["score"])
        assessment = Assessment(data["assessment"]) if "assessment" in data else Assessment.of(bool(data["present"]))
        return cls(str(data["name"]), score, assessment, str(data.get("reason") or ""))


@dataclass(frozen=True)
class Detection:
    """One lesion a model found, in patient space.

    ``centre`` is in DICOM patient coordinates (LPS, mm). ``diameters_mm`` are the
    lesion's extents along the patient x, y and z axes: an ellipsoid with those axes
    (a box found by a model is reported as the ellipsoid inscribed in it); None for a
    point, when the model gives no size.
    """

    name: str  # a DetectionSpec's name
    centre: tuple[float, float, float]
    score: float
    diameters_mm: tuple[float, float, float] | None = None

    @property
    def volume_ml(self) -> float | None:
        """The ellipsoid's volume (pi/6 * a * b * c), or None for a point."""
        if self.diameters_mm is None:
            return None
        a, b, c = self.diameters_mm
        return math.pi / 6 * a * b * c / 1000.0

    def describe(self) -> str:
        """For people: "nodule at (-52.0, 31.5, 104.0) mm, 8.2 x 7.9 x 8.5 mm (score 0.91)"."""
        where = f"at ({', '.join(f'{v:.1f}' for v in self.centre)}) mm"
        size = f", {' x '.join(f'{d:.1f}' for d in self.diameters_mm)} mm" if self.diameters_mm else ""
        return f"{self.name} {where}{size} (score {self.score:.2f})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "centre": list(self.centre), "score": self.score,
                "diameters_mm": list(self.diameters_mm) if self.diameters_mm else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Detection:
        centre = tuple(float(v) for v in data["centre"])
        diameters = tuple(float(v) for v in data["diameters_mm"]) if data.get("diameters_mm") else None
        return cls(str(data["name"]), (centre[0], centre[1], centre[2]), float(data["score"]),
                   (diameters[0], diameters[1], diameters[2]) if diameters else None)


@dataclass
class Prediction:
    """What a model returns for one volume."""

    labelmap: np.ndarray | None  # uint8, the volume's shape; 0 = background
    measurements: list[Measurement] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    maps: list[ValueMap] = field(default_factory=list)
    #: Facts about the input the results depend on (kernel, slice thickness, ...).
    provenance: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """A model plugin. Registered in the entry-point group ``ainode.models``; the entry
    point loads a class (or factory) called with no arguments."""

    name: str
    version: str
    accepts: Accepts
    device_needs: DeviceNeeds
    outputs: Outputs

    def load(self, device: str) -> None:
        """Prepare to run on ``device`` ("cpu", "cuda:0", ...): weights, warm-up."""

    def predict(self, volume: Volume) -> Prediction:
        """Run on one volume (called under ``torch.inference_mode``)."""


@dataclass(frozen=True, eq=False)
class PriorVolume:
    """An earlier study's series a model may compare with: its volume, the study's date
    (YYYYMMDD, None when the header has none) and its Study Instance UID."""

    volume: Volume
    study_date: str | None
    study_instance_uid: str


@runtime_checkable
class ComparesWithPriors(Protocol):
    """A model that reports change over time. When its route asks for priors
    (``[routes.priors]``), the node calls ``predict_with_priors`` with the earlier
    studies' volumes it retrieved, the most recent first (maybe none: the patient had
    none, or they did not arrive in time), in place of ``predict``."""

    def predict_with_priors(self, volume: Volume, priors: list[PriorVolume]) -> Prediction:
        """Run on one volume, comparing with ``priors`` (under ``torch.inference_mode``)."""


def outputs_from_dict(data: dict[str, Any]) -> Outputs:
    """Rebuild :class:`Outputs` from ``dataclasses.asdict`` (as stored with predictions)."""
    def code(c: dict[str, str] | None) -> Code | None:
        return Code(**c) if c else None

    return Outputs(
        segments=tuple(SegmentSpec(s["label"], s["name"], Code(**s["category"]), Code(**s["type"]),
                                   code(s.get("laterality"))) for s in data.get("segments", ())),
        measurements=tuple(MeasurementSpec(m["name"], Code(**m["concept"]), Code(**m["unit"]),
                                           m.get("segment"), code(m.get("derivation")), code(m.get("method")))
                           for m in data.get("measurements", ())),
        findings=tuple(FindingSpec(f["name"], Code(**f["concept"])) for f in data.get("findings", ())),
        detections=tuple(DetectionSpec(d["name"], Code(**d["concept"]), float(d.get("threshold", 0.5)))
                         for d in data.get("detections", ())),
        display_window=(float(window[0]), float(window[1])) if (window := data.get("display_window")) else None,
        procedure=code(data.get("procedure")),
        maps=tuple(MapSpec(m["name"], MapKind(m["kind"]), m["of"], m.get("method", ""))
                   for m in data.get("maps", ())),
    )


def declared_outputs(outputs: Outputs) -> Outputs:
    """What a model declares, with one finding per kind of detection (its name and
    concept) unless the model declares a finding of that name itself: a detected
    lesion then reaches triage, the worklist and the report as a finding does."""
    named = {f.name for f in outputs.findings}
    extra = tuple(FindingSpec(d.name, d.concept) for d in outputs.detections if d.name not in named)
    return dataclasses.replace(outputs, findings=outputs.findings + extra) if extra else outputs


def detection_findings(outputs: Outputs, prediction: Prediction) -> list[Finding]:
    """The findings :func:`declared_outputs` adds: a kind of detection is present, with
    the highest score among its detections, when one reaches its threshold; absent
    otherwise (with the highest score, if any)."""
    own = {f.name for f in prediction.findings} | {f.name for f in outputs.findings}
    found = []
    for kind in outputs.detections:
        if kind.name in own:
            continue
        scores = [d.score for d in prediction.detections if d.name == kind.name]
        best = max(scores, default=0.0)
        found.append(Finding(kind.name, best, Assessment.of(bool(scores) and best >= kind.threshold)))
    return found


class PredictionMismatch(ValueError):
    """A prediction does not fit what its model declared; the message says how."""


def labels_present(labelmap: np.ndarray) -> list[int]:
    """The non-zero values of an integer label map, ascending. A one-byte map with a
    few labels is compared value by value, with many counted in chunks: np.unique
    sorts all 78 million voxels of a 300-slice CT (0.26 s against 0.06)."""
    if labelmap.size == 0:
        return []
    if labelmap.dtype not in (np.uint8, np.bool_):
        return [int(v) for v in np.unique(labelmap) if v != 0]
    values = labelmap.view(np.uint8).reshape(-1)
    top = int(values.max())
    if top <= 8:
        return [v for v in range(1, top + 1) if (values == v).any()]
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, values.size, 1 << 20):
        counts += np.bincount(values[start:start + (1 << 20)], minlength=256)
    return [int(v) for v in np.flatnonzero(counts[1:]) + 1]


def undeclared_labels(labelmap: np.ndarray, declared: set[int]) -> list[int]:
    """The values of an integer label map that are neither 0 nor ``declared``."""
    return [v for v in labels_present(labelmap) if v not in declared]


def check_prediction(outputs: Outputs, prediction: Prediction, shape: tuple[int, ...]) -> None:
    """Check a prediction against the outputs its model declared, before it is recorded.

    Raises :class:`PredictionMismatch` for a label map of another shape or type, or
    with labels the model does not declare; a measurement or finding the model does
    not declare; a value that is not a finite number; a score outside 0..1.
    """
    problems = []
    if prediction.labelmap is not None:
        labelmap = prediction.labelmap
        if tuple(labelmap.shape) != tuple(shape):
            problems.append(f"a label map of shape {tuple(labelmap.shape)} for a volume of {tuple(shape)}")
        elif labelmap.dtype.kind not in "ui" and labelmap.dtype != np.bool_:
            problems.append(f"a label map of {labelmap.dtype} values (integers expected)")
        else:
            declared = {s.label for s in outputs.segments}
            undeclared = undeclared_labels(labelmap, declared)
            if undeclared:
                problems.append(f"label(s) {', '.join(map(str, undeclared[:5]))} that it does not declare")
    measurements = {m.name for m in outputs.measurements}
    for m in prediction.measurements:
        if m.name not in measurements:
            problems.append(f"measurement {m.name!r} that it does not declare")
        elif not np.isfinite(m.value):
            problems.append(f"measurement {m.name!r} = {m.value}")
    findings = {f.name for f in outputs.findings}
    for f in prediction.findings:
        if f.name not in findings:
            problems.append(f"finding {f.name!r} that it does not declare")
        elif f.score is not None and not (np.isfinite(f.score) and 0.0 <= f.score <= 1.0):
            problems.append(f"finding {f.name!r} with score {f.score} (0..1 expected)")
    kinds = {d.name for d in outputs.detections}
    for d in prediction.detections:
        if d.name not in kinds:
            problems.append(f"detection {d.name!r} that it does not declare")
        elif not (np.isfinite(d.score) and 0.0 <= d.score <= 1.0):
            problems.append(f"detection {d.name!r} with score {d.score} (0..1 expected)")
        elif not all(np.isfinite(v) for v in d.centre) or (
                d.diameters_mm is not None and not all(np.isfinite(v) and v > 0 for v in d.diameters_mm)):
            problems.append(f"detection {d.name!r} at {d.centre} with diameters {d.diameters_mm}")
    maps = {m.name for m in outputs.maps}
    for value_map in prediction.maps:
        values = np.asarray(value_map.values)
        if value_map.name not in maps:
            problems.append(f"map {value_map.name!r} that it does not declare")
        elif tuple(values.shape) != tuple(shape):
            problems.append(f"map {value_map.name!r} of shape {tuple(values.shape)} for a volume of {tuple(shape)}")
        elif values.dtype.kind not in "fiub" or not np.isfinite(values).all():
            problems.append(f"map {value_map.name!r} with values that are not finite numbers")
        elif values.size and (float(values.min()) < -1e-3 or float(values.max()) > 1.0 + 1e-3):
            problems.append(f"map {value_map.name!r} with values outside 0..1")
    if problems:
        raise PredictionMismatch("; ".join(problems))
