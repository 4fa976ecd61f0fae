"""The node's sends keep each response for the request that waits for it.

pynetdicom 3.0's requestor can let its reactor thread take a C-STORE response off the
queue while ``send_c_store`` waits for it (see ``hand_back_responses``): the store then
fails at the DIMSE timeout although the archive stored it. CI saw a results delivery
over TLS fail this way; beside three busy CPUs it hit 8 stores in 900. Here both
threads are descheduled on purpose where the race needs it (the reactor for 50 ms
just after it passes its checkpoint, the sender for 80 ms between sending a request
and waiting for its response), against a real dcmtk storescp.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

from node.network.scu import SUCCESS, PeerAddress, send_files
from tests.conftest import dcmtk, free_port, peer_env, wait_until
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

FILES = 10


class SlowCheckpoint(threading.Event):
    """A reactor checkpoint whose thread is descheduled just after passing it, while
    pynetdicom's reactor still reads as paused but is not."""

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        time.sleep(0.05)
        return passed


@pytest.fixture
def descheduled_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    init = Association.__init__

    def with_slow_checkpoint(self: Association, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._reactor_checkpoint = SlowCheckpoint()
        self._reactor_checkpoint.set()

    send = DIMSEServiceProvider.send_msg

    def send_then_stall(self: DIMSEServiceProvider, *args: Any, **kwargs: Any) -> None:
        send(self, *args, **kwargs)
        time.sleep(0.08)

    monkeypatch.setattr(Association, "__init__", with_slow_checkpoint)
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", send_then_stall)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_every_store_gets_its_own_response_when_the_reactor_is_descheduled(
        tmp_path: Path, descheduled_reactor: None) -> None:
    received = tmp_path / "archive"
    received.mkdir()
    port = free_port()
    storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(received), str(port)],
                                env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(port), 20, "storescp to listen")
        files = []
        for index in range(FILES):
            ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), index)
            files.append(tmp_path / f"{index}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        started = time.monotonic()
        report = send_files(files, PeerAddress("PACS", "127.0.0.1", port), "AINODE", timeout_s=10)
        elapsed = time.monotonic() - started
    finally:
        storescp.kill()
        storescp.wait()
    assert [o.category for o in report.outcomes] == [SUCCESS] * FILES, [o.detail for o in report.outcomes]
    assert len(list(received.iterdir())) == FILES
    # Every response was handed to its request, none waited out the 10 s DIMSE timeout.
    assert elapsed < 10
