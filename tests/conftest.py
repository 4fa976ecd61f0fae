"""Shared test helpers: peers that must exist in CI, free ports, a real `ainode serve`."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Engine

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Public samples live beside the repository; a user's clone may not have them.
SHARED_DATA = Path(os.environ.get("AINODE_SHARED_DATA", REPO.parent / "shared" / "data"))
AINODE = [sys.executable, "-m", "node"]


def missing_peer(reason: str) -> None:
    """A peer the test needs is absent: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: run scripts/test)")
    pytest.skip(reason)


def dcmtk(tool: str) -> str:
    """Full path of a dcmtk tool: the venv has pynetdicom scripts of the same names."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = Path(folder) / tool
        if path.exists():
            return str(path)
    missing_peer(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")
    raise AssertionError("unreachable")


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"public sample {name} not found under {SHARED_DATA} (set AINODE_SHARED_DATA)")
    return path


def wait_until(predicate: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _port_range() -> range | None:
    """Under pytest-xdist, each worker takes its ports from its own range below the
    kernel's ephemeral ports, so two workers never pick the same free port at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return None
    start = 10_000 + 4_000 * (int(worker[2:]) % 5)
    return range(start, start + 4_000)


_port_cursor = itertools.count(os.getpid())  # where this worker looks next in its range


def free_port() -> int:
    """A TCP port nobody listens on now (on 127.0.0.1)."""
    ports = _port_range()
    if ports is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in ports:
        port = ports[next(_port_cursor) % len(ports)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {ports}")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """The fault tests (CPU hogs, crash loops, memory bounds) run one after another on
    one pytest-xdist worker; the rest share the other workers. A wrapper, so that the
    group is set before pytest-xdist's own hook reads it."""
    for item in items:
        if "tests/faults/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("faults/"):
            item.add_marker(pytest.mark.xdist_group("faults"))
    return (yield)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run when pytest-xdist did not group the fault tests: pytest-xdist 3.8
    groups by rewriting a node id pytest 9 no longer reads (measured: with pytest 9.2
    the fault tests ran on both workers at once), hence pytest < 9 in the test extras."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    spread = [i.nodeid for i in session.items if "tests/faults/" in i.nodeid and "@faults" not in i.nodeid]
    if spread:
        raise pytest.UsageError(f"pytest-xdist did not group the fault tests ({spread[0]}); "
                                "install the test extras (pytest < 9)")


@pytest.fixture(scope="session")
def nnunet_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nnU-Net v2 result folder planned by nnunetv2 (tests/model_files.py), made
    once per session (about 20 s)."""
    from tests.model_files import nnunet_folder

    root = tmp_path_factory.mktemp("nnunet")
    return nnunet_folder(root / "Dataset990_DenseTissue" / "nnUNetTrainer__nnUNetPlans__3d_fullres", root / "work")


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # dcmtk leaves Nagle's algorithm on otherwise
    return env


@dataclass
class Node:
    """A real `ainode serve` process on loopback."""

    data_dir: Path
    port: int
    config: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    preexec: object = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    log_offset: int = 0
    api_port: int = field(default_factory=lambda: free_port())

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def address(self) -> str:
        return f"AINODE@127.0.0.1:{self.port}"

    def command(self, *args: str) -> list[str]:
        cmd = [*AINODE, *args, "--data-dir", str(self.data_dir)]
        if self.config:
            cmd += ["--config", str(self.config)]
        return cmd

    def start(self, timeout: float = 30.0) -> Node:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-serve.log"
        env = {**os.environ, "AINODE_API_PORT": str(self.api_port), **self.extra_env}
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command("serve", "--port", str(self.port), "--host", "127.0.0.1"),
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            preexec_fn=self.preexec,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ainode serve exited {self.proc.returncode}:\n{self.log()}")
            # Wait for the start-up line rather than probing the port: a probe
            # connection would itself occupy an association slot for a while.
            if "AINode listening on" in self.log():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"ainode serve did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """What the current (or last) run of the node logged."""
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self.log_offset :].decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, cwd=REPO,
                                timeout=120, env={**os.environ, **self.extra_env})
        if check and result.returncode != 0:
            raise AssertionError(f"ainode {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[object]:
    """Start real node processes; every one still running is stopped at the end."""
    nodes: list[Node] = []

    def make(config_text: str | None = None, inference: bool = False, **kwargs: object) -> Node:
        """``inference``: start the inference workers too (off by default: they add
        seconds to every start and most tests are about receiving and queueing)."""
        data_dir = tmp_path / f"node{len(nodes)}"
        if not inference:
            env = dict(kwargs.pop("extra_env", None) or {})  # type: ignore[call-overload]
            env.setdefault("AINODE_INFERENCE_WORKERS_PER_DEVICE", "0")
            kwargs["extra_env"] = env
        config = None
        if config_text is not None:
            config = tmp_path / f"node{len(nodes)}.toml"
            config.write_text(config_text)
        node = Node(data_dir=data_dir, port=free_port(), config=config, **kwargs)  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


@pytest.fixture
def node(node_factory: object) -> Node:
    """One running node with the default configuration."""
    return node_factory().start()  # type: ignore[operator,no-any-return]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (fails in CI when not installed)."""
    from tests.postgres import postgres_server

    try:
        server = postgres_server(free_port())
        url = server.__enter__()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        missing_peer(f"PostgreSQL server not available: {exc}")
        raise
    yield url
    server.__exit__(None, None, None)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's server for one test."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[object]:
    """A real Orthanc on loopback (DICOM and HTTP with DICOMweb), stopped at the end."""
    from tests.orthanc import ORTHANC, Orthanc

    if not Path(ORTHANC).exists():
        missing_peer("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    server = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def storescu() -> str:
    return dcmtk("storescu")


def send_study(node: Node, *paths: Path) -> None:
    """dcmtk's storescu sends every .dcm file under ``paths`` to ``node`` as CT01;
    the test fails unless all were accepted."""
    sent = subprocess.run([dcmtk("storescu"), "-aec", "AINODE", "-aet", "CT01", "+sd", "+r", "+sp", "*.dcm",
                           "127.0.0.1", str(node.port), *map(str, paths)],
                          capture_output=True, text=True, env=peer_env(), timeout=300)
    assert sent.returncode == 0, sent.stderr


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty node database, once on SQLite and once on the session's PostgreSQL."""
    from storage.db import open_database

    url = (f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_postgres_url"))
    engine = open_database(url)
    yield engine
    engine.dispose()
