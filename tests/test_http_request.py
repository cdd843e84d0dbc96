"""The streaming channel and request, without sockets (StringTransport, Clock).

What is checked here is what twisted.web would do differently: no body read
or ``100 Continue`` sent before a handler claims the body, the client's
socket paused while the body's consumer is, and the connection limits.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from wsfront.http.site import SiteSettings, make_site


@implementer(IConsumer)
class Recorder:
    def __init__(self) -> None:
        self.data = b""
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data


def channel_for(settings: SiteSettings | None = None):
    clock = Clock()
    site = make_site(clock, None, None, settings or SiteSettings())
    seen = []
    site.dispatch = seen.append
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return clock, channel, transport, seen


PUT_HEAD = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"


def test_put_is_dispatched_at_end_of_headers_with_the_socket_paused_and_no_100():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(PUT_HEAD)
    [request] = seen
    assert (request.method, request.path, request.body_length) == (b"PUT", b"/x", 10)
    assert transport.producerState == "paused"
    assert b"100 Continue" not in transport.value()


def test_claiming_the_body_sends_100_and_streams_it_with_backpressure():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(PUT_HEAD)
    [request] = seen
    sink = Recorder()
    done = request.stream_body(sink)
    assert transport.value().endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.producerState == "producing"
    sink.producer.pauseProducing()
    assert transport.producerState == "paused"
    channel.dataReceived(b"01234")
    assert sink.data == b"01234"
    sink.producer.resumeProducing()
    assert transport.producerState == "producing"
    results = []
    done.addCallback(results.append)
    channel.dataReceived(b"56789")
    assert (sink.data, results, sink.producer) == (b"0123456789", [10], None)


def test_body_bytes_that_arrive_before_the_claim_are_kept_for_the_consumer():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(PUT_HEAD.replace(b"Expect: 100-continue\r\n", b"") + b"abc")
    [request] = seen
    sink = Recorder()
    request.stream_body(sink)
    channel.dataReceived(b"defghij")
    assert sink.data == b"abcdefghij"
    assert b"100 Continue" not in transport.value()


def test_an_answer_before_the_body_closes_the_connection_and_ignores_the_rest():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(PUT_HEAD)
    [request] = seen
    request.respond(403, b"no\n")
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    assert transport.disconnecting
    channel.dataReceived(b"0123456789GET / HTTP/1.1\r\n\r\n")
    assert len(seen) == 1


def test_get_is_dispatched_once_complete_and_the_connection_stays_open():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(b"GET /a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    [request] = seen
    assert (request.path, request.args, request.body_complete) == (b"/a", {b"x": [b"1"]}, True)
    request.respond(200, b"ok")
    assert not transport.disconnecting
    channel.dataReceived(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [r.path for r in seen] == [b"/a", b"/b"]


def test_a_body_on_a_get_beyond_the_discard_limit_is_refused():
    _, channel, _, seen = channel_for()
    channel.dataReceived(b"DELETE /a HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    [request] = seen
    failures = []
    request.discard_body(1000).addErrback(failures.append)
    channel.dataReceived(b"x" * 5000)
    [failure] = failures
    assert failure.value.status == 413


def test_oversized_headers_are_refused_with_400():
    _, channel, transport, seen = channel_for(SiteSettings(max_header_bytes=1024))
    channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 900 + b"\r\n")
    channel.dataReceived(b"X-More: " + b"b" * 900 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert seen == []


def test_a_silent_client_is_dropped_after_the_idle_timeout():
    clock, channel, transport, seen = channel_for(SiteSettings(idle_timeout=30))
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n")
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    assert seen == []


def _connect(site, host: str):
    from twisted.internet.address import IPv4Address

    channel = site.buildProtocol(IPv4Address("TCP", host, 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1234))
    channel.makeConnection(transport)
    return channel, transport


def test_connections_per_address_are_limited_and_released_on_close():
    site = make_site(Clock(), None, None, SiteSettings(max_connections_per_address=2))
    (first, t1), (_, t2) = _connect(site, "10.0.0.1"), _connect(site, "10.0.0.1")
    assert t1.value() == t2.value() == b"" and not t1.disconnecting
    _, refused = _connect(site, "10.0.0.1")
    answer = refused.value()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 5\r\n" in answer and b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"too many connections from your address; try again later\n")
    assert refused.disconnecting
    _, other = _connect(site, "10.0.0.2")
    assert other.value() == b"" and not other.disconnecting
    first.connectionLost(None)
    _, again = _connect(site, "10.0.0.1")
    assert again.value() == b"" and not again.disconnecting


def test_connections_in_total_are_limited():
    site = make_site(Clock(), None, None, SiteSettings(max_connections=3))
    channels = [_connect(site, f"10.0.0.{i}")[0] for i in range(3)]
    _, refused = _connect(site, "10.0.0.9")
    assert refused.value().startswith(b"HTTP/1.1 503 ")
    assert b"too many connections in total" in refused.value()
    channels[0].connectionLost(None)
    _, admitted = _connect(site, "10.0.0.9")
    assert admitted.value() == b""
    assert site.context.limits.open == 3


def test_an_overlong_request_line_gets_414_and_an_overlong_header_431():
    _, channel, transport, seen = channel_for(SiteSettings(max_line_bytes=100))
    channel.dataReceived(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 414 ")
    assert transport.disconnecting
    _, channel, transport, seen = channel_for(SiteSettings(max_line_bytes=100))
    channel.dataReceived(b"GET / HTTP/1.1\r\nX-Long: " + b"b" * 200 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 ")
    assert seen == []
