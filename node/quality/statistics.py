"""The statistics of the trust loop, as plain functions of counts and arrays.

Proportions (sensitivity, specificity, PPV, NPV) get Wilson score intervals, which stay
inside 0..1 and keep their coverage for the small counts a hospital's first months give;
ROC AUC gets DeLong's interval (no resampling, so it is the same on every recompute and
fast over 100,000 predictions); distributions are compared by the population stability
index and, for continuous signals, scipy's two-sample Kolmogorov-Smirnov test.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Below this many cases in a count's denominator a figure is shown with a warning.
SMALL_SAMPLE = 30


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% confidence interval and what it was computed from."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    #: The numerator of a proportion (None for other estimates).
    count: int | None = None

    @property
    def small_sample(self) -> bool:
        return self.n < SMALL_SAMPLE


@functools.lru_cache(maxsize=8)
def _z(confidence: float) -> float:
    """The normal quantile of a two-sided ``confidence`` (scipy's ppf is slow to call
    for every subgroup)."""
    return float(stats.norm.ppf(1 - (1 - confidence) / 2))


def wilson(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """The proportion ``successes / n`` with its Wilson score interval."""
    if n <= 0:
        return Estimate(None, None, None, 0, successes)
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, successes)


@dataclass(frozen=True)
class Confusion:
    """A finding's 2x2 table against the reference standard."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def of(cls, truth: Sequence[bool] | np.ndarray, called: Sequence[bool] | np.ndarray) -> Confusion:
        t, c = np.asarray(truth, dtype=bool), np.asarray(called, dtype=bool)
        return cls(int(np.sum(t & c)), int(np.sum(~t & c)), int(np.sum(t & ~c)), int(np.sum(~t & ~c)))

    @property
    def sensitivity(self) -> Estimate:
        return wilson(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Estimate:
        return wilson(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> Estimate:
        return wilson(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> Estimate:
        return wilson(self.tn, self.tn + self.fn)

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def _midranks(x: np.ndarray) -> np.ndarray:
    return np.asarray(stats.rankdata(x), dtype=float)


def auc_delong(truth: Sequence[bool], scores: Sequence[float], confidence: float = 0.95) -> Estimate:
    """ROC AUC with DeLong's confidence interval (DeLong et al. 1988, in Sun and Xu's
    O(n log n) form); no interval when either class is missing."""
    t = np.asarray(truth, dtype=bool)
    s = np.asarray(scores, dtype=float)
    positives, negatives = s[t], s[~t]
    m, n = positives.size, negatives.size
    if m == 0 or n == 0:
        return Estimate(None, None, None, m + n)
    together = _midranks(np.concatenate([positives, negatives]))
    within_pos, within_neg = _midranks(positives), _midranks(negatives)
    v01 = (together[:m] - within_pos) / n  # each positive's share of negatives below it
    v10 = 1.0 - (together[m:] - within_neg) / m  # each negative's share of positives above it
    auc = float(v01.mean())
    variance = (float(np.var(v01, ddof=1)) / m if m > 1 else 0.0) + \
               (float(np.var(v10, ddof=1)) / n if n > 1 else 0.0)
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    half = z * math.sqrt(max(variance, 0.0))
    return Estimate(auc, max(0.0, auc - half), min(1.0, auc + half), m + n)


@dataclass(frozen=True)
class RocPoint:
    threshold: float
    sensitivity: float
    specificity: float


def roc_points(truth: Sequence[bool], scores: Sequence[float], most: int = 200) -> list[RocPoint]:
    """The ROC curve, one point per distinct score (thinned to about ``most``), from
    the strictest threshold to the most lenient; a case is called at score >= threshold."""
    t = np.asarray(truth, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if t.size == 0 or t.all() or not t.any():
        return []
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(t)[distinct]
    fp = np.cumsum(~t)[distinct]
    if distinct.size > most:
        keep = np.unique(np.linspace(0, distinct.size - 1, most).astype(int))
        distinct, tp, fp = distinct[keep], tp[keep], fp[keep]
    positives, negatives = int(t.sum()), int((~t).sum())
    points = [RocPoint(float("inf"), 0.0, 1.0)]
    points += [RocPoint(float(s[i]), float(a) / positives, 1.0 - float(b) / negatives)
               for i, a, b in zip(distinct, tp, fp, strict=True)]
    return points


def population_stability(reference: Sequence[str], current: Sequence[str], floor: float = 1e-4) -> float:
    """The population stability index of a categorical signal: sum over categories of
    (current - reference share) * ln(current / reference share); 0 is no shift, above
    0.25 is commonly read as a significant one. Empty shares are floored."""
    if not reference or not current:
        return 0.0
    ref_counts, cur_counts = Counter(reference), Counter(current)
    categories = sorted(ref_counts.keys() | cur_counts.keys())
    ref = np.array([ref_counts[c] for c in categories], dtype=float) / len(reference)
    cur = np.array([cur_counts[c] for c in categories], dtype=float) / len(current)
    ref, cur = np.maximum(ref, floor), np.maximum(cur, floor)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def binned(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> tuple[list[str], list[str]]:
    """Both samples of a continuous signal as the reference sample's deciles (labels
    for :func:`population_stability`)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))

    def label(values: np.ndarray) -> list[str]:
        return [str(int(i)) for i in np.searchsorted(edges, values, side="right")]

    return label(reference), label(current)


def two_sample(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and its p-value (scipy)."""
    result = stats.ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def categories_differ(reference: Sequence[str], current: Sequence[str]) -> float:
    """The p-value of Pearson's chi-square test that two samples of categories come
    from one distribution (scipy); 1.0 when there is a single category."""
    names = sorted(set(reference) | set(current))
    if len(names) < 2:
        return 1.0
    table = np.array([[list(sample).count(n) for n in names] for sample in (reference, current)])
    table = table[:, table.sum(axis=0) > 0]
    return float(stats.chi2_contingency(table).pvalue)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """A mean with its t interval (Dice, volume differences)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return Estimate(None, None, None, 0)
    mean = float(v.mean())
    if v.size == 1:
        return Estimate(mean, None, None, 1)
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Estimate(mean, mean - half, mean + half, int(v.size))


@dataclass(frozen=True)
class Agreement:
    """Bland-Altman agreement of two measurements (model minus reference)."""

    bias: float | None
    lower: float | None
    upper: float | None
    n: int


def bland_altman(model: Sequence[float], reference: Sequence[float]) -> Agreement:
    a, b = np.asarray(model, dtype=float), np.asarray(reference, dtype=float)
    if a.size == 0:
        return Agreement(None, None, None, 0)
    diff = a - b
    bias = float(diff.mean())
    if diff.size == 1:
        return Agreement(bias, None, None, 1)
    spread = 1.96 * float(diff.std(ddof=1))
    return Agreement(bias, bias - spread, bias + spread, int(diff.size))
