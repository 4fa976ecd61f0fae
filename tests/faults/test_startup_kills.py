"""`kill -9` of `ainode serve` at random moments of its start-up: no process of it may
remain (holding the DICOM and API ports, writing to the data folder), and the next
start works. A start that finds processes of an earlier node on its data folder
says so and refuses; a start that fails leaves no "did not stop cleanly" marker."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.conftest import REPO, Node, wait_until
from tests.integration.scu import store_datasets
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARKER = "AINODE_TEST_RUN_MARKER"  # no AINODE_ setting: inherited by every process of one run


def _processes_of(run: str) -> list[int]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"{MARKER}={run}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _start(node: Node, run: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AINODE_API_PORT": str(node.api_port), **node.extra_env, MARKER: run}
    return subprocess.Popen(node.command("serve", "--port", str(node.port), "--host", "127.0.0.1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)


def test_kill_9_during_start_up_leaves_no_process_and_the_next_start_works(node_factory: Any) -> None:
    node: Node = node_factory(inference=True)  # all of them: listeners, workers, inference, API
    rng = random.Random(14)
    delays = [0.05, 0.4, *sorted(rng.uniform(0.5, 9.0) for _ in range(5))]
    for delay in delays:
        run = uuid.uuid4().hex
        serve = _start(node, run)
        time.sleep(delay)
        serve.kill()
        serve.wait(10)
        left = wait_until(lambda run=run: not _processes_of(run) or None, 15, f"no process left {delay:.2f} s in")
        assert left
    started = node.start(timeout=90)
    try:
        study = generate_uid(TEST_UID_ROOT)
        assert store_datasets(node.port, [ct_slice(study, generate_uid(TEST_UID_ROOT), 0, size=16)]) == [0]
    finally:
        assert started.stop() == 0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_start_refuses_while_processes_of_an_earlier_node_hold_its_data_dir(node_factory: Any) -> None:
    node: Node = node_factory()
    node.extra_env["AINODE_API_PORT"] = str(node.api_port)  # for node.run("serve") too
    node.start()
    assert node.stop() == 0  # a clean stop: no marker
    # A process of an earlier node that did not die (here: one holding the lock, as they all do).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); time.sleep(120)"),
        str(node.data_dir / "ainode.processes.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = node.run("serve", "--port", str(node.port), check=False)
        assert refused.returncode == 1
        assert f"processes of an earlier AINode still run on {node.data_dir} (pids {holder.pid})" in refused.stderr
        assert _free(node.port) and _free(node.api_port)
    finally:
        holder.kill()
        holder.wait()
    assert not (node.data_dir / "ainode.running").exists(), "a refused start left the unclean-stop marker"
    # A start that fails for another reason (the port is taken) leaves none either.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.port))
        squatter.listen()
        failed = node.run("serve", "--port", str(node.port), "--host", "127.0.0.1", check=False)
    assert failed.returncode == 1 and "cannot listen on 127.0.0.1" in failed.stderr
    assert not (node.data_dir / "ainode.running").exists()
    assert "did not stop cleanly" not in node.start().log()
    node.stop()


def test_an_unusable_data_dir_is_named_as_such(node_factory: Any, tmp_path: Path) -> None:
    node: Node = node_factory()
    node.data_dir = tmp_path / "a-file"
    node.data_dir.write_text("not a folder")
    failed = node.run("serve", "--port", str(node.port), check=False)
    assert failed.returncode == 1
    assert f"cannot use data_dir {node.data_dir}" in failed.stderr and "--port" not in failed.stderr
