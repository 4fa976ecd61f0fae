"""A quality report in words, for ``ainode quality`` and ``ainode validate``: each figure
with its interval and count, warnings where the sample is small, subgroups, drift
signals and disagreements. The same numbers as the API's report, never recomputed."""

from __future__ import annotations

import time
from typing import Any


def interval(estimate: dict[str, Any], percent: bool = True) -> str:
    """``0.92 (95% CI 0.85-0.96; 46/50)`` or ``- (no cases)``."""
    value = estimate.get("value")
    if value is None:
        return "- (no cases)"
    fmt = "{:.2f}" if percent else "{:.3f}"
    low, high = estimate.get("low"), estimate.get("high")
    ci = f"95% CI {fmt.format(low)}-{fmt.format(high)}" if low is not None and high is not None else "no CI"
    count = estimate.get("count")
    n = estimate.get("n")
    counted = f"; {count}/{n}" if count is not None and n else (f"; n={n}" if n else "")
    small = ", small sample" if estimate.get("small_sample") else ""
    return f"{fmt.format(value)} ({ci}{counted}{small})"


def finding_lines(f: dict[str, Any], indent: str = "  ") -> list[str]:
    lines = [f"{indent}finding {f['name']}: {f['cases']} predictions, {f['referenced']} with a reference "
             f"({', '.join(f'{k} {v}' for k, v in sorted(f['sources'].items())) or 'none'}), "
             f"{f['indeterminate']} indeterminate",
             f"{indent}  TP {f['tp']}  FP {f['fp']}  FN {f['fn']}  TN {f['tn']}",
             f"{indent}  sensitivity {interval(f['sensitivity'])}",
             f"{indent}  specificity {interval(f['specificity'])}",
             f"{indent}  PPV {interval(f['ppv'])}",
             f"{indent}  NPV {interval(f['npv'])}",
             f"{indent}  ROC AUC {interval(f['auc'], percent=False)}"]
    lines += [f"{indent}  warning: {w}" for w in f["warnings"]]
    return lines


def segment_lines(s: dict[str, Any], indent: str = "  ") -> list[str]:
    def mm(value: float | None, unit: str) -> str:
        return f"{value:.1f} {unit}" if value is not None else "-"
    low, high = s["volume_limits_ml"]
    limits = f"{low:.0f} to {high:.0f} mL" if low is not None and high is not None else "-"
    lines = [f"{indent}segment {s['name']}: {s['compared']} compared with a reference",
             f"{indent}  Dice mean {interval(s['dice'], percent=False)}, median "
             f"{s['dice_median']:.3f}" if s["dice_median"] is not None else f"{indent}  Dice -",
             f"{indent}  HD95 median {mm(s['hd95_median_mm'], 'mm')}",
             f"{indent}  volume bias (model - reference) {mm(s['volume_bias_ml'], 'mL')}, "
             f"95% limits of agreement {limits}"]
    lines += [f"{indent}  warning: {w}" for w in s["warnings"]]
    return lines


def subgroup_lines(table: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    lines = []
    for attribute in table:
        groups = attribute["groups"]
        if len(groups) < 2 and all(g["value"] == "unknown" for g in groups):
            continue
        lines.append(f"{indent}{attribute['label']}:")
        for g in groups:
            parts = [f"{g['predictions']} predictions"]
            for name, f in sorted(g["findings"].items()):
                parts.append(f"{name} sensitivity {interval(f['sensitivity'])}, specificity "
                             f"{interval(f['specificity'])}")
            for name, s in sorted(g["segments"].items()):
                parts.append(f"{name} Dice {interval(s['dice'], percent=False)}")
            lines.append(f"{indent}  {g['value']}: " + "; ".join(parts))
    return lines


def drift_lines(signals: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    lines = []
    for s in signals:
        psi = f"PSI {s['psi']:.3f}" if s["psi"] is not None else "PSI -"
        ks = f", KS p={s['p_value']:.3g}" if s.get("p_value") is not None else ""
        lines.append(f"{indent}{s['signal']}: {s['status']} ({psi}{ks}; {s['reference_n']} reference, "
                     f"{s['current_n']} current values)")
    return lines


def report_lines(report: dict[str, Any]) -> list[str]:
    """The whole report in words."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(report["computed_at"])))
    sources = ", ".join(f"{k} {v}" for k, v in sorted(report["references"].items())) or "none"
    lines = [f"model {report['model']}: {report['predictions']} predictions, references: {sources} "
             f"(computed {when} in {report['seconds']:.2f} s)"]
    for g in report["groups"]:
        mode = "shadow" if g["shadow"] else "clinical"
        lines.append(f"version {g['model_version']}, route {g['route'] or '-'} ({mode}): "
                     f"{g['predictions']} predictions")
        for f in g["findings"]:
            lines += finding_lines(f)
        for s in g["segments"]:
            lines += segment_lines(s)
        sub = subgroup_lines(g["subgroups"], "    ")
        if sub:
            lines.append("  subgroups:")
            lines += sub
    if report["drift"]:
        lines.append("drift (current window against the reference window):")
        lines += drift_lines(report["drift"])
    if report["disagreements"]:
        lines.append(f"disagreements ({len(report['disagreements'])} newest):")
        for d in report["disagreements"][:20]:
            who = f" by {d['user']}" if d.get("user") else ""
            lines.append(f"  study {d['study_instance_uid']}: {d['target']} model {d['model'] or '-'}, "
                         f"{d['source']}{who} {d['reference']}" + (f" ({d['reason']})" if d.get("reason") else ""))
    return lines
