"""Limits: associations per sending host, instance and association sizes, idle
associations. Each is answered with a rejection, an abort or 0xA700, and the node
keeps serving."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import Node, wait_until
from tests.integration.scu import associate, store_datasets
from tests.synthetic import TEST_UID_ROOT, ct_slice

pytestmark = pytest.mark.integration

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _instances(node: Node) -> int:
    return int(json.loads(node.run("status", "--json").stdout)["instances"])


def test_one_host_cannot_take_every_association(node_factory: Callable[..., Node]) -> None:
    node = node_factory("max_associations = 6\nmax_associations_per_peer = 2\n").start()
    held = [associate(node.port) for _ in range(2)]
    assert all(a.is_established for a in held)
    third = associate(node.port)
    assert third.is_rejected
    # Another host (another loopback address) still gets in, up to its own share.
    other = [associate(node.port, source="127.0.0.2") for _ in range(2)]
    assert all(a.is_established for a in other)
    assert int(other[0].send_c_echo().Status) == 0
    for a in held + other:
        a.release()
    assert "max_associations_per_peer reached" in node.log()
    again = associate(node.port)
    assert again.is_established
    again.release()


def test_an_instance_over_the_size_limit_is_aborted_as_it_arrives(node_factory: Callable[..., Node]) -> None:
    # Small PDUs: the instance arrives in ~33 pieces and is cut off after ~16 of them.
    node = node_factory("max_instance_mb = 0.25\nmax_pdu_size = 16384\n").start()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    big = ct_slice(study, series, 0, size=512)  # ~525 kB
    assoc = associate(node.port, [(CTImageStorage, EXPLICIT_LE)])
    assert assoc.is_established
    status = assoc.send_c_store(big)
    assert not status, "the oversized C-STORE got an answer instead of an abort"
    wait_until(lambda: assoc.is_aborted or not assoc.is_alive(), 10, "the abort")
    assert "an instance exceeds max_instance_mb" in node.log()
    assert store_datasets(node.port, [ct_slice(study, series, 1, size=64)]) == [0]
    assert _instances(node) == 1


def test_an_association_over_its_byte_limit_gets_a700(node_factory: Callable[..., Node]) -> None:
    node = node_factory("max_association_mb = 1\n").start()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    slices = [ct_slice(study, series, i, size=512) for i in range(3)]  # ~525 kB each
    assert store_datasets(node.port, slices) == [0, 0xA700, 0xA700]
    # A new association may bring the rest.
    assert store_datasets(node.port, slices[1:]) == [0, 0xA700]
    assert store_datasets(node.port, slices[2:]) == [0]
    assert _instances(node) == 3


def test_an_idle_association_is_closed(node_factory: Callable[..., Node]) -> None:
    node = node_factory("network_timeout_s = 1.0\n").start()
    idle = associate(node.port)
    assert idle.is_established
    started = time.monotonic()
    wait_until(lambda: not idle.is_established, 15, "the node to drop the idle association")
    assert time.monotonic() - started < 10
    busy = associate(node.port)
    assert busy.is_established and int(busy.send_c_echo().Status) == 0
    busy.release()
