"""The API's rules for browsers: Host names this node; state changes need the token or
the page's own header from the page's own origin."""

from __future__ import annotations

import pytest

from node.web.browser import BrowserGuard

GUARD = BrowserGuard(frozenset({"localhost", "ainode.example"}))


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1:8080", True), ("localhost:8080", True), ("[::1]:8080", True), ("10.1.2.3", True),
    ("AINODE.example.:8080", True), ("attacker.example:8080", False), ("", False), ("[bad", False),
])
def test_host_must_name_this_node(host: str, allowed: bool) -> None:
    refusal = GUARD.refusal("GET", {"host": host}, has_token=False)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal is not None and refusal[0] == 421


@pytest.mark.parametrize(("headers", "token", "status"), [
    ({}, False, 403),
    ({}, True, None),
    ({"x-ainode-request": "1"}, False, None),
    ({"x-ainode-request": "1", "origin": "http://127.0.0.1:8080"}, False, None),
    ({"x-ainode-request": "1", "origin": "http://127.0.0.1:9999"}, False, 403),
    ({"x-ainode-request": "1", "origin": "null"}, False, 403),
    ({"x-ainode-request": "1", "sec-fetch-site": "same-site"}, False, 403),
    ({"x-ainode-request": "1", "sec-fetch-site": "same-origin"}, False, None),
])
def test_a_state_change_needs_the_token_or_a_same_origin_proof(headers: dict[str, str], token: bool,
                                                               status: int | None) -> None:
    refusal = GUARD.refusal("POST", {"host": "127.0.0.1:8080", **headers}, has_token=token)
    assert (refusal[0] if refusal else None) == status
