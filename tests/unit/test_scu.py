from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from node.network.scu import FAILURE, SUCCESS, WARNING, PeerAddress, _classify, parse_address


def test_parse_address() -> None:
    assert parse_address("ORTHANC@127.0.0.1:4242") == PeerAddress("ORTHANC", "127.0.0.1", 4242)
    assert parse_address("PACS@[::1]:104") == PeerAddress("PACS", "::1", 104)


@pytest.mark.parametrize("bad", ["127.0.0.1:104", "PACS@host", "PACS@host:70000", "@h:1",
                                 "WAY_TOO_LONG_AE_TITLE@h:1"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


def _status(code: int) -> Dataset:
    ds = Dataset()
    ds.Status = code
    return ds


def test_status_categories() -> None:
    assert _classify(_status(0))[0] == SUCCESS
    assert _classify(_status(0xB007))[0] == WARNING
    assert _classify(_status(0xA700))[0] == FAILURE
    assert _classify(None)[0] == FAILURE
