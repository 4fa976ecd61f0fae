"""Who may send: allow-list, called AE title, rejections logged with the reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Node, peer_env
from tests.integration.scu import associate
from tests.synthetic import write_ct_study

pytestmark = pytest.mark.integration

PEERS = """
[[peers]]
ae_title = "CT01"
host = "127.0.0.1"

[[peers]]
ae_title = "PACS"
"""


def _storescu(storescu: str, node: Node, calling: str, called: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [storescu, "-aet", calling, "-aec", called, "+sd", "+r", "127.0.0.1", str(node.port), str(folder)],
        capture_output=True, text=True, env=peer_env(), timeout=120,
    )


def test_listed_peer_is_accepted_and_others_rejected(node_factory, storescu: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_ct_study(study, series=1, slices=3)
    node: Node = node_factory(PEERS).start()

    allowed = _storescu(storescu, node, "CT01", "AINODE", study)
    assert allowed.returncode == 0, allowed.stderr

    stranger = _storescu(storescu, node, "ROGUE", "AINODE", study)
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stderr or "Rejected" in stranger.stderr
    assert "calling AE title 'ROGUE' from 127.0.0.1 is not in [[peers]]" in node.log()

    wrong_called = _storescu(storescu, node, "PACS", "OTHERNODE", study)
    assert wrong_called.returncode != 0
    assert "called AE title 'OTHERNODE' is not this node's" in node.log()

    # The node still serves listed peers after the rejections.
    assert _storescu(storescu, node, "PACS", "AINODE", study).returncode == 0


def test_peer_from_other_host_is_rejected(node_factory) -> None:
    node: Node = node_factory('[[peers]]\nae_title = "CT01"\nhost = "10.9.9.9"\n').start()
    assoc = associate(node.port, calling_ae="CT01")
    # Seen failing in CI as an abort: a pynetdicom race, now recovered in the helper
    # (tests/faults/test_fast_rejection.py); the message keeps what tells why.
    assert assoc.is_rejected, (f"established={assoc.is_established} aborted={assoc.is_aborted}; "
                               f"node log:\n{node.log()}")
    assert "'CT01' from 127.0.0.1 is not in [[peers]]" in node.log()


def test_default_accepts_loopback_and_explains_how_to_allow_scanners(node: Node) -> None:
    assoc = associate(node.port, calling_ae="ANYONE")
    assert assoc.is_established
    assoc.release()
    assert "accepting associations from loopback only" in node.log()
    assert "[[peers]]" in node.log()


def test_accept_any(node_factory) -> None:
    node: Node = node_factory("accept_any = true\n").start()
    assoc = associate(node.port, calling_ae="WHOEVER")
    assert assoc.is_established
    assoc.release()
    assert "any AE title and host" in node.log()
