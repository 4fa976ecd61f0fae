"""A quality report as one self-contained HTML file (``ainode validate --report``): the
figures with their intervals and counts, the plots inline as SVG, nothing fetched from
anywhere, so it can be mailed to a committee or archived with the go-live decision."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from node.quality import plots
from node.quality.summary import interval

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2733; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #d5dbe3; }
h3 { font-size: 15px; margin-bottom: 4px; }
table { border-collapse: collapse; margin: 6px 0 14px; } td, th { padding: 3px 9px; border-bottom: 1px solid #e3e7ee;
  text-align: left; vertical-align: top; } th { background: #f2f5f9; }
.warning { color: #a15c00; } .muted { color: #5d6b7a; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.shifted { color: #b3261e; font-weight: 600; } .stable { color: #2e7d32; }
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _table(head: list[str], rows: list[list[str]], css: str = "") -> str:
    """``rows`` are HTML already escaped."""
    out = [f'<table class="{css}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</tbody></table>"


def _findings(findings: list[dict[str, Any]]) -> str:
    parts = []
    for f in findings:
        rows = [[_e(name), _e(interval(f[key], percent=key != "auc"))]
                for name, key in (("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("PPV", "ppv"),
                                  ("NPV", "npv"), ("ROC AUC", "auc"))]
        sources = ", ".join(f"{k} {v}" for k, v in sorted(f["sources"].items())) or "none"
        parts.append(
            f"<h3>Finding: {_e(f['name'])}</h3><p class='muted'>{f['cases']} predictions, {f['referenced']} with a "
            f"reference ({_e(sources)}), {f['indeterminate']} indeterminate; TP {f['tp']}, FP {f['fp']}, "
            f"FN {f['fn']}, TN {f['tn']}</p>"
            + "".join(f"<p class='warning'>{_e(w)}</p>" for w in f["warnings"])
            + "<div class='plots'>" + _table(["Figure", "Value (95% CI; count)"], rows) + plots.roc_svg(f) + "</div>")
    return "".join(parts)


def _segments(segments: list[dict[str, Any]]) -> str:
    parts = []
    for s in segments:
        low, high = s["volume_limits_ml"]
        rows = [["Dice (mean)", _e(interval(s["dice"], percent=False))],
                ["Dice (median)", _e(f"{s['dice_median']:.3f}" if s["dice_median"] is not None else "-")],
                ["HD95 (median)", _e(f"{s['hd95_median_mm']:.1f} mm" if s["hd95_median_mm"] is not None else "-")],
                ["Volume bias", _e(f"{s['volume_bias_ml']:.1f} mL" if s["volume_bias_ml"] is not None else "-")],
                ["95% limits of agreement", _e(f"{low:.1f} to {high:.1f} mL" if low is not None and high is not None
                                               else "-")]]
        parts.append(f"<h3>Segment: {_e(s['name'])}</h3><p class='muted'>{s['compared']} compared with a "
                     f"reference</p>" + "".join(f"<p class='warning'>{_e(w)}</p>" for w in s["warnings"])
                     + "<div class='plots'>" + _table(["Figure", "Value"], rows)
                     + (plots.bland_altman_svg(s) if s["volume_pairs"] else "") + "</div>")
    return "".join(parts)


def _subgroups(table: list[dict[str, Any]]) -> str:
    rows = []
    for attribute in table:
        for g in attribute["groups"]:
            figures = [f"{_e(n)}: sensitivity {_e(interval(f['sensitivity']))}, specificity "
                       f"{_e(interval(f['specificity']))}" for n, f in sorted(g["findings"].items())]
            figures += [f"{_e(n)}: Dice {_e(interval(s['dice'], percent=False))}"
                        for n, s in sorted(g["segments"].items())]
            rows.append([_e(attribute["label"]), _e(g["value"]), str(g["predictions"]), "<br>".join(figures)])
    return _table(["Subgroup", "Value", "Predictions", "Figures"], rows, "subgroups")


def _drift(signals: list[dict[str, Any]]) -> str:
    rows = [[_e(s["signal"]), f"<span class='{_e(s['status'].split()[0])}'>{_e(s['status'])}</span>",
             _e(f"{s['psi']:.3f}" if s["psi"] is not None else "-"),
             _e(f"{s['p_value']:.3g}" if s.get("p_value") is not None else "-"),
             f"{s['reference_n']} / {s['current_n']}"] for s in signals]
    return _table(["Signal", "Status", "PSI", "KS p", "Reference / current values"], rows, "drift")


def report_html(report: dict[str, Any]) -> str:
    """The whole report as a page."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(report["computed_at"])))
    sources = ", ".join(f"{k} {v}" for k, v in sorted(report["references"].items())) or "none"
    body = [f"<h1>Model {_e(report['model'])}: quality report</h1>",
            f"<p class='muted'>{report['predictions']} predictions; references: {_e(sources)}; computed {when}</p>"]
    cohort = report.get("cohort")
    if cohort:
        outcomes: dict[str, int] = {}
        for outcome in cohort["outcomes"].values():
            outcomes[outcome.split(":")[0]] = outcomes.get(outcome.split(":")[0], 0) + 1
        body.append(f"<h2>Cohort</h2><p>{_e(cohort['path'])}: {cohort['studies']} studies, {cohort['images']} images, "
                    f"{cohort['reference_segs']} reference SEGs; outcomes: "
                    f"{_e(', '.join(f'{k} {v}' for k, v in sorted(outcomes.items())))}</p>")
        body += [f"<p class='warning'>{_e(p)}</p>" for p in [*cohort["problems"], *cohort["skipped"]]]
        body += [f"<p class='warning'>study {_e(uid)}: {_e(o)}</p>" for uid, o in cohort["outcomes"].items()
                 if o.startswith("failed")]
    for g in report["groups"]:
        mode = "shadow" if g["shadow"] else "clinical"
        body.append(f"<h2>Version {_e(g['model_version'])}, route {_e(g['route'] or '-')} ({mode}): "
                    f"{g['predictions']} predictions</h2>")
        body.append(_findings(g["findings"]) + _segments(g["segments"]))
        body.append("<h3>Subgroups</h3>" + _subgroups(g["subgroups"]))
    if len(report["over_time"]) > 1:
        body.append("<h2>Over time</h2>" + plots.over_time_svg(report["over_time"]))
    if report["drift"]:
        body.append("<h2>Drift</h2>" + _drift(report["drift"]))
    if report["disagreements"]:
        rows = [[_e(d["study_instance_uid"]), _e(d["target"]), _e(d["model"] or "-"), _e(d["reference"]),
                 _e(d["source"]), _e(d.get("user") or ""), _e(d.get("reason") or "")] for d in report["disagreements"]]
        body.append("<h2>Disagreements</h2>" + _table(
            ["Study", "About", "Model", "Reference", "Source", "By", "Reason"], rows, "disagreements"))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>AINode quality report: "
            f"{_e(report['model'])}</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
