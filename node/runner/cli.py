"""The `ainode` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from node.runner.cli_common import ConfigOpt, DataDirOpt, JsonOpt, err, out
from node.runner.cli_common import database as _database
from node.runner.cli_common import fail as _fail
from node.runner.cli_common import plain as _plain
from node.runner.cli_common import settings_from as _settings
from node.runner.cli_common import when as _when
from node.runner.fetch_cli import fetch_commands
from node.runner.logs import setup_logging
from node.runner.quality_cli import quality_commands, references_app
from storage.states import JobState, StudyState

app = typer.Typer(
    name="ainode",
    help="AINode: a DICOM node that runs AI models on the studies it receives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help is plain text: "[[destinations]]" and the like are TOML, not rich markup.
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")

def _row(table: Table, *cells: str) -> None:
    """A table row of data as it is (a unit like [hnsf'U] is not rich markup)."""
    from rich.text import Text

    table.add_row(*(Text(cell) for cell in cells))


def _address(text: str) -> Any:
    from node.network.scu import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        _fail(str(exc), 2)


def _private_files() -> None:
    """Everything the node's processes create (images, results, the SQLite database
    and its journal, label maps) is readable by the service's user only."""
    import os

    os.umask(0o077)


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int | None, typer.Option(help="DICOM listener port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="The node's AE title.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
) -> None:
    """Run the node in the foreground (SIGINT/SIGTERM stop it cleanly)."""
    from node.runner.serve import DataDirInUse, StartupError
    from node.runner.serve import serve as run

    settings = _settings(config, data_dir, port=port, ae_title=ae_title, host=host)
    setup_logging(settings.log_level)
    _private_files()
    try:
        code = run(settings)
    except (DataDirInUse, StartupError) as exc:
        _fail(str(exc), 1)
    except OSError as exc:  # ports and the data folder are checked with their own messages first
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"cannot start: {exc.strerror or exc}{where}", 1)
    raise typer.Exit(code)


@app.command()
def worker(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run job and inference workers only (no listener): a compute machine sharing the
    node's PostgreSQL database and data folder."""
    from node.runner.serve import StartupError, run_workers

    settings = _settings(config, data_dir)
    setup_logging(settings.log_level)
    _private_files()
    try:
        code = run_workers(settings)
    except StartupError as exc:
        _fail(str(exc), 1)
    raise typer.Exit(code)


@app.command()
def status(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What the node holds: studies (by state), series, instances, and its jobs."""
    from storage.db import open_database
    from storage.inventory import inventory, studies_by_state
    from storage.queue import JobQueue

    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    counts = inventory(engine)
    states = studies_by_state(engine)
    jobs = JobQueue(engine).counts()
    engine.dispose()
    if as_json:
        out.print_json(json.dumps({**counts, "studies_by_state": states, "jobs": jobs}))
        return
    table = Table(title=f"AINode data in {settings.data_dir}")
    for name in ("studies", "series", "instances", "bytes"):
        table.add_column(name, justify="right")
    _row(table, *(f"{counts[k]:,}" for k in ("studies", "series", "instances", "bytes")))
    out.print(table)
    if counts["studies"]:
        by_state = Table(title="studies by state")
        for state in states:
            by_state.add_column(state, justify="right")
        _row(by_state, *(str(n) for n in states.values()))
        out.print(by_state)
    if jobs:
        out.print(_jobs_by_state_table(jobs))


@app.command()
def echo(
    address: Annotated[str, typer.Argument(help="The peer as AE@HOST:PORT, or a destination's name.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    calling_ae: Annotated[str | None, typer.Option(help="Calling AE title (default: the node's).")] = None,
) -> None:
    """Check a peer, or a configured [[destinations]] entry, with a C-ECHO."""
    from node.network.scu import destination_peer
    from node.network.scu import echo as c_echo
    from node.network.tls import TlsConfigError

    settings = _settings(config, data_dir)
    named = {d.name: d for d in settings.destinations}
    if "@" not in address and address in named:
        destination = named[address]
        if destination.type != "dicom":
            _fail(f"destination {address!r} is DICOMweb ({destination.url}); C-ECHO checks DICOM peers", 2)
        try:
            peer = destination_peer(destination)
        except TlsConfigError as exc:
            _fail(str(exc), 2)
    elif "@" not in address:
        _fail(f"{address!r} is neither AE@HOST:PORT nor a configured destination "
              f"({', '.join(named) or 'none configured'})", 2)
    else:
        peer = _address(address)
    ok, message = c_echo(peer, calling_ae or settings.ae_title)
    if not ok:
        _fail(f"{peer}: {message}", 1)
    out.print(f"{peer}: {message}", highlight=False, markup=False)


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).")],
    to: Annotated[str, typer.Option("--to", help="The destination as AE@HOST:PORT.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    calling_ae: Annotated[str | None, typer.Option(help="Calling AE title (default: the node's).")] = None,
) -> None:
    """Send DICOM files to a peer with C-STORE; exit 1 if any image failed.

    Files that are not DICOM (READMEs, licences) are skipped and listed.
    """
    from node.network.scu import FAILURE, SKIPPED, WARNING, collect_files, send_files

    settings = _settings(config, data_dir)
    peer = _address(to)
    missing = [p for p in paths if not p.exists()]
    if missing:
        _fail(f"no such file or folder: {missing[0]}", 2)
    files = list(collect_files(paths))
    if not files:
        _fail("no files found to send", 1)
    with Progress(
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    ) as progress:
        task = progress.add_task("send", total=len(files))
        report = send_files(
            files, peer, calling_ae or settings.ae_title, on_outcome=lambda _o: progress.advance(task)
        )
    for outcome in report.outcomes:
        if outcome.category in (FAILURE, WARNING, SKIPPED):
            err.print(f"{outcome.path}: {outcome.detail}", markup=False, highlight=False,
                      soft_wrap=True)
    table = Table(title=f"{len(files)} file(s) to {peer}")
    table.add_column("status")
    table.add_column("files", justify="right")
    for detail, n in sorted(report.by_detail().items()):
        _row(table, detail, str(n))
    out.print(table)
    if not report.ok:
        raise typer.Exit(1)


def _jobs_by_state_table(jobs: dict[str, dict[JobState, int]]) -> Table:
    table = Table(title="jobs")
    table.add_column("kind")
    for state in JobState:
        table.add_column(state, justify="right")
    for kind, by_state in sorted(jobs.items()):
        _row(table, kind, *(str(by_state[state]) for state in JobState))
    return table


@app.command()
def jobs(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    state: Annotated[list[str] | None, typer.Option(help="queued, running, succeeded or dead.")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="infer, send, ...")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first, with their last error."""
    from storage.db import open_database
    from storage.queue import JobQueue

    for s_ in state or []:
        if s_ not in set(JobState):
            _fail(f"--state {s_!r}: use one of {', '.join(JobState)}", 2)
    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    rows = JobQueue(engine).list(states=state or (), kinds=kind or (), limit=limit)
    engine.dispose()
    fields = ("id", "kind", "state", "priority", "attempts", "max_attempts", "results_version",
              "dedupe_key", "payload", "last_error", "created_at", "run_after", "finished_at")
    if as_json:
        out.print_json(json.dumps([{f: getattr(r, f) for f in fields} for r in rows]))
        return
    table = Table(title=f"{len(rows)} job(s)")
    for name in ("id", "kind", "state", "pri", "attempts", "job", "created (UTC)", "last error"):
        table.add_column(name)
    for r in rows:
        _row(table, str(r.id), r.kind, r.state, str(r.priority), f"{r.attempts}/{r.max_attempts}",
                      r.dedupe_key, _when(r.created_at), r.last_error or "")
    out.print(table)


@app.command()
def predictions(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """What the models found: the recorded predictions, newest first."""
    from sqlalchemy import select

    from ai.protocol import Finding, Measurement
    from storage.db import open_database
    from storage.models import PredictionRecord, Study

    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    with engine.connect() as conn:
        rows = conn.execute(
            select(*PredictionRecord.__table__.columns, Study.study_instance_uid,
                   Study.results_version.label("current_version"), Study.state.label("study_state"))
            .join(Study, PredictionRecord.study_id == Study.id)
            .order_by(PredictionRecord.id.desc()).limit(limit)
        ).all()
    engine.dispose()
    fields = ("id", "study_instance_uid", "results_version", "model", "model_version", "route",
              "series_instance_uid", "device", "measurements", "findings", "detections", "provenance",
              "labelmap_path", "load_seconds", "inference_seconds", "created_at")
    # A version the study left behind (it received more images since) is superseded.
    records = [{**{f: getattr(r, f) for f in fields},
                "superseded": r.results_version < r.current_version or r.study_state == StudyState.RECEIVING}
               for r in rows]
    if as_json:
        out.print_json(json.dumps(records))
        return
    table = Table(title=f"{len(records)} prediction(s)")
    for name in ("id", "study", "model", "measurements", "findings", "seconds", "created (UTC)"):
        table.add_column(name)
    for r in records:
        measured = "; ".join(Measurement.from_json(m).describe(m["unit"]) for m in r["measurements"])
        found = "; ".join(Finding.from_json(f).describe() for f in r["findings"])
        _row(table, str(r["id"]), f"{r['study_instance_uid']} v{r['results_version']}"
                      + (" (superseded)" if r["superseded"] else ""),
                      f"{r['model']} {r['model_version']}", measured, found,
                      f"{r['load_seconds']:.1f} + {r['inference_seconds']:.1f} ({r['device']})",
                      _when(r["created_at"]))
    out.print(table)


@app.command()
def results(
    study: Annotated[str, typer.Argument(help="The Study Instance UID.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One study's results: the series each model used and why, every measurement
    with its unit and reliability, each finding, the result objects and the timeline."""
    from node.pipeline.study_report import study_results
    from storage.db import open_database

    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    with engine.connect() as conn:
        report = study_results(conn, study, settings.routes)
    engine.dispose()
    if report is None:
        _fail(f"no study {study} on this node", 1)
    if as_json:
        out.print_json(report.model_dump_json())
        return
    say = _plain
    say(f"study {report.study_instance_uid}: {report.state.replace('_', ' ')}, results version "
        f"{report.results_version}, {report.priority}" + (f" ({report.priority_reason})" if report.priority_reason
                                                           else ""))
    say("series:")
    for s in report.series:
        say(f"  {s.series_number if s.series_number is not None else '-'} {s.description or ''!r} {s.modality or '?'}"
            f" {s.images} images, {s.slice_thickness_mm if s.slice_thickness_mm is not None else '?'} mm, "
            f"kernel {s.kernel or '?'} ({s.kernel_class}), region {s.body_region or 'not named'}")
    say("routing (the rules as they are now):")
    for line in report.routing:
        say(f"  {line}")
    for r in report.results:
        used = f"series {r.series.series_number} ({r.series.description})" if r.series else "a series"
        shadow = " [SHADOW: not for clinical reading]" if r.shadow else ""
        say(f"{r.model} {r.model_version} on {used}, route {r.route}, {r.seconds:.1f} s on {r.device}{shadow}:")
        if r.compared_with:
            say(f"  changes since the study of {r.compared_with.study_date or 'unknown date'}")
        for m in r.measurements:
            say(f"  {m.text}")
        for f in r.findings:
            say(f"  {f.text}")
        for number, d in enumerate(r.detections, start=1):
            say(f"  lesion {number}: {d.text}")
        for described in r.maps:
            say(f"  {described.text}")
        for ref in r.references:
            say(f"  reference: {ref.text}")
        for o in r.objects:
            say(f"  {o.kind.upper()} {o.sop_instance_uid}")
    for reason in report.declined:
        say(f"declined: {reason}")
    say("timeline:")
    for step in report.timeline:
        say(f"  {_when(step.at)}  {step.step}" + (f": {step.detail}" if step.detail else ""))
    for job in report.jobs:
        if job.state == JobState.DEAD:
            say(f"dead job {job.id} ({job.kind}, {job.attempts} attempts): {job.last_error}")


@app.command()
def retry(
    job: Annotated[int | None, typer.Argument(help="The job id to run again.")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Requeue every dead job.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run a job again: a dead one (or every dead job with --dead), one waiting to retry,
    or one that succeeded (e.g. to deliver results once more). Attempts are reset."""
    from storage.db import open_database
    from storage.queue import JobQueue

    if (job is None) == (not dead):
        _fail("give either a job id or --dead", 2)
    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    n = JobQueue(engine).retry(job_id=job, all_dead=dead)
    engine.dispose()
    if job is not None and n == 0:
        _fail(f"job {job} does not exist or is running", 1)
    out.print(f"requeued {n} job(s)")


users_app = typer.Typer(help="Named users of the API and web pages, each with a role and a token.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Who: e.g. a login name.")],
    role: Annotated[str, typer.Option("--role", help="viewer, radiologist, operator or admin.")] = "viewer",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Add a user; prints their token once (only its SHA-256 is kept). Once any user
    exists, the API asks every caller for a token, on loopback too."""
    from storage.users import Role, UserError, add_user

    try:
        token = add_user(_database(_settings(config, data_dir)), name, Role.named(role))
    except (UserError, ValueError) as exc:
        _fail(str(exc), 1)
    err.print(f"user {name} added as {role}; the token (shown once, give it to them):", highlight=False)
    out.print(token, highlight=False, markup=False)


@users_app.command("list")
def users_list(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """The users, their roles, and when they were added and revoked."""
    from storage.users import list_users

    rows = list_users(_database(_settings(config, data_dir)))
    if as_json:
        out.print_json(json.dumps([{"name": n, "role": str(r), "created_at": c, "revoked_at": v}
                                   for n, r, c, v in rows]))
        return
    for n, r, c, v in rows:
        out.print(f"{n}  {r}  added {_when(c)}" + (f"  revoked {_when(v)}" if v else ""), highlight=False,
                  markup=False)


@users_app.command("revoke")
def users_revoke(name: Annotated[str, typer.Argument(help="The user.")], config: ConfigOpt = None,
                 data_dir: DataDirOpt = None) -> None:
    """Revoke a user's token at once (add them again for a new one)."""
    from storage.users import UserError, revoke_user

    try:
        revoke_user(_database(_settings(config, data_dir)), name)
    except UserError as exc:
        _fail(str(exc), 1)
    out.print(f"user {name} revoked", highlight=False)


selftest_app = typer.Typer(help="Check that the node's parts work.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(selftest_app, name="selftest")


@selftest_app.command("queue")
def selftest_queue(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    jobs_: Annotated[int, typer.Option("--jobs", min=1, help="How many no-op jobs.")] = 10,
    seconds: Annotated[float, typer.Option(min=0, help="How long each job takes.")] = 0.1,
    fail: Annotated[bool, typer.Option("--fail", help="Jobs that always fail (to see retries).")] = False,
    wait: Annotated[float, typer.Option(help="Wait up to this many seconds for them to end.")] = 0,
) -> None:
    """Queue no-op jobs for the running node's workers (they touch no study)."""
    import time as _time
    import uuid

    from node.jobs.kinds import JobKind, NoopPayload, node_job
    from storage.db import open_database
    from storage.queue import JobQueue

    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    queue = JobQueue(engine)
    batch = uuid.uuid4().hex[:8]
    ids = [queue.enqueue(node_job(NoopPayload(batch, i, seconds, fail), settings.job_max_attempts))
           for i in range(jobs_)]
    out.print(f"queued {len(ids)} no-op job(s), batch {batch}")
    finished = (JobState.SUCCEEDED, JobState.DEAD)
    deadline = _time.monotonic() + wait
    while wait and _time.monotonic() < deadline:
        rows = [r for r in queue.list(kinds=[JobKind.NOOP], limit=100_000) if r.id in ids]
        if all(r.state in finished for r in rows):
            break
        _time.sleep(0.2)
    if wait:
        rows = [r for r in queue.list(kinds=[JobKind.NOOP], limit=100_000) if r.id in ids]
        done = {st: sum(1 for r in rows if r.state == st) for st in finished}
        out.print(f"succeeded {done[JobState.SUCCEEDED]}, dead {done[JobState.DEAD]}, "
                  f"unfinished {len(rows) - sum(done.values())}")
        if done[JobState.SUCCEEDED] != len(ids):
            engine.dispose()
            raise typer.Exit(1)
    engine.dispose()


route_app = typer.Typer(help="Routing rules.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(route_app, name="route")


@route_app.command("test")
def route_test(
    target: Annotated[str, typer.Argument(help="A folder or file of DICOM images, or a stored Study Instance UID.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Dry-run the routing rules: which rule takes which series, and why others do not."""
    from node.pipeline.route_explain import explain, views_from_database, views_from_files

    settings = _settings(config, data_dir)
    path = Path(target)
    if path.exists():
        unusable: list[str] = []
        studies = views_from_files(path, unusable)
        for line in unusable[:20]:
            err.print(f"ainode: left out {line}", markup=False, highlight=False, soft_wrap=True)
        if not studies:
            _fail(f"no DICOM images the node would accept in {path}"
                  + (f" ({len(unusable)} file(s) left out, see above)" if unusable else ""), 1)
    else:
        studies = views_from_database(settings, target)
        if not studies:
            _fail(f"{target} is neither a file or folder nor a stored Study Instance UID", 1)
    for study in studies:
        out.print(explain(settings.routes, study), highlight=False, markup=False, soft_wrap=True)


@route_app.command("history")
def route_history_command(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """When each route entered or left shadow mode (recorded at each start of the node)."""
    from node.pipeline.route_history import route_history

    rows = route_history(_database(_settings(config, data_dir)))
    if as_json:
        out.print_json(json.dumps([{"route": r.route, "model": r.model, "shadow": r.shadow, "detail": r.detail,
                                    "at": r.at} for r in rows]))
        return
    for r in rows:
        out.print(f"{_when(r.at)}  {r.detail}", highlight=False, markup=False, soft_wrap=True)
    if not rows:
        out.print("no route recorded yet (routes are recorded when `ainode serve` starts)", highlight=False)


models_app = typer.Typer(help="The installed models; check a model folder before installing it.",
                         rich_markup_mode=None)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The installed models (entry-point group ainode.models, and model_folders) and
    what they declare."""
    if ctx.invoked_subcommand is not None:
        return
    from ai.registry import RegistryError, installed_models

    settings = _settings(config, data_dir)
    try:
        available = installed_models(settings.model_folders)
    except RegistryError as exc:
        _fail(str(exc), 1)
    rows: list[dict[str, Any]] = []
    for name, installed in sorted(available.items()):
        options = settings.models[name].options if name in settings.models else None
        try:
            m = installed.create(options)
        except Exception as exc:
            rows.append({"name": name, "source": installed.source, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({
            "name": m.name, "version": m.version, "source": installed.source,
            "modalities": list(m.accepts.modalities),
            "min_slices": m.accepts.min_slices, "gpu": m.device_needs.gpu,
            "segments": [s.name for s in m.outputs.segments],
            "measurements": [x.name for x in m.outputs.measurements],
            "findings": [f.name for f in m.outputs.findings],
            "detections": [d.name for d in m.outputs.detections],
            "maps": [{"name": x.name, "kind": str(x.kind), "of": x.of} for x in m.outputs.maps],
        })
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} model(s)")
    for column in ("name", "version", "accepts", "gpu", "outputs", "source"):
        table.add_column(column)
    for r in rows:
        if "error" in r:
            _row(table, r["name"], "", "", "", f"cannot load: {r['error']}", r["source"])
            continue
        _row(table, r["name"], r["version"], f"{'/'.join(r['modalities'])}, >= {r['min_slices']} slices",
                      r["gpu"], f"{len(r['segments'])} segments, {len(r['measurements'])} measurements, "
                      f"{len(r['findings'])} finding(s)"
                      + (f", lesions: {', '.join(r['detections'])}" if r["detections"] else "")
                      + (f", {len(r['maps'])} map(s)" if r["maps"] else ""), r["source"])
    out.print(table)


@models_app.command("check")
def models_check(
    path: Annotated[Path, typer.Argument(help="A model folder: an ainode-model.toml folder or a MONAI bundle.")],
    no_run: Annotated[bool, typer.Option("--no-run", help="Only read the folder; do not load or run it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """What a model folder is, what it accepts and produces (with the codes its results
    carry) and what is missing; it is loaded on the CPU and run once on a small
    synthetic volume unless --no-run. Exit status 1 when a problem is found."""
    from ai.model_check import check_model_folder

    if not path.is_dir():
        _fail(f"{path} is not a folder", 2)
    report = check_model_folder(path, run=not no_run)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        lines = [f"{report.path}: {report.kind}"]
        if report.name:
            lines.append(f"  model {report.name} {report.version}, accepts {report.accepts}")
        lines += [f"  produces {o}" for o in report.outputs]
        if report.trial:
            lines.append(f"  trial run on a synthetic volume: {report.trial}")
        lines += [f"  problem: {p}" for p in report.problems]
        lines.append("  ready: list its folder in model_folders and name it in a route" if report.ok
                     else "  not ready")
        out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@models_app.command("try")
def models_try(
    model: Annotated[str, typer.Argument(help="An installed model's name (see ainode models).")],
    study: Annotated[str, typer.Argument(help="A stored Study Instance UID.")],
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a model on a stored study and print what it finds; nothing is recorded or
    sent. It runs on the series its routes would choose, or on each series it accepts
    when no route takes one. Exit status 1 when the model raised an error on a series."""
    from ai.registry import RegistryError
    from node.pipeline.model_trial import TrialError, TrialOutcome, try_model

    settings = _settings(config, data_dir)
    try:
        trials = try_model(settings, model, study, device)
    except (TrialError, RegistryError) as exc:
        _fail(str(exc), 1)
    if as_json:
        out.print_json(json.dumps([t.to_json() for t in trials]))
    else:
        for t in trials:
            number = t.series_number if t.series_number is not None else "?"
            out.print(f"series {number} ({t.why}): {t.outcome} in {t.seconds:.1f} s", markup=False,
                      highlight=False, soft_wrap=True)
            for line in t.lines:
                out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if any(t.outcome is TrialOutcome.ERROR for t in trials):
        raise typer.Exit(1)


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of TOML.")] = False,
) -> None:
    """Print the effective configuration (defaults, file, environment and flags merged)."""
    settings = _settings(config, data_dir)
    data = settings.model_dump(mode="json", exclude_none=True)
    if as_json:
        out.print_json(json.dumps(data))
    else:
        sys.stdout.write(tomli_w.dumps(data))


# The trust loop's commands (node.runner.quality_cli), after the node's own.
app.add_typer(references_app, name="references")
app.registered_commands += quality_commands.registered_commands
app.registered_commands += fetch_commands.registered_commands


def main() -> None:
    app(prog_name="ainode")
