"""GET bodies sent straight into the client's socket (wsfront.http.direct).

Unit tests drive ``DirectBody`` over a TCP-like transport whose socket takes
as many bytes as the test says; the integration tests GET large files over
real sockets, with a reader that keeps up and one that stops reading until
the server's socket is full, and check every byte.
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.web import http
from zope.interface import implementer

from tests.http_env import HttpEnv, MiB, payload
from tests.http_raw import RawClient, head_of
from tests.test_http_site import basic
from wsfront.http import direct
from wsfront.http.direct import DirectBody


class FakeSocket:
    """Takes at most ``room`` bytes per ``sendmsg`` (None: everything)."""

    def __init__(self) -> None:
        self.room: int | None = None
        self.sent = b""

    def sendmsg(self, iov) -> int:
        data = b"".join(bytes(part) for part in iov)
        if self.room is not None:
            data = data[: self.room]
        self.sent += data
        return len(data)


class FakeTCP(FileDescriptor):
    """A FileDescriptor (what ``direct_socket`` accepts) over ``FakeSocket``;
    ``flush`` plays the reactor's doWrite: the buffer goes out, and a
    producer the transport paused is resumed."""

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.socket = FakeSocket()
        self.connected = 1

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 80)

    def writeSomeData(self, data) -> int:
        self.socket.sent += bytes(data)
        return len(data)

    def flush(self) -> None:
        self.doWrite()


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped = True


def make_request(transport, method: bytes = b"GET", length: int | None = 10):
    channel = http.HTTPChannel()
    channel.requestFactory = http.Request
    channel.makeConnection(transport)
    request = http.Request(channel)
    channel.requests.append(request)
    request.method, request.clientproto, request.uri = method, b"HTTP/1.1", b"/f"
    if length is not None:
        request.setHeader(b"Content-Length", b"%d" % length)
    return request


def body_of(wire: bytes) -> bytes:
    return wire.split(b"\r\n\r\n", 1)[1]


def test_headers_go_first_then_pieces_go_straight_into_the_idle_socket():
    transport = FakeTCP()
    request = make_request(transport, length=10)
    body = DirectBody(request, 10)
    producer = Producer()
    body.registerProducer(producer, True)
    body.write(b"abcd")  # with the headers, through the request
    assert transport.socket.sent == b""
    assert producer.paused == 1  # waits for the headers to drain
    transport.flush()
    assert producer.resumed == 1
    assert transport.socket.sent.startswith(b"HTTP/1.1 200 OK\r\n")
    body.write(b"efghij")
    assert body_of(transport.socket.sent) == b"abcdefghij"
    assert request.sentLength == 10
    assert producer.paused == 1  # the last piece: nothing to wait for
    body.unregisterProducer()
    request.finish()
    assert request.finished


def test_what_the_socket_does_not_take_waits_in_the_transport_and_pauses_the_producer():
    transport = FakeTCP()
    request = make_request(transport, length=12)
    body = DirectBody(request, 12)
    producer = Producer()
    body.registerProducer(producer, True)
    body.write(b"")  # headers only
    transport.flush()
    assert (producer.paused, producer.resumed) == (1, 1)
    transport.socket.room = 3
    body.write(b"abcdef")
    assert body_of(transport.socket.sent) == b"abc"
    assert transport._tempDataLen == 3 and transport.producerPaused
    assert producer.paused == 2
    transport.socket.room = None
    transport.flush()  # the rest goes out, the producer resumes
    assert producer.resumed == 2
    body.write(b"ghijkl")
    assert body_of(transport.socket.sent) == b"abcdefghijkl"
    assert request.sentLength == 12


def test_a_piece_arriving_while_the_transport_is_busy_queues_behind_it():
    transport = FakeTCP()
    request = make_request(transport, length=6)
    body = DirectBody(request, 6)
    producer = Producer()
    body.registerProducer(producer, True)
    body.write(b"ab")  # headers and the piece, both buffered
    transport.producerPaused = False  # as if the producer ignored the pause
    body.write(b"cd")
    assert transport.socket.sent == b""  # nothing overtakes the buffer
    assert producer.paused == 2
    transport.flush()
    body.write(b"ef")
    assert body_of(transport.socket.sent) == b"abcdef"


@pytest.mark.parametrize("method, length", [(b"GET", None), (b"HEAD", 4)], ids=["chunked", "head"])
def test_chunked_and_head_answers_go_through_the_request(method, length):
    transport = FakeTCP()
    request = make_request(transport, method=method, length=length)
    body = DirectBody(request, 8)
    body.write(b"abcd")
    transport.flush()
    body.write(b"efgh")
    transport.flush()
    wire = transport.socket.sent
    if method == b"HEAD":
        assert body_of(wire) == b""
    else:
        assert b"Transfer-Encoding: chunked" in wire
        assert body_of(wire) == b"4\r\nabcd\r\n4\r\nefgh\r\n"


def test_a_transport_that_is_not_plain_tcp_gets_everything_through_the_request():
    transport = StringTransport()
    request = make_request(transport, length=8)
    body = DirectBody(request, 8)
    body.write(b"abcd")
    body.write(b"efgh")
    assert body_of(transport.value()) == b"abcdefgh"
    assert request.sentLength == 8


def test_nothing_is_written_after_the_client_left():
    transport = FakeTCP()
    request = make_request(transport, length=8)
    body = DirectBody(request, 8)
    body.write(b"abcd")
    transport.flush()
    request.connectionLost(Exception("gone"))
    sent = transport.socket.sent
    body.write(b"efgh")
    transport.flush()
    assert transport.socket.sent == sent


def test_small_bodies_are_written_through_the_request_itself():
    request = make_request(StringTransport(), length=4)
    assert direct.body_consumer(request, direct.DIRECT_MIN) is request
    assert isinstance(direct.body_consumer(request, direct.DIRECT_MIN + 1), DirectBody)


# -- over real sockets --------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def count_sends(monkeypatch) -> dict:
    """Count direct sends, and fire ``seen["full"]`` the first time one
    leaves bytes to the transport (the client's socket is full)."""
    seen = {"sends": 0, "left": 0, "full": defer.Deferred()}
    original = direct.send_iov

    def send_iov(transport, sock, iov):
        left = original(transport, sock, iov)
        seen["sends"] += 1
        if left:
            seen["left"] += 1
            if not seen["full"].called:
                seen["full"].callback(None)
        return left

    monkeypatch.setattr(direct, "send_iov", send_iov)
    return seen


class CountingClient(RawClient):
    """A RawClient that can also wait for a number of bytes."""

    def __init__(self) -> None:
        super().__init__()
        self._length_waiters: list[tuple[int, defer.Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        still = []
        for length, d in self._length_waiters:
            if len(self.received) >= length:
                d.callback(self.received)
            else:
                still.append((length, d))
        self._length_waiters = still

    def connectionLost(self, reason) -> None:
        waiters, self._length_waiters = self._length_waiters, []
        super().connectionLost(reason)
        for _, d in waiters:
            d.callback(self.received)

    def until_length(self, length: int) -> defer.Deferred:
        """Fires once ``length`` bytes are in (or at close)."""
        d: defer.Deferred = defer.Deferred()
        if len(self.received) >= length or self.closed.called:
            d.callback(self.received)
        else:
            self._length_waiters.append((length, d))
        return d


async def connect_counting(reactor, port: int) -> CountingClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, CountingClient())


def split_response(wire: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = wire.partition(b"\r\n\r\n")
    status, headers = head_of(head + b"\r\n\r\n")
    return status, headers, rest


@pytest_twisted.ensureDeferred
async def test_a_large_get_arrives_whole_and_the_connection_stays_usable(env, monkeypatch):
    from twisted.internet import reactor

    data = payload(24 * MiB + 5)
    await env.upload("/big.bin", data)
    seen = count_sends(monkeypatch)
    client = await connect_counting(reactor, env.port.getHost().port)
    request = b"GET /big.bin HTTP/1.1\r\nHost: x\r\n" + basic() + b"\r\n"
    client.send(request)
    await client.until(b"\r\n\r\n")
    status, headers, _ = split_response(client.received)
    assert status == 200 and int(headers["content-length"]) == len(data)
    head_len = client.received.index(b"\r\n\r\n") + 4
    await client.until_length(head_len + len(data))
    body = client.received[head_len : head_len + len(data)]
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert seen["sends"] > 0
    # The same connection answers the next request (keep-alive, and the
    # first answer was exactly Content-Length bytes long).
    client.received = b""
    client.send(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=-7\r\n" + basic() + b"\r\n")
    await client.until(b"\r\n\r\n")
    await client.until_length(client.received.index(b"\r\n\r\n") + 4 + 7)
    status, headers, body = split_response(client.received)
    assert status == 206 and body == data[-7:]
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_until_the_socket_fills_still_gets_every_byte(env, monkeypatch):
    from twisted.internet import reactor

    data = payload(24 * MiB + 3)
    await env.upload("/slow.bin", data)
    seen = count_sends(monkeypatch)
    client = await connect_counting(reactor, env.port.getHost().port)
    # A small receive buffer: the socket fills whatever the host's defaults.
    client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.transport.pauseProducing()  # read nothing until the server is stuck
    client.send(b"GET /slow.bin HTTP/1.1\r\nHost: x\r\n" + basic() + b"\r\n")
    # A server that never fills the socket (nothing sent direct) fails here
    # rather than hanging.
    await seen["full"].addTimeout(60, reactor)
    client.transport.resumeProducing()
    await client.until(b"\r\n\r\n")
    head_len = client.received.index(b"\r\n\r\n") + 4
    await client.until_length(head_len + len(data))
    status, headers, body = split_response(client.received)
    assert status == 200 and int(headers["content-length"]) == len(data)
    assert len(body) == len(data)
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert seen["left"] >= 1
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_body_is_not_counted_as_served(env, monkeypatch):
    """The transport stops its producer (the download) before the request
    hears that the client left: the cut-short answer must not be finished
    (counted complete in metrics and notifyFinish) on the way."""
    from twisted.internet import reactor

    from wsfront.http.request import StreamingRequest

    data = payload(32 * MiB)
    await env.upload("/gone.bin", data)
    finished, lost = [], defer.Deferred()
    original_finish, original_lost = StreamingRequest.finish, StreamingRequest.connectionLost

    def finish(self):
        finished.append(self.sentLength)
        if not lost.called:  # a finished request hears of no loss at all
            lost.callback(None)
        return original_finish(self)

    def connection_lost(self, reason):
        original_lost(self, reason)
        if not lost.called:
            lost.callback(None)

    monkeypatch.setattr(StreamingRequest, "finish", finish)
    monkeypatch.setattr(StreamingRequest, "connectionLost", connection_lost)
    client = await connect_counting(reactor, env.port.getHost().port)
    client.send(b"GET /gone.bin HTTP/1.1\r\nHost: x\r\n" + basic() + b"\r\n")
    got = await client.until_length(3 * MiB)
    assert len(got) < len(data)
    client.transport.abortConnection()
    await lost.addTimeout(30, reactor)
    assert finished == []
