"""The body region a series shows, read from its header text, for routing.

Body Part Examined (0018,0015) comes first: its defined terms (PS3.16 Annex L, e.g.
CHEST, CHESTABDOMEN, HEADNECK) name the regions they cover. When it is absent or
says nothing known, the series description, then the study description are read
for the usual words in English, German, French, Spanish and Italian ("Thorax",
"Thx", "Lunge", "torace", "CAP" for chest-abdomen-pelvis, ...).

The answer is a set of regions, or ``None`` when nothing in the header names one:
anonymised studies often carry no body part and a bare description. Routing then
lets the model's own anatomy check decide (ct-chest declines a volume without lungs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

from config.settings import Region

REGIONS: tuple[str, ...] = get_args(Region)

# Body Part Examined: the defined terms of PS3.16 Annex L are written without spaces,
# so they are matched as substrings of the upper-cased value.
_BODY_PART_TERMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("WHOLEBODY", ("HEAD", "NECK", "CHEST", "ABDOMEN", "PELVIS")),
    ("CHEST", ("CHEST",)), ("THORAX", ("CHEST",)), ("LUNG", ("CHEST",)), ("MEDIASTINUM", ("CHEST",)),
    ("RIB", ("CHEST",)), ("STERNUM", ("CHEST",)),
    ("HEART", ("HEART",)), ("CORONARY", ("HEART",)),
    ("ABD", ("ABDOMEN",)), ("LIVER", ("ABDOMEN",)), ("KIDNEY", ("ABDOMEN",)), ("PANCREAS", ("ABDOMEN",)),
    ("PELV", ("PELVIS",)), ("HIP", ("PELVIS",)), ("BLADDER", ("PELVIS",)), ("PROSTATE", ("PELVIS",)),
    ("HEAD", ("HEAD",)), ("BRAIN", ("HEAD",)), ("SKULL", ("HEAD",)), ("SINUS", ("HEAD",)),
    ("ORBIT", ("HEAD",)), ("FACE", ("HEAD",)), ("TEMPORAL", ("HEAD",)),
    ("NECK", ("NECK",)), ("CSPINE", ("SPINE",)), ("TSPINE", ("SPINE",)), ("LSPINE", ("SPINE",)),
    ("SPINE", ("SPINE",)),
    ("BREAST", ("BREAST",)),
    ("KNEE", ("EXTREMITY",)), ("ANKLE", ("EXTREMITY",)), ("FOOT", ("EXTREMITY",)), ("HAND", ("EXTREMITY",)),
    ("WRIST", ("EXTREMITY",)), ("ELBOW", ("EXTREMITY",)), ("SHOULDER", ("EXTREMITY",)),
    ("EXTREMITY", ("EXTREMITY",)), ("LEG", ("EXTREMITY",)), ("ARM", ("EXTREMITY",)),
)

# Descriptions: whole words (or word starts) only, so that "THX" or "CAP" do not match
# inside other words.
_DESCRIPTION_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"whole\s*body|ganzk[oö]rper|polytrauma|trauma\s*scan", ("HEAD", "NECK", "CHEST", "ABDOMEN", "PELVIS")),
    (r"cap|tap|c/a/p|thorax[\s/-]*abd\w*|chest[\s/-]*abd\w*", ("CHEST", "ABDOMEN", "PELVIS")),
    (r"chest|thorax|thoracic|thorac\w*|thx|thor|lung\w*|lunge|poumons?|pulm\w*|t[oó]rax|torace|"
     r"ctpa|hrct|mediastin\w*", ("CHEST",)),
    (r"cardiac|heart|herz|coronar\w*|calcium\s*score|cta\s*cor\w*", ("HEART",)),
    (r"abd\w*|abdomen|bauch|addome|liver|leber|kidney|niere|pancrea\w*|urogra\w*", ("ABDOMEN",)),
    (r"pelv\w*|becken|bassin|hip|h[uü]fte", ("PELVIS",)),
    (r"head|brain|skull|cranial|cran\w*|kopf|sch[aä]del|cerebr\w*|t[eê]te|cr[aá]neo|cervello|"
     r"sinus\w*|orbit\w*|stroke", ("HEAD",)),
    (r"neck|hals|cou|cuello|collo", ("NECK",)),
    (r"spine|spinal|wirbels[aä]ule|[clt]-?spine|lws|bws|hws", ("SPINE",)),
    (r"breast|mamm\w*", ("BREAST",)),
    (r"knee|knie|ankle|foot|fu[sß]|hand|wrist|elbow|shoulder|schulter|extremit\w*", ("EXTREMITY",)),
)
_DESCRIPTION_PATTERNS = tuple((re.compile(rf"(?<![a-z0-9])(?:{p})(?![a-z0-9])", re.IGNORECASE), r)
                              for p, r in _DESCRIPTION_WORDS)


@dataclass(frozen=True)
class BodyRegion:
    """The regions a series shows and the attribute they were read from."""

    regions: frozenset[str]
    source: str  # "Body Part Examined 'CHEST'", "series description 'Thorax 1.0 B31f'", ...

    def describe(self) -> str:
        return f"{'+'.join(r for r in REGIONS if r in self.regions)} (from {self.source})"


def from_body_part(value: str | None) -> frozenset[str]:
    """The regions a Body Part Examined value names (empty when none is known)."""
    text = re.sub(r"[^A-Z]", "", (value or "").upper())
    found: set[str] = set()
    for term, regions in _BODY_PART_TERMS:
        if term in text:
            found.update(regions)
            text = text.replace(term, " ")  # WHOLEBODY is not also "HEAD" ...
    return frozenset(found)


def from_description(value: str | None) -> frozenset[str]:
    """The regions the words of a description name (empty when none is known)."""
    found: set[str] = set()
    for pattern, regions in _DESCRIPTION_PATTERNS:
        if value and pattern.search(value):
            found.update(regions)
    return frozenset(found)


def body_region(body_part: str | None, series_description: str | None,
                study_description: str | None) -> BodyRegion | None:
    """The first attribute that names a region decides; ``None`` when none does."""
    for regions, source in (
        (from_body_part(body_part), f"Body Part Examined {body_part!r}"),
        (from_description(series_description), f"series description {series_description!r}"),
        (from_description(study_description), f"study description {study_description!r}"),
    ):
        if regions:
            return BodyRegion(regions, source)
    return None
