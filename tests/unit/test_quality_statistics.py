"""The trust loop's statistics against reference implementations: statsmodels' Wilson
interval, scikit-learn's ROC AUC with a bootstrap interval, scipy's KS test, and
counts the test knows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

from node.quality.statistics import (
    Confusion,
    auc_delong,
    bland_altman,
    population_stability,
    roc_points,
    wilson,
)


@pytest.mark.parametrize(("k", "n"), [(0, 5), (3, 7), (18, 20), (45, 50), (120, 400), (7, 7)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    ours = wilson(k, n)
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert ours.value == pytest.approx(k / n)
    assert ours.low == pytest.approx(low, abs=1e-9) and ours.high == pytest.approx(high, abs=1e-9)


def test_confusion_counts_and_their_proportions() -> None:
    # 40 diseased, 60 healthy; the model finds 30 of the diseased and calls 6 healthy ones.
    truth = [True] * 40 + [False] * 60
    called = [True] * 30 + [False] * 10 + [True] * 6 + [False] * 54
    c = Confusion.of(truth, called)
    assert (c.tp, c.fn, c.fp, c.tn) == (30, 10, 6, 54)
    assert c.sensitivity.value == pytest.approx(0.75) and c.specificity.value == pytest.approx(0.9)
    assert c.ppv.value == pytest.approx(30 / 36) and c.npv.value == pytest.approx(54 / 64)
    assert c.sensitivity.small_sample is False and wilson(3, 4).small_sample is True


def _bootstrap_auc(truth: np.ndarray, scores: np.ndarray, resamples: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(7)
    values = []
    for _ in range(resamples):
        i = rng.integers(0, truth.size, truth.size)
        if truth[i].all() or not truth[i].any():
            continue
        values.append(roc_auc_score(truth[i], scores[i]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize("seed", [1, 2])
def test_auc_and_its_interval_match_a_bootstrap_of_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.3
    scores = np.round(np.where(truth, rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 300)), 1)  # with ties
    ours = auc_delong(truth, scores)
    assert ours.value == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
    low, high = _bootstrap_auc(truth, scores)
    assert ours.low == pytest.approx(low, abs=0.01) and ours.high == pytest.approx(high, abs=0.01)


def test_roc_points_are_scikit_learns_curve() -> None:
    rng = np.random.default_rng(4)
    truth = rng.random(120) < 0.4
    scores = np.round(rng.random(120), 2)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    points = roc_points(truth, scores, most=10_000)
    assert [1 - p.specificity for p in points] == pytest.approx(list(fpr))
    assert [p.sensitivity for p in points] == pytest.approx(list(tpr))


def test_no_auc_without_both_classes() -> None:
    assert auc_delong([True, True], [0.2, 0.9]).value is None
    assert roc_points([False, False], [0.1, 0.2]) == []


def test_population_stability_is_zero_for_the_same_mix_and_large_for_a_new_one() -> None:
    same = population_stability(["B30f"] * 70 + ["B70f"] * 30, ["B30f"] * 35 + ["B70f"] * 15)
    assert same == pytest.approx(0.0, abs=1e-9)
    shifted = population_stability(["B30f"] * 70 + ["B70f"] * 30, ["B30f"] * 20 + ["B70f"] * 80)
    # sum((cur - ref) * ln(cur / ref)) by hand: (0.2-0.7)ln(0.2/0.7) + (0.8-0.3)ln(0.8/0.3)
    assert shifted == pytest.approx(-0.5 * np.log(0.2 / 0.7) + 0.5 * np.log(0.8 / 0.3))


def test_bland_altman_limits() -> None:
    model = [110.0, 95.0, 102.0, 99.0]
    reference = [100.0, 100.0, 100.0, 100.0]
    agreement = bland_altman(model, reference)
    diff = np.array(model) - np.array(reference)
    assert agreement.bias == pytest.approx(diff.mean())
    assert agreement.upper == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1))
