"""Write streams into a storage server of this process
(``wsstorage.inprocess_write``, wslocal's): the storage contract holds for
them; a stream moves no byte over the server's socket, but goes over the
wire while a write-path failpoint is armed; a stopped server or a closed
client fails a running stream with NodeUnavailable and lets go of its
blob, as a dropped connection does."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.storage_contract import StorageContract, get, new_id, pattern, put
from tests.test_storage_contract_real import SECRET, RealStorage
from wsstorage import failpoints, server
from wsstorage.client import StorageClient
from wsstorage.errors import NodeUnavailable
from wsstorage.inprocess_write import InProcessWriteClient, InProcessWriter
from wsstorage.service import start_storage_server

MiB = 1 << 20


class InProcessWriteStorage(RealStorage):
    def client(self, name: str) -> InProcessWriteClient:
        wire = StorageClient(reactor, name, self.endpoint(name), SECRET, idle_timeout=10)
        self.clients.append(wire)
        return InProcessWriteClient(wire, self.servers[name].factory)


@pytest_twisted.async_yield_fixture
async def write_storage(tmp_path):
    servers = {}
    for name in InProcessWriteStorage.names:
        servers[name] = await start_storage_server(
            reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / name), name, SECRET
        )
    storage = InProcessWriteStorage(servers)
    yield storage
    for c in storage.clients:
        await c.close()
    for s in servers.values():
        if s.port.connected:
            await s.stop()
        else:
            s.store.close()


class TestInProcessWriteContract(StorageContract):
    @pytest.fixture
    def storage(self, write_storage):
        return write_storage


@pytest_twisted.ensureDeferred
async def test_writes_are_in_process_and_a_stopped_server_fails_them(write_storage):
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})
    assert isinstance(w, InProcessWriter)
    w.write(pattern(300_000, 1))
    assert await w.flush() == 300_000
    failed = w.when_failed()
    await write_storage.servers["s1"].port.stopListening()
    w.write(b"x" * 10)
    with pytest.raises(NodeUnavailable):
        await w.flush()
    with pytest.raises(NodeUnavailable):
        await failed
    await w.abort()


def _wire_streams(monkeypatch) -> list[str]:
    """Record the write streams the servers open (over the wire)."""
    opened: list[str] = []
    init = server._WriteStream.__init__

    def counting(self, rid, blob_id, handle):
        opened.append(blob_id)
        init(self, rid, blob_id, handle)

    monkeypatch.setattr(server._WriteStream, "__init__", counting)
    return opened


@pytest_twisted.ensureDeferred
async def test_a_stream_goes_to_the_store_not_the_socket(write_storage, monkeypatch):
    opened = _wire_streams(monkeypatch)
    c = write_storage.client("s1")
    blob, data = new_id(), pattern(3 * MiB + 1, 2)
    _, info = await put(c, blob, data, chunk=100_000)
    assert info.size == len(data) and await get(c, blob) == data
    assert opened == [] and not write_storage.servers["s1"].factory.in_process_reads


@pytest_twisted.ensureDeferred
async def test_streams_go_over_the_wire_while_a_write_failpoint_is_armed(
    write_storage, monkeypatch
):
    """The failure tests arm the server's write-path failpoints to stop it
    at an exact byte or moment: they get the server's own stream."""
    opened = _wire_streams(monkeypatch)
    armed = failpoints.Failpoints("storage.after_commit=raise@999999999999")
    monkeypatch.setattr(failpoints, "_global", armed)
    c = write_storage.client("s1")
    blob, data = new_id(), pattern(100_000, 5)
    await put(c, blob, data)
    assert opened == [blob] and await get(c, blob) == data


@pytest_twisted.ensureDeferred
async def test_closing_the_client_fails_a_running_stream_and_releases_its_blob(write_storage):
    c = write_storage.client("s1")
    blob = new_id()
    w = await c.write(blob, 1, 0, {})
    w.write(pattern(200_000, 6))
    assert await w.flush() == 200_000
    failed = w.when_failed()
    await c.close()
    with pytest.raises(NodeUnavailable):
        await failed
    assert not c.writers and not write_storage.servers["s1"].factory.in_process_reads
    # Released: another writer takes the blob over from its durable length.
    other = write_storage.client("s1")
    w2 = await other.write(blob, 2, 200_000, {})
    w2.write(b"tail")
    info = await w2.commit()
    assert info.size == 200_004
    with pytest.raises(NodeUnavailable):
        await c.write(new_id(), 1, 0, {})
