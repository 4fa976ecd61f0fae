"""DICOMweb STOW-RS (PS3.18 10.5) with dicomweb-client: store instances over HTTP,
every instance's outcome checked in the response."""

from __future__ import annotations

from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread


def stow_rs(base_url: str, files: list[Path], timeout_s: float = 30.0) -> None:
    """POST ``files`` to ``<base_url>/studies`` in one multipart request; raises
    ``RuntimeError`` saying what failed unless every instance was stored."""
    client = DICOMwebClient(base_url.rstrip("/"), timeout=timeout_s)
    try:
        response = client.store_instances([dcmread(path) for path in files])
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise RuntimeError(f"STOW-RS to {base_url} answered HTTP {status}") from None
    except requests.RequestException as exc:
        raise RuntimeError(f"STOW-RS to {base_url} failed: {type(exc).__name__}") from None
    failed = len(response.get("FailedSOPSequence", []))
    if failed:
        raise RuntimeError(f"STOW-RS to {base_url}: {failed} of {len(files)} instance(s) failed")
