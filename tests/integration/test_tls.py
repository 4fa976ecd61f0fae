"""DICOM over TLS with certificates made for the test: dcmtk and pynetdicom peers
against the node's TLS port, and the node sending to dcmtk's storescp over TLS."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from node.network.scu import SUCCESS, destination_peer, send_files
from node.network.tls import client_context
from tests.certificates import CertificateAuthority, Issued
from tests.conftest import Node, dcmtk, free_port, peer_env, wait_until
from tests.integration.scu import associate
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    ca: CertificateAuthority
    node: Issued  # the node's server certificate
    scanner: Issued  # a client the hospital CA issued
    rogue_ca: CertificateAuthority
    intruder: Issued  # a client certificate from a CA nobody trusts


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "pki", "hospital")
    rogue = CertificateAuthority(tmp_path / "rogue", "rogue")
    return Pki(ca, ca.issue("ainode", server=True), ca.issue("ct01"), rogue, rogue.issue("intruder"))


def _tls_node(node_factory: Callable[..., Node], pki: Pki, mutual: bool) -> tuple[Node, int]:
    port = free_port()
    config = (f'[tls]\nport = {port}\ncertificate = "{pki.node.certificate}"\n'
              f'private_key = "{pki.node.private_key}"\n')
    if mutual:
        config += f'client_ca = "{pki.ca.certificate}"\n'
    return node_factory(config).start(), port


def _slice_file(folder: Path) -> Path:
    ds = ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _storescu(port: int, path: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-aec", "AINODE", "-aet", "CT01", *tls, "127.0.0.1", str(port),
                           str(path)], capture_output=True, text=True, env=peer_env(), timeout=60)


def _instances(node: Node) -> int:
    return int(json.loads(node.run("status", "--json").stdout)["instances"])


def _client(pki: Pki, identity: Issued | None, trust: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust or pki.ca.certificate))
    if identity is not None:
        context.load_cert_chain(identity.certificate, identity.private_key)
    return context


def test_mutual_tls_admits_only_clients_with_a_trusted_certificate(
    node_factory: Callable[..., Node], pki: Pki, tmp_path: Path
) -> None:
    node, tls_port = _tls_node(node_factory, pki, mutual=True)
    image = _slice_file(tmp_path / "in")

    sent = _storescu(tls_port, image, "+tls", str(pki.scanner.private_key), str(pki.scanner.certificate),
                     "+cf", str(pki.ca.certificate))
    assert sent.returncode == 0, sent.stderr
    assert _instances(node) == 1

    refused = [
        ("certificate from an untrusted CA", _storescu(
            tls_port, _slice_file(tmp_path / "rogue"), "+tls", str(pki.intruder.private_key),
            str(pki.intruder.certificate), "+cf", str(pki.ca.certificate))),
        ("no client certificate", _storescu(
            tls_port, _slice_file(tmp_path / "anon"), "+tla", "+cf", str(pki.ca.certificate))),
        ("plain DICOM on the TLS port", _storescu(tls_port, _slice_file(tmp_path / "plain"))),
    ]
    for what, result in refused:
        assert result.returncode != 0, f"{what}: storescu succeeded"
    assert _instances(node) == 1, "a refused client stored an image"
    assert node.log().count("TLS connection from 127.0.0.1 refused") >= 2

    # pynetdicom with the scanner's certificate: TLS 1.2 or later, and C-ECHO answers.
    assoc = associate(tls_port, tls=_client(pki, pki.scanner))
    assert assoc.is_established
    assert assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    # ... and without one it is refused, while the plain port keeps serving.
    assert not associate(tls_port, tls=_client(pki, None)).is_established
    plain = associate(node.port)
    assert plain.is_established and int(plain.send_c_echo().Status) == 0
    plain.release()
    assert "ct01" in node.log()  # the client certificate's name is logged


def test_tls_without_client_certificates_and_the_client_checks_the_node(
    node_factory: Callable[..., Node], pki: Pki, tmp_path: Path
) -> None:
    node, tls_port = _tls_node(node_factory, pki, mutual=False)
    sent = _storescu(tls_port, _slice_file(tmp_path / "in"), "+tla", "+cf", str(pki.ca.certificate))
    assert sent.returncode == 0, sent.stderr
    assert _instances(node) == 1
    # A client trusting another CA does not accept the node's certificate.
    rogue_trust = _client(pki, None, trust=pki.rogue_ca.certificate)
    assert not associate(tls_port, tls=rogue_trust).is_established
    trusting = associate(tls_port, tls=_client(pki, None))
    assert trusting.is_established and int(trusting.send_c_echo().Status) == 0
    trusting.release()


def test_results_go_to_a_destination_over_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    from config.settings import Destination, DestinationTls

    archive = pki.ca.issue("pacs", server=True)
    node_client = pki.ca.issue("ainode-client")
    received = tmp_path / "archive"
    received.mkdir()
    port = free_port()
    storescp = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "PACS", "+tls", str(archive.private_key), str(archive.certificate),
         "+cf", str(pki.ca.certificate), "-od", str(received), str(port)],
        env=peer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _listening(port), 20, "storescp +tls to listen")
        files = [_slice_file(tmp_path / "results") for _ in range(3)]
        destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port,
                                  tls=DestinationTls(ca=pki.ca.certificate, certificate=node_client.certificate,
                                                     private_key=node_client.private_key))
        report = send_files(files, destination_peer(destination), "AINODE")
        assert [o.category for o in report.outcomes] == [SUCCESS] * 3
        assert len(list(received.iterdir())) == 3

        # Without a client certificate the archive refuses the node; nothing more arrives.
        anonymous = destination.model_copy(update={"tls": DestinationTls(ca=pki.ca.certificate)})
        report = send_files([_slice_file(tmp_path / "more")], destination_peer(anonymous), "AINODE")
        assert not report.ok
        assert len(list(received.iterdir())) == 3
        # Trusting another CA, the node refuses the archive.
        wrong = destination.model_copy(update={"tls": DestinationTls(
            ca=pki.rogue_ca.certificate, certificate=node_client.certificate,
            private_key=node_client.private_key)})
        report = send_files([_slice_file(tmp_path / "wrong")], destination_peer(wrong), "AINODE")
        assert not report.ok
        assert len(list(received.iterdir())) == 3
    finally:
        storescp.terminate()
        storescp.wait(10)


def test_bad_tls_files_are_named_at_start_up(node_factory: Callable[..., Node], pki: Pki,
                                              tmp_path: Path) -> None:
    config = (f'[tls]\nport = {free_port()}\ncertificate = "{pki.node.certificate}"\n'
              f'private_key = "{pki.scanner.private_key}"\n')  # not the certificate's key
    node = node_factory(config)
    with pytest.raises(RuntimeError) as failed:
        node.start()
    assert "tls.certificate / private_key" in str(failed.value)
    missing = tmp_path / "missing.pem"
    from config.settings import DestinationTls

    with pytest.raises(Exception, match="does not exist"):
        client_context(DestinationTls(ca=missing), "pacs")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
