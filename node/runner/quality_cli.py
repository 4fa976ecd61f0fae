"""The trust loop's commands: ``ainode quality`` (a model's figures, subgroups and drift),
``ainode references import`` (report-derived labels) and ``ainode validate`` (a model
over a local cohort, before go-live)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from node.runner.cli_common import ConfigOpt, DataDirOpt, JsonOpt, database, fail, out, plain, settings_from

#: Top-level commands, added to the `ainode` app by node.runner.cli.
quality_commands = typer.Typer(rich_markup_mode=None)
references_app = typer.Typer(help="Reference standards: report-derived labels the models are judged against.",
                             no_args_is_help=True, rich_markup_mode=None)


@quality_commands.command("quality")
def quality(
    model: Annotated[str | None, typer.Argument(help="The model; without it, every model with predictions.")] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Recompute now (and raise or clear drift "
                                                             "alerts) instead of showing the last report.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A model's quality report: per version and route its findings' sensitivity,
    specificity, PPV, NPV and ROC AUC with 95% intervals, its segments' Dice, HD95 and
    volume agreement, subgroups, drift signals and disagreements."""
    from node.pipeline.lifecycle import queue_for
    from node.quality.report import compute, models_with_predictions, raise_alerts, stored
    from node.quality.summary import report_lines

    settings = settings_from(config, data_dir)
    engine = database(settings)
    names = models_with_predictions(engine)
    if model is None:
        if as_json:
            out.print_json(json.dumps(names))
        for name in names if not as_json else []:
            plain(name)
        if not names and not as_json:
            plain("no model has predictions on this node yet")
        return
    if model not in names:
        fail(f"no predictions of a model {model!r} on this node (models with predictions: "
             f"{', '.join(names) or 'none'})", 1)
    report = None if refresh else stored(engine, model)
    if report is None:
        report = compute(engine, settings, model)
        raise_alerts(engine, settings, queue_for(settings, engine), report)
    engine.dispose()
    if as_json:
        out.print_json(json.dumps(report))
        return
    for line in report_lines(report):
        plain(line)


@references_app.command("import")
def references_import(
    path: Annotated[Path, typer.Argument(help="A CSV (accession_number or study_instance_uid, finding, value) "
                                              "or, with --hl7, an HL7 v2 result message.", exists=True,
                                         dir_okay=False)],
    hl7: Annotated[bool, typer.Option("--hl7", help="The file is an HL7 v2 ORU^R01 result.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Import report-derived reference labels, kept with their source; a later word of
    the same source on the same case replaces the earlier one. Exit 1 if a line was
    not usable (each is named by number and reason, never by content)."""
    from node.quality.reference import import_labels

    kind = "hl7" if hl7 else "csv"
    engine = database(settings_from(config, data_dir))
    result = import_labels(engine, path.read_text(encoding="utf-8-sig", errors="replace"), kind,
                           f"{kind} file {path.name}")
    engine.dispose()
    plain(f"{result.stored} label(s) stored from {path.name}")
    for problem in result.problems:
        plain(f"  not used: {problem}")
    if result.problems:
        raise typer.Exit(1)


@quality_commands.command("validate")
def validate(
    model: Annotated[str, typer.Argument(help="The installed model to qualify.")],
    cohort: Annotated[Path, typer.Option("--cohort", help="A folder of studies (DICOM files, any layout), "
                                                          "reference SEGs among them.", exists=True,
                                         file_okay=False)],
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="A CSV of report-derived labels (accession_number or study_instance_uid, finding, "
                            "value).", exists=True, dir_okay=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write report.html and report.json here.",
                                                file_okay=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda:N.")] = "cpu",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a model over a local cohort and report its figures (as the node's quality
    report computes them), without touching the node's database or any destination:
    the cohort runs in a scratch node of its own. Exit 1 if a study failed."""
    from node.pipeline.validation import ValidationError, write_report
    from node.pipeline.validation import validate as run_validation
    from node.quality.summary import report_lines

    settings = settings_from(config, data_dir)
    with tempfile.TemporaryDirectory(prefix="ainode-validate-") as scratch:
        try:
            result = run_validation(settings, model, cohort, Path(scratch), device, reference)
        except ValidationError as exc:
            fail(str(exc), 2)
    written = write_report(result, report, cohort) if report is not None else None
    if as_json:
        out.print_json(json.dumps({**result.report, "outcomes": result.outcomes, "problems": result.problems}))
    else:
        inventory = result.inventory
        plain(f"cohort {cohort}: {inventory.studies} studies, {inventory.images} images, "
              f"{inventory.reference_segs} reference SEG(s)")
        for uid, outcome in result.outcomes.items():
            plain(f"  study {uid}: {outcome}")
        for line in [*result.problems, *inventory.skipped]:
            plain(f"  {line}")
        for line in report_lines(result.report):
            plain(line)
        if written:
            plain(f"report: {written[1]} and {written[0]}")
    if any(o.startswith("failed") for o in result.outcomes.values()):
        raise typer.Exit(1)
