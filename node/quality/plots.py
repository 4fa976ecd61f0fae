"""The quality report's plots as SVG (matplotlib, drawn on the server: nothing is
loaded from the internet, and the figures are the ones the numbers say)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

plt.rcParams.update({"svg.hashsalt": "ainode", "svg.fonttype": "none", "font.size": 9})


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # no XML prolog: the SVG goes inside an HTML page


def roc_svg(finding: dict[str, Any]) -> str:
    """The ROC curve of one finding with the model's operating point and its AUC."""
    figure, axes = plt.subplots(figsize=(3.6, 3.4))
    points = finding["roc"]
    if points:
        axes.plot([1 - p[2] for p in points], [p[1] for p in points], color="#1f5fa8", lw=1.6, label="ROC")
    sensitivity, specificity = finding["operating_point"]
    if sensitivity is not None and specificity is not None:
        axes.plot([1 - specificity], [sensitivity], "o", color="#c0392b", label="operating point")
    axes.plot([0, 1], [0, 1], ls=":", color="#999999", lw=1)
    auc = finding["auc"]["value"]
    axes.set_title(f"{finding['name']}: AUC {auc:.3f}" if auc is not None else f"{finding['name']}: no AUC",
                   fontsize=9)
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize=8, frameon=False)
    return _svg(figure)


def bland_altman_svg(segment: dict[str, Any]) -> str:
    """Bland-Altman plot of one segment's volumes, model against reference (mL)."""
    figure, axes = plt.subplots(figsize=(3.8, 3.4))
    pairs = segment["volume_pairs"]
    axes.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=10, color="#1f5fa8")
    bias = segment["volume_bias_ml"]
    low, high = segment["volume_limits_ml"]
    for value, style in ((bias, "-"), (low, "--"), (high, "--")):
        if value is not None:
            axes.axhline(value, ls=style, color="#c0392b", lw=1)
    axes.set_title(f"{segment['name']}: volume agreement", fontsize=9)
    axes.set_xlabel("mean of model and reference (mL)")
    axes.set_ylabel("model - reference (mL)")
    return _svg(figure)


def over_time_svg(periods: Sequence[dict[str, Any]]) -> str:
    """Each finding's rate and the agreement with references, per period."""
    figure, axes = plt.subplots(figsize=(6.4, 2.8))
    days = np.array([np.datetime64(int(p["start"]), "s") for p in periods])
    names = sorted({n for p in periods for n in p["finding_rates"]})
    for name in names:
        axes.plot(days, [p["finding_rates"].get(name) for p in periods], marker=".", lw=1.2, label=f"rate: {name}")
    if any(p["agreement"] is not None for p in periods):
        axes.plot(days, [p["agreement"] for p in periods], marker="s", lw=1.2, color="#2e7d32", label="agreement")
    axes.set_ylim(0, 1.02)
    axes.set_ylabel("share")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.autofmt_xdate()
    return _svg(figure)
