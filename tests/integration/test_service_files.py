"""The systemd unit and the container recipe: systemd's own check of the unit, and
both run `ainode serve` as an unprivileged user with a private data folder."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_peer

pytestmark = pytest.mark.integration

UNIT = REPO / "deploy" / "ainode.service"
CONTAINERFILE = REPO / "deploy" / "Containerfile"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_the_unit_passes_systemd_analyze_and_runs_unprivileged(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_peer("systemd-analyze is not installed (apt-get install systemd)")
    service = _unit()["Service"]
    assert service["User"] == "ainode" and service["Group"] == "ainode"
    assert service["UMask"] == "0077" and service["StateDirectoryMode"] == "0700"
    assert service["ExecStart"].split()[1:3] == ["serve", "--config"]
    assert service["Environment"] == "AINODE_DATA_DIR=/var/lib/ainode"
    # systemd's own check, with ExecStart pointing at this checkout's `ainode`.
    ainode = Path(sys.executable).with_name("ainode")
    checked = tmp_path / "ainode.service"
    checked.write_text(UNIT.read_text().replace("/opt/ainode/bin/ainode", str(ainode)))
    result = subprocess.run([tool, "verify", str(checked)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "ainode.service" in line
                and "Failed to resolve user" not in line]  # the "ainode" user is not made here
    assert result.returncode == 0 or not problems, result.stderr


def test_the_container_runs_the_node_unprivileged_with_its_data_volume() -> None:
    text = CONTAINERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    user = [line for line in lines if line.startswith("USER ")]
    assert user == ["USER ainode"]
    assert lines.index(user[0]) < lines.index(next(line for line in lines if line.startswith("CMD ")))
    assert 'VOLUME ["/var/lib/ainode"]' in lines
    assert "AINODE_DATA_DIR=/var/lib/ainode" in text
    assert '"ainode", "serve"' in text
    for folder in ("config", "node", "storage", "ai"):  # every package the distribution holds
        assert f"COPY {folder} ./{folder}" in lines
