"""DICOMweb STOW-RS (PS3.18 10.5): store instances over HTTP, every instance's outcome
checked in the response."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from node.httpclient import Unreachable, http_request

_FAILED_SOP_SEQUENCE = "00081198"


def stow_rs(base_url: str, files: list[Path], timeout_s: float = 30.0) -> None:
    """POST ``files`` to ``<base_url>/studies`` in one multipart request; raises
    ``RuntimeError`` saying what failed unless every instance was stored."""
    boundary = uuid.uuid4().hex.encode()
    parts = []
    for path in files:
        parts += [b"--", boundary, b"\r\nContent-Type: application/dicom\r\n\r\n", path.read_bytes(), b"\r\n"]
    body = b"".join([*parts, b"--", boundary, b"--\r\n"])
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
               "Accept": "application/dicom+json"}
    try:
        status, text = http_request(base_url.rstrip("/") + "/studies", body, headers, "POST", timeout_s)
    except Unreachable as exc:
        raise RuntimeError(f"STOW-RS to {base_url} failed: {exc}") from None
    failed = 0
    try:
        failed = len(json.loads(text or b"{}").get(_FAILED_SOP_SEQUENCE, {}).get("Value", []))
    except (ValueError, AttributeError):
        pass
    if status != 200 or failed:
        raise RuntimeError(f"STOW-RS to {base_url} answered HTTP {status}"
                           + (f"; {failed} of {len(files)} instance(s) failed" if failed else ""))
