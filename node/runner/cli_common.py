"""What every `ainode` command shares: the consoles, the common options, reading the
settings (a config error exits 2 naming the setting), the database, plain output."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from config.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Piped output is not cut to 80 columns: tables stay whole for grep and logs.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file.", envvar="AINODE_CONFIG"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where images and the database are kept.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"ainode: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_from(config: Path | None, data_dir: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(config, data_dir=data_dir, **flags)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            err.print(f"ainode: config error: {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def database(settings: Settings) -> Engine:
    """The node's database, migrated."""
    from storage.db import open_database

    return open_database(settings.effective_database_url, settings.db_busy_timeout_ms)


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def plain(text: str) -> None:
    """Data as it is: units like [hnsf'U] and names in brackets are not rich markup."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)
