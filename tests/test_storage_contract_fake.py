"""The storage contract, run against the in-memory fake (wsstorage.testing)."""

from __future__ import annotations

import pytest

from tests.storage_contract import StorageContract
from wsstorage.testing import FakeStorageCluster


class FakeStorage:
    """The ``storage`` fixture object of the contract, over a fake cluster."""

    names = ("s1", "s2")
    block_size = 64 * 1024

    def __init__(self, reactor) -> None:
        self.cluster = FakeStorageCluster(reactor, self.names, block_size=self.block_size)

    def client(self, name: str):
        return self.cluster.node(name).client()

    def endpoint(self, name: str) -> str:
        return self.cluster.endpoint(name)

    def corrupt(self, name: str, blob_id: str, offset: int) -> None:
        self.cluster.node(name).corrupt(blob_id, offset)


class TestFakeStorageContract(StorageContract):
    @pytest.fixture(scope="class")
    def storage(self):
        from twisted.internet import reactor

        return FakeStorage(reactor)
