"""The `ainode` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import tomli_w
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from config.settings import ConfigError, Settings, load_settings
from node.logs import setup_logging

app = typer.Typer(
    name="ainode",
    help="AINode: a DICOM node that runs AI models on the studies it receives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

err = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file.", envvar="AINODE_CONFIG"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where images and the database are kept.")
]


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"ainode: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(config: Path | None, data_dir: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(config, data_dir=data_dir, **flags)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            err.print(f"ainode: config error: {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _address(text: str) -> Any:
    from node.scu import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        _fail(str(exc), 2)


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int | None, typer.Option(help="DICOM listener port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="The node's AE title.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
) -> None:
    """Run the node in the foreground (SIGINT/SIGTERM stop it cleanly)."""
    from node.serve import DataDirInUse, StartupError
    from node.serve import serve as run

    settings = _settings(config, data_dir, port=port, ae_title=ae_title, host=host)
    setup_logging(settings.log_level)
    try:
        code = run(settings)
    except (DataDirInUse, StartupError) as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(
            f"cannot start: {exc.strerror or exc} (listening on {settings.host}:{settings.port}?"
            " choose another --port or stop what uses it)",
            1,
        )
    raise typer.Exit(code)


@app.command()
def status(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What the node holds: studies, series and instances."""
    from storage.db import open_database
    from storage.inventory import inventory

    settings = _settings(config, data_dir)
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    counts = inventory(engine)
    engine.dispose()
    if as_json:
        out.print_json(json.dumps(dict(counts)))
        return
    table = Table(title=f"AINode data in {settings.data_dir}")
    for name in ("studies", "series", "instances", "bytes"):
        table.add_column(name, justify="right")
    table.add_row(*(f"{counts[k]:,}" for k in ("studies", "series", "instances", "bytes")))
    out.print(table)


@app.command()
def echo(
    address: Annotated[str, typer.Argument(help="The peer as AE@HOST:PORT.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    calling_ae: Annotated[str | None, typer.Option(help="Calling AE title (default: the node's).")] = None,
) -> None:
    """Check a peer with a C-ECHO."""
    from node.scu import echo as c_echo

    settings = _settings(config, data_dir)
    peer = _address(address)
    ok, message = c_echo(peer, calling_ae or settings.ae_title)
    if not ok:
        _fail(f"{peer}: {message}", 1)
    out.print(f"{peer}: {message}", highlight=False)


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
    from node.scu import FAILURE, SKIPPED, WARNING, collect_files, send_files

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
        table.add_row(detail, str(n))
    out.print(table)
    if not report.ok:
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


def main() -> None:
    app(prog_name="ainode")
