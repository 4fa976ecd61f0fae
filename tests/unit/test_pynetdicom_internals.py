"""The node relies on a few pynetdicom internals (node/network/pynetdicom_internals.py):
a pynetdicom without them must stop the node at start-up, not misbehave later."""

from __future__ import annotations

import pytest
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from node.network.pynetdicom_internals import RELIED_ON, check_internals


def test_the_installed_pynetdicom_has_everything_the_node_relies_on() -> None:
    check_internals()
    assert (AssociationSocket, "recv") in RELIED_ON and (DULServiceProvider, "run") in RELIED_ON


def test_a_pynetdicom_without_them_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(AssociationSocket, "recv")
    with pytest.raises(RuntimeError, match=r"lacks AssociationSocket\.recv.*install pynetdicom 3\.0"):
        check_internals()
