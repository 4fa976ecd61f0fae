"""Typed, validated configuration of the node."""

from config.settings import ConfigError, Peer, Settings, load_settings

__all__ = ["ConfigError", "Peer", "Settings", "load_settings"]
