"""FTP data connections: passive listeners, active connects, and the channel.

A data connection is opened before the command that uses it is known
(PASV, then RETR or STOR), so a ``DataChannel`` starts with its reads paused
and waits to be claimed by a transfer.  Passive listeners accept exactly one
connection, and only from the control connection's peer: anything else is
dropped on arrival, so a third party can neither steal a transfer nor use the
server to bounce data (RFC 2577).  Nothing here blocks the control
connection: opening a passive port answers at once, and the transfer that
needs the connection waits for it with a timeout.  A passive port that no
connection reaches and no transfer waits on is closed after the same
timeout (``PassiveListener.expect``, vsftpd's ``accept_timeout``): a client
that sends PASV and nothing else does not hold a port of the range for as
long as its control connection lives.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.ftp.addresses import same_host
from wsfront.transfer.shares import fair_share
from wsstorage.framing import direct_socket, send_iov, tcp_transport

log = Logger()

#: What the data connections moving files may buffer, together, in this
#: process: each gets an equal share as its socket read size and as the
#: send buffer past which it pauses its producer (Twisted's
#: ``bufferSize``), between STREAM_MIN (Twisted's default) and STREAM_MAX.
#: With Twisted's 64 KiB buffer and 128 KiB send limit a download cost a
#: pause, a resume and two sends (two reactor turns) per 256 KiB storage
#: frame: 9 sends and 729 Python calls per MiB; with 1 MiB, 2 sends and 348
#: calls.  Alone (up to 8 at once) a transfer gets 1 MiB; 200 at once get
#: 64 KiB each, as before.  Shares are taken again on every resume; a
#: client that stalls keeps what it was given until then (plus the one
#: storage frame that crossed the line), so 200 stalled downloads hold at
#: most about 8 MiB * (1 + ln(200 / 8)) = 34 MiB here, against 12.5 MiB
#: with Twisted's default (and 50 MiB of storage frames either way).
STREAM_BUDGET = 8 << 20
STREAM_MAX = 1 << 20
STREAM_MIN = 64 << 10
#: Most bytes one send() is offered (Twisted: 128 KiB); what is buffered is
#: bounded by the share above, not by this.
STREAM_SEND_LIMIT = 1 << 20
_streams = 0


def stream_share(active: int) -> int:
    """Buffer and read size for one of ``active`` data connections moving files."""
    return fair_share(STREAM_BUDGET, active, STREAM_MIN, STREAM_MAX)


class DataConnectionFailed(Exception):
    """No data connection could be made (FTP 425)."""


@implementer(IPushProducer, IHandshakeListener, IHalfCloseableProtocol)
class DataChannel(Protocol):
    """One data connection.  Reads stay paused until a transfer claims it:
    ``receive_into`` (uploads), ``send_from`` / ``write`` (downloads, listings).

    ``closed`` fires with the reason (an exception instance: ConnectionDone
    for a clean close) when the connection is gone.  Under TLS a close is
    clean only when a close_notify ended the TLS stream: the client's, or
    ours once we closed the connection after sending it (``close``).  A
    FIN without one (a killed client) is ConnectionLost and a reset stays
    the TCP layer's error, where Twisted's TLS layer reports both as
    ConnectionLost.

    With PROT P the transfer calls ``start_tls`` before any byte moves: the
    server side of the handshake, whichever end opened the TCP connection.
    ``watch_stall`` cuts a connection on which nothing moved either way for
    a while (the client stopped reading or sending without closing).
    """

    outgoing = False
    """True for an active-mode connection (we connected to the client)."""

    tls = False
    """True once ``start_tls`` protected the connection (PROT P)."""

    def __init__(self, on_connect: Callable[[DataChannel], None] | None = None) -> None:
        self._on_connect = on_connect
        self._clock = None
        self._stall_timeout = 0.0
        self._stall_call = None
        self._last_activity = 0.0
        self._on_stall: list[Callable[[], None]] = []
        self.stalled = False
        self.reading_paused = False
        self._handshake: Deferred | None = None
        self.closed: Deferred = Deferred()
        self.received = 0
        self.sent = 0
        self._sink: Callable[[bytes], None] | None = None
        self._discard = False
        self._resume_waiters: list[Deferred] = []
        self._paused = False
        self.is_closed = False
        self.claimed = False
        self._tcp = None  # the TCP transport tuned by begin_stream
        #: Under TLS: why the TCP connection below it ended.
        self.tcp_reason: BaseException | None = None
        self._sent_close_notify = False
        self._closing = False  # close() ran: our close_notify ends the data
        self._tls_layer: TLSMemoryBIOProtocol | None = None
        self._require_reuse = False
        self._session_of = None
        #: The TLS handshake did not resume the session ``require_session_of`` named.
        self.reuse_refused = False

    def connectionMade(self) -> None:
        # Reads stay paused until a transfer claims the connection.  One
        # already waiting for it (the STOR or RETR a client sends before it
        # connects, as clients of many small files do) claims it here, in
        # ``on_connect``: pausing first only had it resumed at once, two
        # epoll changes and a reactor round of Python per transfer.  Nothing
        # is read before the reactor's next turn either way.
        if self._on_connect is not None:
            on_connect, self._on_connect = self._on_connect, None
            on_connect(self)
        if not self.claimed:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._sink is not None:
            self.received += len(data)
            self.activity()
            self._sink(data)

    def readConnectionLost(self) -> None:
        """The client shut down its sending side (``shutdown(SHUT_WR)``, a
        FIN) on plain TCP; under TLS the TLS layer is the socket's protocol
        and a FIN ends the connection as before.  During a download or a
        listing nothing was to come from the client: the transfer goes on,
        and ``close`` ends the connection once all is sent (Twisted closed
        it at once, and a client that half-closes after RETR got 0 bytes
        and a 426).  Anything else, an upload above all, ends as the FIN
        ended it before: the end of the upload (stream mode), the
        connection closed and ``closed`` fired with ConnectionDone."""
        if self._sink is _drop:
            return
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Not asked for: this side always closes whole (``close``)."""

    def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:
        self.is_closed = True
        self.end_stream()
        self._cancel_stall()
        self.handshakeCompleted()  # nobody waits for a handshake that can't come
        waiters, self._resume_waiters = self._resume_waiters, []
        for d in waiters:
            d.callback(None)
        # The exception itself, not the Failure: a Failure would errback.
        value = getattr(reason, "value", reason)
        if self.tls:
            value = self._tls_close_reason()
        self.closed.callback(value)

    def _tls_close_reason(self) -> BaseException:
        """What ended a TLS connection (see the class docstring); called
        while the TLS layer still holds its OpenSSL connection."""
        handle = self._tls_handle()
        received = handle is not None and bool(handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        if received or (self._sent_close_notify and self.fin_below_tls):
            return net_error.ConnectionDone("closed after a TLS close_notify")
        if not self.fin_below_tls:
            return self.tcp_reason
        return net_error.ConnectionLost("closed without a TLS close_notify")

    @property
    def fin_below_tls(self) -> bool:
        """Under TLS: the TCP connection below ended with a FIN (or its end
        was not seen), not a reset or a socket error."""
        tcp = self.tcp_reason
        return tcp is None or isinstance(tcp, net_error.ConnectionDone)

    def _tls_handle(self):
        """The OpenSSL connection (None once the TLS layer dropped it)."""
        layer = self._tls_layer
        return getattr(layer, "_tlsConnection", None) if layer is not None else None

    # -- buffer sizes ---------------------------------------------------

    def begin_stream(self) -> None:
        """This connection moves a file: count it among the streams sharing
        STREAM_BUDGET and take its share (the TCP transport below TLS, if
        any; a transport that is not TCP is left alone)."""
        global _streams
        if self._tcp is not None or self.is_closed:
            return
        tcp = tcp_transport(self.transport)
        if tcp is None or not isinstance(getattr(tcp, "bufferSize", None), int):
            return
        self._tcp = tcp
        _streams += 1
        tcp.SEND_LIMIT = STREAM_SEND_LIMIT
        self.reshare()

    def reshare(self) -> None:
        """Take this stream's current share (called on every resume, so a
        stream that started alone gives back its 1 MiB as others start)."""
        if self._tcp is not None:
            self._tcp.bufferSize = stream_share(_streams)

    def end_stream(self) -> None:
        global _streams
        if self._tcp is not None:
            self._tcp = None
            _streams -= 1

    # -- TLS and stalls -----------------------------------------------

    def start_tls(self, options) -> None:
        """Protect this connection (PROT P): we are the TLS server even when
        we opened the TCP connection (active mode).  Bytes the client sent
        first wait in the socket, since nothing was read yet: reads are
        paused, or this runs in ``connectionMade`` (``on_connect``), before
        the reactor's first read."""
        self._handshake = Deferred()
        self.tls = True
        self.transport.startTLS(options, not self.outgoing)
        layer = getattr(self.transport, "protocol", None)
        if isinstance(layer, TLSMemoryBIOProtocol):
            # Kept: the TCP transport forgets it before connectionLost.
            self._tls_layer = layer
            lost = layer.connectionLost

            def below(reason: Failure) -> None:
                self.tcp_reason = reason.value
                lost(reason)

            layer.connectionLost = below
            shutdown = layer._shutdownTLS

            def shutdown_then_close() -> None:
                # Bytes written before the handshake wait in the TLS layer,
                # which sends our close_notify only once they are out (here),
                # after ``close`` looked: the TCP close belongs here too.
                shutdown()
                if self._closing:
                    self._close_below_tls()

            layer._shutdownTLS = shutdown_then_close

    def require_session_of(self, control) -> None:
        """Before ``start_tls``: refuse (abort) this connection unless its
        handshake resumes the TLS session of ``control``, an OpenSSL
        connection (vsftpd's ``require_ssl_reuse``: the data connection
        comes from the client that logged in, not from whoever got to the
        passive port).  A resumed TLS 1.2 session shares its master secret
        with the session it resumes; a full handshake makes a new one."""
        self._require_reuse = True
        self._session_of = control

    def _resumed_required_session(self) -> bool:
        handle, control = self._tls_handle(), self._session_of
        if handle is None or control is None:
            return False
        try:
            return handle.master_key() == control.master_key()
        except SSL.Error:
            return False

    def handshakeCompleted(self) -> None:
        if self._require_reuse and not self.is_closed and not self._resumed_required_session():
            self.reuse_refused = True
            self.abort()
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.callback(None)

    def watch_stall(
        self, clock, timeout: float, on_stall: Callable[[], None] | None = None
    ) -> None:
        """Cut the connection (after calling ``on_stall``) once no byte has
        moved either way for ``timeout`` seconds."""
        if on_stall is not None:
            self._on_stall.append(on_stall)
        if self._clock is not None or timeout <= 0 or self.is_closed:
            return
        self._clock = clock
        self._stall_timeout = timeout
        self.activity()
        self._stall_call = clock.callLater(timeout, self._check_stall)

    def on_stall(self, hook: Callable[[], None]) -> None:
        self._on_stall.append(hook)

    def activity(self) -> None:
        if self._clock is not None:
            self._last_activity = self._clock.seconds()

    def _check_stall(self) -> None:
        self._stall_call = None
        if self.is_closed:
            return
        if self.reading_paused:
            self.activity()  # waiting on our side (storage) is not the client stalling
        idle = self._clock.seconds() - self._last_activity
        if idle < self._stall_timeout:
            self._stall_call = self._clock.callLater(self._stall_timeout - idle, self._check_stall)
            return
        self.stalled = True
        hooks, self._on_stall = self._on_stall, []
        for hook in hooks:
            hook()
        self.abort()

    def _cancel_stall(self) -> None:
        call, self._stall_call = self._stall_call, None
        if call is not None and call.active():
            call.cancel()

    # -- uploads -------------------------------------------------------

    def receive_into(self, consumer: IConsumer, decode: Callable[[bytes], bytes] | None) -> None:
        """Relay every byte that arrives into ``consumer`` (after ``decode``),
        with the connection registered as its push producer."""
        write = consumer.write

        def sink(data: bytes) -> None:
            if decode is not None:
                data = decode(data)
            if data:
                write(data)

        self._sink = sink
        self.claimed = True
        self.begin_stream()
        self.transport.resumeProducing()
        consumer.registerProducer(_ReadPacer(self), True)

    # -- downloads -----------------------------------------------------

    def watch_for_close(self) -> None:
        """Read (and drop) what the client sends during a download or a
        listing: a reset from the client ends the transfer at once.  Its FIN
        alone does not (``readConnectionLost``: a client may half-close and
        still read); a client that closed its socket whole is noticed at the
        next write, which its host answers with a reset, or by the stall
        watch while nothing is written."""
        self._sink = _drop
        self.claimed = True
        self.transport.resumeProducing()

    def consumer(self, encode: Callable[[bytes], bytes] | None) -> IConsumer:
        """An IConsumer writing to this connection (after ``encode``), with
        the buffer share of a stream (``begin_stream``)."""
        self.begin_stream()
        return _ChannelConsumer(self, encode)

    def write_paced(self, data: bytes) -> Deferred:
        """Write ``data``; fires once the connection can take more (listings
        are written page by page without holding a whole directory)."""
        if self.is_closed:
            return fail(net_error.ConnectionDone("data connection closed"))
        if not self._registered_self():
            self.transport.registerProducer(self, True)
            self._producer_registered = True
        self.sent += len(data)
        self.activity()
        self.transport.write(data)
        if not self._paused:
            return succeed(None)
        d: Deferred = Deferred()
        self._resume_waiters.append(d)
        return d

    def _registered_self(self) -> bool:
        return self._producer_registered

    _producer_registered = False

    def close(self) -> Deferred:
        """Flush and close; fires with the reason once closed.  A TLS
        connection closes only after its handshake (Twisted aborts one
        closed before it: an empty listing would reach the client as a
        reset); the stall watch bounds that wait.

        Under TLS our close_notify ends the data: once it is sent, the TCP
        connection closes as soon as its buffer is flushed, without waiting
        for the client's close_notify (Twisted would).  A client that reads
        to our close_notify and waits for the 226 before it closes its end
        got 426 after the stall timeout."""
        if self._handshake is not None and not self.is_closed:
            self._handshake.addCallback(lambda _: self.close())
            return self.closed_reason()
        if not self.is_closed:
            if self._registered_self():
                self._producer_registered = False
                self.transport.unregisterProducer()
            self._closing = True
            self.transport.loseConnection()
            if self.tls:
                self._close_below_tls()
        return self.closed_reason()

    def _close_below_tls(self) -> None:
        """Close the TCP connection under TLS once our close_notify is in
        its buffer (it is there unless TLS still holds unsent data)."""
        handle, layer = self._tls_handle(), self._tls_layer
        if handle is None or not handle.get_shutdown() & SSL.SENT_SHUTDOWN:
            return
        if self._sent_close_notify:
            return  # closed below already
        self._sent_close_notify = True
        layer.transport.loseConnection()  # below TLS: flush, then FIN

    def abort(self) -> None:
        """Drop the connection now, unsent bytes included."""
        if not self.is_closed:
            self.transport.abortConnection()

    def closed_reason(self) -> Deferred:
        """A fresh Deferred firing with the close reason (many may wait)."""
        d: Deferred = Deferred()

        def relay(reason):
            d.callback(reason)
            return reason

        self.closed.addBoth(relay)
        return d

    # IPushProducer, for write_paced.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        waiters, self._resume_waiters = self._resume_waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


def _drop(data: bytes) -> None:
    return None


@implementer(IPushProducer)
class _ReadPacer:
    """What an upload's consumer pauses: the data connection's reading,
    noted on the channel so the stall watch knows the wait is ours."""

    def __init__(self, channel: DataChannel) -> None:
        self._channel = channel

    def pauseProducing(self) -> None:
        self._channel.reading_paused = True
        self._channel.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._channel.reading_paused = False
        self._channel.activity()
        self._channel.reshare()
        self._channel.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._channel.transport.stopProducing()


@implementer(IPushProducer)
class _SendPacer:
    """A download's producer as its data connection sees it: takes the
    stream's buffer share again before each resume."""

    def __init__(self, channel: DataChannel, producer) -> None:
        self._channel = channel
        self._producer = producer

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._channel.reshare()
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


@implementer(IConsumer)
class _ChannelConsumer:
    """What a ``ReadStream`` writes into: the data connection, through the
    TYPE A encoder if there is one, counting bytes."""

    def __init__(self, channel: DataChannel, encode: Callable[[bytes], bytes] | None) -> None:
        self._channel = channel
        self._encode = encode

    def registerProducer(self, producer, streaming: bool) -> None:
        if self._channel.is_closed:
            producer.stopProducing()
            return
        if streaming and self._channel._tcp is not None:
            producer = _SendPacer(self._channel, producer)
        self._channel.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if not self._channel.is_closed:
            self._channel.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._encode is not None:
            data = self._encode(data)
        channel = self._channel
        channel.sent += len(data)
        channel.activity()
        transport = channel.transport
        sock = direct_socket(transport) if channel._tcp is transport else None
        if sock is not None and data:
            # Plain TCP with nothing queued: straight into the socket, as
            # far as the kernel takes it; only the rest waits in (and
            # counts against) the transport's buffer share.  Under TLS
            # (PROT P) there is no direct socket: the write encrypts.
            send_iov(transport, sock, [data])
        else:
            transport.write(data)


class _PassiveFactory(Factory):
    """Accepts one data connection from the expected peer per transfer."""

    noisy = False  # two log lines per transfer otherwise

    def __init__(self, listener: PassiveListener) -> None:
        self._listener = listener

    def buildProtocol(self, addr):
        return self._listener._accept(addr)


class _Refused(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()


class PassiveListener:
    """A listening port for one passive data connection (PASV/EPSV) at a
    time.

    With ``keep_open`` (ports from the system's ephemeral range, which is
    not scarce) the port stays open after it accepted its connection,
    refusing any other, and the control connection may ``rearm`` it for
    its next PASV/EPSV: a client fetching many small files then costs no
    socket, bind, listen and close (and no port log lines) per file.
    Without it (a configured ``--passive-ports`` range, where every port
    held counts) the port closes at once, as before.

    ``on_closed`` is called once, when the port stops listening (the
    per-address share of the range counts ports held, ``passive_share``).
    """

    def __init__(self, peer_host: str, keep_open: bool = False) -> None:
        self.peer_host = peer_host
        self.keep_open = keep_open
        self.port = None
        self.channel: DataChannel | None = None
        self.connected: DataChannel | None = None
        self._waiters: list[Deferred] = []
        self.refused = 0
        self._park_call = None
        #: Parked: the park timer closes the port when it fires.
        self._parked = False
        #: The listening port's number, noted once when it is bound (a
        #: client of many small files sends a PASV/EPSV for each).
        self.port_number = 0
        self.on_closed: Callable[[], None] | None = None
        #: Armed by ``expect``: no connection and no waiting transfer yet.
        self._expecting = False
        self._accept_call = None
        self._unreached: Callable[[PassiveListener], None] | None = None
        #: Whether a command of the control connection is running (a
        #: transfer command's catalog work comes before its ``wait``).
        self._held: Callable[[], bool] | None = None
        self._accept_clock = None
        self._accept_seconds = 0.0

    def _accept(self, addr) -> Protocol:
        host = getattr(addr, "host", "")
        if self.channel is not None or not same_host(host, self.peer_host):
            self.refused += 1
            log.warn(
                "refused a data connection from {host} (control peer {peer})",
                host=host,
                peer=self.peer_host,
            )
            return _Refused()
        self._expecting = False
        self.channel = DataChannel(self._connected)
        if not self.keep_open:
            self.stop_listening()
        return self.channel

    def _connected(self, channel: DataChannel) -> None:
        self.connected = channel
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(channel)

    def wait(self, clock, timeout: float) -> Deferred:
        """Fires with the DataChannel once the client connects (or at once
        if it already has); DataConnectionFailed after ``timeout``."""
        if self.connected is not None:
            return succeed(self.connected)
        self._expecting = False  # the transfer's own timeout bounds the wait now
        d: Deferred = Deferred(lambda _: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        d.addTimeout(timeout, clock)

        def timed_out(failure):
            failure.trap(net_error.TimeoutError, DeferredTimeout)
            raise DataConnectionFailed("the data connection did not arrive in time")

        return d.addErrback(timed_out)

    def expect(
        self,
        clock,
        seconds: float,
        unreached: Callable[[PassiveListener], None],
        held: Callable[[], bool] | None = None,
    ) -> None:
        """Close the port if, ``seconds`` from now, no connection reached it
        and no transfer is waiting for one, then call ``unreached(self)``
        (vsftpd's ``accept_timeout``).  Called at each PASV/EPSV that hands
        the port out, so each gets the whole time to connect.  A connection
        (``_accept``) or a transfer's ``wait`` disarms it: the transfer's
        own timeout takes over.

        One timer per listener: a later deadline moves it (cheap in
        Twisted), and a timer that finds the port in use does nothing, so a
        client of many small files reusing one port (``rearm``) pays no
        callLater and cancel per file.

        ``held()`` true when the time is up (a command of the control
        connection is still running: a RETR whose catalog work is slow has
        not reached its ``wait`` yet) puts the deadline off by ``seconds``:
        a transfer command that arrived in time is not told its port
        timed out.  A command ends, so a port is never held for good."""
        if seconds <= 0 or self.port is None or self.channel is not None:
            return
        self._expecting = True
        self._unreached = unreached
        self._held = held
        self._accept_clock, self._accept_seconds = clock, seconds
        call = self._accept_call
        if call is not None and call.active():
            call.reset(seconds)
        else:
            self._accept_call = clock.callLater(seconds, self._accept_expired)

    def _accept_expired(self) -> None:
        self._accept_call = None
        if not self._expecting or self.channel is not None or self._waiters:
            return
        if self._held is not None and self._held():
            self._accept_call = self._accept_clock.callLater(
                self._accept_seconds, self._accept_expired
            )
            return
        self._expecting = False
        unreached, self._unreached = self._unreached, None
        self.stop_listening()
        if unreached is not None:
            unreached(self)

    def park(self, clock, seconds: float) -> bool:
        """Keep the port, refusing connections, for a ``rearm`` within
        ``seconds``; then close it.  False (and closed) if it can't be kept.

        One timer serves a run of transfers: ``rearm`` leaves it running
        (it closes nothing while the port is in use) and the next ``park``
        moves it on, instead of a callLater and a cancel per file."""
        if self.port is None or self.channel is None:
            self.stop_listening()
            return False
        self._parked = True
        call = self._park_call
        if call is not None and call.active():
            call.reset(seconds)
        else:
            self._park_call = clock.callLater(seconds, self._park_expired)
        return True

    def _park_expired(self) -> None:
        self._park_call = None
        if self._parked:
            self.stop_listening()

    def rearm(self) -> bool:
        """Accept one more connection on the same port (for the next
        PASV/EPSV); False if the port is closed."""
        if self.port is None or self.channel is None:
            self._cancel_park()
            return False
        self._parked = False
        self.channel = self.connected = None
        self.refused = 0
        return True

    def _cancel_park(self) -> None:
        call, self._park_call = self._park_call, None
        if call is not None and call.active():
            call.cancel()

    def stop_listening(self) -> None:
        self._cancel_park()
        self._expecting = False
        call, self._accept_call = self._accept_call, None
        if call is not None and call.active():
            call.cancel()
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()
            closed, self.on_closed = self.on_closed, None
            if closed is not None:
                closed()

    def close(self) -> None:
        """Stop listening, drop a connection nobody claimed, cancel waiters."""
        self.stop_listening()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.cancel()
        if self.channel is not None and not self.channel.claimed:
            self.channel.abort()


def open_passive(
    reactor,
    interface: str,
    peer_host: str,
    port_range: tuple[int, int] | None,
    backlog: int = 5,
) -> PassiveListener:
    """Listen for one passive connection on ``interface``, on a free port of
    ``port_range`` (inclusive; any port when None).  Raises
    DataConnectionFailed when the range is exhausted."""
    listener = PassiveListener(peer_host, keep_open=port_range is None)
    factory = _PassiveFactory(listener)
    if port_range is None:
        candidates = [0]
    else:
        lo, hi = port_range
        candidates = list(range(lo, hi + 1))
        random.shuffle(candidates)
    for port in candidates:
        try:
            listener.port = reactor.listenTCP(port, factory, backlog=backlog, interface=interface)
        except net_error.CannotListenError:
            continue
        listener.port_number = listener.port.getHost().port
        return listener
    raise DataConnectionFailed("no passive port is free")


class _ActiveFactory(ClientFactory):
    protocol = DataChannel

    def __init__(self) -> None:
        self.result: Deferred = Deferred()

    def buildProtocol(self, addr):
        channel = DataChannel(self._connected)
        channel.outgoing = True
        return channel

    def _connected(self, channel: DataChannel) -> None:
        if self.result.called:
            channel.abort()  # the transfer gave up while we were connecting
        else:
            self.result.callback(channel)

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.result.called:
            self.result.errback(
                DataConnectionFailed(f"cannot open data connection: {reason.value}")
            )


def connect_active(reactor, host: str, port: int, timeout: float) -> Deferred:
    """Connect to the client's PORT/EPRT address; fires with a DataChannel
    (once connected) or fails with DataConnectionFailed."""
    factory = _ActiveFactory()
    connector = reactor.connectTCP(host, port, factory, timeout=timeout)
    d = factory.result

    def cancel_connect(failure):
        if failure.check(DataConnectionFailed) is None:
            connector.disconnect()
        return failure

    return d.addErrback(cancel_connect)
