"""Drift: whether what a model sees (scanners, kernels, slice thickness, pixel spacing,
image intensities) or what it says (finding rates, scores, measurements) has shifted
between a reference window and the current one.

Each signal's shift is its population stability index (categories as they are;
continuous values in the reference window's deciles), with a two-sample test from
scipy beside it (Kolmogorov-Smirnov for continuous signals, chi-square for categories).
A signal whose index is past its threshold and whose test says the shift is not chance
(p below ``drift_p_value``), with enough cases in both windows, is "shifted"; the
report raises an alert for it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from node.quality.cohort import Case
from node.quality.statistics import binned, categories_differ, population_stability, two_sample


@dataclass(frozen=True)
class DriftWindows:
    """The current window is the last ``window_days``; the reference window is
    ``reference_from``..``reference_to`` (epoch seconds) when pinned, else the
    ``reference_days`` just before the current window."""

    window_days: float = 7.0
    reference_days: float = 28.0
    reference_from: float | None = None
    reference_to: float | None = None
    min_cases: int = 30
    threshold: float = 0.25
    #: The two-sample test's p-value under which a shift is not chance.
    p_value: float = 0.01

    def bounds(self, now: float) -> tuple[tuple[float, float], tuple[float, float]]:
        current = (now - self.window_days * 86400, now)
        if self.reference_from is not None and self.reference_to is not None:
            return (self.reference_from, self.reference_to), current
        return (current[0] - self.reference_days * 86400, current[0]), current


def _categorical(attribute: str) -> Callable[[Case], list[str]]:
    def values(case: Case) -> list[str]:
        value = case.profile.get(attribute)
        return [str(value) if value not in (None, "") else "unknown"]
    return values


def _intensity(statistic: str) -> Callable[[Case], list[float]]:
    def values(case: Case) -> list[float]:
        value = (case.profile.get("intensity") or {}).get(statistic)
        return [float(value)] if value is not None else []
    return values


def _number(attribute: str) -> Callable[[Case], list[float]]:
    def values(case: Case) -> list[float]:
        value = case.profile.get(attribute)
        return [float(value)] if isinstance(value, int | float) else []
    return values


def _finding_call(name: str) -> Callable[[Case], list[str]]:
    def values(case: Case) -> list[str]:
        return ["present" if f.called else "absent" if f.called is False else "indeterminate"
                for f in case.findings if f.name == name]
    return values


def _finding_score(name: str) -> Callable[[Case], list[float]]:
    def values(case: Case) -> list[float]:
        return [float(f.score) for f in case.findings if f.name == name and f.score is not None]
    return values


def _measurement(name: str) -> Callable[[Case], list[float]]:
    def values(case: Case) -> list[float]:
        return [case.measurements[name]] if name in case.measurements else []
    return values


def signals(cases: Sequence[Case]) -> list[tuple[str, str, bool, Callable[[Case], list[Any]]]]:
    """(name, kind, continuous, values of a case) of every signal the cases have."""
    found: list[tuple[str, str, bool, Callable[[Case], list[Any]]]] = [
        ("input.manufacturer", "input", False, _categorical("manufacturer")),
        ("input.kernel", "input", False, _categorical("kernel")),
        ("input.slice_thickness", "input", False, _categorical("thickness_band")),
        ("input.pixel_spacing", "input", True, _number("pixel_spacing_mm")),
        ("input.intensity_mean", "input", True, _intensity("mean")),
        ("input.intensity_p95", "input", True, _intensity("p95")),
    ]
    findings = sorted({f.name for c in cases for f in c.findings})
    measurements = sorted({m for c in cases for m in c.measurements})
    for name in findings:
        found.append((f"output.rate.{name}"[:64], "output", False, _finding_call(name)))
        found.append((f"output.score.{name}"[:64], "output", True, _finding_score(name)))
    for name in measurements:
        found.append((f"output.measurement.{name}"[:64], "output", True, _measurement(name)))
    return found


def _shares(values: Sequence[str], most: int = 6) -> dict[str, float]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:most]
    return {k: round(v / len(values), 4) for k, v in top} if values else {}


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return {"p25": round(float(p25), 3), "median": round(float(p50), 3), "p75": round(float(p75), 3)}


def drift_signals(cases: Sequence[Case], windows: DriftWindows, now: float) -> list[dict[str, Any]]:
    """Every signal's shift between the reference and the current window."""
    (ref_from, ref_to), (cur_from, cur_to) = windows.bounds(now)
    reference = [c for c in cases if ref_from <= c.created_at < ref_to]
    current = [c for c in cases if cur_from <= c.created_at <= cur_to]
    results = []
    for name, kind, continuous, values in signals(cases):
        ref_values = [v for c in reference for v in values(c)]
        cur_values = [v for c in current for v in values(c)]
        entry: dict[str, Any] = {
            "signal": name, "kind": kind, "continuous": continuous, "reference_n": len(ref_values),
            "current_n": len(cur_values), "threshold": windows.threshold, "psi": None, "ks": None,
            "p_value": None, "status": "not enough cases", "crossed": False,
            "window": {"reference": [ref_from, ref_to], "current": [cur_from, cur_to]},
        }
        if continuous:
            ref_arr = np.asarray(ref_values, dtype=float)
            cur_arr = np.asarray(cur_values, dtype=float)
            entry["reference"], entry["current"] = _summary(ref_arr), _summary(cur_arr)
        else:
            entry["reference"], entry["current"] = _shares(ref_values), _shares(cur_values)
        if len(ref_values) >= windows.min_cases and len(cur_values) >= windows.min_cases:
            if continuous:
                psi = population_stability(*binned(ref_arr, cur_arr))
                entry["ks"], entry["p_value"] = two_sample(ref_arr, cur_arr)
            else:
                psi = population_stability(ref_values, cur_values)
                entry["p_value"] = categories_differ(ref_values, cur_values)
            entry["psi"] = round(psi, 4) if math.isfinite(psi) else None
            # Both the size of the shift and its significance: the population stability
            # index of a few dozen values moves past 0.25 by chance alone.
            entry["crossed"] = bool(math.isfinite(psi) and psi >= windows.threshold
                                    and entry["p_value"] < windows.p_value)
            entry["status"] = "shifted" if entry["crossed"] else "stable"
        results.append(entry)
    return results
