"""A streaming HTTP/1.1 channel and request for wsfront.

twisted.web reads a whole request body before any resource runs (into a temp
file above 100 KB) and answers ``Expect: 100-continue`` by itself.  An upload
of gigabytes must instead flow from the client's socket into the transfer
layer with backpressure, and authentication, permissions and quota must be
checked *before* the client is told to send the body.  So:

- ``StreamingChannel.allHeadersReceived`` hands the method, target and version
  to the request as soon as the headers are in, sends no ``100 Continue``,
  and keeps the socket paused until a handler claims the body.
- ``StreamingRequest`` never buffers a body: a handler either streams it
  into a consumer (``stream_body``), with the client's socket paused
  whenever that consumer is, or discards a small one (``discard_body``).
  Only then does the ``100 Continue`` go out.
- A request answered before its body arrived (401, 403, 409...) closes the
  connection after the answer, since the unread body would otherwise be
  parsed as the next request.
- Slow clients are bounded (``StreamingChannel``): a deadline for the request
  head, a minimum rate for the body while the server reads it, and the idle
  timeout, which is held while the server itself pauses the body.
- Framing is stricter than Twisted's: an HTTP/1.1 request needs exactly one
  Host, folded header lines are refused, and a chunk size past any file
  offset is refused at once (400 each); a PUT with neither Content-Length
  nor chunked framing is refused (411, as nginx does) rather than read as
  empty.
- A client that shuts down its sending side after a complete request
  (TCP half-close) still gets the answer.

Tested with Twisted 26.x (its private ``_command`` / ``_path`` /
``_version`` / ``_networkProducer`` of ``HTTPChannel``).  HTTP/2 is off by
construction: the site builds this channel directly, never Twisted's
protocol-negotiating wrapper.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from zope.interface import implementer

from wsfront.http.errors_map import HttpError
from wsfront.limits import RateFloor
from wsfront.transfer.reader import raise_buffers

log = Logger()

#: Headers every answer carrying user content (or pages about it) gets, so an
#: uploaded page can't run script in the origin of ``/-/``.
CONTENT_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "sandbox"),
)

DISCARD_LIMIT = 64 << 10
"""The largest body a method that ignores bodies (GET, DELETE...) reads and drops."""


class BodyLost(Exception):
    """The client went away before the request body was complete."""


#: Bytes read from a client's socket per reactor turn while a large body
#: streams (Twisted reads 64 KiB): fewer turns and calls per MiB, still
#: bounded, since the body's consumer pauses the socket.  1 MiB, the storage
#: connections' send batch (``wsstorage.framing.TRANSPORT_BUFFER``): a 256 MiB
#: PUT made a quarter fewer Python calls per MiB than 256 KiB reads; the
#: writer cuts each read into DATA frames once for all replicas.
BODY_READ_SIZE = 1024 * 1024


def wider_reads(request: StreamingRequest, size: int = BODY_READ_SIZE) -> Callable[[], None]:
    """Let the request's socket read ``size`` bytes a turn while its body
    streams (a 512 MiB PUT took 22% less front-end CPU); returns the
    callable that restores the default.  A body announced to fit Twisted's
    64 KiB default is left as it is."""
    length = request.body_length
    if request.channel is None or (length is not None and length <= 64 * 1024):
        return lambda: None
    return raise_buffers(request.channel.transport, size)


@implementer(IPushProducer)
class _BodyValve:
    """The producer a body consumer sees: pausing it pauses the client's socket."""

    def __init__(self, channel: StreamingChannel) -> None:
        self._channel: StreamingChannel | None = channel

    def pauseProducing(self) -> None:
        if self._channel is not None:
            self._channel.pause_body("consumer")

    def resumeProducing(self) -> None:
        if self._channel is not None:
            self._channel.resume_body("consumer")

    def stopProducing(self) -> None:
        if self._channel is not None:
            self._channel.pause_body("stopped")

    def detach(self) -> None:
        if self._channel is not None:
            self._channel.resume_body("consumer")
            self._channel = None


MAX_CHUNK_SIZE = (1 << 63) - 1
"""The largest chunk a chunked body may announce (the largest file offset,
as nginx allows); a larger one is answered 400 at once instead of being
waited for."""


class BoundedChunkedDecoder(http._ChunkedTransferDecoder):
    """Twisted's chunked decoder, refusing a chunk size over ``MAX_CHUNK_SIZE``
    (Twisted accepts any number of hex digits and then waits for the bytes).
    Twisted itself bounds the chunk-size line, extensions included, to 1 KiB."""

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        if super()._dataReceived_CHUNK_LENGTH():
            if self.length > MAX_CHUNK_SIZE:
                raise http._MalformedChunkedDataError("chunk size too large")
            return True
        # The line is not complete yet: refuse a size that already has too
        # many digits rather than wait for the rest of the line (up to 1 KiB).
        if (
            len(self._buffer) > _MAX_CHUNK_DIGITS
            and _digits_so_far(self._buffer) > _MAX_CHUNK_DIGITS
        ):
            raise http._MalformedChunkedDataError("chunk size too large")
        return False


_MAX_CHUNK_DIGITS = 16
"""Hex digits in ``MAX_CHUNK_SIZE`` (leading zeros aside)."""


def _digits_so_far(partial: bytearray) -> int:
    """Significant digits of an unfinished chunk-size line (whose CRLF may be half in)."""
    end = partial.find(b";")
    size = partial if end < 0 else partial[:end]
    return len(size.lstrip(b"0").rstrip(b"\r"))


def canned(status: bytes, message: str, retry_after: int | None = None) -> bytes:
    """A whole small ``Connection: close`` answer, for errors found before
    there is a request to answer through (or instead of reading one).  It is
    dated like every other answer (RFC 9110, 6.6.1: an origin server with a
    clock MUST send Date in a 4xx)."""
    body = (message + "\n").encode()
    retry = b"" if retry_after is None else b"Retry-After: %d\r\n" % retry_after
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Server: wsfs\r\nDate: "
        + http.datetimeToString()
        + b"\r\n"
        + retry
        + b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


@implementer(IHalfCloseableProtocol)
class StreamingChannel(http.HTTPChannel):
    """HTTPChannel that dispatches at end of headers and streams bodies.

    Slow clients are bounded three ways: the idle timeout (Twisted's, reset
    by every byte), ``header_timeout`` (the request line and headers must
    all be in within so many seconds of their first byte, else 408), and
    ``body_min_rate`` (a body must average that many bytes a second over
    every ``body_rate_window`` seconds that the server was reading it, else
    408; time the server held the socket paused does not count).
    """

    LINGER = 5.0
    """Seconds an early-answered connection keeps draining the client's input."""

    REFUSED_LINGER = 1.0
    """The same for a connection refused before its first request (``refuse``):
    short, because such connections are not counted against any limit."""

    on_lost: Callable[[], object] | None = None
    """Called once when the connection ends (the site counts connections)."""

    admit: Callable[[StreamingChannel], bool] | None = None
    """Set by the site: called once the client's address is known (at
    connection, or behind a PROXY-protocol balancer at the first bytes after
    the PROXY header); returns False after refusing the connection itself."""

    clock = None
    """Set by the site: the reactor's clock, for the head deadline and body rate."""

    header_timeout: float | None = None
    """Seconds from a request's first byte to the end of its headers (None: no limit)."""

    body_min_rate: float | None = None
    """Bytes a second a request body must average while read (None: no floor)."""

    body_rate_window: float = 30.0
    """Seconds of reading over which ``body_min_rate`` is averaged."""

    def __init__(self) -> None:
        super().__init__()
        self._body_pauses: set[str] = set()
        self._abandoned = False
        self._linger = self.LINGER
        self._head_call = None
        self._body_rate: RateFloor | None = None
        self._idle_held: float | None = None
        self._in_body = False
        self._read_closed = False

    # -- admission -------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.admit is not None and not behind_proxy_protocol(self.transport):
            self._admit()

    def _admit(self) -> bool:
        admit, self.admit = self.admit, None
        return admit(self)

    def refuse(self, response: bytes) -> None:
        """Send ``response`` (a whole HTTP response, ``Connection: close``)
        instead of reading any (more) request, then close, dropping the
        client's input for at most ``REFUSED_LINGER`` seconds so the answer
        is not lost to a reset."""
        self.abandon()
        self._linger = self.REFUSED_LINGER
        self.transport.write(response)
        self.loseConnection()

    # -- reading the body under the request's control -----------------------

    def pause_body(self, reason: str) -> None:
        """Stop reading from the client until ``resume_body(reason)``."""
        self._body_pauses.add(reason)
        if self.transport is not None:
            self._networkProducer.pauseProducing()
        self._body_reading_changed()

    def resume_body(self, reason: str) -> None:
        self._body_pauses.discard(reason)
        if not self._body_pauses and not self._waitingForTransport and self.transport is not None:
            self._networkProducer.resumeProducing()
        self._body_reading_changed()

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._body_reading_changed()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._body_pauses and not self._handlingRequest:
            self._networkProducer.pauseProducing()
        self._body_reading_changed()

    def abandon(self) -> None:
        """The current request is answered before its body was read: drop the
        rest of the input and close after the answer."""
        self._abandoned = True
        self.persistent = False
        self._body_pauses.clear()
        self._stop_clocks()

    # -- slow clients ----------------------------------------------------------

    def _start_head_clock(self) -> None:
        if self.header_timeout is not None and self.clock is not None:
            self._head_call = self.clock.callLater(self.header_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        """The request line and headers did not all arrive in time: 408 (as
        Apache's mod_reqtimeout answers) and close."""
        self._head_call = None
        log.info("HTTP request head not complete after {t}s: 408", t=self.header_timeout)
        self.refuse(canned(b"408 Request Timeout", "the request line and headers took too long"))

    def _start_body_clock(self) -> None:
        if self.body_min_rate is None or self.clock is None:
            return
        self._body_rate = RateFloor(
            self.clock, self.body_min_rate, self.body_rate_window, self._body_too_slow
        )
        self._body_rate.start(self._reading_body())

    def _reading_body(self) -> bool:
        """Whether the server is reading the body now: paused for a consumer,
        an unclaimed body or its own unsent answers, it is not, and the
        client cannot be blamed for sending slowly."""
        return not self._body_pauses and not self._waitingForTransport

    def _body_reading_changed(self) -> None:
        # Outside a body (a GET's answer filling and draining the transport
        # many times a second) there is no meter and no held idle timer.
        if not self._in_body:
            return
        if self._body_rate is not None:
            self._body_rate.reading(self._reading_body())
        held = "consumer" in self._body_pauses or self._waitingForTransport
        if held and self._in_body and self._idle_held is None and self.timeOut:
            # Backpressure: the client is silent because we stopped reading.
            self._idle_held = self.setTimeout(None)
        elif not held and self._idle_held is not None:
            self._release_idle_timer()

    def _release_idle_timer(self) -> None:
        held, self._idle_held = self._idle_held, None
        if held is not None:
            self.setTimeout(held)

    def _body_too_slow(self) -> None:
        """The body came in below ``body_min_rate``: its handler gets a 408
        (it answers, which closes the connection, since the body is unread)."""
        self._body_rate = None
        log.info(
            "HTTP request body slower than {rate} bytes/s over {t}s: 408",
            rate=self.body_min_rate, t=self.body_rate_window,
        )  # fmt: skip
        if self.requests:
            self.requests[-1].fail_body(HttpError(408, "the request body arrived too slowly"))

    def _stop_clocks(self) -> None:
        self._in_body = False
        call, self._head_call = self._head_call, None
        if call is not None and call.active():
            call.cancel()
        meter, self._body_rate = self._body_rate, None
        if meter is not None:
            meter.stop()
        self._release_idle_timer()

    # -- the client closing its side -------------------------------------------

    def readConnectionLost(self) -> None:
        """The client shut down its sending side (TCP half-close).  After a
        complete request that is still being answered, the answer goes out
        and the connection closes after it; otherwise (between requests, in
        the middle of one, or lingering after an early answer) nothing more
        can come, so the connection closes now."""
        if self._handlingRequest and not self._abandoned and self.requests:
            self._read_closed = True
            return
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our sending side is shut (the linger after an early answer): keep
        reading until the client closes or ``LINGER`` runs out."""

    def loseConnection(self) -> None:
        """After an early answer, close only our side and keep reading (and
        dropping) what the client still sends, for at most ``LINGER``
        seconds: closing with unread input makes the kernel send a reset,
        which can destroy the answer before the client reads it.  Over TLS
        the whole connection is closed the TLS way instead (a TCP half-close
        under TLS would cut the records TLS still has to send)."""
        self._stop_clocks()
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if self.isSecure():
            half_close = None
        if not self._abandoned or half_close is None:
            super().loseConnection()
            return
        self._networkProducer.unregisterProducer()
        self._networkProducer.resumeProducing()
        self.setTimeout(self._linger)
        half_close()

    def timeoutConnection(self) -> None:
        if self._abandoned and self.transport is not None:
            self.transport.abortConnection()
            return
        super().timeoutConnection()

    # -- HTTPChannel hooks ---------------------------------------------------

    def allHeadersReceived(self) -> None:
        self._stop_clocks()
        request = self.requests[-1]
        hosts = request.requestHeaders.getRawHeaders(b"Host") or []
        if len(hosts) > 1 or (not hosts and self._version == b"HTTP/1.1"):
            # RFC 9112 section 3.2: 400 for an HTTP/1.1 request without
            # Host, and for any request with more than one.
            self.refuse(canned(b"400 Bad Request", "a request needs exactly one Host header"))
            return
        if hosts and not _HOST.fullmatch(hosts[0]):
            # The same section: 400 for a Host that is not a host[:port]
            # (a space, a broken IPv6 literal, a byte outside ASCII...).
            self.refuse(canned(b"400 Bad Request", "the Host header is not a valid host[:port]"))
            return
        if self.length is not None and self.length > MAX_CHUNK_SIZE:
            # As for a chunk size: no file can take the body, so refuse it
            # now rather than answer 100 Continue and wait for 10^20 bytes.
            self.refuse(canned(b"413 Content Too Large", "the body is larger than any file can be"))
            return
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)
        if self._command == b"PUT" and not request.declares_length():
            # nginx's answer, before anything else: a PUT must say how long
            # its body is.  Read as the empty body RFC 9112 (6.3) makes of
            # it, an HTTP/1.0 client sending a file until it closes (curl
            # -0 -T FILE -H 'Content-Length:') stored an empty file.
            self.refuse(
                canned(
                    b"411 Length Required",
                    "a PUT needs Content-Length (or Transfer-Encoding: chunked)",
                )
            )
            return
        request.headers_received(self._command, self._path, self._version)
        if self.length != 0 and not self._abandoned and not request.body_complete:
            self._in_body = True
            self._start_body_clock()
            self._body_reading_changed()

    def allContentReceived(self) -> None:
        if self._abandoned:
            return
        self._stop_clocks()
        super().allContentReceived()

    def dataReceived(self, data: bytes) -> None:
        if self._abandoned:
            return
        if self.admit is not None and not self._admit():
            return
        if self.line_mode and self._head_call is None and not self.transport.disconnecting:
            self._start_head_clock()
        elif self._body_rate is not None:
            self._body_rate.received(len(data))
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._abandoned:
            return  # the rest of a buffer read before a refusal
        if line[:1] in (b" ", b"\t") and not getattr(self, "_HTTPChannel__first_line", 1):
            # A folded header line (obs-fold) or whitespace before the first
            # header: RFC 9112 section 5.2 allows rejecting it, which leaves
            # no room for two parsers to disagree about the headers.
            self.refuse(canned(b"400 Bad Request", "folded header lines are not accepted"))
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._abandoned:
            return
        super().rawDataReceived(data)

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok = super()._maybeChooseTransferDecoder(header, data)
        if ok and type(self._transferDecoder) is http._ChunkedTransferDecoder:
            self._transferDecoder = BoundedChunkedDecoder(
                self.requests[-1].handleContentChunk, self._finishRequestBody
            )
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's answer to a request it cannot parse was a bare
        ``400 Bad Request`` with no reason and no Content-Length: say what
        was wrong, as every other refusal does, then drop the rest."""
        if self._abandoned:
            return
        # Too many or too large header fields are 431 (RFC 6585, 5), as a
        # single overlong line is (``lineLengthExceeded``).
        status = b"431 Request Header Fields Too Large"
        if self._receivedHeaderCount > self.maxHeaders:
            reason = f"too many header fields (at most {self.maxHeaders})"
        elif self._receivedHeaderSize > self.totalHeadersSize:
            reason = f"the request head is too large (at most {self.totalHeadersSize} bytes)"
        elif not self.line_mode:
            status, reason = b"400 Bad Request", "malformed chunked body"
        else:
            status = b"400 Bad Request"
            reason = "malformed request line, header field, Content-Length or Transfer-Encoding"
        # The short linger of a refusal: what follows is unparseable too.
        self.refuse(canned(status, reason))

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header line over ``MAX_LENGTH``: say which (414 or
        431) and close, instead of LineReceiver's silent close.  A refusal
        like the others (``refuse``): the client's input is drained for a
        moment, since closing with its body unread would reset the
        connection under the answer."""
        if getattr(self, "_HTTPChannel__first_line", 1):
            answer = canned(b"414 URI Too Long", "the request line is too long")
        else:
            answer = canned(b"431 Request Header Fields Too Large", "a header line is too long")
        self.refuse(answer)

    def requestDone(self, request) -> None:
        self._body_pauses.clear()
        super().requestDone(request)
        if self._read_closed and not self._handlingRequest and self.transport is not None:
            # The client half-closed after its last request: nothing more
            # will come once what it pipelined is answered.
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self._stop_clocks()
        super().connectionLost(reason)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()


_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?"
)
"""RFC 9110's Host: uri-host [":" port], the host an IP literal in brackets
or a reg-name (possibly empty), the port digits."""


def behind_proxy_protocol(transport) -> bool:
    """Whether ``transport`` (or one it wraps, e.g. TLS over PROXY) reads a
    PROXY-protocol header first: the client's address is known only once
    the connection's first bytes have been passed on."""
    for _ in range(4):
        if transport is None:
            return False
        if isinstance(transport, HAProxyProtocolWrapper):
            return True
        transport = getattr(transport, "transport", None)
    return False


REASONS = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    460: b"Checksum Mismatch",
    507: b"Insufficient Storage",
}
"""Reason phrases of statuses wsfs answers that Twisted's table lacks (429,
431 and tus's 460 went out as "Unknown Status") or names as RFC 2616 did;
these are RFC 9110's (RFC 6585's for 429 and 431, tus 1.0's for 460)."""


class StreamingRequest(server.Request):
    """A request whose body is streamed to whoever claims it.

    The site's ``dispatch(request)`` is called once the method and target are
    known: at the end of the headers when a body follows, else when the
    (empty) body is complete.  ``method``, ``uri``, ``path`` and ``args`` are
    set by then.
    """

    defaultContentType = None

    def __init__(self, channel, *args, **kwargs) -> None:
        super().__init__(channel, *args, **kwargs)
        self.content = None
        self.body_length: int | None = 0
        self.body_received = 0
        self.body_complete = False
        #: Refused 501 for a method wsfs does not know (``check_method_known``):
        #: the client's doing, which the metrics keep out of the 5xx answers.
        self.unknown_method = False
        self.expects_continue = False
        self._continue_sent = False
        self._dispatched = False
        self._sink: IConsumer | None = None
        self._valve: _BodyValve | None = None
        self._buffer: list[bytes] = []
        self._discard_limit: int | None = None
        self._body_waiters: list[Deferred] = []
        self._body_error: BaseException | None = None
        self._lasting: set[bytes] = set()

    def declares_length(self) -> bool:
        """Whether the request says how long its body is: Content-Length
        (0 included) or chunked.  Without either, RFC 9112 (6.3) makes its
        body empty, but a client that means to send one (an HTTP/1.0 client
        sending until it closes) would see its bytes dropped."""
        return self.body_length != 0 or self.requestHeaders.hasHeader(b"Content-Length")

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        super().setResponseCode(code, message if message is not None else REASONS.get(code))

    # -- channel side ----------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        self.content = None
        self.body_length = length

    def headers_received(self, command: bytes, uri: bytes, version: bytes) -> None:
        self.method, self.uri, self.clientproto = command, uri, version
        path, _, query = uri.partition(b"?")
        self.path = path
        self.args = parse_qs(query, 1) if query else {}
        self.site = self.channel.site
        self.prepath, self.postpath = [], []
        expect = self.requestHeaders.getRawHeaders(b"Expect") or []
        self.expects_continue = version == b"HTTP/1.1" and any(
            e.lower() == b"100-continue" for e in expect
        )
        if self.body_length != 0:
            self.channel.pause_body("unclaimed")
            self._dispatch()

    def handleContentChunk(self, data: bytes) -> None:
        self.body_received += len(data)
        if self._sink is not None:
            self._sink.write(data)
        elif self._discard_limit is not None:
            if self.body_received > self._discard_limit:
                self.fail_body(HttpError(413, "this request must not carry a body that large"))
        elif self._body_error is None:
            self._buffer.append(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in (twisted calls this name at end of body)."""
        self.body_complete = True
        if self._sink is not None:
            self._detach_sink()
        if not self._dispatched:
            self._dispatch()
        waiters, self._body_waiters = self._body_waiters, []
        if self._body_error is None:
            for d in waiters:
                d.callback(self.body_received)

    def connectionLost(self, reason) -> None:
        # Gone first: the body's waiters fail at once, and the handler's
        # errback (the site's ``_failed``) must see a request nobody is left
        # to answer, not answer it (a 500 logged with a BodyLost traceback,
        # then a write to the closed socket).
        self._disconnected = True
        self._lose_body(BodyLost("the client closed the connection"))
        super().connectionLost(reason)

    def _dispatch(self) -> None:
        self._dispatched = True
        self.setHeader(b"Server", b"wsfs")
        self.setHeader(b"Date", http.datetimeToString())
        self.site.dispatch(self)

    # -- the body, for handlers ------------------------------------------------

    def stream_body(self, consumer: IConsumer) -> Deferred:
        """Send the body into ``consumer`` (registering a push producer on it
        that pauses the client); fires with the byte count at its end."""
        if self._body_error is not None:
            return fail(self._body_error)
        if self.body_complete and not self._buffer:
            return succeed(self.body_received)
        self._valve = _BodyValve(self.channel)
        consumer.registerProducer(self._valve, True)
        self._sink = consumer
        buffered, self._buffer = self._buffer, []
        for chunk in buffered:
            consumer.write(chunk)
        if self.body_complete:
            self._detach_sink()
            return succeed(self.body_received)
        d = self.when_body_complete()
        self._claim()
        return d

    def discard_body(self, limit: int = DISCARD_LIMIT) -> Deferred:
        """Read and drop a small body (more than ``limit`` bytes: 413)."""
        if self._body_error is not None:
            return fail(self._body_error)
        self._buffer = []
        if self.body_received > limit:
            # Not ``fail(self._body_error)``: a body that is complete already
            # cannot be failed, so fail_body records no error for it.
            error = HttpError(413, "this request must not carry a body that large")
            self.fail_body(error)
            return fail(error)
        if self.body_complete:
            return succeed(self.body_received)
        self._discard_limit = limit
        d = self.when_body_complete()
        self._claim()
        return d

    def require_no_body(self, error: HttpError) -> Deferred:
        """Read a body that must be empty; fails with ``error`` if it is not:
        at once for a declared length (nothing is read; the connection
        closes after the answer), else once a chunked body brings a byte."""
        if self.body_length:
            return fail(error)

        def not_empty(failure):
            failure.trap(HttpError)
            if failure.value.status != 413:
                return failure
            raise error from None

        return self.discard_body(0).addErrback(not_empty)

    def when_body_complete(self) -> Deferred:
        """Fires with the body length once it is all in; fails if it never will."""
        if self._body_error is not None:
            return fail(self._body_error)
        if self.body_complete:
            return succeed(self.body_received)
        d: Deferred = Deferred()
        self._body_waiters.append(d)
        return d

    def fail_body(self, error: BaseException) -> None:
        """Stop taking the body: its waiters fail with ``error``; nothing more
        reaches the consumer."""
        self._lose_body(error)
        channel = getattr(self, "channel", None)  # Twisted deletes it once finished
        if channel is not None and not self.body_complete:
            channel.pause_body("failed")

    def _lose_body(self, error: BaseException) -> None:
        if self._body_error is not None or self.body_complete:
            return
        self._body_error = error
        self._buffer = []
        if self._sink is not None:
            self._detach_sink()
        waiters, self._body_waiters = self._body_waiters, []
        for d in waiters:
            d.errback(Failure(error))

    def _claim(self) -> None:
        if self.expects_continue and not self._continue_sent and not self.body_complete:
            self._continue_sent = True
            self.channel._send100Continue()
        self.channel.resume_body("unclaimed")

    def _detach_sink(self) -> None:
        sink, self._sink = self._sink, None
        valve, self._valve = self._valve, None
        if valve is not None:
            valve.detach()
        if sink is not None:
            sink.unregisterProducer()

    # -- answering -------------------------------------------------------------

    @property
    def gone(self) -> bool:
        """The client disconnected, or the answer is complete."""
        return bool(self._disconnected or self.finished)

    def set_lasting_header(self, name: bytes, value: bytes) -> None:
        """Set a header every answer to this request carries, errors included
        (tus: ``Tus-Resumable`` on every response), where ``respond`` would
        otherwise drop it with the headers of a success that is not going out."""
        self._lasting.add(name.lower())
        self.setHeader(name, value)

    def set_headers(self, headers: Iterable[tuple[str, str]]) -> None:
        for name, value in headers:
            self.setHeader(name.encode("latin-1"), value.encode("latin-1"))

    def before_answer(self) -> None:
        """Call before answering: an answer sent before the body was read
        closes the connection (the rest of the body is never read)."""
        if not self.body_complete and getattr(self, "channel", None) is not None:
            self.fail_body(BodyLost("answered before the body was read"))
            self.channel.abandon()
            self.setHeader(b"Connection", b"close")

    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send a complete, small answer (nothing if the client is gone)."""
        if self.gone:
            return
        if self.startedWriting:
            self.abort()
            return
        self.before_answer()
        if status >= 400:
            self._reset_headers()
        self.setResponseCode(status)
        self.set_headers(headers)
        if body and content_type:
            self.setHeader(b"Content-Type", content_type.encode("latin-1"))
        if status not in (204, 304):
            # A 304's length would be the representation's; a 204 has none.
            self.setHeader(b"Content-Length", b"%d" % len(body))
        if body:
            self.write(body)
        self.finish()

    def _reset_headers(self) -> None:
        """Forget headers set for an answer that is not going out after all
        (an error found after the download's headers were prepared)."""
        names = (b"Server", b"Date", b"Connection", b"Strict-Transport-Security", *self._lasting)
        keep = [(name, self.responseHeaders.getRawHeaders(name)) for name in names]
        self.responseHeaders = Headers()
        for name, values in keep:
            if values:
                self.responseHeaders.setRawHeaders(name, values)

    def respond_error(self, error: HttpError) -> None:
        """Answer ``error`` as a short text/plain page."""
        self.respond(
            error.status,
            (error.message + "\n").encode("utf-8", "replace"),
            headers=error.headers,
        )

    def abort(self) -> None:
        """Drop the connection: the status line is sent, so the only way to tell
        the client the body is incomplete is to cut it short."""
        if getattr(self, "channel", None) is not None and self.channel.transport is not None:
            self.channel.transport.abortConnection()

    def on_gone(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when the client disconnects before the answer ends."""
        self.notifyFinish().addErrback(lambda _: callback())
