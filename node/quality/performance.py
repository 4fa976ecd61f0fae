"""A model's performance from its cases: per finding (sensitivity, specificity, PPV,
NPV with Wilson intervals at the model's own operating point, ROC AUC with DeLong's
interval, and the figures across thresholds), per segment (Dice, 95% Hausdorff
distance, volume agreement), per subgroup of the case profile, and over time."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node.quality.cohort import Case, FindingCase, SegmentCase
from node.quality.profile import SUBGROUPS
from node.quality.statistics import (
    SMALL_SAMPLE,
    Confusion,
    Estimate,
    auc_delong,
    bland_altman,
    mean_interval,
    roc_points,
    wilson,
)

#: The thresholds the "across thresholds" table gives figures at.
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
UNKNOWN = "unknown"


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"value": e.value, "low": e.low, "high": e.high, "n": e.n, "count": e.count,
            "small_sample": e.small_sample}


@dataclass
class FindingFigures:
    name: str
    cases: int  # predictions that gave the finding
    referenced: int  # of them with a reference standard
    indeterminate: int  # referenced, but the model could not judge
    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: dict[str, Any]
    specificity: dict[str, Any]
    ppv: dict[str, Any]
    npv: dict[str, Any]
    auc: dict[str, Any]
    #: Model's operating point (sensitivity, specificity) on the ROC curve.
    operating_point: tuple[float | None, float | None]
    roc: list[tuple[float, float, float]]  # (threshold, sensitivity, specificity)
    thresholds: list[dict[str, Any]]
    sources: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def finding_figures(name: str, cases: Sequence[FindingCase]) -> FindingFigures:
    referenced = [c for c in cases if c.truth is not None]
    judged = [c for c in referenced if c.called is not None]
    confusion = Confusion.of([bool(c.truth) for c in judged], [bool(c.called) for c in judged])
    scored = [c for c in referenced if c.score is not None and math.isfinite(c.score)]
    truth = [bool(c.truth) for c in scored]
    scores = [float(c.score) for c in scored]  # type: ignore[arg-type]
    auc = auc_delong(truth, scores)
    table = []
    t_arr, s_arr = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=float)
    for threshold in THRESHOLDS:
        at = Confusion.of(t_arr, s_arr >= threshold)
        table.append({"threshold": threshold, "tp": at.tp, "fp": at.fp, "fn": at.fn, "tn": at.tn,
                      "sensitivity": at.sensitivity.value, "specificity": at.specificity.value,
                      "ppv": at.ppv.value, "npv": at.npv.value})
    sources: dict[str, int] = defaultdict(int)
    for c in referenced:
        sources[str(c.source)] += 1
    warnings = []
    if len(judged) < SMALL_SAMPLE:
        warnings.append(f"only {len(judged)} referenced case(s): intervals are wide, read with care")
    positives = confusion.tp + confusion.fn
    if judged and positives < 10:
        warnings.append(f"only {positives} reference-positive case(s): sensitivity is uncertain")
    sens, spec = confusion.sensitivity, confusion.specificity
    return FindingFigures(
        name, len(cases), len(referenced), len(referenced) - len(judged), confusion.tp, confusion.fp,
        confusion.fn, confusion.tn, _estimate(sens), _estimate(spec), _estimate(confusion.ppv),
        _estimate(confusion.npv), _estimate(auc), (sens.value, spec.value),
        [(p.threshold, p.sensitivity, p.specificity) for p in roc_points(truth, scores)], table, dict(sources),
        warnings)


@dataclass
class SegmentFigures:
    name: str
    compared: int
    dice: dict[str, Any]
    dice_median: float | None
    hd95_median_mm: float | None
    volume_bias_ml: float | None
    volume_limits_ml: tuple[float | None, float | None]
    #: (mean of model and reference, model minus reference) per case, for Bland-Altman.
    volume_pairs: list[tuple[float, float]]
    warnings: list[str] = field(default_factory=list)


def segment_figures(name: str, cases: Sequence[SegmentCase]) -> SegmentFigures:
    dice = [c.dice for c in cases]
    hd = [c.hd95_mm for c in cases if c.hd95_mm is not None and math.isfinite(c.hd95_mm)]
    agreement = bland_altman([c.predicted_ml for c in cases], [c.reference_ml for c in cases])
    pairs = [((c.predicted_ml + c.reference_ml) / 2, c.predicted_ml - c.reference_ml) for c in cases][-2000:]
    warnings = [f"only {len(cases)} compared case(s)"] if len(cases) < SMALL_SAMPLE else []
    return SegmentFigures(name, len(cases), _estimate(mean_interval(dice)),
                          float(np.median(dice)) if dice else None, float(np.median(hd)) if hd else None,
                          agreement.bias, (agreement.lower, agreement.upper), pairs, warnings)


def _by_name_findings(cases: Iterable[Case]) -> dict[str, list[FindingCase]]:
    found: dict[str, list[FindingCase]] = defaultdict(list)
    for case in cases:
        for f in case.findings:
            found[f.name].append(f)
    return found


def _by_name_segments(cases: Iterable[Case]) -> dict[str, list[SegmentCase]]:
    found: dict[str, list[SegmentCase]] = defaultdict(list)
    for case in cases:
        for s in case.segments:
            found[s.name].append(s)
    return found


def group_figures(cases: Sequence[Case]) -> dict[str, Any]:
    """Figures of one group of cases (a model version on a route, or a subgroup)."""
    return {
        "predictions": len(cases),
        "findings": [dataclasses.asdict(finding_figures(n, c)) for n, c in sorted(_by_name_findings(cases).items())],
        "segments": [dataclasses.asdict(segment_figures(n, c)) for n, c in sorted(_by_name_segments(cases).items())
                     if c],
    }


@dataclass
class _FindingColumns:
    """One finding over all cases, as arrays (a case without it: ``given`` False)."""

    given: np.ndarray
    called: np.ndarray
    judged: np.ndarray  # has a reference and the model judged
    truth: np.ndarray


def _finding_columns(cases: Sequence[Case]) -> dict[str, _FindingColumns]:
    n = len(cases)
    columns: dict[str, _FindingColumns] = {}
    for i, case in enumerate(cases):
        for f in case.findings:
            column = columns.get(f.name)
            if column is None:
                column = columns[f.name] = _FindingColumns(*(np.zeros(n, dtype=bool) for _ in range(4)))
            column.given[i] = True
            column.called[i] = bool(f.called)
            if f.truth is not None and f.called is not None:
                column.judged[i] = True
                column.truth[i] = bool(f.truth)
    return columns


def subgroup_table(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """For each subgroup attribute, each of its values with its own figures: per finding
    sensitivity and specificity with intervals, per segment the mean Dice. Counted
    with numpy over all cases at once (100,000 cases, 8 attributes: well under a second)."""
    findings = _finding_columns(cases)
    segment_cases: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for i, case in enumerate(cases):
        for seg in case.segments:
            segment_cases[seg.name][0].append(i)
            segment_cases[seg.name][1].append(seg.dice)
    table = []
    for attribute, label in SUBGROUPS.items():
        values = [UNKNOWN if (v := case.profile.get(attribute)) in (None, "") else str(v) for case in cases]
        names: list[str] = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        inverse = np.fromiter((index[v] for v in values), dtype=np.intp, count=len(values))
        groups = len(names)
        count = np.bincount(inverse, minlength=groups)

        def per_group(mask: np.ndarray, inverse: np.ndarray = inverse, groups: int = groups) -> np.ndarray:
            return np.bincount(inverse, weights=mask, minlength=groups).astype(int)
        by_finding = {}
        for name, c in findings.items():
            t, k, j = c.truth, c.called, c.judged
            by_finding[name] = (per_group(c.given), per_group(c.given & k), per_group(j),
                                per_group(j & t & k), per_group(j & ~t & k), per_group(j & t & ~k),
                                per_group(j & ~t & ~k))
        by_segment = {name: (inverse[np.asarray(idx, dtype=np.intp)], np.asarray(dice, dtype=float))
                      for name, (idx, dice) in segment_cases.items()}
        rows = []
        for g in sorted(range(groups), key=lambda g: (names[g] == UNKNOWN, str(names[g]))):
            found = {}
            for name, (given, called, judged, tp, fp, fn, tn) in by_finding.items():
                if given[g] == 0:
                    continue
                confusion = Confusion(int(tp[g]), int(fp[g]), int(fn[g]), int(tn[g]))
                found[name] = {"referenced": int(judged[g]), "sensitivity": _estimate(confusion.sensitivity),
                               "specificity": _estimate(confusion.specificity),
                               "rate": _estimate(wilson(int(called[g]), int(given[g])))}
            segments = {}
            for name, (group_of, dice) in by_segment.items():
                mine = dice[group_of == g]
                if mine.size:
                    segments[name] = {"compared": int(mine.size), "dice": _estimate(mean_interval(mine.tolist()))}
            rows.append({"value": str(names[g]), "predictions": int(count[g]), "findings": found,
                         "segments": segments})
        table.append({"attribute": attribute, "label": label, "groups": rows})
    return table


def over_time(cases: Sequence[Case], days: float = 7.0) -> list[dict[str, Any]]:
    """Per period of ``days``: predictions, each finding's rate, and the share of
    feedback and references that agree with the model."""
    if not cases:
        return []
    width = days * 86400
    start = cases[0].created_at
    periods: dict[int, list[Case]] = defaultdict(list)
    for case in cases:
        periods[int((case.created_at - start) // width)].append(case)
    timeline = []
    for index, members in sorted(periods.items()):
        rates = {name: sum(1 for f in found if f.called) / len(found)
                 for name, found in _by_name_findings(members).items()}
        judged = [f for c in members for f in c.findings if f.truth is not None and f.called is not None]
        agree = sum(1 for f in judged if f.truth == f.called)
        timeline.append({"start": start + index * width, "predictions": len(members), "finding_rates": rates,
                         "agreement": agree / len(judged) if judged else None, "judged": len(judged)})
    return timeline


def disagreements(cases: Sequence[Case], most: int = 100) -> list[dict[str, Any]]:
    """Cases where a reference or a radiologist says the model was wrong, newest first."""
    found: list[dict[str, Any]] = []
    for case in cases:
        for f in case.findings:
            if f.truth is not None and f.called is not None and f.truth != f.called:
                said = case.feedback.get(("finding", f.name))
                found.append({"prediction_id": case.prediction_id, "study_instance_uid": case.study_instance_uid,
                              "target": f.name, "model": "present" if f.called else "absent",
                              "reference": "present" if f.truth else "absent", "source": f.source,
                              "user": said[1] if said and f.source == "feedback" else None,
                              "reason": said[2] if said and f.source == "feedback" else "",
                              "at": said[3] if said and f.source == "feedback" else case.created_at})
        for (kind, target), (verdict, user, reason, at) in case.feedback.items():
            if kind != "finding" and verdict != "agree":
                found.append({"prediction_id": case.prediction_id, "study_instance_uid": case.study_instance_uid,
                              "target": f"{kind} {target}", "model": "", "reference": verdict, "source": "feedback",
                              "user": user, "reason": reason, "at": at})
    found.sort(key=lambda d: -float(d["at"] or 0.0))
    return found[:most]
