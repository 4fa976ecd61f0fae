from __future__ import annotations

from config.settings import Peer
from node.network.access import REJECT_CALLED_AE, REJECT_CALLING_AE, AccessPolicy


def test_called_ae_must_match() -> None:
    d = AccessPolicy("AINODE", accept_any=True).decide("CT01", "OTHER", "127.0.0.1")
    assert not d.allowed and d.reject == REJECT_CALLED_AE


def test_no_peers_means_loopback_only() -> None:
    policy = AccessPolicy("AINODE")
    assert policy.decide("ANY", "AINODE", "127.0.0.1").allowed
    assert policy.decide("ANY", "AINODE", "::1").allowed
    remote = policy.decide("ANY", "AINODE", "10.1.2.3")
    assert not remote.allowed and remote.reject == REJECT_CALLING_AE
    assert "only loopback" in remote.reason


def test_peer_list_with_and_without_host() -> None:
    policy = AccessPolicy(
        "AINODE", (Peer(ae_title="CT01", host="10.0.0.0/24"), Peer(ae_title="PACS")))
    assert policy.decide("CT01", "AINODE", "10.0.0.7").allowed
    assert not policy.decide("CT01", "AINODE", "10.0.1.7").allowed
    assert not policy.decide("CT01", "AINODE", "127.0.0.1").allowed
    assert policy.decide("PACS", "AINODE", "192.168.5.5").allowed
    assert not policy.decide("CT02", "AINODE", "10.0.0.7").allowed


def test_accept_any() -> None:
    assert AccessPolicy("AINODE", accept_any=True).decide("X", "AINODE", "203.0.113.9").allowed


def test_describe_says_how_to_allow_scanners() -> None:
    assert "[[peers]]" in AccessPolicy("AINODE").describe()
