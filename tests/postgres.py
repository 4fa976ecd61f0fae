"""A real PostgreSQL server for tests: the Debian package's binaries, a throw-away
cluster in a temporary folder, on a free port of 127.0.0.1."""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_server_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as the package's postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres_server(port: int, durable: bool = False) -> Iterator[str]:
    """Start a cluster; yield its SQLAlchemy URL; stop and delete it afterwards.

    Tests run it with fsync off (faster, nothing to keep); benchmarks with
    ``durable=True``, as a hospital would run it.
    """
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL server binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ainode-pg-"))
    data = root / "data"
    user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        subprocess.run(_as_server_user([initdb, "-D", str(data), "-A", "trust", "-U", user,
                                        "--no-sync", "-E", "UTF8"]),
                       check=True, capture_output=True)
        subprocess.run(_as_server_user([
            pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
            + ("" if durable else " -c fsync=off"), "start",
        ]), check=True, capture_output=True)
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)
