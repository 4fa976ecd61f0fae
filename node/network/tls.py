"""DICOM over TLS (PS3.15 B.9, the BCP 195 profile): the SSL contexts of the
listener's TLS port and of destinations.

TLS 1.2 at least, and for TLS 1.2 only the forward-secret AEAD suites BCP 195
(RFC 9325) recommends; TLS 1.3 suites are all acceptable. Certificates and keys
are PEM files; a setting that names an unreadable or mismatched file is reported
with the setting's name.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from config.settings import DestinationTls, ListenerTls

# TLS 1.2 suites of RFC 9325 section 4.2 (and their ECDSA twins), as OpenSSL names them.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


class TlsConfigError(Exception):
    """A TLS setting names a file that cannot be used; the message says which and why."""


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path, setting: str) -> None:
    for name, path in (("certificate", certificate), ("private_key", private_key)):
        if not path.is_file():  # ssl's own error does not say which file is missing
            raise TlsConfigError(f"{setting}.{name}: {path} does not exist; fix the path")
    try:
        context.load_cert_chain(certificate, private_key)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"{setting}: {exc.filename} does not exist") from None
    except PermissionError as exc:
        raise TlsConfigError(f"{setting}: {exc.filename} is not readable by this user") from None
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"{setting}.certificate / private_key: not a PEM certificate and its matching "
            f"unencrypted private key ({exc.reason or exc})"
        ) from None


def _load_trust(context: ssl.SSLContext, ca_file: Path, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise TlsConfigError(f"{setting}: {ca_file} does not exist") from None
    except PermissionError:
        raise TlsConfigError(f"{setting}: {ca_file} is not readable by this user") from None
    except ssl.SSLError as exc:
        raise TlsConfigError(f"{setting}: {ca_file} holds no PEM certificate ({exc.reason or exc})") from None


def server_context(tls: ListenerTls) -> ssl.SSLContext:
    """The context of the listener's TLS port; with ``client_ca`` (mutual TLS) a
    client must present a certificate issued by it, or the handshake fails."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, tls.certificate, tls.private_key, "tls")
    if tls.client_ca is not None:
        _load_trust(context, tls.client_ca, "tls.client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: DestinationTls, destination: str) -> ssl.SSLContext:
    """The context for sending to a destination: its certificate is checked against
    ``ca`` (else the system's trust store) and its name; with ``certificate`` and
    ``private_key`` the node authenticates itself (mutual TLS)."""
    setting = f"destination {destination!r} tls"
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if tls.ca is not None:
        _load_trust(context, tls.ca, f"{setting}.ca")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = tls.check_hostname
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, tls.certificate, tls.private_key, setting)
    return context


def peer_identity(sock: object) -> str:
    """The subject common name of a TLS peer's certificate, for logs; "" without one."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return ""
    try:
        cert = getpeercert() or {}
    except (ValueError, ssl.SSLError):
        return ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
