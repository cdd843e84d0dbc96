"""The wire-protocol client of one storage server (provides IStorageClient).

Each operation borrows an authenticated connection from a small pool (one
request or stream at a time per connection, docs/wire-protocol.md) and gives
it back when the operation ends cleanly; a connection that broke, timed out
or was cancelled is closed instead.

Flow control is TCP's: a read registers a streaming producer on the caller's
consumer, and pausing it pauses the socket; a write is an IConsumer whose
producer is paused by the socket's send buffer.  A frozen server (SIGSTOP,
a dead link) is noticed by an idle timer: while the client waits for the
server and the server sends nothing (not even a KEEPALIVE) for
``idle_timeout`` seconds, the connection is dropped and the operation fails
with NodeUnavailable, so the caller can go to another replica.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer, main
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsstorage import allocator, auth, framing
from wsstorage._interfaces import IBlobWriter, IStorageClient
from wsstorage.errors import (
    AuthenticationFailed,
    BadRequest,
    NodeUnavailable,
    ProtocolError,
    StorageError,
    error_from_code,
)
from wsstorage.failwatch import FailureWatchers
from wsstorage.records import BlobInfo, Health, check_blob_id, cluster_of, store_identity
from wsstorage.tlsinfo import describe_loss

log = Logger()

#: Most bytes one ``put`` carries (the server's cap, docs/wire-protocol.md).
PUT_MAX = 256 * 1024


class WrongServer(NodeUnavailable):
    """The endpoint answers as another storage server than the one expected
    (a mistyped ``--storage``): never used, as if it were down."""


def info_from_wire(body: dict[str, Any]) -> BlobInfo:
    try:
        return BlobInfo(
            blob_id=body["blob_id"],
            size=body["size"],
            durable=body["durable"],
            state=body["state"],
            epoch=body["epoch"],
            meta=body.get("meta") or {},
        )
    except (KeyError, TypeError) as e:
        raise ProtocolError(f"malformed blob info from server: {e}") from None


class _Call:
    """A request answered by one REPLY (or ERROR)."""

    def __init__(self) -> None:
        self.d: defer.Deferred = defer.Deferred()

    def frame(self, proto: _ClientProtocol, ftype: int, body: Any) -> bool:
        """Handle a frame for this request; True when the request is over."""
        if ftype == framing.REPLY:
            self.d.callback(body)
            return True
        if ftype == framing.ERROR:
            self.d.errback(error_from_code(str(body.get("code")), str(body.get("message"))))
            return True
        raise ProtocolError(f"unexpected {framing.FRAME_NAMES[ftype]} frame for a request")

    def fail(self, err: BaseException) -> None:
        if not self.d.called:
            self.d.errback(err)


class _ListCall(_Call):
    """The paged reply of ``list``: REPLY frames until one says more=false."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: list[BlobInfo] = []

    def frame(self, proto: _ClientProtocol, ftype: int, body: Any) -> bool:
        if ftype == framing.REPLY:
            blobs = body.get("blobs")
            if not isinstance(blobs, list):
                raise ProtocolError("list page without blobs")
            self.blobs.extend(info_from_wire(b) for b in blobs)
            if body.get("more"):
                return False
            self.d.callback(self.blobs)
            return True
        return super().frame(proto, ftype, body)


#: Socket read size of a connection from the start of a read until its
#: consumer is registered (at the REPLY) and sizes the reads itself: the
#: first read of a stream is otherwise the connection's 1 MiB
#: (framing.TRANSPORT_BUFFER), and 200 downloads starting at once held 200
#: MiB of it.  Only a consumer whose ``sizes_reads`` attribute is true
#: (``wsfront.transfer.reader``) gets it: any other (a repair's copy into a
#: blob) would keep 64 KiB reads, and one pwrite per piece, for the whole
#: read.
READ_FIRST_RECV = 64 * 1024

#: Most bytes a header is read with outside a stream of DATA bodies
#: (``_ClientProtocol._read_socket``): a whole small reply in one recv.
SMALL_RECV = 4096

#: Bytes a reactor turn may read past its share to finish a DATA body
#: rather than cut it or put it off (``_ClientProtocol._read_socket``):
#: a few frame headers' worth.
TURN_SLACK = 1024

#: Most parts (frame headers and views of the caller's data) a writer's
#: backlog holds before its producer is paused, whatever their bytes
#: (``BlobWriter._queue``): four sendmsg calls' worth.
BACKLOG_PARTS = 4 * framing.IOV_MAX


@implementer(IPushProducer)
class _ReadCall(_Call):
    """A read stream: REPLY, DATA..., then END or ERROR, into a consumer."""

    def __init__(self, proto: _ClientProtocol, consumer: Any, length: int | None) -> None:
        super().__init__()
        self.proto = proto
        self.consumer = consumer
        self.expected = length
        self.delivered = 0
        self.registered = False
        self.cancelled = False
        self.d = defer.Deferred(self._cancel)
        self._tcp = framing.tcp_transport(getattr(proto, "transport", None))
        self._saved_recv: int | None = None
        if (
            getattr(consumer, "sizes_reads", False)
            and self._tcp is not None
            and isinstance(getattr(self._tcp, "bufferSize", None), int)
        ):
            self._saved_recv = self._tcp.bufferSize
            self._tcp.bufferSize = min(self._saved_recv, READ_FIRST_RECV)

    def frame(self, proto: _ClientProtocol, ftype: int, body: Any) -> bool:
        if self.d.called:
            return ftype in (framing.END, framing.ERROR)
        if ftype == framing.REPLY:
            length = body.get("length")
            if not isinstance(length, int) or (
                self.expected is not None and length != self.expected
            ):
                raise ProtocolError(f"read reply announces {length!r} bytes")
            self.expected = length
            self.consumer.registerProducer(self, True)
            self.registered = True
            return False
        if ftype == framing.DATA:
            if not self.registered or self.delivered + len(body) > (self.expected or 0):
                raise ProtocolError("more DATA than the read asked for")
            self.delivered += len(body)
            self.consumer.write(body)
            return False
        if ftype == framing.END:
            if self.delivered != self.expected:
                raise ProtocolError(f"read ended after {self.delivered} of {self.expected}")
            self._unregister()
            self.d.callback(self.delivered)
            return True
        if ftype == framing.ERROR:
            self._unregister()
        return super().frame(proto, ftype, body)

    def fail(self, err: BaseException) -> None:
        self._unregister()
        if not self.cancelled:
            super().fail(err)

    def _unregister(self) -> None:
        if self.registered:
            self.registered = False
            self.consumer.unregisterProducer()
        # After the consumer's own restore: the connection goes back to the
        # pool with the read size it had.
        saved, self._saved_recv = self._saved_recv, None
        if saved is not None:
            self._tcp.bufferSize = saved

    def _cancel(self, d: defer.Deferred) -> None:
        # The Deferred fails with CancelledError once this returns.
        self._unregister()
        self.cancelled = True
        self.proto.fail_connection(NodeUnavailable("read cancelled"))

    # IPushProducer, registered on the caller's consumer
    def pauseProducing(self) -> None:
        self.proto.pause_reading()

    def resumeProducing(self) -> None:
        self.proto.resume_reading()

    def stopProducing(self) -> None:
        if not self.d.called:
            self.proto.fail_connection(StorageError("read stopped by its consumer"))


class _ClientProtocol(Protocol):
    """One connection: handshake, then requests one at a time."""

    def __init__(self, client: StorageClient) -> None:
        self.client = client
        self.reactor = client.reactor
        # DATA bodies in pieces as they arrive: a paused read holds at most
        # one socket read, not the rest of a 256 KiB frame (partial_data).
        self._decoder = framing.FrameDecoder(limit=framing.MAX_PREAUTH, partial_data=True)
        self._nonce = auth.new_nonce()
        self.ready: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()
        self.connected = False
        self.authenticated = False
        #: The ops the server announced in READY; None from a server that
        #: announces none (before ``put``: it serves every other op).
        self.ops: frozenset[str] | None = None
        self._pending: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._held = False
        #: Inside _process: a consumer that pauses and resumes us from its
        #: write() must not start a second, nested loop over the frames (it
        #: would see the read's next DATA while the read is being handled).
        self._processing = False
        self.writer: BlobWriter | None = None
        self.write_blocked = False
        self._timer: Any = None
        self._error: StorageError | None = None
        self._heard = False  # any byte from the server yet
        #: The socket DATA frames may go to directly (plain TCP), found
        #: once per connection rather than per written chunk.
        self.socket: Any = None
        self._tcp: Any = None
        #: The last recv was a DATA body's: the next header is read exactly
        #: (``_read_socket``), so the body after it is not sliced out.
        self._streaming = False

    # -- connection ----------------------------------------------------

    def connectionMade(self) -> None:
        framing.tune_transport(self.transport)
        self.socket = framing.direct_socket(self.transport)
        if self.socket is not None:
            # Plain TCP: receive frame by frame (_read_socket).  Twisted
            # itself sets doRead on the instance while connecting.
            self._tcp = self.transport
            self.transport.doRead = self._read_socket
        self.connected = True
        self.transport.write(
            framing.encode_control(
                framing.HELLO,
                0,
                {"version": framing.VERSION, "nonce": self._nonce, "name": self.client.name},
            )
        )
        self._arm()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        name = self.client.name
        if self.authenticated or reason is None:
            err = NodeUnavailable(f"connection to storage server {name} lost")
        else:
            # Before READY: a TLS handshake that failed (untrusted
            # certificate, plain TCP to a TLS port or the reverse) ends here.
            why = describe_loss(reason)
            if not self._heard and reason.check(ConnectionDone):
                why = why.rstrip(".") + ", before any answer (a TLS port reached with tcp:?)"
            err = NodeUnavailable(
                f"connection to storage server {name} lost during the handshake: {why}"
            )
        self._fail_all(err)
        # The transport's doRead is our method (_read_socket): drop it, or
        # transport and protocol keep each other alive until a cyclic
        # collection (Twisted deletes transport.protocol for the same reason).
        if self._tcp is not None:
            vars(self._tcp).pop("doRead", None)
            vars(self._tcp).pop("doWrite", None)  # a writer's backlog (BlobWriter)
            self._tcp = None
        if not self.lost.called:
            self.lost.callback(None)

    def _fail_all(self, err: StorageError) -> None:
        """Fail everything on this connection (once) and forget it."""
        self.connected = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        err = self._error = self._error or err
        if not self.ready.called:
            self.ready.errback(err)
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.fail(err)
        if self.writer is not None:
            self.writer.failed(err)
        self.client._forget(self)

    def fail_connection(self, err: StorageError) -> None:
        """Drop the connection now, failing everything on it with ``err``;
        bytes still arriving from the server are ignored."""
        if not self.connected:
            return
        transport = self.transport
        self._fail_all(err)
        transport.abortConnection()

    # -- idle timer ----------------------------------------------------

    def _waiting(self) -> bool:
        if not self.authenticated:
            return True
        if self.write_blocked:
            return True
        return bool(self._pending) and not self._held

    def _arm(self) -> None:
        timeout = self.client.idle_timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.reactor.callLater(timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if not self.connected:
            return
        if self._waiting():
            self.client.went_silent()
            self.fail_connection(
                NodeUnavailable(
                    f"storage server {self.client.name} did not answer within "
                    f"{self.client.idle_timeout}s"
                )
            )
        else:
            self._arm()

    def _hear(self) -> None:
        """Bytes came from the server: it is not silent (or not any more)."""
        self._heard = True
        if self.client.silent_since is not None:
            self.client.answered()
        self.activity()

    def activity(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.client.idle_timeout)

    # -- frames in -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self.connected:
            return
        self._hear()
        self._decoder.feed(data)
        self._process()

    def _read_socket(self) -> Any:
        """The TCP transport's ``doRead`` on plain TCP (``connectionMade``).

        Twisted's reads ``bufferSize`` bytes into a new bytes object, and a
        DATA body inside it then had to be sliced out: a copy of every byte
        read, a fifth of the client's CPU.  Here each ``recv`` asks for
        exactly what the decoder needs next (``FrameDecoder.wanted``): a
        header, a control frame, or the rest of the DATA body begun, which
        goes to its read as the very bytes received (``body_piece``), no
        copy.  A reactor turn still reads at most ``bufferSize`` bytes, or
        TURN_SLACK more to end a body (the
        read-size shares of ``wsfront.transfer.reader``), and stops early
        when the socket has no more or the consumer paused us; so a paused
        read holds no unconsumed bytes at all.  Nor does it begin a body
        that the rest of its share would cut but a whole next turn would
        not: cut, a 64 KiB frame read 80 KiB at a time went on in two
        pieces (two writes, two sends to the client) nearly every time.  A
        body that overshoots the share by no more than TURN_SLACK bytes is
        read now: a 1 MiB share holds four 256 KiB bodies but for their
        headers, and putting the fourth off made a lone download take a
        third more turns.

        Exact reads would cost a small operation a recv per header and per
        body (7 for a 5-byte read, 3 for a health reply): outside a stream
        of DATA bodies a header is read greedily, up to ``SMALL_RECV``
        bytes, so a small reply arrives in one recv.  Only a stream's first
        piece is then sliced out (at most ``SMALL_RECV`` bytes copied).
        """
        tcp, sock, decoder = self._tcp, self.socket, self._decoder
        budget, got = tcp.bufferSize, 0
        # Paused, closing or aborted in this very reactor turn, after the
        # poll found the socket readable: read nothing, deliver nothing.
        while (
            not (self._held or tcp.disconnecting or getattr(tcp, "_aborting", False))
            and self.connected
        ):
            body = decoder.in_body
            want = decoder.wanted()
            room = budget - got
            if body and got and room < want <= budget:
                if want - room > TURN_SLACK:
                    # A body the rest of this turn's share would cut in two
                    # is read whole next turn: one piece, one write downstream.
                    return None
                room = want  # only the frame headers' bytes over: read it now
            if not (body or self._streaming):
                want = max(want, SMALL_RECV)
            want = min(want, room)
            try:
                data = sock.recv(want)
            except BlockingIOError:
                return None
            except OSError:
                return main.CONNECTION_LOST
            if not data:
                return main.CONNECTION_DONE
            if not got:
                self._hear()
            got += len(data)
            self._streaming = body
            if body:
                try:
                    self._frame(*decoder.body_piece(data))
                except ProtocolError as e:
                    self._broke(e)
            else:
                decoder.feed(data)
                self._process()
            if len(data) < want or got >= budget:
                return None  # drained, or this turn's share read
        return None

    def _process(self) -> None:
        if self._processing:
            return  # resumed from inside a frame's handling: the loop below goes on
        self._processing = True
        try:
            self._process_frames()
        finally:
            self._processing = False

    def _process_frames(self) -> None:
        while not self._held and self.connected:
            try:
                frame = self._decoder.next_frame()
                if frame is None:
                    return
                self._frame(*frame)
            except ProtocolError as e:
                self._broke(e)
                return

    def _broke(self, e: ProtocolError) -> None:
        log.warn(
            "storage server {name} broke the protocol: {why}",
            name=self.client.name,
            why=e.message,
        )
        self.fail_connection(e)

    def pause_reading(self) -> None:
        self._held = True
        if self.connected:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if not self._held:
            return
        self._held = False
        if self.connected:
            self.activity()
            self.transport.resumeProducing()
            self._process()

    def _frame(self, ftype: int, rid: int, body: Any) -> None:
        if not self.authenticated:
            self._handshake(ftype, body)
            return
        if ftype == framing.KEEPALIVE:
            return
        call = self._pending.get(rid)
        if call is None:
            if self.writer is not None and rid == self.writer.rid and ftype == framing.ERROR:
                self.writer.failed(error_from_code(str(body.get("code")), str(body.get("message"))))
                return
            if ftype == framing.ERROR and rid == 0:
                raise ProtocolError(f"server closed the connection: {body.get('message')}")
            raise ProtocolError(f"{framing.FRAME_NAMES[ftype]} frame for unknown request {rid}")
        # Out of the table before the call's Deferred fires, so callbacks see
        # the connection idle and may reuse it.
        del self._pending[rid]
        try:
            done = call.frame(self, ftype, body)
        except BaseException:
            # Back in the table, so connectionLost fails it: a protocol
            # error, or a consumer whose write() raised, ends the
            # connection, and the call's Deferred must not wait forever.
            self._pending[rid] = call
            raise
        if not done:
            self._pending[rid] = call

    def _handshake(self, ftype: int, body: Any) -> None:
        if ftype == framing.ERROR:
            code, message = str(body.get("code")), str(body.get("message"))
            err = error_from_code(code, message)
            if isinstance(err, AuthenticationFailed):
                err = AuthenticationFailed(
                    f"storage server {self.client.name} refused our credentials: "
                    f"check --secret-file ({message})"
                )
            else:
                err = ProtocolError(f"handshake refused: {message}")
            self.fail_connection(err)
            return
        if ftype == framing.CHALLENGE and not hasattr(self, "_server_nonce"):
            nonce = body.get("nonce")
            if body.get("version") != framing.VERSION or not auth.valid_nonce(nonce):
                raise ProtocolError(f"bad CHALLENGE from server: version {body.get('version')!r}")
            secret = self.client.secret
            expected = auth.server_proof(secret, self._nonce, nonce)
            if not auth.proofs_match(expected, body.get("proof")):
                # What a server restarted with a mistyped --secret-file
                # looks like from here (it made itself a new secret).
                self.fail_connection(
                    AuthenticationFailed(
                        f"storage server {self.client.name} could not prove the cluster "
                        "secret: its secret differs from ours, check --secret-file"
                    )
                )
                return
            self._server_nonce = nonce
            proof = auth.client_proof(secret, self._nonce, nonce)
            self.transport.write(framing.encode_control(framing.AUTH, 0, {"proof": proof}))
            return
        if ftype == framing.READY and hasattr(self, "_server_nonce"):
            wrong = self.client.wrong_server(body.get("name"))
            if wrong is not None:
                self.fail_connection(wrong)
                return
            ops = body.get("ops")
            if isinstance(ops, list):
                self.ops = frozenset(op for op in ops if isinstance(op, str))
            self.authenticated = True
            self._decoder.limit = None
            self.ready.callback(self)
            return
        raise ProtocolError(f"unexpected {framing.FRAME_NAMES[ftype]} frame in the handshake")

    # -- requests ------------------------------------------------------

    def start(self, body: dict[str, Any], call: _Call | None = None) -> tuple[int, _Call]:
        if not self.connected:
            raise NodeUnavailable(f"connection to storage server {self.client.name} lost")
        call = call or _Call()
        rid = next(self._ids)
        self._pending[rid] = call
        frame = framing.encode_control(framing.REQUEST, rid, body)
        if self.writer is None or not self.writer.queue_behind(frame):
            self.transport.write(frame)
        self.activity()
        return rid, call

    def start_with_data(self, body: dict[str, Any], data: bytes) -> _Call:
        """Send a request and the DATA frames that belong to it (``put``)
        at once: one ``sendmsg`` of both while nothing else is queued."""
        if not self.connected:
            raise NodeUnavailable(f"connection to storage server {self.client.name} lost")
        call = _Call()
        rid = next(self._ids)
        self._pending[rid] = call
        iov = [framing.encode_control(framing.REQUEST, rid, body)]
        if data:
            iov += framing.data_frame_iov(rid, [data])
        framing.send_iov(self.transport, self.socket, iov)
        self.activity()
        return call

    def call(self, body: dict[str, Any]) -> defer.Deferred:
        try:
            return self.start(body)[1].d
        except StorageError as e:
            return defer.fail(e)


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, client: StorageClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _ClientProtocol:
        return _ClientProtocol(self.client)


@implementer(IPushProducer)
class _ProducerProxy:
    """Stands for the caller's producer on the transport, so the writer knows
    when the socket is blocked (for the idle timer) and can detach it."""

    def __init__(self, writer: BlobWriter, producer: Any) -> None:
        self.writer = writer
        self.producer = producer

    def pauseProducing(self) -> None:
        self.writer._blocked(True)
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.writer._blocked(False)
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.writer._blocked(False)
        self.producer.stopProducing()


#: A writer sends its queued DATA frames at once when this many bytes (or
#: IOV_MAX pieces) are queued, instead of at the end of the reactor turn.
GATHER_BYTES = framing.TRANSPORT_BUFFER


def _open_for_backlog(transport: Any) -> bool:
    """A transport a writer may keep a backlog for: connected, not closing
    (a closing transport is left to do what it does with what it holds)."""
    return (
        transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnected", False)
        and not getattr(transport, "_aborting", False)
    )


def _sendmsg(sock: Any, iov: list[bytes | memoryview]) -> int:
    """Bytes of ``iov`` one ``sendmsg`` sent (0 when the socket is full or
    failed: the transport's next read or write sees the failure)."""
    try:
        return sock.sendmsg(iov[: framing.IOV_MAX])
    except OSError:
        return 0


@implementer(IBlobWriter)
class BlobWriter:
    """An open write stream on one connection (provides IBlobWriter)."""

    def __init__(
        self,
        client: StorageClient,
        conn: _ClientProtocol,
        rid: int,
        blob_id: str,
        epoch: int,
        offset: int,
    ) -> None:
        self.client = client
        self.conn = conn
        self.rid = rid
        self.blob_id = blob_id
        self.epoch = epoch
        self.offset = offset
        self.error: StorageError | None = None
        self.finished = False
        self._watchers = FailureWatchers()
        self._proxy: _ProducerProxy | None = None
        #: DATA frames queued by write() for one sendmsg (see _gather).
        self._iov: list[bytes | memoryview] = []
        self._iov_bytes = 0
        self._send_call: Any = None
        #: What the socket did not take yet, in order (see _send_gathered).
        self._backlog: list[bytes | memoryview] = []
        self._backlog_bytes = 0
        #: The producer is paused for the backlog (not by the transport).
        self._held_back = False
        #: Flushes and the commit ask the server to drop the page cache
        #: behind this blob (``drop_cache_behind``).
        self._drop_cache = False

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._proxy is not None:
            raise RuntimeError("a producer is already registered on this writer")
        self._proxy = _ProducerProxy(self, producer)
        if self.conn.connected and self.error is None:
            self.conn.transport.registerProducer(self._proxy, streaming)

    def unregisterProducer(self) -> None:
        if self._proxy is None:
            return
        self._proxy = None
        self._held_back = False
        self._blocked(False)
        if self.conn.connected:
            self.conn.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self.finished:
            raise StorageError("write after commit or abort")
        if self.error is not None or not data:
            return
        transport = self.conn.transport
        if self.conn.socket is None:  # TLS: the transport joins
            transport.writeSequence(list(framing.data_frames(self.rid, data)))
        else:
            self._gather(bytes(data))
        self.offset += len(data)

    def _gather(self, data: bytes) -> None:
        """Queue ``data``'s DATA frames (headers and views of ``data``, no
        copy) for one ``sendmsg`` at the end of this reactor turn, or at once
        when ``GATHER_BYTES`` are queued, so memory stays bounded and the
        transport sees (and paces the producer by) what the socket refuses.

        ``writeSequence`` joined every frame into a new buffer before
        sending, a copy of each uploaded byte per replica; one ``sendmsg``
        per write would instead cost a system call per (often 64 KiB or
        smaller) chunk, which on loopback is dearer than the copy."""
        self._iov.extend(framing.data_frame_iov(self.rid, [data]))
        self._iov_bytes += len(data)
        if self._iov_bytes >= GATHER_BYTES or len(self._iov) >= framing.IOV_MAX:
            self._send_gathered()
        elif self._send_call is None:
            self._send_call = self.conn.reactor.callLater(0, self._send_gathered)

    def _send_gathered(self) -> None:
        """Send the queued frames: one ``sendmsg`` while nothing is queued
        before them.  What the socket does not take waits, uncopied, in the
        writer's backlog, sent by ``sendmsg`` as the socket drains
        (``_do_write``), with the producer paused above ``bufferSize``
        bytes, as the transport would.  Handing the rest to the transport
        instead copied it once to join it and again when the transport
        joined it to what it still held: while a replica lagged, up to two
        copies of each byte sent to it.  Called before any control frame of
        the stream (flush, commit, abort), which then goes behind the
        backlog (``queue_behind``)."""
        if self._send_call is not None:
            if self._send_call.active():
                self._send_call.cancel()
            self._send_call = None
        iov, self._iov, self._iov_bytes = self._iov, [], 0
        if not iov or not self.conn.connected or self.error is not None:
            return
        transport = self.conn.transport
        if not self._backlog and not _open_for_backlog(transport):
            framing.send_iov(transport, self.conn.socket, iov)  # closing: as before
            return
        if not self._backlog and framing.transport_idle(transport):
            iov = framing.unsent(iov, _sendmsg(self.conn.socket, iov))
        if iov:
            self._queue(iov)

    def queue_behind(self, frame: bytes) -> bool:
        """Queue a control frame of this stream behind the backlog, if there
        is one (True); else the caller writes it to the transport."""
        if not self._backlog:
            return False
        self._queue([frame])
        return True

    def _queue(self, iov: list[bytes | memoryview]) -> None:
        transport = self.conn.transport
        if not self._backlog:
            transport.doWrite = self._do_write  # until the backlog is sent
        self._backlog.extend(iov)
        self._backlog_bytes += sum(len(part) for part in iov)
        transport.startWriting()
        # Each part costs about 230 bytes beside its payload: tiny writes (a
        # chunked HTTP body of 1-byte chunks) held 29 MB per lagging replica
        # for 1 MiB counted, before the part count was bounded too.
        over = self._backlog_bytes > transport.bufferSize or len(self._backlog) > BACKLOG_PARTS
        if over and not self._held_back and self._proxy is not None:
            self._held_back = True
            self._proxy.pauseProducing()

    def _do_write(self) -> Any:
        """The transport's doWrite while a backlog waits: what the transport
        holds goes first (it was written before the backlog began), then
        the backlog by ``sendmsg``; once it is all sent the transport's own
        doWrite is back and the producer resumes."""
        transport = self.conn.transport
        if not self._backlog:  # dropped meanwhile: the transport's own again
            self._drop_backlog()
            return type(transport).doWrite(transport)
        if len(transport.dataBuffer) > transport.offset or transport._tempDataLen:
            result = type(transport).doWrite(transport)
            if result is not None or not framing.transport_idle(transport):
                return result
        try:
            sent = self.conn.socket.sendmsg(self._backlog[: framing.IOV_MAX])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return main.CONNECTION_LOST
        if sent:
            self._backlog = framing.unsent(self._backlog, sent)
            self._backlog_bytes -= sent
            self.conn.activity()
        if self._backlog:
            transport.startWriting()
            return None
        self._drop_backlog()
        if transport.disconnecting or getattr(transport, "_writeDisconnecting", False):
            # loseConnection() waited for the backlog: the transport closes.
            return type(transport).doWrite(transport)
        transport.stopWriting()
        if self._held_back:
            self._held_back = False
            if self._proxy is not None:
                self._proxy.resumeProducing()
        return None

    def _drop_backlog(self) -> None:
        self._backlog, self._backlog_bytes = [], 0
        tcp = self.conn.transport
        if tcp is not None:
            vars(tcp).pop("doWrite", None)

    def _blocked(self, blocked: bool) -> None:
        self.conn.write_blocked = blocked
        self.conn.activity()

    # stream control
    def drop_cache_behind(self) -> None:
        """Hint that this replica will not be the one read first: every
        flush and the commit from now on carry ``drop_cache``, and the
        server drops the page cache behind what they make durable
        (docs/wire-protocol.md).  A server that predates the hint ignores
        it.  Not part of IBlobWriter: writers without it keep the cache."""
        self._drop_cache = True

    def _control(self, op: str) -> dict[str, Any]:
        return {"op": op, "drop_cache": True} if self._drop_cache else {"op": op}

    def flush(self) -> defer.Deferred:
        if self.error is not None:
            return defer.fail(self.error)
        self._send_gathered()
        return self.conn.call(self._control("flush")).addCallback(lambda b: int(b["durable"]))

    def commit(self) -> defer.Deferred:
        if self.error is not None:
            return defer.fail(self.error)
        self._send_gathered()
        self.unregisterProducer()

        def sealed(body: dict[str, Any]) -> BlobInfo:
            self._end()
            return info_from_wire(body)

        return self.conn.call(self._control("commit")).addCallback(sealed)

    def abort(self) -> defer.Deferred:
        self._send_gathered()  # frames already given stay before the abort
        self.unregisterProducer()
        if not self.conn.connected:
            self._end()
            return defer.succeed(None)

        def released(_: Any) -> None:
            self._end()

        def lost(f: Failure) -> None:
            f.trap(NodeUnavailable)
            self._end()

        return self.conn.call({"op": "abort"}).addCallbacks(released, lost)

    def when_failed(self) -> defer.Deferred:
        return self._watchers.watch(self.error)

    def failed(self, err: StorageError) -> None:
        """The stream broke (server error or lost connection)."""
        if self.error is not None or self.finished:
            return
        self.error = err
        self._iov, self._iov_bytes = [], 0  # never sent: the stream is over
        self._held_back = False
        if not self.conn.connected:
            self._drop_backlog()
        # else the backlog still drains: it may begin inside a frame, and
        # the abort that follows must find the stream's framing whole.
        if self._proxy is not None and self.conn.connected:
            self.conn.transport.unregisterProducer()
        self._watchers.fail(err)

    def _end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._proxy = None
        self._drop_backlog()  # sent: the server answered what came after it
        self.conn.write_blocked = False
        self.conn.writer = None
        self._watchers.forget()
        self.client._release(self.conn)


@implementer(IStorageClient)
class StorageClient:
    """Talks to one storage server; see the module docstring.

    ``endpoint`` is a Twisted client endpoint string (``tcp:127.0.0.1:7001``)
    or an IStreamClientEndpoint.  ``connect_timeout`` bounds making the
    connection (the TCP or UNIX connect; NodeUnavailable after it); the
    handshake after it (TLS, then HELLO to READY) is bounded like any wait
    for the server, by ``idle_timeout``: how long the server may stay
    silent while we wait for it.  An operation cancelled while its
    connection is being made fails with CancelledError, not
    NodeUnavailable: the caller gave up, the server did not fail.
    ``pool_size`` is how many idle connections are kept.
    ``expected_name``, when given, is the name the server must announce in
    the handshake; another name fails every connection with WrongServer.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        endpoint: Any,
        secret: bytes,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 5.0,
        pool_size: int = 4,
        expected_name: str | None = None,
    ) -> None:
        allocator.tune()  # once per process: 1 MiB socket reads reuse the heap
        self.reactor = reactor
        self.name = name
        self.endpoint = (
            clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
        )
        self._where = endpoint if isinstance(endpoint, str) else repr(endpoint)
        #: The name the server must give in READY (None: any).
        self.expected_name = expected_name
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.pool_size = pool_size
        self._idle: list[_ClientProtocol] = []
        self._conns: set[_ClientProtocol] = set()
        self._closing = False
        #: Set by ``retire``: no connection is kept idle any more.
        self._retired = False
        #: When a connection first timed out waiting for the server in the
        #: outage going on (None: it answers), and how many have since.
        self.silent_since: float | None = None
        self._silent_drops = 0
        #: The cluster named in this client's deletes (to a server that
        #: lists ``bind``): set by the front end's pool when it takes the
        #: client (its catalog's id, whatever any bind's outcome), or by
        #: ``bind_cluster``; None: deletes name no cluster.
        self.cluster_id: str | None = None

    def __repr__(self) -> str:
        return f"<StorageClient {self.name}>"

    def wrong_server(self, announced: object) -> WrongServer | None:
        """The error for a server that announced ``announced`` as its name
        when we expect another: a mistyped endpoint reaches a working server
        of the cluster (same secret), and writing to it under the expected
        name would record blobs on a server that does not hold them."""
        if self.expected_name is None or announced == self.expected_name:
            return None
        got = announced if isinstance(announced, str) else "no name"
        return WrongServer(
            f"storage server {self.expected_name} at {self._where} is not "
            f"{self.expected_name}: expected {self.expected_name}, got {got} "
            "(check its --storage endpoint)"
        )

    # -- silence -------------------------------------------------------

    def went_silent(self) -> None:
        """A connection timed out waiting for the server: said once per
        outage.  A stopped server (SIGSTOP) leaves every connection made to
        it (a health probe's each second, a reader's, a writer's) waiting,
        and each times out on its own: one line each was one every few
        seconds for as long as the server stayed stopped."""
        self._silent_drops += 1
        if self.silent_since is not None:
            return
        self.silent_since = self.reactor.seconds()
        log.warn(
            "storage server {name} silent for {t}s: dropping the connection",
            name=self.name,
            t=self.idle_timeout,
        )

    def answered(self) -> None:
        """The server sent bytes again after ``went_silent``: the outage
        is over, said once."""
        since, self.silent_since = self.silent_since, None
        drops, self._silent_drops = self._silent_drops, 0
        if since is None:
            return
        log.info(
            "storage server {name} answers again after {t:.1f}s of silence "
            "({n} connections dropped meanwhile)",
            name=self.name,
            t=self.reactor.seconds() - since + self.idle_timeout,
            n=drops,
        )

    # -- pool ----------------------------------------------------------

    @defer.inlineCallbacks
    def _acquire(self) -> Any:
        if self._closing:
            raise NodeUnavailable(f"client of {self.name} is closed")
        while self._idle:
            conn = self._idle.pop()
            if conn.connected:
                return conn
        factory = _ClientFactory(self)
        # Our own timer, not ``addTimeout``: a TCP or UNIX endpoint fails
        # its cancelled connect with ConnectingCancelledError, not
        # CancelledError, whichever side cancelled it, so ``addTimeout``
        # never saw its timeout (the error named only the address) and a
        # caller's cancel could not be told from a server that failed.
        timed_out = False
        timer = None

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            connecting.cancel()

        try:
            connecting = self.endpoint.connect(factory)
            timer = self.reactor.callLater(self.connect_timeout, time_out)
            conn = yield connecting
        except StorageError:
            raise
        except Exception as e:
            if timed_out:
                raise NodeUnavailable(
                    f"could not connect to storage server {self.name} "
                    f"within {self.connect_timeout}s"
                ) from None
            if isinstance(e, defer.CancelledError | ConnectingCancelledError):
                # The caller gave up on its operation while we connected
                # (its Deferred was cancelled): a cancellation, as for any
                # cancelled Deferred, and nothing the server did; as
                # NodeUnavailable it read as the server failing, which
                # marks a server down (``StoragePool.mark_down``).
                raise defer.CancelledError(
                    f"connecting to storage server {self.name} was cancelled"
                ) from None
            raise NodeUnavailable(f"could not connect to storage server {self.name}: {e}") from None
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        self._conns.add(conn)
        conn = yield self._ready(conn)
        return conn

    def _ready(self, conn: _ClientProtocol) -> defer.Deferred:
        """Fire with ``conn`` once its handshake is done, for one acquirer.

        Cancelling the wait (a reader's stall check, a departing client, a
        timeout on the operation) leaves the handshake to finish on its
        own: the connection then goes to the idle pool like any released
        one (closed if the pool is full or the client closing), and a
        handshake that fails has already closed and forgotten it.  Waiting
        on ``conn.ready`` itself, the cancel failed that Deferred and the
        server's late READY was dropped: the connection stayed open,
        authenticated, in no pool and used by no one, until the process
        ended (each SIGSTOP of a server during reads left some more)."""
        waiter: defer.Deferred = defer.Deferred()

        def settle(result: Any) -> None:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            elif not isinstance(result, Failure):
                self._release(result)  # the acquirer gave up on it

        conn.ready.addBoth(settle)
        return waiter

    def _release(self, conn: _ClientProtocol) -> None:
        """Give back a connection whose operation ended cleanly."""
        if not conn.connected:
            return
        if self._closing or self._retired or len(self._idle) >= self.pool_size or conn._pending:
            conn.transport.loseConnection()
        else:
            self._idle.append(conn)

    def _discard(self, conn: _ClientProtocol) -> None:
        if conn.connected:
            conn.transport.abortConnection()

    def _forget(self, conn: _ClientProtocol) -> None:
        self._conns.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    @defer.inlineCallbacks
    def _simple(self, body: dict[str, Any], data: bytes | None = None, conn: Any = None) -> Any:
        """One request answered by one REPLY, on ``conn`` if given (already
        acquired) else a pooled connection; ``data`` goes out as its DATA
        frames (a ``put``)."""
        if "blob" in body:
            check_blob_id(body["blob"])
        if conn is None:
            conn = yield self._acquire()
        try:
            if data is None:
                result = yield conn.call(body)
            else:
                result = yield conn.start_with_data(body, data).d
        except StorageError as e:
            if isinstance(e, NodeUnavailable | ProtocolError):
                self._discard(conn)
            else:
                self._release(conn)
            raise
        except BaseException:
            self._discard(conn)
            raise
        self._release(conn)
        return result

    # -- IStorageClient ------------------------------------------------

    def stat(self, blob_id: str) -> defer.Deferred:
        return self._simple({"op": "stat", "blob": blob_id}).addCallback(info_from_wire)

    @defer.inlineCallbacks
    def read(self, blob_id: str, offset: int, length: int | None, consumer: Any) -> Any:
        check_blob_id(blob_id)
        conn = yield self._acquire()
        call = _ReadCall(conn, consumer, length)
        try:
            conn.start({"op": "read", "blob": blob_id, "offset": offset, "length": length}, call)
            n = yield call.d
        except StorageError as e:
            if isinstance(e, NodeUnavailable | ProtocolError) or conn._pending:
                self._discard(conn)
            else:
                self._release(conn)
            raise
        except BaseException:
            self._discard(conn)
            raise
        self._release(conn)
        return n

    @defer.inlineCallbacks
    def write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> Any:
        check_blob_id(blob_id)
        conn = yield self._acquire()
        try:
            rid, call = conn.start(
                {"op": "write", "blob": blob_id, "epoch": epoch, "offset": offset, "meta": meta}
            )
            yield call.d
        except StorageError as e:
            if isinstance(e, NodeUnavailable | ProtocolError):
                self._discard(conn)
            else:
                self._release(conn)
            raise
        except BaseException:
            self._discard(conn)
            raise
        writer = BlobWriter(self, conn, rid, blob_id, epoch, offset)
        conn.writer = writer
        return writer

    @defer.inlineCallbacks
    def put(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> Any:
        """Create, write and seal a small blob in one request: the REQUEST
        and its DATA frames go out together, and the server answers once
        the blob is durable and sealed (docs/wire-protocol.md, ``put``).

        A server that does not announce ``put`` (an older one, met during a
        rolling upgrade) gets the same as a write stream and a commit, so
        a front end upgraded first still stores small files there."""
        check_blob_id(blob_id)
        data = bytes(data)
        if len(data) > PUT_MAX:
            raise BadRequest(f"a put carries at most {PUT_MAX} bytes, not {len(data)}")
        conn = yield self._acquire()
        if conn.ops is not None and "put" in conn.ops:
            body = {"op": "put", "blob": blob_id, "epoch": epoch, "meta": meta, "length": len(data)}
            result = yield self._simple(body, data, conn)
            return info_from_wire(result)
        self._release(conn)  # back to the pool, for the write stream
        writer = yield self.write(blob_id, epoch, 0, meta)
        try:
            writer.write(data)
            info = yield writer.commit()
        except BaseException:
            self._discard(writer.conn)  # the stream, unsealed, goes with it
            raise
        return info

    def fence(self, blob_id: str, epoch: int, truncate_to: int) -> defer.Deferred:
        body = {"op": "fence", "blob": blob_id, "epoch": epoch, "truncate_to": truncate_to}
        return self._simple(body).addCallback(info_from_wire)

    def commit(self, blob_id: str, epoch: int) -> defer.Deferred:
        body = {"op": "commit", "blob": blob_id, "epoch": epoch}
        return self._simple(body).addCallback(info_from_wire)

    @defer.inlineCallbacks
    def delete(self, blob_id: str) -> Any:
        """Delete a blob.  Once this client was bound (``bind_cluster``),
        the request names the cluster, and a server whose store is bound
        to another refuses it (``WrongCluster``) whatever this front end
        last heard of it: the check is the store's, at the delete."""
        check_blob_id(blob_id)
        conn = yield self._acquire()
        body: dict[str, Any] = {"op": "delete", "blob": blob_id}
        if self.cluster_id is not None and conn.ops is not None and "bind" in conn.ops:
            body["cluster"] = self.cluster_id
        yield self._simple(body, conn=conn)
        return None

    @defer.inlineCallbacks
    def can_bind(self) -> Any:
        """Fire with whether the server lists ``bind`` (older ones do not:
        their stores cannot be bound)."""
        conn = yield self._acquire()
        self._release(conn)
        return conn.ops is not None and "bind" in conn.ops

    @defer.inlineCallbacks
    def bind_cluster(self, cluster_id: str) -> Any:
        """Bind the server's store to ``cluster_id`` (or confirm it is bound
        to it); fire with the id, or None if the server predates binding
        (its store is then unprotected: the caller says so).  Fails with
        ``WrongCluster`` if the store is bound to another.  From then on
        this client's deletes name the cluster."""
        conn = yield self._acquire()
        if conn.ops is None or "bind" not in conn.ops:
            self._release(conn)
            return None
        result = yield self._simple({"op": "bind", "cluster": cluster_id}, conn=conn)
        self.cluster_id = cluster_id
        return result.get("cluster")

    @defer.inlineCallbacks
    def list_blobs(self) -> Any:
        conn = yield self._acquire()
        call = _ListCall()
        try:
            conn.start({"op": "list"}, call)
            blobs = yield call.d
        except BaseException:
            self._discard(conn)
            raise
        self._release(conn)
        return blobs

    def copy_from(self, blob_id: str, source_endpoint: str) -> defer.Deferred:
        body = {"op": "copy", "blob": blob_id, "source": source_endpoint}
        return self._simple(body).addCallback(info_from_wire)

    def health(self) -> defer.Deferred:
        def _whole(value: Any) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def record(b: dict[str, Any]) -> Health:
            return Health(
                name=b["name"],
                free_bytes=b["free_bytes"],
                total_bytes=b["total_bytes"],
                blobs=b["blobs"],
                active_streams=b["active_streams"],
                version=b["version"],
                problem=b.get("problem") if isinstance(b.get("problem"), str) else None,
                **store_identity(b),
                reserve_bytes=_whole(b.get("reserve_bytes")),
                cluster_id=cluster_of(b),
            )

        return self._simple({"op": "health"}).addCallback(record)

    def retire(self) -> None:
        """The server moved (a front end's pool took another client for it):
        close the idle connections now, and each other one as its operation
        ends, so that the client holds no socket once the reads and writes
        still running on it are done.  Unlike ``close``, cuts nothing, and
        an operation still started on it works (a PUT held for a commit)."""
        self._retired = True
        idle, self._idle = self._idle, []
        for conn in idle:
            if conn.connected:
                conn.transport.loseConnection()

    @property
    def connections(self) -> int:
        """How many connections the client has open (idle or busy)."""
        return len(self._conns)

    def close(self) -> defer.Deferred:
        self._closing = True
        waits = []
        for conn in list(self._conns):
            if conn.connected:
                waits.append(conn.lost)
                if conn._pending or conn.writer is not None or conn._held:
                    # An operation still runs (a paused read, say): cut it.
                    # A clean close could wait forever under TLS, whose
                    # close_notify exchange needs both sides reading.
                    conn.transport.abortConnection()
                else:
                    conn.transport.loseConnection()
        self._idle = []
        return defer.DeferredList(waits).addCallback(lambda _: None)
