"""The `ainode` command as a user runs it: config, echo, send, status, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import AINODE, REPO, Node, free_port
from tests.synthetic import TEST_UID_ROOT, ct_slice, write_ct_study

pytestmark = pytest.mark.integration


def _ainode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AINODE, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_config_show_merges_file_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FROMFILE"\nport = 2000\nmax_associations = 3\n'
                      '[[peers]]\nae_title = "CT01"\nhost = "10.0.0.0/24"\n')
    result = _ainode("config", "show", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                     env={"AINODE_PORT": "3000", "AINODE_MAX_ASSOCIATIONS": "5"})
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["ae_title"] == "FROMFILE"
    assert shown["port"] == 3000  # environment beats the file
    assert shown["max_associations"] == 5
    assert shown["data_dir"] == str(tmp_path / "d")  # the flag
    assert shown["peers"] == [{"ae_title": "CT01", "host": "10.0.0.0/24"}]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "70000"], {}, "setting 'port' (got 70000)"),
        ([], {"AINODE_AE_TITLE": "A_TITLE_THAT_IS_TOO_LONG"}, "setting 'ae_title'"),
        ([], {"AINODE_LOG_LEVEL": "LOUD"}, "setting 'log_level'"),
    ],
)
def test_bad_setting_is_one_clear_line_and_exit_2(args, env, expected, tmp_path: Path) -> None:
    result = _ainode("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and "fix it in" in lines[0]


def test_unknown_setting_and_bad_toml_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("prot = 104\n")
    result = _ainode("config", "show", "--config", str(config))
    assert result.returncode == 2
    assert "setting 'prot': unknown setting" in result.stderr
    config.write_text("port = \n")
    result = _ainode("config", "show", "--config", str(config))
    assert result.returncode == 2
    assert "is not valid TOML" in result.stderr


def test_example_config_is_valid_and_complete(tmp_path: Path) -> None:
    import re

    from config.settings import (
        Destination,
        DestinationTls,
        ListenerTls,
        ModelSettings,
        Notification,
        PacsSettings,
        PriorsRule,
        QualitySettings,
        Route,
        SeriesMatch,
        Settings,
        TriageRule,
    )

    example = REPO / "config" / "ainode.example.toml"
    result = _ainode("config", "show", "--config", str(example))
    assert result.returncode == 0, result.stderr
    text = example.read_text()
    for name in Settings.model_fields:
        assert f"# {name} =" in text or f"# [[{name}]]" in text or f"# [{name}." in text or f"# [{name}]" in text, \
            f"{name} is not in the example"
    for name in Destination.model_fields:
        assert f"# {name} =" in text, f"destination {name} is not in the example"
    for name in ModelSettings.model_fields:
        assert f"# {name} =" in text or f"# [models.ct-chest.{name}]" in text, \
            f"model setting {name} is not in the example"
    for name in Route.model_fields:
        assert f"# {name} =" in text or f"# [routes.{name}]" in text, f"route {name} not in the example"
    for name in [*TriageRule.model_fields, *Notification.model_fields]:
        assert f"# {name} =" in text, f"triage/notification {name} is not in the example"
    for name in ListenerTls.model_fields:
        assert f"# {name} =" in text, f"tls {name} is not in the example"
    for name in DestinationTls.model_fields:
        assert name in text, f"destination tls {name} is not in the example"
    for name in QualitySettings.model_fields:
        assert f"# {name} =" in text, f"quality {name} is not in the example"
    for name in PriorsRule.model_fields:
        assert f"# {name} =" in text, f"priors {name} is not in the example"
    for name in PacsSettings.model_fields:
        assert f"# {name} =" in text, f"pacs {name} is not in the example"
    for name in SeriesMatch.model_fields:
        assert f"# {name} =" in text, f"match {name} is not in the example"
    # With every setting uncommented, the example is still a valid configuration.
    setting = re.compile(r"^# (\[\[?[\w.-]+\]\]?|\w+ = .*)$")
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text("\n".join(
        m.group(1) if (m := setting.match(line)) else line for line in text.splitlines()))
    result = _ainode("config", "show", "--config", str(uncommented))
    assert result.returncode == 0, result.stderr
    assert 'ae_title = "CT01"' in result.stdout


def test_echo_and_send_to_a_node(node: Node, tmp_path: Path) -> None:
    assert _ainode("echo", node.address).returncode == 0
    unreachable = _ainode("echo", f"AINODE@127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "not reachable" in unreachable.stderr

    study = tmp_path / "study"
    write_ct_study(study, series=2, slices=4)
    (study / "s01" / "notes.txt").write_text("not an image")
    result = _ainode("send", str(study), "--to", node.address)
    assert result.returncode == 0, result.stderr  # a non-DICOM file is skipped, not failed
    assert "0x0000 success" in result.stdout and "│     8 │" in result.stdout
    assert "notes.txt: skipped: not a DICOM file" in result.stderr
    counts = json.loads(node.run("status", "--json").stdout)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 8)

    # An image the node refuses makes the command fail, after sending the rest.
    bad = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    del bad.StudyInstanceUID
    bad.save_as(study / "s02" / "bad.dcm", enforce_file_format=True)
    result = _ainode("send", str(study / "s02"), "--to", node.address)
    assert result.returncode == 1
    assert "bad.dcm: 0xC000 failure (missing Study Instance UID" in result.stderr
    assert "│     4 │" in result.stdout


def test_send_names_truncated_and_uid_less_files_and_proposes_the_file_meta_class(
        node: Node, tmp_path: Path) -> None:
    study = tmp_path / "study"
    good, cut, uid_less, mislabelled = write_ct_study(study, series=1, slices=4)
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 3000])  # cut in the pixel data
    ds = dcmread(uid_less)
    ds.SOPInstanceUID = ""
    ds.file_meta.MediaStorageSOPInstanceUID = ""
    ds.save_as(uid_less)
    # The dataset claims another class than its file meta: the file meta is what is proposed.
    ds = dcmread(mislabelled)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ds.save_as(mislabelled)
    result = _ainode("send", str(study), "--to", node.address)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{cut.name}: not sent: the pixel data is truncated" in result.stderr
    assert f"{uid_less.name}: not sent: the file has no SOP Instance UID" in result.stderr
    assert "association aborted" not in result.stderr  # the others went through
    assert f"{good.name}" not in result.stderr


def test_help_and_tables_keep_bracketed_text() -> None:
    # "[[destinations]]" is TOML, not rich markup: help shows it as written.
    result = _ainode("echo", "--help")
    assert result.returncode == 0 and "[[destinations]]" in result.stdout


def test_bad_address_is_refused(tmp_path: Path) -> None:
    result = _ainode("echo", "127.0.0.1:104")
    assert result.returncode == 2 and "AE@HOST:PORT" in result.stderr


def test_sigterm_finishes_and_exits_0_keeping_every_acknowledged_image(node_factory, tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_ct_study(study, series=1, slices=400, size=128)
    node: Node = node_factory().start()
    sender = subprocess.Popen([*AINODE, "send", str(study), "--to", node.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    studies_dir = node.data_dir / "studies"
    while len(list(studies_dir.rglob("*.dcm"))) < 20:  # stop in the middle of the send
        assert sender.poll() is None, "the send finished before the node could be stopped"
        time.sleep(0.01)
    node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    out, _err = sender.communicate(timeout=120)
    assert node.proc.wait(60) == 0  # type: ignore[union-attr]
    node.proc = None
    assert sender.returncode == 1  # the images after the stop were not acknowledged
    assert "AINode stopped" in node.log()
    acknowledged = sum(int(line.split("│")[2]) for line in out.splitlines()
                       if "0x0000 success" in line)
    node.start()
    counts = json.loads(node.run("status", "--json").stdout)
    assert 0 < acknowledged < 400
    assert counts["instances"] >= acknowledged
    assert len(list((node.data_dir / "studies").rglob("*.dcm"))) == counts["instances"]
    assert "did not stop cleanly" not in node.log()


def test_models_lists_the_builtin_model() -> None:
    result = _ainode("models", "--json")
    assert result.returncode == 0, result.stderr
    [ct_chest] = [m for m in json.loads(result.stdout) if m["name"] == "ct-chest"]
    assert ct_chest["modalities"] == ["CT"] and "Left lung" in ct_chest["segments"]
    assert "emphysema suspected" in ct_chest["findings"]



def test_models_check_says_what_a_folder_is_and_what_is_missing(tmp_path: Path) -> None:
    from tests.model_files import monai_bundle

    good = _ainode("models", "check", str(monai_bundle(tmp_path / "spleen_ct")))
    assert good.returncode == 0, good.stderr
    assert "MONAI bundle" in good.stdout and "model spleen_ct 0.3.1, accepts CT" in good.stdout
    assert "segment 1 'spleen': Spleen (SCT 78961009), Anatomical Structure" in good.stdout
    assert "trial run on a synthetic volume: label map with labels [0, 1]; spleen volume" in good.stdout

    unmapped = monai_bundle(tmp_path / "vessels", labels={"0": "background", "1": "hepatic vessel"})
    answer = _ainode("models", "check", str(unmapped), "--json")
    report = json.loads(answer.stdout)
    assert answer.returncode == 1 and not report["ok"]
    assert "label 'hepatic vessel' has no standard code" in report["problems"][0]
    assert "ainode-labels.toml" in report["problems"][0]


def test_models_try_runs_a_model_on_a_stored_study_and_records_nothing(node_factory, tmp_path: Path) -> None:
    import numpy as np

    from tests.conftest import send_study
    from tests.model_files import monai_bundle

    monai_bundle(tmp_path / "models" / "dense_bundle", pixdim=(0.7, 0.7, 1.0))
    node: Node = node_factory(f'model_folders = ["{tmp_path / "models"}"]\n').start()  # no route uses it
    sources = write_ct_study(tmp_path / "study", series=1, slices=8, size=40)
    send_study(node, tmp_path / "study")
    study = dcmread(sources[0], stop_before_pixels=True).StudyInstanceUID
    answer = node.run("models", "try", "dense_bundle", study, "--json")
    assert answer.returncode == 0, answer.stderr
    [trial] = json.loads(answer.stdout)
    assert trial["outcome"] == "ran" and trial["why"].startswith("no route uses dense_bundle; a CT series of 8")
    dense = sum(int((dcmread(p).pixel_array > 0).sum()) for p in sources)
    assert f"label 1 (spleen): {dense} voxels" in trial["lines"]
    assert trial["lines"][0].startswith("spleen volume ") and trial["lines"][0].endswith(" mL")
    assert json.loads(node.run("predictions", "--json").stdout) == []  # nothing recorded
    missing = node.run("models", "try", "dense_bundle", "1.2.3.4", check=False)
    assert missing.returncode == 1 and "1.2.3.4 is not a stored Study Instance UID" in missing.stderr
    assert np.isfinite(trial["seconds"])
