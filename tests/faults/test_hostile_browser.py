"""Attacks through the browser on the API of a running node on its default settings
(loopback, no token): a page on another local origin that tries to retry a job
(cross-site request forgery, in a real headless Chromium), a rebound DNS name in
Host, the trailing-slash redirect, framing, /docs, and ids out of range."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.error import HTTPError

import pytest

from tests.browser import headless_chromium
from tests.conftest import Node, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body, got = response.status, response.read(), response.headers
    except HTTPError as exc:
        status, body, got = exc.code, exc.read(), exc.headers
    try:
        return status, json.loads(body), got
    except ValueError:
        return status, body.decode(errors="replace"), got


@pytest.fixture
def dead_job(node_factory: Any) -> tuple[Node, dict[str, Any]]:
    node: Node = node_factory("job_max_attempts = 1\n").start()
    node.run("selftest", "queue", "--jobs", "1", "--fail")
    [dead] = wait_until(lambda: _call(node.api_url + "/api/dead-letters")[1], 30, "a dead letter")
    return node, dead


def _job(node: Node, job_id: int) -> dict[str, Any]:
    jobs = _call(node.api_url + "/api/jobs?kind=noop")[1]
    return next(j for j in jobs if j["id"] == job_id)


@pytest.fixture
def attacker_site() -> Iterator[tuple[HTTPServer, list[str]]]:
    """A web site on another local origin; its page is set by the test."""
    page: list[str] = [""]

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = page[0].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, page
    server.shutdown()


def test_a_page_on_another_origin_cannot_retry_a_job(dead_job: tuple[Node, dict[str, Any]],
                                                     attacker_site: tuple[HTTPServer, list[str]]) -> None:
    node, dead = dead_job
    server, page = attacker_site
    retry = f"{node.api_url}/api/jobs/{dead['id']}/retry"
    # What a malicious page can make a browser send: a no-cors fetch, a fetch that
    # tries the page's own header (needs a CORS pre-flight), and a plain form post.
    page[0] = f"""<html><body>
<form id="f" method="POST" action="{retry}" target="sink"><input name="x" value="1"></form>
<iframe name="sink"></iframe>
<script>
fetch("{retry}", {{method: "POST", mode: "no-cors", body: "x"}}).catch(() => null);
fetch("{retry}", {{method: "POST", headers: {{"X-AINode-Request": "1"}}}}).catch(() => null);
document.getElementById("f").submit();
setTimeout(() => document.title = "done", 1500);
</script></body></html>"""
    browser = headless_chromium()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_until(lambda: browser.title == "done", 30, "the attacker's page to run")
    finally:
        browser.quit()
    time.sleep(1.0)  # a retried job would be claimed within the worker's poll interval
    job = _job(node, dead["id"])
    assert (job["state"], job["attempts"], job["finished_at"]) == ("dead", dead["attempts"], dead["finished_at"])
    # The node's own page can (it sends the header, from its own origin).
    assert _call(retry, "POST", {"X-AINode-Request": "1"})[0] == 200


def test_forged_origins_and_hosts_are_refused(dead_job: tuple[Node, dict[str, Any]]) -> None:
    node, dead = dead_job
    retry = f"{node.api_url}/api/jobs/{dead['id']}/retry"
    other = "http://127.0.0.1:9"
    assert _call(retry, "POST", {"Origin": other, "Content-Type": "text/plain"})[0] == 403
    assert _call(retry, "POST", {"X-AINode-Request": "1", "Origin": other})[0] == 403
    assert _call(retry, "POST", {"X-AINode-Request": "1", "Origin": "null"})[0] == 403
    assert _call(retry, "POST", {"X-AINode-Request": "1", "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert _job(node, dead["id"])["state"] == "dead"

    # DNS rebinding: the attacker's name, resolved to 127.0.0.1, is in Host.
    for path in ("/api/studies", "/", "/metrics", "/api/studies/"):
        status, _, _ = _call(node.api_url + path, headers={"Host": f"attacker.example:{node.api_port}"})
        assert status == 421, path
    for host in ("localhost", "127.0.0.1", "[::1]"):
        assert _call(node.api_url + "/api/studies", headers={"Host": f"{host}:{node.api_port}"})[0] == 200
    # No redirect whose Location comes from Host.
    status, _, headers = _call(node.api_url + "/api/studies/")
    assert status == 404 and "location" not in {k.lower() for k in headers}


def test_pages_cannot_be_framed_docs_are_off_and_odd_ids_are_not_found(node: Node) -> None:
    status, _, headers = _call(node.api_url + "/")
    assert status == 200
    assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert _call(node.api_url + "/docs")[0] == 404
    assert _call(node.api_url + "/redoc")[0] == 404
    for job_id in ("99999999999999999999999", "0", "-1"):
        status, body, _ = _call(f"{node.api_url}/api/jobs/{job_id}/retry", "POST", {"X-AINode-Request": "1"})
        assert status == 404, (job_id, body)
    assert "Traceback" not in node.log()
