"""The storage contract, run against real servers over TCP on 127.0.0.1.

Two servers run in this process (``start_storage_server``) on the real blob
store in a temporary directory; the clients are the wire-protocol client.
The servers are per test (pytest-twisted has no class-scoped async
fixtures; starting two in-process servers costs milliseconds).
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.storage_contract import StorageContract
from wsstorage.client import StorageClient
from wsstorage.diskformat import DEFAULT_BLOCK_SIZE, BlobPaths
from wsstorage.service import start_storage_server

SECRET = b"contract-test-secret-0123456789abcdef"


class RealStorage:
    """The ``storage`` fixture object of the contract, over real servers."""

    names = ("s1", "s2")
    block_size = DEFAULT_BLOCK_SIZE

    def __init__(self, servers: dict) -> None:
        self.servers = servers
        self.clients: list[StorageClient] = []

    def client(self, name: str) -> StorageClient:
        c = StorageClient(reactor, name, self.endpoint(name), SECRET, idle_timeout=10)
        self.clients.append(c)
        return c

    def endpoint(self, name: str) -> str:
        return self.servers[name].client_endpoint

    def corrupt(self, name: str, blob_id: str, offset: int) -> None:
        path = BlobPaths.of(self.servers[name].store.root, blob_id).data
        fd = os.open(path, os.O_RDWR)
        try:
            byte = os.pread(fd, 1, offset)
            os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset)
        finally:
            os.close(fd)


@pytest_twisted.async_yield_fixture
async def real_storage(tmp_path):
    root = tmp_path
    servers = {}
    for name in RealStorage.names:
        servers[name] = await start_storage_server(
            reactor, "tcp:0:interface=127.0.0.1", str(root / name), name, SECRET
        )
    storage = RealStorage(servers)
    yield storage
    for c in storage.clients:
        await c.close()
    for server in servers.values():
        await server.stop()


class TestRealStorageContract(StorageContract):
    @pytest.fixture
    def storage(self, real_storage):
        return real_storage


class TestServersWithoutPutContract(StorageContract):
    """The contract holds against servers that do not serve ``put`` (older
    ones, during a rolling upgrade): the client announces nothing it does
    not get, and stores a small blob with a write stream and a commit
    (tests/test_storage_put_fallback.py)."""

    @pytest.fixture
    def storage(self, real_storage):
        from wsstorage.server import OPS

        for server in real_storage.servers.values():
            server.factory.ops = tuple(op for op in OPS if op != "put")
        return real_storage
