from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings


def test_defaults_need_no_file() -> None:
    s = load_settings()
    assert (s.ae_title, s.port, s.host, s.accept_any, s.peers) == ("AINODE", 11112, "0.0.0.0", False, [])
    assert s.effective_database_url.startswith("sqlite:///") and s.effective_database_url.endswith(
        "var/ainode/ainode.db")


def test_precedence_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('port = 1000\nae_title = "FILE"\nhost = "127.0.0.1"\n')
    monkeypatch.setenv("AINODE_PORT", "2000")
    monkeypatch.setenv("AINODE_AE_TITLE", "ENV")
    s = load_settings(config, ae_title="FLAG")
    assert (s.port, s.ae_title, s.host) == (2000, "FLAG", "127.0.0.1")


def test_peers_from_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AINODE_PEERS", '[{"ae_title": "CT01", "host": "10.0.0.0/24"}]')
    assert load_settings().peers[0].host == "10.0.0.0/24"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("port = 0", "setting 'port' (got 0)"),
        ('ae_title = ""', "setting 'ae_title'"),
        ('ae_title = "BACK\\\\SLASH"', "without backslash"),
        ('host = "my-host"', "is not an IP address"),
        ("max_pdu_size = 100", "4096"),
        ('database_url = "mysql://x"', "only sqlite"),
        ('[[peers]]\nae_title = "CT"\nhost = "nope"', "setting 'peers.0.host'"),
        ('[[peers]]\nae_title = "CT"\n[[peers]]\nae_title = "CT"', "listed twice"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert fragment in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_listener_processes_default_and_override() -> None:
    from node.runner.serve import listener_process_count

    assert listener_process_count(load_settings(), cpu_count=1) == 2
    assert listener_process_count(load_settings(), cpu_count=4) == 4
    assert listener_process_count(load_settings(), cpu_count=64) == 8
    assert listener_process_count(load_settings(listener_processes=3), cpu_count=64) == 3


def test_a_list_setting_from_the_environment_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AINODE_PEERS", "not json")
    with pytest.raises(ConfigError, match=r"setting 'peers' from the environment \(AINODE_PEERS\): not valid JSON"):
        load_settings()
