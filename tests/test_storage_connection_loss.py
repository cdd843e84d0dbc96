"""A storage connection lost while output still waits to be sent.

Both ends queue what the socket does not take: the server's read streams
in the transport's buffer (``framing.send_iov``), a client's writer in its
own backlog of views (``BlobWriter._backlog``).  When the connection goes
while such output waits, the queued frames must be dropped, every handle
closed and every count taken back, on both ends, with nothing left
holding the bytes.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.storage_procs import pattern
from wsstorage import framing
from wsstorage.blobstore import BlobReadHandle, BlobWriteHandle
from wsstorage.client import StorageClient
from wsstorage.errors import NodeUnavailable
from wsstorage.service import start_storage_server

SECRET = b"loss-test-secret-0123456789abcdef"
MiB = 1 << 20


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    running = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "data"), "s1", SECRET
    )
    yield running
    await running.stop()


@pytest.fixture
def closes(monkeypatch) -> dict[str, int]:
    """How often read and write handles were opened and closed."""
    counts = {"read open": 0, "read close": 0, "write open": 0, "write close": 0}
    for kind, cls in (("read", BlobReadHandle), ("write", BlobWriteHandle)):
        init, close = cls.__init__, cls.close

        def counted_init(self, *a: Any, _init=init, _kind=kind, **kw: Any) -> None:
            _init(self, *a, **kw)
            counts[f"{_kind} open"] += 1

        def counted_close(self, _close=close, _kind=kind) -> None:
            if not getattr(self, "_counted_closed", False):
                counts[f"{_kind} close"] += 1
            self._counted_closed = True
            _close(self)

        monkeypatch.setattr(cls, "__init__", counted_init)
        monkeypatch.setattr(cls, "close", counted_close)
    return counts


async def until(condition, what: str) -> None:
    """Wait (reactor turns, not a timed sleep) until ``condition()``."""
    for _ in range(5000):
        if condition():
            return
        await deferLater(reactor, 0.001, lambda: None)
    raise AssertionError(f"never: {what}")


class _Stalled:
    """A consumer that pauses its producer at the first bytes and never
    resumes it: the client stops reading the socket, so the server's
    output backs up into its transport."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.count = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.count += len(data)
        self.producer.pauseProducing()


@pytest_twisted.ensureDeferred
async def test_a_read_connection_lost_with_output_queued_drops_it_and_closes_the_handle(
    server, closes
) -> None:
    factory = server.factory
    client = StorageClient(reactor, "s1", server.client_endpoint, SECRET, idle_timeout=30)
    data = pattern(48 * MiB)
    w = await client.write("big", 1, 0, {})
    for i in range(0, len(data), MiB):
        w.write(data[i : i + MiB])
    await w.commit()
    sink = _Stalled()
    reading = client.read("big", 0, None, sink)
    reading.addErrback(lambda f: f.trap(NodeUnavailable))

    def queued() -> bool:
        streams = [p._read for p in factory.connections if p._read is not None]
        return bool(streams) and not framing.transport_idle(streams[0].proto.transport)

    await until(queued, "the server's transport holds unsent frames")
    (proto,) = [p for p in factory.connections if p._read is not None]
    stream, transport = proto._read, proto.transport
    assert factory.read_streams == 1 and closes["read close"] < closes["read open"]
    await client.close()  # aborts the connection: the server sees it lost
    await reading
    await until(lambda: not factory.connections, "the server saw the connection go")
    assert proto._read is None and stream._finished
    assert factory.read_streams == 0 and factory.active_streams == 0
    await stream.done
    await until(lambda: not stream._fetching, "the reading task ended")
    # Nothing left holding frames, even a batch the task read meanwhile.
    assert stream.handle is None and not stream._ready and not stream._buffers
    assert closes["read close"] == closes["read open"]
    assert not transport.connected and transport.producer is None


@pytest_twisted.ensureDeferred
async def test_a_write_connection_lost_with_a_backlog_drops_it_on_both_ends(server, closes) -> None:
    """The server drops a connection while the client's writer still holds
    a backlog (and the client had asked to close once it is sent): the
    backlog is dropped, the transport's own doWrite is back, the writer
    fails as unavailable, and the server closes the blob's write handle."""
    factory = server.factory
    client = StorageClient(reactor, "s1", server.client_endpoint, SECRET, idle_timeout=30)
    data = pattern(16 * MiB)
    w = await client.write("lost", 1, 0, {})
    failed = w.when_failed()
    for i in range(0, len(data), 65536):  # no reactor turn: the socket fills
        w.write(data[i : i + 65536])
    assert w._backlog
    conn = w.conn
    conn.transport.loseConnection()  # waits for the backlog...
    (proto,) = list(factory.connections)
    proto.transport.abortConnection()  # ...which the server never takes
    await conn.lost
    with pytest.raises(NodeUnavailable):
        await failed
    assert not w._backlog and w._backlog_bytes == 0
    assert "doWrite" not in vars(conn.transport) and not conn.connected
    await w.abort()  # the stream's owner lets go: nothing to send
    assert w.finished and conn not in client._conns
    await until(lambda: not factory.connections, "the server saw the connection go")
    assert proto._write is None and factory.active_streams == 0
    assert closes["write close"] == closes["write open"] == 1
    await client.close()
