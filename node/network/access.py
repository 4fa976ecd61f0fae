"""Who may send: the allow-list of peers and the called AE title check."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from config.settings import Peer, Settings

# A-ASSOCIATE-RJ (result, source, reason) as PS3.8 9.3.4 defines them.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE not recognized


@dataclass(frozen=True)
class AccessDecision:
    """Whether an association request is accepted; if not, why and the A-ASSOCIATE-RJ to send."""

    allowed: bool
    reason: str = ""
    reject: tuple[int, int, int] | None = None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _matches(peer: Peer, calling_ae: str, host: str) -> bool:
    if peer.ae_title != calling_ae:
        return False
    if peer.host is None:
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(peer.host, strict=False)
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    """Decides whether an association request is accepted.

    - The called AE title must be the node's own.
    - ``accept_any``: every calling AE from every host.
    - With peers configured: only a listed AE title, from its host when one is given.
    - With no peers: any AE title, from the loopback interface only.
    """

    own_ae_title: str
    peers: tuple[Peer, ...] = ()
    accept_any: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(settings.ae_title, tuple(settings.peers), settings.accept_any)

    def decide(self, calling_ae: str, called_ae: str, host: str) -> AccessDecision:
        calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
        if called_ae != self.own_ae_title:
            return AccessDecision(
                False, f"called AE title {called_ae!r} is not this node's ({self.own_ae_title!r})",
                REJECT_CALLED_AE,
            )
        if self.accept_any:
            return AccessDecision(True)
        if self.peers:
            if any(_matches(p, calling_ae, host) for p in self.peers):
                return AccessDecision(True)
            return AccessDecision(
                False, f"calling AE title {calling_ae!r} from {host} is not in [[peers]]",
                REJECT_CALLING_AE,
            )
        if _is_loopback(host):
            return AccessDecision(True)
        return AccessDecision(
            False,
            f"no [[peers]] are configured, so only loopback may send; {calling_ae!r} came from {host}",
            REJECT_CALLING_AE,
        )

    def describe(self) -> str:
        """One line for the start-up log saying who may send and how to change it."""
        if self.accept_any:
            return "accepting associations from any AE title and host (accept_any = true)"
        if self.peers:
            listed = ", ".join(f"{p.ae_title}@{p.host or 'any host'}" for p in self.peers)
            return f"accepting associations from: {listed}"
        return (
            "no [[peers]] configured: accepting associations from loopback only. To allow a "
            'scanner or PACS, add to the config file: [[peers]] ae_title = "CT01" '
            'host = "10.0.0.5"  (or set accept_any = true)'
        )
