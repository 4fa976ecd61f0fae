"""HTTP requests to the node's peers (webhooks, DICOMweb checks) with httpx: the answer
as (status, body) whatever the status; no answer at all is :class:`Unreachable`."""

from __future__ import annotations

import json
from typing import Any

import httpx


class Unreachable(Exception):
    """No HTTP answer (refused, timed out, bad address); the message is the reason."""


def http_request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                 method: str = "GET", timeout_s: float = 30.0) -> tuple[int, bytes]:
    try:
        response = httpx.request(method, url, content=data, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:  # transport errors: refused, timeouts, bad URLs
        raise Unreachable(str(exc) or type(exc).__name__) from None
    return response.status_code, response.content


def post_json(url: str, document: dict[str, Any], timeout_s: float) -> int:
    """POST a JSON document (a webhook); its HTTP status, or ``RuntimeError`` unless 2xx."""
    try:
        status, _ = http_request(url, json.dumps(document).encode(),
                                 {"Content-Type": "application/json", "User-Agent": "AINode"}, "POST", timeout_s)
    except Unreachable as exc:
        raise RuntimeError(f"webhook unreachable: {exc}") from None
    if not 200 <= status < 300:
        raise RuntimeError(f"webhook answered HTTP {status}")
    return status
