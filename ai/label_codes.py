"""Codes for the labels a model names only in words ("spleen", "left kidney",
"tumor"), as DICOM SEG needs them: a segmented property category, a type and, where
the name says so, a laterality.

Defaults come from pydicom's SNOMED CT dictionary (the DICOM standard's own codes,
PS3.16), looked up by the label's words; an operator's mapping file overrides or
adds to them. A label no default and no mapping covers has no code: the model cannot
be used until the operator maps it (the error names the file and shows an entry).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom.sr.codedict import codes

from ai.protocol import Code

#: The mapping file an operator puts beside a model (in its folder).
LABELS_FILE = "ainode-labels.toml"

ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")

#: Words naming an abnormality rather than anatomy (their category is ABNORMAL).
_ABNORMAL_WORDS = {"tumor", "tumour", "neoplasm", "lesion", "nodule", "mass", "cyst", "metastasis",
                   "cancer", "carcinoma", "hemorrhage", "haemorrhage", "infarct", "edema", "oedema"}
#: Common names that pydicom's keywords spell differently.
_SYNONYMS = {"tumour": "Tumor", "urinary_bladder": "Bladder",
             "gall_bladder": "Gallbladder", "ivc": "InferiorVenaCava", "oesophagus": "Esophagus",
             "cancer": "Neoplasm", "carcinoma": "Neoplasm", "lungs": "Lung", "kidneys": "Kidney",
             "haemorrhage": "Hemorrhage", "oedema": "Edema"}


class LabelCodingError(ValueError):
    """A label has no code, or the operator's mapping file is wrong."""


class _CodeEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1)
    scheme: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


class _LabelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: _CodeEntry
    type: _CodeEntry
    laterality: _CodeEntry | None = None


class LabelCoding(BaseModel):
    """The codes of one label."""

    model_config = ConfigDict(frozen=True)
    category: Code
    type: Code
    laterality: Code | None = None


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def _sct(keyword: str) -> Code | None:
    try:
        found = getattr(codes.SCT, keyword)
    except AttributeError:
        return None
    return Code(str(found.value), str(found.scheme_designator), str(found.meaning))


def default_coding(name: str) -> LabelCoding | None:
    """The standard codes for a label name, or None when none is known.

    "left_kidney" -> Kidney with laterality Left; "liver tumor" -> Tumor (the
    abnormality, not the organ it is in); "spleen" -> Spleen.
    """
    words = _words(name)
    laterality = None
    if words and words[0] in ("left", "right"):
        laterality = LEFT if words[0] == "left" else RIGHT
        words = words[1:]
    elif words and words[-1] in ("left", "right"):
        laterality = LEFT if words[-1] == "left" else RIGHT
        words = words[:-1]
    if not words:
        return None
    abnormal = [w for w in words if w in _ABNORMAL_WORDS]
    candidates = [abnormal[-1]] if abnormal else ["_".join(words), words[-1]]
    for candidate in candidates:
        keyword = _SYNONYMS.get(candidate) or "".join(w.capitalize() for w in candidate.split("_"))
        concept = _sct(keyword) or _sct(keyword + "Structure")
        if concept is not None:
            return LabelCoding(category=ABNORMAL if abnormal else ANATOMY, type=concept,
                               laterality=laterality)
    return None


def read_label_mapping(folder: Path) -> dict[str, LabelCoding]:
    """The operator's mapping (``ainode-labels.toml`` in ``folder``), by label name;
    empty when there is none."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LabelCodingError(f"{path}: cannot be read as TOML ({exc})") from None
    mapping = {}
    for label, entry in (data.get("labels") or {}).items():
        try:
            parsed = _LabelEntry.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise LabelCodingError(f"{path}: labels.{label}: {problems}") from None
        mapping[label] = LabelCoding(
            category=Code(**parsed.category.model_dump()), type=Code(**parsed.type.model_dump()),
            laterality=Code(**parsed.laterality.model_dump()) if parsed.laterality else None)
    return mapping


def coding_for(name: str, mapping: dict[str, LabelCoding], folder: Path) -> LabelCoding:
    """The operator's codes for ``name``, else the default; raises
    :class:`LabelCodingError` naming the file to add it to."""
    coding = mapping.get(name) or default_coding(name)
    if coding is None:
        raise LabelCodingError(
            f"label {name!r} has no standard code AINode knows; add it to {folder / LABELS_FILE}, e.g.\n"
            f'[labels."{name}"]\n'
            'category = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }\n'
            f'type = {{ value = "...", scheme = "SCT", meaning = "..." }}')
    return coding
