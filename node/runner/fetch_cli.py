"""``ainode fetch``: backfill, past studies retrieved from the PACS through the node's
queue (for a validation cohort, or to run a new model over recent studies)."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer

from node.runner.cli_common import ConfigOpt, DataDirOpt, JsonOpt, database, fail, out, plain, settings_from

#: Top-level commands, added to the `ainode` app by node.runner.cli.
fetch_commands = typer.Typer(rich_markup_mode=None)


def _dicom_date(value: str, option: str) -> str:
    try:
        return date.fromisoformat(value).strftime("%Y%m%d")
    except ValueError:
        fail(f"{option} {value!r} is not a date: use YYYY-MM-DD", 2)


@fetch_commands.command("fetch")
def fetch(
    accession: Annotated[list[str] | None, typer.Option(
        "--accession", help="An accession number; repeat for several (or list them after one --accession).")] = None,
    accessions: Annotated[list[str] | None, typer.Argument(help="More accession numbers.", show_default=False)] = None,
    from_date: Annotated[str | None, typer.Option("--from", help="First study date, YYYY-MM-DD.")] = None,
    to_date: Annotated[str | None, typer.Option("--to", help="Last study date, YYYY-MM-DD (default: --from).")] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="Only studies with this modality, e.g. CT.")]
    = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve past studies from the PACS ([pacs]) to run the models over them: finds
    them now (C-FIND), then queues one retrieve job per study, which the node's workers
    run at pacs.retrieve_per_minute within pacs.retrieve_hours. A study already here,
    queued or retrieved is not fetched again."""
    from node.network.archive import QueryFailed
    from node.network.query import find_studies
    from node.pipeline.lifecycle import queue_for
    from node.pipeline.retrieval import queue_retrievals

    settings = settings_from(config, data_dir)
    if settings.pacs is None:
        fail("no [pacs] is configured: add a [pacs] table with the archive's ae_title, host and port", 2)
    wanted = [*(accession or []), *(accessions or [])]
    if bool(wanted) == bool(from_date):
        fail("give accession numbers (--accession A [B ...]) or a date range (--from DATE [--to DATE])", 2)
    queries: list[dict[str, str]] = []
    if wanted:
        queries = [{"AccessionNumber": a} for a in wanted]
    else:
        assert from_date is not None
        keys = {"StudyDate": f"{_dicom_date(from_date, '--from')}-{_dicom_date(to_date or from_date, '--to')}"}
        if modality:
            keys["ModalitiesInStudy"] = modality.upper()
        queries = [keys]
    found = {}
    try:
        for keys in queries:
            for match in find_studies(settings.pacs, settings.ae_title, **keys):
                if modality and match.modalities and modality.upper() not in match.modalities:
                    continue
                found[match.study_instance_uid] = match
    except QueryFailed as exc:
        fail(str(exc), 1)
    matches = list(found.values())
    engine = database(settings)
    queued = queue_retrievals(queue_for(settings, engine), matches, "backfill")
    engine.dispose()
    rows = [{"study_instance_uid": m.study_instance_uid, "study_date": m.study_date,
             "modalities": list(m.modalities), "instances": m.instances, "job": job}
            for m, job in zip(matches, queued, strict=True)]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for m, job in zip(matches, queued, strict=True):
        plain(f"{m.study_instance_uid}  {m.study_date or '-':8}  {'/'.join(m.modalities) or '-':6}  "
              f"{m.instances if m.instances is not None else '?'} instance(s)  "
              + (f"queued as job {job}" if job else "already queued or retrieved"))
    new = sum(1 for job in queued if job)
    pacs = settings.pacs
    plain(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} found on {pacs.ae_title}; {new} queued, retrieved at "
          f"most {pacs.retrieve_per_minute:g} a minute" + (f" within {pacs.retrieve_hours}" if pacs.retrieve_hours
                                                            else ""))
    if wanted and len(rows) < len(wanted):
        plain(f"{len(wanted) - len(rows)} accession number(s) matched no study")
