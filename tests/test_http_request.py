"""The streaming channel and request, without sockets (StringTransport, Clock).

What is checked here is what twisted.web would do differently: no body read
or ``100 Continue`` sent before a handler claims the body, the client's
socket paused while the body's consumer is, the connection limits, the
stricter framing (Host, folded headers, chunk sizes) and the deadlines for
slow clients.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from wsfront.http.errors_map import HttpError
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


def test_oversized_headers_are_refused_with_431():
    """RFC 6585, 5: 431 for header fields too large in all, as for one."""
    _, channel, transport, seen = channel_for(SiteSettings(max_header_bytes=1024))
    channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 900 + b"\r\n")
    channel.dataReceived(b"X-More: " + b"b" * 900 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 ")
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


# -- a body that is complete before its handler discards it --------------------


def test_discarding_a_body_that_already_arrived_too_large_fails_with_413():
    _, channel, _, seen = channel_for()
    channel.dataReceived(b"DELETE /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789")
    [request] = seen
    assert request.body_complete
    failures = []
    request.discard_body(5).addErrback(failures.append)
    [failure] = failures
    assert failure.value.status == 413


def test_a_handler_that_waits_before_discarding_a_complete_body_answers_413_not_500():
    site = make_site(Clock(), None, None, SiteSettings())
    later: Deferred = Deferred()

    @inlineCallbacks
    def endpoint(request, context, segments):
        yield later
        yield request.discard_body(5)
        request.respond(204)

    site.mount("slow", endpoint)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(
        b"POST /-/slow HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
    )
    later.callback(None)
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert not transport.disconnecting  # the body was read: the connection can go on


# -- request framing ----------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde",
    ],
    ids=[
        "no-host",
        "no-host-other-headers",
        "two-hosts",
        "two-hosts-http-1.0",
        "obs-fold-space",
        "obs-fold-tab",
        "space-before-first-header",
        "put-without-host",
    ],
)
def test_a_request_without_exactly_one_host_or_with_folded_headers_gets_400(head):
    _, channel, transport, seen = channel_for()
    channel.dataReceived(head + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert b"\r\nConnection: close\r\n" in transport.value()
    assert seen == []


def test_http_1_0_without_host_is_accepted():
    _, channel, _, seen = channel_for()
    channel.dataReceived(b"GET /a HTTP/1.0\r\n\r\n")
    assert [r.path for r in seen] == [b"/a"]


@pytest.mark.parametrize(
    "host", [b"a b", b"[::1", b"::1", b"caf\xc3\xa9.example", b"a/b", b"a@b", b"a:b"]
)
def test_a_host_that_is_not_host_port_gets_400(host):
    """RFC 9112 (3.2): 400 for a Host with an invalid value; it was served."""
    _, channel, transport, seen = channel_for()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert b"not a valid host" in transport.value()
    assert seen == []


@pytest.mark.parametrize(
    "host", [b"a", b"127.0.0.1:8080", b"[::1]:8080", b"[fe80::1%25eth0]", b"", b"xn--caf-dma.ex:"]
)
def test_a_valid_host_is_accepted(host):
    _, channel, _, seen = channel_for()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert [r.path for r in seen] == [b"/"]


CHUNKED_PUT = b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "size_line",
    [b"FFFFFFFFFFFFFFFFFFFF\r\n", b"FFFFFFFFFFFFFFFFFFFF", b"8000000000000000\r\n", b"1" * 40],
)
def test_a_chunk_size_beyond_any_file_gets_400_at_once(size_line):
    _, channel, transport, seen = channel_for()
    channel.dataReceived(CHUNKED_PUT)
    [request] = seen
    request.stream_body(Recorder())
    channel.dataReceived(size_line)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"\r\n\r\nmalformed chunked body\n")
    assert transport.disconnecting


@pytest.mark.parametrize("length", [b"9223372036854775808", b"9" * 30])
def test_a_content_length_beyond_any_file_gets_413_before_100_continue(length):
    """A chunk size that large was refused at once; a Content-Length that
    large got 100 Continue and a wait for the bytes."""
    _, channel, transport, seen = channel_for()
    channel.dataReceived(
        b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: " + length
        + b"\r\n\r\n"
    )  # fmt: skip
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.value()
    assert seen == []


def test_the_largest_file_offset_is_still_a_length():
    _, channel, transport, seen = channel_for()
    largest = b"%d" % ((1 << 63) - 1)
    channel.dataReceived(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: " + largest + b"\r\n\r\n")
    assert [r.body_length for r in seen] == [(1 << 63) - 1]
    assert transport.value() == b""


def test_large_and_zero_padded_chunk_sizes_are_still_read():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(CHUNKED_PUT)
    [request] = seen
    sink = Recorder()
    done = request.stream_body(sink)
    channel.dataReceived(b"00000000000000000000003\r\nabc\r\n7FFFFFFFFFFFFFFF\r\nde")
    assert sink.data == b"abcde" and not transport.disconnecting
    assert not done.called


def test_require_no_body_refuses_a_declared_body_unread_and_a_chunked_one_at_its_first_byte():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(PUT_HEAD)
    [declared] = seen
    refused = []
    declared.require_no_body(HttpError(415, "no")).addErrback(refused.append)
    assert [f.value.status for f in refused] == [415]
    assert b"100 Continue" not in transport.value()

    _, channel, _, seen = channel_for()
    channel.dataReceived(CHUNKED_PUT)
    [chunked] = seen
    refused = []
    chunked.require_no_body(HttpError(415, "no")).addErrback(refused.append)
    assert refused == []
    channel.dataReceived(b"1\r\nx\r\n")
    assert [f.value.status for f in refused] == [415]

    _, channel, _, seen = channel_for()
    channel.dataReceived(CHUNKED_PUT)
    [empty] = seen
    read = []
    empty.require_no_body(HttpError(415, "no")).addCallback(read.append)
    channel.dataReceived(b"0\r\n\r\n")
    assert read == [0]


def test_the_largest_chunk_size_is_read_when_its_crlf_arrives_split():
    _, channel, transport, seen = channel_for()
    channel.dataReceived(CHUNKED_PUT)
    [request] = seen
    sink = Recorder()
    request.stream_body(sink)
    channel.dataReceived(b"7FFFFFFFFFFFFFFF\r")
    channel.dataReceived(b"\nab")
    assert sink.data == b"ab" and not transport.disconnecting


# -- slow clients --------------------------------------------------------------


def test_a_request_head_sent_a_line_at_a_time_gets_408_at_the_header_deadline():
    clock, channel, transport, seen = channel_for(SiteSettings(header_timeout=30))
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    for i in range(14):
        clock.advance(2)
        channel.dataReceived(b"X-%d: y\r\n" % i)  # each resets the idle timer
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.disconnecting
    channel.dataReceived(b"\r\n")
    assert seen == []


def test_a_request_head_sent_a_byte_at_a_time_gets_408():
    clock, channel, transport, _ = channel_for(SiteSettings(header_timeout=30))
    for byte in b"GET / HT":
        channel.dataReceived(bytes([byte]))
        clock.advance(5)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_the_header_deadline_starts_at_each_requests_first_byte():
    clock, channel, transport, seen = channel_for(SiteSettings(header_timeout=30))
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(20)
    seen[0].respond(200, b"ok")
    clock.advance(50)  # idle between requests: the idle timeout's business
    channel.dataReceived(b"GET /b HTTP/1.1\r\n")
    clock.advance(29)
    channel.dataReceived(b"Host: a\r\n\r\n")
    assert [r.path for r in seen] == [b"/a", b"/b"]
    clock.advance(100)  # the request is being answered: no deadline
    assert transport.value().count(b"HTTP/1.1 ") == 1


def _slow_put(settings: SiteSettings, length: int = 100_000):
    clock, channel, transport, seen = channel_for(settings)
    channel.dataReceived(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % length)
    [request] = seen
    return clock, channel, transport, request


SLOW = SiteSettings(body_min_rate=100, body_rate_window=10)


def test_a_body_trickling_below_the_minimum_rate_fails_with_408():
    clock, channel, _, request = _slow_put(SLOW)
    sink = Recorder()
    failures = []
    request.stream_body(sink).addErrback(failures.append)
    for _ in range(5):
        channel.dataReceived(b"x")
        clock.advance(2)
    [failure] = failures
    assert failure.value.status == 408
    assert sink.data == b"xxxxx"


def test_a_body_at_the_minimum_rate_is_not_dropped():
    clock, channel, _, request = _slow_put(SLOW)
    failures = []
    request.stream_body(Recorder()).addErrback(failures.append)
    for _ in range(60):
        channel.dataReceived(b"x" * 101)
        clock.advance(1)
    assert failures == []


def test_time_the_server_paused_the_body_is_not_held_against_the_client():
    clock, channel, transport, request = _slow_put(SLOW)
    clock.advance(50)  # unclaimed: the handler is, say, checking a password
    sink = Recorder()
    failures = []
    request.stream_body(sink).addErrback(failures.append)
    channel.dataReceived(b"x" * 500)
    clock.advance(5)
    sink.producer.pauseProducing()  # the storage is slow
    clock.advance(300)
    sink.producer.resumeProducing()
    channel.dataReceived(b"x" * 500)
    clock.advance(4)
    channel.pauseProducing()  # our answers are not being read
    clock.advance(300)
    channel.resumeProducing()
    clock.advance(0.5)
    assert failures == [] and not transport.disconnecting  # nor did the idle timer fire
    clock.advance(10)  # ten seconds of reading with nothing: too slow
    [failure] = failures
    assert failure.value.status == 408


def test_limits_can_be_turned_off():
    settings = SiteSettings(header_timeout=None, body_min_rate=None, idle_timeout=1000)
    clock, channel, transport, request = _slow_put(settings)
    failures = []
    request.stream_body(Recorder()).addErrback(failures.append)
    clock.advance(500)
    assert failures == [] and not transport.disconnecting
    clock, channel, transport, _ = channel_for(settings)
    channel.dataReceived(b"G")
    clock.advance(500)
    assert not transport.disconnecting


def test_the_idle_timer_comes_back_after_backpressure_and_after_the_request():
    clock, channel, transport, request = _slow_put(SiteSettings(idle_timeout=60), length=4)
    sink = Recorder()
    request.stream_body(sink)
    sink.producer.pauseProducing()
    clock.advance(500)
    assert not transport.disconnecting
    sink.producer.resumeProducing()
    clock.advance(59)
    channel.dataReceived(b"abcd")
    request.respond(204)
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
