"""How the storage client receives a read over real TCP (``_read_socket``):
frame by frame, handing each DATA piece on as the bytes object the socket
gave, holding nothing while paused, whatever pieces the stream arrives in."""

from __future__ import annotations

import hashlib
import itertools
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols import portforward

from tests.storage_procs import pattern, write_blob
from wsstorage import framing
from wsstorage.client import SMALL_RECV, StorageClient
from wsstorage.errors import NodeUnavailable
from wsstorage.service import start_storage_server

SECRET = b"recv-test-secret-0123456789abcdef"


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    running = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "data"), "s1", SECRET
    )
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def client(server):
    c = StorageClient(reactor, "s1", server.client_endpoint, SECRET, idle_timeout=10)
    yield c
    await c.close()


class Keeper:
    """A consumer that keeps every piece it is given (and may pause)."""

    def __init__(self, pause_at_first: bool = False) -> None:
        self.pieces: list[bytes] = []
        self.producer = None
        self.pause_at_first = pause_at_first
        self.buffered_at_write: list[int] = []

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.pieces.append(data)
        self.buffered_at_write.append(self.producer.proto._decoder.buffered)
        if self.pause_at_first and len(self.pieces) == 1:
            self.producer.pauseProducing()


class RecvRecorder:
    """Wraps ``socket.socket.recv`` to keep what it returned (so identities
    stay valid) and count calls per socket."""

    def __init__(self, monkeypatch) -> None:
        self.returned: dict[int, bytes] = {}
        self.calls: dict[int, int] = {}
        real = socket.socket.recv

        def recv(sock, *args):
            data = real(sock, *args)
            self.returned[id(data)] = data
            self.calls[sock.fileno()] = self.calls.get(sock.fileno(), 0) + 1
            return data

        monkeypatch.setattr(socket.socket, "recv", recv)


async def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the reactor (a condition wait, not a fixed sleep)."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached"
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_each_data_piece_is_the_bytes_object_the_socket_returned(client, monkeypatch) -> None:
    """No DATA body is sliced out of a bigger socket read (a copy of every
    byte): the client receives a body's bytes on their own and hands on
    that very object, and nothing stays buffered between frames."""
    data = pattern(3 * 1024 * 1024 + 777, seed=1)
    await write_blob(client, "r", data)
    recorder = RecvRecorder(monkeypatch)
    consumer = Keeper()
    assert await client.read("r", 5, len(data) - 10, consumer) == len(data) - 10
    assert b"".join(consumer.pieces) == data[5:-5]
    # The stream's first piece came with its header in one small greedy
    # recv (SMALL_RECV) and was sliced out; every later one is a recv's.
    first, *rest = consumer.pieces
    assert len(first) <= SMALL_RECV and rest
    assert all(id(p) in recorder.returned for p in rest)
    assert all(0 < len(p) <= framing.MAX_DATA for p in consumer.pieces)
    assert set(consumer.buffered_at_write) == {0}


@pytest_twisted.ensureDeferred
async def test_a_small_read_takes_one_recv_not_one_per_header_and_body(client, monkeypatch) -> None:
    """Outside a stream of DATA bodies a header is read greedily: a 5-byte
    read's REPLY, DATA and END (six header and body pieces) come in one
    recv, a stat's reply in one, not one recv per piece."""
    await write_blob(client, "tiny", b"hello")
    await client.stat("tiny")  # connection made and idle in the pool
    (conn,) = client._idle
    fd = conn.socket.fileno()  # the client's end (the server runs here too)
    recorder = RecvRecorder(monkeypatch)
    consumer = Keeper()
    assert await client.read("tiny", 0, None, consumer) == 5
    assert b"".join(consumer.pieces) == b"hello"
    read_calls = recorder.calls[fd]
    await client.stat("tiny")
    stat_calls = recorder.calls[fd] - read_calls
    # One recv per burst the server sends (the read's END may come on its
    # own), never one per header and body: exact reads took 6 and 2.
    assert read_calls <= 3 and stat_calls == 1, (read_calls, stat_calls)


@pytest_twisted.ensureDeferred
async def test_a_closed_connection_gives_the_transport_its_own_doread_back(client) -> None:
    """The transport's doRead is the protocol's _read_socket while
    connected; once the connection is lost it is dropped again, so
    transport and protocol do not keep each other alive."""
    await write_blob(client, "c", b"x")
    (conn,) = client._idle
    transport = conn.transport
    assert vars(transport)["doRead"] == conn._read_socket
    await client.close()
    await conn.lost
    assert "doRead" not in vars(transport) and conn._tcp is None


@pytest_twisted.ensureDeferred
async def test_a_paused_read_stops_receiving_and_holds_no_unread_bytes(
    server, client, monkeypatch
) -> None:
    size = 24 * 1024 * 1024
    data = pattern(size, seed=2)
    await write_blob(client, "slow", data, chunk=1024 * 1024)
    recorder = RecvRecorder(monkeypatch)
    consumer = Keeper(pause_at_first=True)
    d = client.read("slow", 0, None, consumer)

    def server_stream():
        for conn in server.factory.connections:
            if conn._read is not None:
                return conn._read
        return None

    await wait_for(lambda: server_stream() is not None and server_stream().paused)
    conn = consumer.producer.proto
    fd = conn.socket.fileno()
    calls = recorder.calls[fd]
    await wait_for(lambda: server_stream().paused and len(consumer.pieces) == 1)
    # Give the reactor turns in which a readable socket would be read.
    for _ in range(5):
        await task.deferLater(reactor, 0.02, lambda: None)
    # Paused since the first piece: no byte delivered, none read off the
    # socket, none held by the client (the kernel buffers hold the rest).
    assert len(consumer.pieces) == 1 and len(consumer.pieces[0]) <= framing.MAX_DATA
    assert recorder.calls[fd] == calls
    assert conn._decoder.buffered == 0
    # A readable event already polled in the turn that paused us reads
    # nothing either.
    conn.transport.doRead()
    assert len(consumer.pieces) == 1 and recorder.calls[fd] == calls
    consumer.producer.resumeProducing()
    assert await d == size
    assert hashlib.sha256(b"".join(consumer.pieces)).digest() == hashlib.sha256(data).digest()


class _Trickle(portforward.ProxyClient):
    """The server side of a proxy that passes the server's bytes on in
    pieces of awkward sizes, one piece per reactor turn, so the client sees
    headers and bodies cut anywhere."""

    SIZES = (1, 5, 11, 12, 13, 700, 4093, 65536, 3)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._queue = bytearray()
        self._sizes = itertools.cycle(self.SIZES)
        self._call = None

    def dataReceived(self, data: bytes) -> None:
        self._queue += data
        if self._call is None:
            self._call = reactor.callLater(0, self._drip)

    def _drip(self) -> None:
        self._call = None
        if self.peer is None:
            return
        n = next(self._sizes)
        self.peer.transport.write(bytes(self._queue[:n]))
        del self._queue[:n]
        if self._queue:
            self._call = reactor.callLater(0, self._drip)


class _TrickleFactory(portforward.ProxyClientFactory):
    protocol = _Trickle


class _TrickleServer(portforward.ProxyServer):
    clientProtocolFactory = _TrickleFactory


@pytest_twisted.ensureDeferred
async def test_frames_cut_anywhere_on_the_wire_read_back_whole(server, client) -> None:
    """The handshake, replies and read streams arrive in pieces that split
    headers, control bodies and DATA bodies at every kind of offset."""
    data = pattern(2 * 1024 * 1024 + 99, seed=3)
    await write_blob(client, "t", data)
    addr = server.port.getHost()
    factory = portforward.ProxyFactory(addr.host, addr.port)
    factory.protocol = _TrickleServer
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    slow = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{port.getHost().port}", SECRET, idle_timeout=10
    )
    try:
        assert (await slow.stat("t")).size == len(data)
        for offset, length in ((0, None), (7, 300_001), (len(data) - 13, 13)):
            consumer = Keeper()
            n = await slow.read("t", offset, length, consumer)
            end = len(data) if length is None else offset + length
            assert n == end - offset
            assert b"".join(consumer.pieces) == data[offset:end]
        assert [b.blob_id for b in await slow.list_blobs()] == ["t"]
    finally:
        await slow.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_consumer_whose_write_raises_fails_the_read_instead_of_hanging(client) -> None:
    """An exception from the consumer's write ends the connection (Twisted
    drops a connection whose doRead raised); the read must fail with it,
    not wait forever because it was out of the pending table."""

    class Exploding(Keeper):
        def write(self, data: bytes) -> None:
            raise RuntimeError("consumer broke")

    await write_blob(client, "boom", pattern(300_000, seed=3))
    d = client.read("boom", 0, None, Exploding())
    with pytest.raises(NodeUnavailable):
        await d


@pytest_twisted.ensureDeferred
async def test_a_turns_share_does_not_cut_a_body_it_could_read_whole_next_turn(
    tmp_path, monkeypatch
) -> None:
    """With 64 KiB DATA frames and 80 KiB of socket reads per turn (200
    downloads' share), a turn that has read one frame does not begin the
    next one for its last 16 KiB: every body arrives as one piece, so the
    consumer gets one write per frame, not nearly two."""
    frame = 64 * 1024
    running = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "d"), "s1", SECRET,
        read_ahead=frame, read_batches=1,
    )  # fmt: skip
    c = StorageClient(reactor, "s1", running.client_endpoint, SECRET, idle_timeout=10)
    try:
        data = pattern(2 * 1024 * 1024, seed=4)
        await write_blob(c, "f", data)
        await c.stat("f")
        (conn,) = c._idle
        monkeypatch.setattr(conn.transport, "bufferSize", frame + 16 * 1024)
        consumer = Keeper()
        assert await c.read("f", 0, None, consumer) == len(data)
        assert b"".join(consumer.pieces) == data
        first, *rest = consumer.pieces
        assert len(first) <= SMALL_RECV
        # A frame may still come in two when the server's send was cut
        # short (full socket buffers); cut by the share, nearly every one
        # was (33 frames made 57 pieces).
        frames = len(data) // frame
        assert len(rest) <= frames + frames // 4, sorted(len(p) for p in rest)
    finally:
        await c.close()
        await running.stop()
