"""One HTTP request with the answer as (status, body) whatever the status, for the
node's HTTP peers (STOW-RS archives, webhooks); no answer at all is :class:`Unreachable`."""

from __future__ import annotations

from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen


class Unreachable(Exception):
    """No HTTP answer (refused, timed out, bad address); the message is the reason."""


def http_request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                 method: str = "GET", timeout_s: float = 30.0) -> tuple[int, bytes]:
    request = Request(url, data=data, method=method, headers=headers or {})
    try:
        with urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (URLs from the configuration)
            return int(response.status), response.read()
    except HTTPError as exc:
        return exc.code, exc.read()
    except (URLError, OSError) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from None
