"""What the API asks of browsers: a Host that names this node, and for anything that
changes state, either the bearer token or proof that the node's own page sent it.

A page on another origin may make a browser send requests to the API on loopback
(cross-site request forgery), or reach it under the attacker's own DNS name, rebound
to 127.0.0.1 (DNS rebinding). The first cannot set a custom header without a CORS
pre-flight the API never grants, nor forge ``Origin``; the second arrives with the
attacker's name in ``Host``. IP literals in ``Host`` are accepted: rebinding needs a
name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from config.settings import Settings

#: Sent by the worklist page with every request.
SAME_ORIGIN_HEADER = "X-AINode-Request"
#: On every response: the pages may not be framed by other sites (click-jacking).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _hostname(netloc: str) -> str | None:
    try:
        name = urlsplit("//" + netloc).hostname
    except ValueError:
        return None
    return name.lower() if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class BrowserGuard:
    """Checks Host on every request, and the origin of state-changing ones."""

    names: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserGuard:
        # Not getfqdn(): a reverse lookup can hang where DNS is broken; names beyond
        # the host name go in api_allowed_hosts.
        names = {"localhost", socket.gethostname(), *settings.api_allowed_hosts}
        return cls(frozenset(n.lower().rstrip(".") for n in names if n))

    def refusal(self, method: str, headers: Mapping[str, str], has_token: bool) -> tuple[int, str] | None:
        """None when the request may go on, else the status and why not."""
        host = headers.get("host", "")
        name = _hostname(host)
        if name is None or not (_is_ip(name) or name.rstrip(".") in self.names):
            return 421, ("the Host header does not name this node; add the name used to reach it to "
                         "api_allowed_hosts")
        if method.upper() in SAFE_METHODS or has_token:
            return None
        if headers.get(SAME_ORIGIN_HEADER.lower()) != "1":
            return 403, (f"a request that changes something needs the bearer token or the header "
                         f"{SAME_ORIGIN_HEADER}: 1 (the worklist page sends it)")
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
            return 403, "a request from another origin may not change anything"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "a request from another site may not change anything"
        return None
