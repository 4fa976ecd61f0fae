"""The TLS profile (BCP 195) and how unusable certificate settings are reported."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from config.settings import DestinationTls, ListenerTls
from node.network.tls import TlsConfigError, client_context, server_context
from tests.certificates import CertificateAuthority


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"), "hospital")


def test_only_tls_12_and_forward_secret_aead_suites(ca: CertificateAuthority) -> None:
    issued = ca.issue("ainode", server=True)
    for context in (server_context(ListenerTls(certificate=issued.certificate, private_key=issued.private_key)),
                    client_context(DestinationTls(ca=ca.certificate), "pacs")):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        for cipher in context.get_ciphers():
            name = cipher["name"]
            assert cipher["aead"], name  # no CBC, no RC4, no NULL
            if cipher["protocol"] == "TLSv1.2":
                assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), name  # forward secrecy
        assert context.options & ssl.OP_NO_COMPRESSION


def test_mutual_tls_requires_a_client_certificate(ca: CertificateAuthority) -> None:
    issued = ca.issue("ainode2", server=True)
    plain = server_context(ListenerTls(certificate=issued.certificate, private_key=issued.private_key))
    mutual = server_context(ListenerTls(certificate=issued.certificate, private_key=issued.private_key,
                                        client_ca=ca.certificate))
    assert plain.verify_mode == ssl.CERT_NONE
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    strict = client_context(DestinationTls(ca=ca.certificate), "pacs")
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname


def test_unusable_files_name_the_setting(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue("ainode3", server=True)
    other = ca.issue("other", server=True)
    with pytest.raises(TlsConfigError, match=r"tls\.certificate: .*none\.crt does not exist"):
        server_context(ListenerTls(certificate=tmp_path / "none.crt", private_key=issued.private_key))
    # ssl's own error names no file ("tls: None does not exist"): the setting and path are named
    with pytest.raises(TlsConfigError, match=r"tls\.private_key: .*none\.key does not exist"):
        server_context(ListenerTls(certificate=issued.certificate, private_key=tmp_path / "none.key"))
    with pytest.raises(TlsConfigError, match=r"tls\.certificate / private_key"):
        server_context(ListenerTls(certificate=issued.certificate, private_key=other.private_key))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"destination 'pacs' tls\.ca"):
        client_context(DestinationTls(ca=not_pem), "pacs")
    with pytest.raises(ValueError, match="go together"):
        DestinationTls(certificate=issued.certificate)
