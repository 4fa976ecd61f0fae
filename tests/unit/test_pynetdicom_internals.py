"""The node relies on a few pynetdicom internals (node/network/pynetdicom_internals.py):
a pynetdicom without them must stop the node at start-up, not misbehave later."""

from __future__ import annotations

import copy

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, build_context
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import negotiate_as_acceptor
from pynetdicom.transport import AssociationSocket

from node.network.pynetdicom_internals import RELIED_ON, AcceptingServer, check_internals


def test_the_installed_pynetdicom_has_everything_the_node_relies_on() -> None:
    check_internals()
    assert (AssociationSocket, "recv") in RELIED_ON and (DULServiceProvider, "run") in RELIED_ON


def test_a_pynetdicom_without_them_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(AssociationSocket, "recv")
    with pytest.raises(RuntimeError, match=r"lacks AssociationSocket\.recv.*install pynetdicom 3\.0"):
        check_internals()


def test_each_association_shares_the_servers_contexts_and_negotiates_as_before() -> None:
    """pynetdicom deep-copies a server's supported contexts for every association (88 ms
    for the node's 170 SOP classes); the node's server hands out the same context objects,
    which negotiation only reads."""
    ae = AE()
    ae.add_supported_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    server = AcceptingServer(ae, ("127.0.0.1", 0), "AINODE", ae.supported_contexts)
    try:
        # What RequestHandler._create_association gives each association.
        given = copy.deepcopy(server.contexts)
        assert given is not server.contexts
        assert [id(c) for c in given] == [id(c) for c in server.contexts]
        proposed = [build_context(CTImageStorage, [ExplicitVRLittleEndian]),
                    build_context(MRImageStorage, [ImplicitVRLittleEndian])]
        for number, context in enumerate(proposed):
            context.context_id = 2 * number + 1
        accepted, _roles = negotiate_as_acceptor(proposed, given)
        assert [(c.abstract_syntax, c.result, c.transfer_syntax) for c in accepted] == [
            (CTImageStorage, 0x00, [ExplicitVRLittleEndian]), (MRImageStorage, 0x03, [ImplicitVRLittleEndian]),
        ]
        assert [c.transfer_syntax for c in server.contexts] == [[ImplicitVRLittleEndian, ExplicitVRLittleEndian]]
    finally:
        server.server_close()
