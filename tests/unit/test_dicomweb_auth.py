"""Signing in to a DICOMweb server: the settings, and what the node's client sends."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from config.settings import HttpAuth, PacsSettings
from node.network.wado import search_studies


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.headers.get("Authorization"))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """A plain HTTP server on loopback that answers any QIDO-RS search with no match
    and keeps the Authorization header of each request."""
    _Recorder.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    httpd.shutdown()


@pytest.mark.parametrize(("auth", "header"), [
    (None, None),
    ({"token": "t0ken-abc"}, "Bearer t0ken-abc"),
    ({"username": "ainode", "password": "pa:ss"}, "Basic YWlub2RlOnBhOnNz"),
])
def test_the_node_signs_in_as_configured(server: str, auth: dict | None, header: str | None) -> None:
    pacs = PacsSettings(ae_title="PACS", dicomweb_url=server, auth=auth, timeout_s=5)
    assert search_studies(pacs, ["StudyInstanceUID"], {"PatientID": "P1"}) == []
    assert _Recorder.seen == [header]


@pytest.mark.parametrize(("auth", "fragment"), [
    ({"username": "ainode"}, "go together"),
    ({"token": "t", "username": "u", "password": "p"}, "either token or"),
    ({}, "set token, or username and password"),
])
def test_incomplete_sign_in_is_named(auth: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        HttpAuth(**auth)


def test_the_password_may_come_from_the_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import load_settings

    config = tmp_path / "ainode.toml"
    config.write_text('[pacs]\nae_title = "PACS"\ndicomweb_url = "http://pacs/dicom-web"\n'
                      '[pacs.auth]\nusername = "ainode"\n')
    monkeypatch.setenv("AINODE_PACS__AUTH__PASSWORD", "from-the-environment")
    auth = load_settings(config).pacs.auth  # type: ignore[union-attr]
    assert auth is not None and auth.username == "ainode"
    assert auth.password is not None and auth.password.get_secret_value() == "from-the-environment"
