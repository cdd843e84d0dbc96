"""``put`` against a server that does not serve it, as during an upgrade.

``put`` (create, write and seal in one request) came after the first
servers of protocol version 1.  Such a server answers it ``bad_request``
and then takes its DATA frames for a protocol error, dropping the
connection.  Servers announce what they serve in READY (``ops``); a client
whose server does not announce ``put`` stores a small blob with a write
stream and a commit instead, so a front end upgraded before its storage
servers keeps storing small files.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.storage_procs import read_sha
from tests.support import free_port
from wsstorage import server as server_mod
from wsstorage.client import StorageClient
from wsstorage.errors import BadRequest, BlobSealed
from wsstorage.service import start_storage_server


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A server and a client; the server counts the puts it is sent."""
    puts = []
    begin_put = server_mod.StorageServerProtocol._begin_put

    def counting(proto, rid, req):
        puts.append(req["blob"])
        return begin_put(proto, rid, req)

    monkeypatch.setattr(server_mod.StorageServerProtocol, "_begin_put", counting)
    port = free_port()
    running = pytest_twisted.blockon(
        start_storage_server(
            reactor, f"tcp:{port}:interface=127.0.0.1", str(tmp_path / "d"), "s1", b"k" * 32
        )
    )
    client = StorageClient(reactor, "s1", f"tcp:127.0.0.1:{port}", b"k" * 32, idle_timeout=30)
    yield running, client, puts
    pytest_twisted.blockon(client.close())
    pytest_twisted.blockon(running.stop())


@pytest_twisted.ensureDeferred
async def test_a_server_announcing_put_gets_one_request(served):
    _running, client, puts = served
    data = b"small file\n" * 100
    info = await client.put("b" + "a1" * 16, 3, {"inode": 1}, data)
    assert (info.size, info.sealed, info.epoch) == (len(data), True, 3)
    assert puts == ["b" + "a1" * 16]
    (conn,) = client._idle
    assert conn.ops is not None and "put" in conn.ops


@pytest_twisted.ensureDeferred
async def test_a_server_without_put_gets_a_write_stream_and_a_commit(served):
    running, client, puts = served
    running.factory.ops = tuple(op for op in server_mod.OPS if op != "put")
    data = b"small file\n" * 100
    blob = "b" + "a2" * 16
    info = await client.put(blob, 3, {"inode": 1}, data)
    assert (info.size, info.sealed, info.epoch) == (len(data), True, 3)
    assert puts == []
    assert await read_sha(client, blob) == (hashlib.sha256(data).hexdigest(), len(data))
    # Refused as a put would be; the stored blob stays as it was.
    with pytest.raises(BlobSealed):
        await client.put(blob, 3, {"inode": 1}, b"again")
    assert await read_sha(client, blob) == (hashlib.sha256(data).hexdigest(), len(data))
    assert puts == []


@pytest_twisted.ensureDeferred
async def test_a_server_refuses_an_op_it_does_not_announce(served):
    running, client, _puts = served
    running.factory.ops = tuple(op for op in server_mod.OPS if op != "health")
    with pytest.raises(BadRequest, match="unknown op 'health'"):
        await client.health()
