"""DICOMweb with dicomweb-client: the client for a server (signed in as configured),
and STOW-RS (PS3.18 10.5): store instances over HTTP, every instance's outcome checked
in the response."""

from __future__ import annotations

from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from config.settings import HttpAuth


def dicomweb_client(base_url: str, auth: HttpAuth | None, timeout_s: float) -> DICOMwebClient:
    """A client of the DICOMweb server at ``base_url``, signed in with HTTP Basic or a
    bearer token when ``auth`` says so."""
    session = requests.Session()
    if auth is not None and auth.token is not None:
        session.headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
    elif auth is not None and auth.username is not None and auth.password is not None:
        session.auth = (auth.username, auth.password.get_secret_value())
    return DICOMwebClient(base_url.rstrip("/"), session=session, timeout=timeout_s)


def stow_rs(base_url: str, files: list[Path], timeout_s: float = 30.0, auth: HttpAuth | None = None) -> None:
    """POST ``files`` to ``<base_url>/studies`` in one multipart request; raises
    ``RuntimeError`` saying what failed unless every instance was stored."""
    client = dicomweb_client(base_url, auth, timeout_s)
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
