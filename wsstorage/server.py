"""The storage server: the wire protocol (docs/wire-protocol.md) over an IBlobStore.

One ``StorageServerProtocol`` per connection runs at most one request at a
time; a read or write is a stream that occupies the connection until it
ends.  Clients keep a small pool of connections per server for concurrency.
Flow control is TCP's own: a read stream is an IPushProducer on the
transport (paused when the send buffer fills), and while the server cannot
take a client's bytes (an fsync in a thread) it leaves unprocessed frames in
the decoder and, once any come, stops reading the socket until none of them
waits.  Memory per connection is at most two socket reads, one frame and a
read stream's few 1 MiB batches, whatever the blob size.

Disk work that may block for long (open, fsync, seal, fence, commit, list,
delete) and a read stream's read-ahead (pread, CRC, framing) run through
``run_blocking`` (a thread pool by default), a small ``put`` through the
server's own put threads (``wsstorage.putthreads``); single chunk writes
run in the reactor thread.  Over plain TCP a read batch is sent with one ``sendmsg`` of
headers and views of the bytes read, bypassing the transport's buffer while
it is empty, so the bytes are copied once on their way out (by the kernel).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsstorage import auth, failpoints, framing
from wsstorage.binding import check_cluster_id
from wsstorage.counters import ProcessCounters as _ProcessCounters
from wsstorage.diskcheck import DiskCheck
from wsstorage.errors import (
    NO_SPACE_ERRNOS,
    BadRequest,
    BlobExists,
    BlobNotFound,
    ChecksumError,
    DiskError,
    DiskFull,
    InvalidOffset,
    ProtocolError,
    StorageError,
    WrongCluster,
)
from wsstorage.fields import int_field as _int_field
from wsstorage.putthreads import put_threads
from wsstorage.records import BlobInfo, check_blob_id
from wsstorage.reserve import below_reserve_problem
from wsstorage.tlsinfo import describe_loss

log = Logger()

#: Default bytes of one read-ahead batch (read and verified in a thread,
#: then sent); ``StorageServerFactory(read_ahead=)`` sets it per server.
READ_AHEAD = 1024 * 1024
#: Default batches a read stream keeps ready beyond the one in the
#: transport, so a reactor or thread that is scheduled late does not leave
#: the socket idle; ``StorageServerFactory(read_batches=)`` sets it.
READ_BATCHES = 2
#: Read streams a server may have at once for a cached read's batches to
#: be read by a task while the reactor thread sends (``_read_here``): that
#: overlap uses a spare CPU, and costs more CPU per byte (thread hand-offs)
#: than the reactor thread reading them itself; with several streams the
#: CPUs have other work, so their batches are read where they are sent.
PIPELINED_STREAMS = 1
#: The ops a server serves outside a write stream, announced in READY
#: (``ops``) so that a client can tell what an older server lacks: ``put``
#: came after version 1's first servers, which answer it ``bad_request``
#: and then take its DATA for a protocol error.
#: ``bind`` (a store bound to one cluster, ``wsstorage.binding``) is listed
#: only by a server whose store can be bound.
OPS = (
    "bind",
    "commit",
    "copy",
    "delete",
    "fence",
    "health",
    "list",
    "put",
    "read",
    "stat",
    "write",
)
#: Seconds a reading task waits for room before it gives its thread back.
READ_IDLE = 0.05
#: Batches one reading task reads at most before it gives its pool thread
#: back (and _fill starts the next): other streams and blocking requests
#: (fsync, stat) wait at most that long for a thread.
READ_TASK_BATCHES = 16
#: Bytes a connection reads from its socket per reactor turn.  A front end
#: sends an upload in batches of 1 MiB of data plus their DATA frames'
#: headers (``wsstorage.client.GATHER_BYTES``): with 1 MiB reads
#: (``framing.TRANSPORT_BUFFER``) every other read took only the 48-byte
#: rest: a recv, a ``pwritev`` and a reactor turn more per MiB (512 MiB PUTs
#: made 3.0-3.2 write calls per MiB on two replicas; 1.5-1.8 with 2 MiB).
RECEIVE_SIZE = 2 * framing.TRANSPORT_BUFFER
#: Seconds a dropped peer has to close after its ERROR frame (``drop``).
DROP_LINGER = 2.0
#: Largest JSON meta record accepted beside a blob.
MAX_META = 64 * 1024
#: Most bytes one ``put`` carries (a whole small blob in one request).
PUT_MAX = 256 * 1024
#: Target size of one page of a list reply.
LIST_PAGE_BYTES = 256 * 1024
LIST_BATCH = 500

RunBlocking = Callable[..., defer.Deferred]


#: BlobInfo's fields, in order: what a reply carries.
_INFO_FIELDS = tuple(f.name for f in attrs.fields(BlobInfo))


def info_to_wire(info: BlobInfo) -> dict[str, Any]:
    """``info`` as a reply's body, as ``attrs.asdict`` makes it but
    without its generic recursion: that took 10 us of the reactor's time
    per put, this well under one.  Unlike ``asdict`` it copies ``meta``
    one level only: the values inside are ``info``'s own.  Sharing them is
    safe because none is changed in place: a store replaces a blob's meta
    whole (``encode_meta`` makes each one afresh), and the server only
    encodes a body, though not always at once: a ``list`` page holds its
    items until it is full, across reads in the pool."""
    wire = {name: getattr(info, name) for name in _INFO_FIELDS}
    wire["meta"] = dict(wire["meta"])
    return wire


#: errnos of a disk that cannot take the operation (remounted read-only,
#: the store's files removed under it): DiskError, not a bug.
DISK_ERRNOS = frozenset({errno.EROFS, errno.ENOENT, errno.ENOTDIR})
#: Errors that are the disk's or the data's, not the server's: a request
#: failing with one is logged as one line (``_send_error``), no traceback.
ROUTINE_ERRORS = (DiskFull, DiskError, ChecksumError)


def _os_error_text(exc: BaseException) -> str:
    """``exc`` as text without the file names an OSError carries: wire
    messages reach clients, who have no business with server paths."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc)


def storage_error(exc: BaseException) -> StorageError:
    """Map anything raised by the store to a wire error (naming no path)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return DiskFull(f"disk full: {_os_error_text(exc)}")
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return DiskError(f"disk error: {_os_error_text(exc)}")
    return StorageError(f"internal error: {type(exc).__name__}: {_os_error_text(exc)}")


def seal_put(
    store: Any, blob_id: str, epoch: int, meta: dict[str, Any], pieces: list[Any], start: int
) -> BlobInfo:
    """Create ``blob_id``, store ``pieces`` and seal it (data, checksums,
    record, directory fsync'd): a ``put``, blocking, for ``run_blocking``.
    The caller counted the bytes in the reactor thread as ``start``
    onwards of ``_ProcessCounters.written``.  Shared by the wire's ``put``
    and the in-process one (``wsstorage.inprocess``)."""
    # A store that can keeps a small put's bytes in its sealed record
    # (BlobStore.open_put: one file and two syncs, not two and three).
    open_put = getattr(store, "open_put", None)
    if open_put is not None:
        handle = open_put(blob_id, epoch, meta, sum(len(p) for p in pieces))
    else:
        handle = store.open_write(blob_id, epoch, 0, meta)
    try:
        _store_counted(handle, pieces, start)
        failpoints.hit("storage.before_commit")
        info = handle.seal()
        failpoints.hit("storage.after_commit")
        return info
    except Exception as e:
        if isinstance(storage_error(e), DiskFull):
            # Never acknowledged, so garbage: its space back now, not
            # after the orphan grace (``BlobWriteHandle.discard``).
            _discard_logged(handle, blob_id)
        raise
    finally:
        handle.close()


def _discard_logged(handle: Any, blob_id: str) -> None:
    """``handle.discard()`` (blocking) after a write into ``blob_id``
    failed for a full disk, logged; a store without it keeps its files
    for the front ends' garbage collection, as before."""
    discard = getattr(handle, "discard", None)
    if discard is None:
        return
    try:
        freed = discard()
    except Exception:
        log.failure("giving back the space of {blob} after a full disk", blob=blob_id)
        return
    if freed:
        log.info(
            "gave back {n} bytes of {blob}, whose write failed on a full disk",
            n=freed,
            blob=blob_id,
        )


def give_back_space(
    factory: Any, handle: Any, blob_id: str, after: defer.Deferred
) -> defer.Deferred:
    """A write stream into ``blob_id`` failed for a full disk: once
    ``after`` (the stream's last sync) is done, give back in a thread what
    of it nothing can need (``BlobWriteHandle.discard``: a blob never
    reported durable whole, else the bytes past its durable length).
    Fires (never fails) once that is done: the stream's abort is answered
    then, so a writer that aborted it knows the space is back.  Shared by
    the wire's write streams and the in-process ones."""
    done: defer.Deferred = defer.Deferred()

    def run(_: Any) -> None:
        d = factory.run_blocking(_discard_logged, handle, blob_id)
        d.addBoth(lambda _: done.callback(None))

    after.addBoth(run)
    return done


def peer_already_gone(transport: Any) -> bool:
    """Whether the peer's end of a plain TCP stream (its FIN or a reset)
    already waits unread on the socket.

    Asked just before our CHALLENGE is sent: a peer whose hang-up is
    already here closed before it could have read our proof, so its
    hang-up says nothing about the secret.  That is how connections look
    that the kernel accepted while the server was stopped (SIGSTOP, a long
    pause): their clients gave up and closed long before the handshake
    ran.  Over TLS (bytes between us and the socket) it cannot tell: False.
    """
    tcp = framing.tcp_transport(transport)
    if tcp is None or tcp is not transport:
        return False
    try:
        sock = tcp.getHandle()
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: the peer is gone too


def open_range(store: Any, blob_id: str, offset: int, length: int | None) -> tuple[Any, int, int]:
    """A read handle of ``length`` bytes (None: to the end) of ``blob_id``
    from ``offset``, with that length and the blob's size; InvalidOffset
    past the end.  Blocking: for ``run_blocking``.  Shared by the wire's
    ``read`` and the in-process reads (``wsstorage.inprocess``)."""
    info = store.stat(blob_id)
    n = info.size - offset if length is None else length
    if offset > info.size or offset + n > info.size:
        raise InvalidOffset(f"read of {n} bytes at {offset} is past the end ({info.size} bytes)")
    return store.open_read(blob_id, offset, n), n, info.size


def meta_field(req: dict[str, Any]) -> dict[str, Any]:
    meta = req.get("meta", {})
    _check_meta(meta, lambda: len(json.dumps(meta)))
    return meta


def meta_copy(meta: Any) -> dict[str, Any]:
    """``meta`` as the server gets it in a request: a copy through JSON
    (TypeError for what JSON cannot hold), checked as ``meta_field`` checks
    a request's, with one encoding for both (``wsstorage.inprocess``)."""
    text = json.dumps(meta)
    copy = json.loads(text)
    _check_meta(copy, lambda: len(text))
    return copy


def _check_meta(meta: Any, size: Callable[[], int]) -> None:
    if not isinstance(meta, dict):
        raise BadRequest("field 'meta' must be an object")
    if size() > MAX_META:
        raise BadRequest(f"meta record larger than {MAX_META} bytes")


def _cut_at_failpoint(name: str, total: int, data: bytes) -> bytes:
    """The part of ``data`` before failpoint ``name``'s byte threshold."""
    limit = failpoints.threshold(name)
    if limit is not None and total + len(data) >= limit:
        return data[: max(0, limit - total)]
    return data


def _split_pieces(pieces: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """``pieces`` cut after their first ``n`` bytes (views, no copy)."""
    head: list[memoryview] = []
    for i, piece in enumerate(pieces):
        if n <= 0:
            return head, pieces[i:]
        if len(piece) > n:
            return [*head, piece[:n]], [piece[n:], *pieces[i + 1 :]]
        head.append(piece)
        n -= len(piece)
    return head, []


class StorageServerFactory(Factory):
    """Serves one blob store.  Start it in-process with
    ``endpoint.listen(StorageServerFactory(reactor, store, name, secret))``.

    ``peer_client(endpoint_string)`` builds the IStorageClient used to pull
    a blob for ``copy``; by default a ``wsstorage.client.StorageClient``
    with this server's secret.

    ``read_ahead`` (bytes per batch) and ``read_batches`` (batches kept
    ready) bound what a read stream holds: up to ``read_batches + 2``
    batches (the ready ones, the one being read, the one in the
    transport).  The defaults (1 MiB x 2) favour one fast stream; a process
    that holds many servers and streams (``wslocal``) trades some
    throughput for memory with smaller ones.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
        store: Any,
        name: str,
        secret: bytes,
        *,
        run_blocking: RunBlocking | None = None,
        peer_client: Callable[[str], Any] | None = None,
        handshake_timeout: float = 10.0,
        keepalive_interval: float = 1.0,
        read_ahead: int = READ_AHEAD,
        read_batches: int = READ_BATCHES,
    ) -> None:
        if read_ahead < 4096:
            raise ValueError(f"read_ahead must be at least 4096 bytes, not {read_ahead}")
        if read_batches < 1:
            raise ValueError(f"read_batches must be at least 1, not {read_batches}")
        self.read_ahead = read_ahead
        self.read_batches = read_batches
        #: Read streams open now (``_ReadStream``), for PIPELINED_STREAMS.
        self.read_streams = 0
        #: Reads of this store by a client in this process, not over the
        #: wire (``wsstorage.inprocess``): counted in ``active_streams``.
        self.in_process_reads = 0
        #: Write streams into this store by a client in this process
        #: (``wsstorage.inprocess_write``): counted in ``active_streams``.
        self.in_process_writes = 0
        #: What this server serves (``OPS``; a test drops some to play an
        #: older server).
        self.ops: tuple[str, ...] = (
            OPS if hasattr(store, "bind_cluster") else tuple(o for o in OPS if o != "bind")
        )
        self.reactor = reactor
        self.store = store
        self.name = name
        self.secret = secret
        self.handshake_timeout = handshake_timeout
        self.keepalive_interval = keepalive_interval
        #: Failed authentications are logged at most this often: a front
        #: end with the wrong secret reconnects every second or so.
        self.auth_failures = auth.LogBudget(reactor)
        self.connections: set[StorageServerProtocol] = set()
        #: run_blocking is the reactor's thread pool (not an inline stand-in)
        self.threaded = run_blocking is None
        if run_blocking is None:
            pool = reactor.getThreadPool()

            def run_blocking(f: Callable[..., Any], *args: Any) -> defer.Deferred:
                return threads.deferToThreadPool(reactor, pool, f, *args)

        self.run_blocking = run_blocking
        self._peer_client = peer_client
        #: Whether the disk takes writes, told in every health answer.
        self.disk_check = DiskCheck(reactor, getattr(store, "disk_problem", None), run_blocking)

    def from_thread(self, f: Callable[[], None]) -> Callable[[], None]:
        """``f`` made callable from work given to ``run_blocking``: through
        callFromThread when that work runs in the reactor's thread pool,
        directly when a given run_blocking runs it inline (unit tests)."""
        if self.threaded:
            call = self.reactor.callFromThread
            return lambda: call(f)
        return f

    def buildProtocol(self, addr: Any) -> StorageServerProtocol:
        p = StorageServerProtocol()
        p.factory = self
        return p

    def peer_client(self, endpoint: str) -> Any:
        if self._peer_client is not None:
            return self._peer_client(endpoint)
        from wsstorage.client import StorageClient

        return StorageClient(self.reactor, f"peer:{endpoint}", endpoint, self.secret)

    @property
    def active_streams(self) -> int:
        in_process = self.in_process_reads + self.in_process_writes
        return sum(1 for c in self.connections if c.streaming) + in_process


class StorageServerProtocol(Protocol):
    """One authenticated connection; see the module docstring."""

    factory: StorageServerFactory

    def __init__(self) -> None:
        self._decoder = framing.FrameDecoder(limit=framing.MAX_PREAUTH, data_views=True)
        #: Payload views of the write stream's DATA frames taken in this
        #: ``_process`` pass and not yet stored: they go to the store in one
        #: ``write_pieces`` (one pwritev) before any other frame is acted on
        #: and before ``_process`` returns, so they never outlive the bytes
        #: of one pass (bounded by what the decoder held) and order with
        #: flush, commit and abort is kept.
        self._pending: list[memoryview] = []
        self._state = "hello"  # hello -> auth -> ready; closed
        self._client_nonce = ""
        self._server_nonce = ""
        #: The peer had hung up before our CHALLENGE went out
        #: (``peer_already_gone``): its hang-up is no verdict on our proof.
        self._gone_before_proof = False
        self._held = False  # frames wait in the decoder while True
        self._busy_id: int | None = None  # request running in a thread
        self._flushes: dict[int, None] = {}  # stream flushes whose fsync still runs
        self._keepalive: Any = None
        self._handshake_timer: Any = None
        self._linger: Any = None
        self._read: _ReadStream | None = None
        self._write: _WriteStream | None = None
        #: A ``put`` whose DATA frames are still arriving.
        self._put: _PutRequest | None = None
        self._list_resume: defer.Deferred | None = None
        #: Reading the socket was stopped because bytes came while frames
        #: were held (``dataReceived``); ``_release`` starts it again.
        self._stopped_reading = False
        self.peer = "?"

    # -- connection ----------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self._read is not None or self._write is not None

    def connectionMade(self) -> None:
        framing.tune_transport(self.transport)
        tcp = framing.tcp_transport(self.transport)
        if tcp is not None:
            tcp.bufferSize = RECEIVE_SIZE
        self.peer = str(self.transport.getPeer())
        self.factory.connections.add(self)
        self._handshake_timer = self.factory.reactor.callLater(
            self.factory.handshake_timeout, self._handshake_expired
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._state == "auth" and self._gone_before_proof:
            # Its client closed before our CHALLENGE was sent (we were
            # stopped or stalled while it waited): not about the secret.
            log.info("connection from {peer} hung up before the handshake", peer=self.peer)
        elif self._state == "auth":
            # A client hangs up between our CHALLENGE and its AUTH when our
            # proof does not match its secret (wsstorage.client does): the
            # two sides have different secrets.
            self.auth_failed("it hung up on our proof: its cluster secret differs from ours")
        elif self._state == "hello" and reason is not None:
            # Mostly a TLS handshake that failed (wrong CA, plain TCP to a
            # TLS port) or a port probe; say which, as the client cannot.
            log.info(
                "connection from {peer} ended before the handshake: {why}",
                peer=self.peer,
                why=describe_loss(reason),
            )
        self._state = "closed"
        self.factory.connections.discard(self)
        for timer in (self._handshake_timer, self._keepalive, self._linger):
            if timer is not None and timer.active():
                timer.cancel()
        if self._read is not None:
            self._read.close()
            self._read = None
        if self._write is not None:
            self._write.close(self.factory)
            self._write = None
        if self._list_resume is not None:
            d, self._list_resume = self._list_resume, None
            d.errback(ConnectionError("connection lost"))

    def auth_failed(self, why: str) -> None:
        """Log (rate-limited, factory.auth_failures) that the client at
        ``self.peer`` failed authentication, and why."""
        held = self.factory.auth_failures.take()
        if held is None:
            return
        more = f" ({held} more not logged)" if held else ""
        log.warn(
            "client failed authentication from {peer}: {why}; check --secret-file{more}",
            peer=self.peer,
            why=why,
            more=more,
        )

    def _handshake_expired(self) -> None:
        if self._state in ("hello", "auth"):
            log.warn("dropping {peer}: no handshake within the timeout", peer=self.peer)
            self._state = "closed"  # logged: not an authentication failure
            self.transport.abortConnection()

    def drop(self, reason: str, code: str = ProtocolError.code, logged: bool = False) -> None:
        """Log why (unless the caller did), tell the peer, and close: used
        for every protocol violation."""
        if self._state == "closed":
            return
        if not logged:
            log.warn("dropping {peer}: {reason}", peer=self.peer, reason=reason)
        self._send(framing.ERROR, 0, {"code": code, "message": reason})
        self._state = "closed"
        # A close with the peer's bytes still unread makes the kernel send
        # a reset, and a reset can discard the ERROR frame before the peer
        # reads it.  Over plain TCP, end only our side after the frame and
        # read (and drop) what the peer still sends until it closes, or
        # for DROP_LINGER seconds at most.
        # Over TLS the wrapper would pass loseWriteConnection on to the TCP
        # socket under it, ending the stream without TLS's close_notify:
        # there it closes as before, bounded by the same linger.
        self._linger = self.factory.reactor.callLater(DROP_LINGER, self.transport.abortConnection)
        if framing.tcp_transport(self.transport) is not self.transport:
            self.transport.loseConnection()
            return
        self.transport.loseWriteConnection()
        self.transport.resumeProducing()

    # -- frames in -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state == "closed":
            return
        self._decoder.feed(data)
        if self._held:
            # A request runs: what came waits in the decoder, and reading
            # stops until it ends, so a peer cannot make us hold more.
            if not self._stopped_reading:
                self._stopped_reading = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        try:
            while not self._held and self._state != "closed":
                try:
                    frame = self._decoder.next_frame()
                except ProtocolError as e:
                    self.drop(e.message)
                    return
                if frame is None:
                    return
                ftype, rid, body = frame
                if self._put is not None:
                    if not self._put_frame(ftype, rid, body):
                        return
                    continue
                if ftype == framing.DATA and self._state == "ready":
                    stream = self._write
                    if stream is None or rid != stream.rid:
                        self._store_pending()
                        self.drop("DATA frame outside a write stream")
                        return
                    self._pending.extend(body)
                    continue
                self._store_pending()
                try:
                    self._frame(ftype, rid, body)
                except ProtocolError as e:
                    self.drop(e.message)
                    return
        finally:
            self._store_pending()

    def _store_pending(self) -> None:
        """Write the DATA payloads gathered so far to the write stream."""
        if self._pending:
            pieces, self._pending = self._pending, []
            if self._write is not None:
                self._write.data(self, pieces)

    def _hold(self) -> None:
        """Stop taking frames until _release.  The socket is still read
        until bytes come meanwhile (``dataReceived`` stops it then): a
        client waits for a request's reply before it sends the next, so
        most requests end with nothing come, and stopping and restarting
        the reading around each (two ``epoll_ctl``, and the reactor's
        Python for them) was a tenth of a small put's reactor time."""
        self._held = True

    def _release(self) -> None:
        """Take the frames that waited, then read the socket again only
        if none of them started another request: resuming first let each
        pipelined request add a socket read to the decoder while using up
        one small frame (a peer could grow it without bound)."""
        self._held = False
        if self._state == "closed":
            return
        self._process()
        if self._stopped_reading and not self._held and self._state != "closed":
            self._stopped_reading = False
            self.transport.resumeProducing()

    def _frame(self, ftype: int, rid: int, body: Any) -> None:
        if self._state == "hello":
            if ftype != framing.HELLO:
                raise ProtocolError(f"expected HELLO, got {framing.FRAME_NAMES[ftype]}")
            self._hello(body)
        elif self._state == "auth":
            if ftype != framing.AUTH:
                raise ProtocolError(f"expected AUTH, got {framing.FRAME_NAMES[ftype]}")
            self._auth(body)
        elif ftype == framing.DATA:
            # _process gathers a write stream's DATA; any other is out of place.
            raise ProtocolError("DATA frame outside a write stream")
        elif ftype == framing.REQUEST:
            if self._read is not None or self._list_resume is not None:
                raise ProtocolError("request while a stream is being sent")
            self._request(rid, body)
        elif ftype == framing.KEEPALIVE:
            pass
        else:
            raise ProtocolError(f"unexpected {framing.FRAME_NAMES[ftype]} frame from a client")

    # -- handshake -----------------------------------------------------

    def _hello(self, body: dict[str, Any]) -> None:
        if body.get("version") != framing.VERSION:
            raise ProtocolError(f"client speaks version {body.get('version')!r}")
        if not auth.valid_nonce(body.get("nonce")):
            raise ProtocolError("HELLO without a valid nonce")
        self._client_nonce = body["nonce"]
        self._server_nonce = auth.new_nonce()
        proof = auth.server_proof(self.factory.secret, self._client_nonce, self._server_nonce)
        # Before the CHALLENGE goes out: a hang-up seen after it may be the
        # client's answer to our proof, however fast it came.
        self._gone_before_proof = peer_already_gone(self.transport)
        self._send(
            framing.CHALLENGE,
            0,
            {
                "version": framing.VERSION,
                "nonce": self._server_nonce,
                "proof": proof,
                "name": self.factory.name,
            },
        )
        self._state = "auth"

    def _auth(self, body: dict[str, Any]) -> None:
        expected = auth.client_proof(self.factory.secret, self._client_nonce, self._server_nonce)
        if not auth.proofs_match(expected, body.get("proof")):
            self.auth_failed("wrong proof of the cluster secret")
            reason = "authentication failed: wrong proof of the cluster secret"
            self.drop(reason, "auth_failed", logged=True)
            return
        self._state = "ready"
        self._decoder.limit = None
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._send(
            framing.READY,
            0,
            {"name": self.factory.name, "version": framing.VERSION, "ops": list(self.factory.ops)},
        )

    # -- frames out ----------------------------------------------------

    def _send(self, ftype: int, rid: int, body: dict[str, Any]) -> None:
        """Send a control frame into the socket at once while nothing is
        queued before it (plain TCP; else through the transport): the
        client waits for a reply, which a transport write would hold until
        the reactor's next turn."""
        framing.send_now(self.transport, framing.encode_control(ftype, rid, body))

    def _send_error(self, rid: int, exc: BaseException, req: dict[str, Any] | None = None) -> None:
        """Send ``exc`` as the error of request ``rid``, logged by kind: an
        unexpected one with its traceback; a routine one (``ROUTINE_ERRORS``:
        a full, read-only or gutted disk, damage) of request ``req`` as one
        warning naming the op and blob; a refused one at info."""
        err = storage_error(exc)
        if type(err) is StorageError:
            log.failure(
                "request {rid} from {peer} failed",
                Failure(exc) if not isinstance(exc, Failure) else exc,
                rid=rid,
                peer=self.peer,
            )
        elif isinstance(err, ROUTINE_ERRORS) and req is not None:
            blob = req.get("blob")
            if blob is None and self._write is not None:
                blob = self._write.blob_id
            log.warn(
                "{op} of {blob} from {peer} failed: {error}: {why}",
                op=req.get("op"),
                blob=blob,
                peer=self.peer,
                error=type(err).__name__,
                why=err.message,
            )
        elif isinstance(err, WrongCluster):
            # A front end of another catalog: rare (its pool stops using a
            # store bound elsewhere), and worth an operator's look.
            log.warn(
                "refused {op} from {peer}, a front end of another cluster: {why}",
                op=(req or {}).get("op"),
                peer=self.peer,
                why=err.message,
            )
        elif isinstance(err, BadRequest):
            log.info(
                "refused request {rid} from {peer}: {why}",
                rid=rid,
                peer=self.peer,
                why=err.message,
            )
        self._send(framing.ERROR, rid, {"code": err.code, "message": err.message})

    # -- requests ------------------------------------------------------

    def _request(self, rid: int, req: dict[str, Any]) -> None:
        op = req.get("op")
        if self._write is not None:
            if req.get("drop_cache") is True and op in ("flush", "commit"):
                self._write.drop_cache_behind()
            if op == "flush":
                self._flush_while_streaming(rid)
                return
            handler = {"commit": self._op_stream_commit, "abort": self._op_abort}.get(op)
            if handler is None:
                self._send_error(rid, BadRequest(f"op {op!r} is not allowed in a write stream"))
                return
        elif op == "abort":
            # The stream it would end is over already: the server ended it
            # (a fence, a full disk, a refused epoch) while the client's
            # abort was on its way, and a client aborts whatever it saw
            # fail.  Nothing to end, so nothing refused: it was logged as
            # an unknown op, an operator's false alarm each time.
            handler = self._op_abort
        elif op not in self.factory.ops:
            self._send_error(rid, BadRequest(f"unknown op {op!r}"))
            return
        elif "cluster" in req and op != "bind" and not self._of_our_cluster(rid, req):
            return
        elif op == "put":
            self._begin_put(rid, req)
            return
        else:
            handler = {
                "stat": self._op_stat,
                "read": self._op_read,
                "write": self._op_write,
                "fence": self._op_fence,
                "commit": self._op_commit,
                "delete": self._op_delete,
                "list": self._op_list,
                "copy": self._op_copy,
                "health": self._op_health,
                "bind": self._op_bind,
            }[op]
        self._run(rid, handler, req)

    def _run(self, rid: int, handler: Callable[..., Any], req: dict[str, Any]) -> None:
        """Run a handler with frames held; send its result or error."""
        self._hold()
        self._busy_id = rid
        self._start_keepalive()
        d = defer.maybeDeferred(handler, rid, req)

        def done(result: Any) -> None:
            self._busy_id = None
            if self._state == "closed":
                return
            if isinstance(result, Failure):
                self._send_error(rid, result.value, req)
            elif result is not None:
                self._send(framing.REPLY, rid, result)
            self._release()

        d.addBoth(done)

    def _start_keepalive(self) -> None:
        """While a request is in a thread, tell the client we are alive.

        Lets the client tell a slow fsync from a frozen server.
        """
        if self._keepalive is not None and self._keepalive.active():
            return

        def tick() -> None:
            self._keepalive = None
            busy = self._busy_id if self._busy_id is not None else next(iter(self._flushes), None)
            if busy is not None and self._state != "closed":
                self._send(framing.KEEPALIVE, busy, {})
                self._start_keepalive()

        self._keepalive = self.factory.reactor.callLater(self.factory.keepalive_interval, tick)

    def _blocking(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return self.factory.run_blocking(f, *args)

    def _op_stat(self, rid: int, req: dict[str, Any]) -> defer.Deferred:
        blob_id = check_blob_id(req.get("blob"))
        return self._blocking(self.factory.store.stat, blob_id).addCallback(info_to_wire)

    def _op_fence(self, rid: int, req: dict[str, Any]) -> defer.Deferred:
        blob_id = check_blob_id(req.get("blob"))
        epoch = _int_field(req, "epoch")
        truncate_to = _int_field(req, "truncate_to")
        d = self._blocking(self.factory.store.fence, blob_id, epoch, truncate_to)
        return d.addCallback(info_to_wire)

    @defer.inlineCallbacks
    def _op_commit(self, rid: int, req: dict[str, Any]) -> Any:
        blob_id = check_blob_id(req.get("blob"))
        epoch = _int_field(req, "epoch")
        failpoints.hit("storage.before_commit")
        info = yield self._blocking(self.factory.store.commit, blob_id, epoch)
        failpoints.hit("storage.after_commit")
        return info_to_wire(info)

    def _op_delete(self, rid: int, req: dict[str, Any]) -> defer.Deferred:
        blob_id = check_blob_id(req.get("blob"))
        return self._blocking(self.factory.store.delete, blob_id).addCallback(lambda _: {})

    def _of_our_cluster(self, rid: int, req: dict[str, Any]) -> bool:
        """Whether a request that names its front end's cluster (``cluster``:
        a delete) may run: refused (``wrong_cluster``, answered here) if the
        store is bound to another.  Checked against the store's binding,
        not any front end's view of it, so a delete decided on a stale
        health answer cannot reach a store bound elsewhere since."""
        check = getattr(self.factory.store, "check_cluster", None)
        if check is None:
            return True
        try:
            check(check_cluster_id(req["cluster"]))
        except StorageError as e:
            self._send_error(rid, e, req)
            return False
        return True

    def _op_bind(self, rid: int, req: dict[str, Any]) -> defer.Deferred:
        """Bind the store to the front end's cluster, or confirm it is
        bound to it; ``wrong_cluster`` if bound to another."""
        cluster_id = check_cluster_id(req.get("cluster"))
        d = self._blocking(self.factory.store.bind_cluster, cluster_id)
        return d.addCallback(lambda b: {"cluster": b.cluster_id, "bound": b.bound})

    @defer.inlineCallbacks
    def _op_health(self, rid: int, req: dict[str, Any]) -> Any:
        """Space, blob count, load and ``problem``: why the disk takes no
        writes now (``DiskCheck``; None when it does), so front ends place
        no new blob here while it is set; and the store's identity
        (``store_id``, ``store_created``), so they notice a server that
        comes back on a wiped data directory (none while an older store
        has had no room for its IDENTITY: ``BlobStore.identify``).  A data
        directory gone under us answers, with no space and its problem,
        rather than failing.
        ``reserve_bytes`` is the free space the store keeps back from new
        blobs (wsstorage.reserve): below it, that is the problem, and a
        front end places a blob of known size only where its size fits
        above it."""
        store = self.factory.store
        reserve_of = getattr(store, "reserve_bytes", None)
        identify = getattr(store, "identify", None) or (lambda: getattr(store, "identity", None))

        def probe() -> dict[str, Any]:
            try:
                free, total = store.free_space()
            except OSError:
                free, total = 0, 0
            reserve = reserve_of(total) if reserve_of is not None and total else 0
            return {
                "free_bytes": free,
                "total_bytes": total,
                "reserve_bytes": reserve,
                "blobs": store.count_blobs(),
                # An older store that had no room for its IDENTITY at open
                # tries again here: its id is reported once written.
                "identity": identify(),
            }

        problem = yield self.factory.disk_check.problem()
        r = yield self._blocking(probe)
        if problem is None and r.get("reserve_bytes"):
            problem = below_reserve_problem(r["free_bytes"], r["reserve_bytes"])
        r.update(
            name=self.factory.name,
            active_streams=self.factory.active_streams,
            version=framing.VERSION,
            load=list(os.getloadavg()),
            problem=problem,
        )
        identity = r.pop("identity", None)
        if identity is not None:
            r.update(store_id=identity.store_id, store_created=identity.created)
        if hasattr(store, "bind_cluster"):
            r["cluster_id"] = store.cluster_id
        return r

    # -- read stream ---------------------------------------------------

    @defer.inlineCallbacks
    def _op_read(self, rid: int, req: dict[str, Any]) -> Any:
        blob_id = check_blob_id(req.get("blob"))
        offset = _int_field(req, "offset")
        length = _int_field(req, "length", optional=True)
        store = self.factory.store
        handle, n, size = yield self._blocking(open_range, store, blob_id, offset, length)
        if self._state == "closed":
            handle.close()
            return None
        self._send(framing.REPLY, rid, {"length": n, "size": size})
        stream = _ReadStream(self, rid, handle, n)
        self._read = stream
        self.transport.registerProducer(stream, True)
        stream.resumeProducing()
        result = yield stream.done
        return result

    def _read_finished(self, stream: _ReadStream) -> None:
        if self._read is stream:
            self._read = None
            self.transport.unregisterProducer()

    # -- write stream --------------------------------------------------

    @defer.inlineCallbacks
    def _op_write(self, rid: int, req: dict[str, Any]) -> Any:
        blob_id = check_blob_id(req.get("blob"))
        epoch = _int_field(req, "epoch")
        offset = _int_field(req, "offset")
        meta = meta_field(req)
        handle = yield self._blocking(self.factory.store.open_write, blob_id, epoch, offset, meta)
        if self._state == "closed":
            handle.close()
            return None
        self._write = _WriteStream(rid, blob_id, handle)
        return {"offset": offset}

    def _sync_stream(self, stream: _WriteStream) -> defer.Deferred:
        """fsync the stream's blob in a thread, after any fsync still running."""
        d = stream.syncing.addBoth(lambda _: self._blocking(stream.handle.sync))
        stream.syncing = defer.Deferred()
        mine = stream.syncing

        def settle(result: Any) -> Any:
            # A failed sync fails the stream before anyone waiting on it (a
            # commit) goes on: Linux reports a write-back error to one
            # fsync only, so the seal's own sync could wrongly succeed.
            if isinstance(result, Failure) and stream.error is None:
                stream.error = storage_error(result.value)
                self._give_back_space(stream)
            mine.callback(None)
            return result

        d.addBoth(settle)
        return d

    def _flush_while_streaming(self, rid: int) -> None:
        """A flush inside a write stream does not hold the stream's frames.

        DATA frames that follow keep going to the store while the fsync runs
        in a thread (the store allows writes during a sync), so a checkpoint
        costs the writer no stall; the reply carries the durable length,
        at least every byte received before the flush.
        """
        stream = self._write
        assert stream is not None
        if stream.error is not None:
            self._send_error(rid, stream.error)
            return
        self._flushes[rid] = None
        self._start_keepalive()
        d = self._sync_stream(stream)

        def done(result: Any) -> None:
            self._flushes.pop(rid, None)
            if self._state == "closed":
                return
            if isinstance(result, Failure):
                stream.error = storage_error(result.value)
                self._send_error(rid, result.value, {"op": "flush", "blob": stream.blob_id})
            else:
                self._send(framing.REPLY, rid, {"durable": result})

        d.addBoth(done)

    @defer.inlineCallbacks
    def _op_stream_commit(self, rid: int, req: dict[str, Any]) -> Any:
        stream = self._write
        assert stream is not None
        if stream.error is not None:
            raise stream.error
        handle = stream.handle
        yield stream.syncing  # a flush still running finishes first
        if stream.error is not None:
            raise stream.error
        failpoints.hit("storage.before_commit")
        try:
            # seal syncs what is not yet durable itself: a sync first would
            # give a never-synced blob an ``open`` record only to replace it.
            info = yield self._blocking(handle.seal)
        except Exception as e:
            stream.error = storage_error(e)
            self._give_back_space(stream)
            if stream.giving_back is not None:
                yield stream.giving_back  # the space is back before the refusal
            raise e
        failpoints.hit("storage.after_commit")
        self._end_write()
        return info_to_wire(info)

    def _op_abort(self, rid: int, req: dict[str, Any]) -> defer.Deferred:
        """End the stream; answered once a full disk's partial blob has
        given its space back (``_give_back_space``), if it failed so."""
        stream = self._write
        giving_back = stream.giving_back if stream is not None else None
        self._end_write()
        if giving_back is None:
            return defer.succeed({})
        return giving_back.addCallback(lambda _: {})

    def _end_write(self) -> None:
        stream, self._write = self._write, None
        if stream is not None:
            stream.close(self.factory)

    def write_failed(self, stream: _WriteStream, exc: BaseException) -> None:
        """A chunk could not be stored: report it once on the stream's id."""
        stream.error = storage_error(exc)
        log.warn(
            "write to {blob} from {peer} failed: {err}",
            blob=stream.blob_id,
            peer=self.peer,
            err=stream.error.message,
        )
        self._send_error(stream.rid, stream.error)
        self._give_back_space(stream)

    def _give_back_space(self, stream: _WriteStream) -> None:
        """Once, for a stream that failed for a full disk: its partial
        blob's space back now (``give_back_space``), not after the front
        ends' orphan grace.  Any other failure (a dead disk, a fence)
        leaves the blob as it is."""
        if stream.giving_back is not None or stream.handle is None:
            return
        if not isinstance(stream.error, DiskFull):
            return
        stream.giving_back = give_back_space(
            self.factory, stream.handle, stream.blob_id, stream.syncing
        )

    # -- put: a whole small blob in one request ------------------------

    def _begin_put(self, rid: int, req: dict[str, Any]) -> None:
        """Wait for a ``put``'s DATA frames (``_put_frame``); a put of 0
        bytes runs at once.  Its other fields are checked once the bytes
        are in, so a bad one is an error reply like any other; a bad
        ``length`` leaves the frames that follow unaccountable, so the
        connection is closed after the error reply."""
        try:
            length = _int_field(req, "length")
            if length > PUT_MAX:
                raise BadRequest(f"a put carries at most {PUT_MAX} bytes, not {length}")
        except StorageError as e:
            self._send_error(rid, e)
            self.drop(f"refused put: {e.message}")
            return
        self._put = _PutRequest(rid, req, length)
        if length == 0:
            self._run_put()

    def _put_frame(self, ftype: int, rid: int, body: Any) -> bool:
        """A frame while a put's data arrives: its DATA is kept (copied: it
        outlives this read), anything else is a protocol error.  False
        once the connection is dropped."""
        put = self._put
        assert put is not None
        if ftype != framing.DATA or rid != put.rid:
            self.drop(f"{framing.FRAME_NAMES[ftype]} frame inside a put's data")
            return False
        for piece in body:
            put.received += len(piece)
            put.pieces.append(bytes(piece))
        if put.received > put.length:
            self.drop(f"put {rid} sent more than its {put.length} bytes")
            return False
        if put.received == put.length:
            self._run_put()
        return True

    def _run_put(self) -> None:
        put, self._put = self._put, None
        assert put is not None
        self._run(put.rid, self._op_put, {"_put": put})

    def _op_put(self, rid: int, req: dict[str, Any]) -> defer.Deferred:
        """Create the blob, store the bytes and seal it (data, checksums,
        record, directory fsync'd) in one task in a thread: one hop instead
        of an open, a stream and a commit."""
        put: _PutRequest = req["_put"]
        fields = put.request
        blob_id = check_blob_id(fields.get("blob"))
        epoch = _int_field(fields, "epoch")
        meta = meta_field(fields)
        # The put's bytes are counted here, in the reactor thread like a
        # stream's, before the thread stores them from ``start`` on.
        start = _ProcessCounters.written
        _ProcessCounters.written += put.received
        factory = self.factory
        # The server's put threads (``wsstorage.putthreads``), not the
        # reactor's pool: half its cost per call on both sides.  An inline
        # stand-in for run_blocking (unit tests) runs it at once.
        run = put_threads(factory).run if factory.threaded else factory.run_blocking
        d = run(seal_put, factory.store, blob_id, epoch, meta, put.pieces, start)
        return d.addCallback(info_to_wire)

    # -- list ----------------------------------------------------------

    @defer.inlineCallbacks
    def _op_list(self, rid: int, req: dict[str, Any]) -> Any:
        """Stream the blob list as REPLY pages with ``more``; the last has more=false."""
        store = self.factory.store
        it = yield self._blocking(lambda: iter(store.list_blobs()))
        producer = _PauseFlag()
        self.transport.registerProducer(producer, True)
        try:
            page: list[dict[str, Any]] = []
            page_bytes = 0
            while True:
                batch = yield self._blocking(lambda: list(itertools.islice(it, LIST_BATCH)))
                if self._state == "closed":
                    return None
                for info in batch:
                    item = info_to_wire(info)
                    size = len(json.dumps(item)) + 1
                    if page and page_bytes + size > LIST_PAGE_BYTES:
                        self._send(framing.REPLY, rid, {"blobs": page, "more": True})
                        page, page_bytes = [], 0
                    page.append(item)
                    page_bytes += size
                if not batch:
                    break
                if producer.paused:
                    self._list_resume = producer.wait()
                    yield self._list_resume
                    self._list_resume = None
            return {"blobs": page, "more": False}
        finally:
            if self._state != "closed":
                self.transport.unregisterProducer()

    # -- copy ----------------------------------------------------------

    @defer.inlineCallbacks
    def _op_copy(self, rid: int, req: dict[str, Any]) -> Any:
        blob_id = check_blob_id(req.get("blob"))
        source = req.get("source")
        if not isinstance(source, str) or not source:
            raise BadRequest("field 'source' must be a client endpoint string")
        store = self.factory.store
        try:
            local = yield self._blocking(store.stat, blob_id)
        except BlobNotFound:
            local = None
        if local is not None and local.sealed:
            raise BlobExists(f"blob {blob_id} is already sealed here")
        peer = self.factory.peer_client(source)
        try:
            info = yield peer.stat(blob_id)
            if not info.sealed:
                raise BadRequest(f"blob {blob_id} is not sealed on {source}")
            handle = yield self._blocking(store.open_write, blob_id, info.epoch, 0, info.meta)
            sink = _HandleConsumer(handle)
            try:
                try:
                    got = yield peer.read(blob_id, 0, None, sink)
                except Exception:
                    # A sink that failed (a full disk) stops the read, which
                    # then fails "stopped by its consumer": report the cause.
                    if sink.error is not None:
                        raise sink.error from None
                    raise
                if sink.error is not None:
                    raise sink.error
                if got != info.size or sink.count != info.size:
                    raise StorageError(f"copy of {blob_id} got {got} of {info.size} bytes")

                sealed = yield self._blocking(handle.seal)
            except BaseException:
                handle.close()
                try:
                    yield self._blocking(store.delete, blob_id)
                except Exception:
                    pass
                raise
            handle.close()
        finally:
            yield peer.close()
        log.info("copied {blob} ({n} bytes) from {src}", blob=blob_id, n=sealed.size, src=source)
        return info_to_wire(sealed)


@implementer(IPushProducer)
class _PauseFlag:
    """A producer that only records whether the transport wants a pause."""

    def __init__(self) -> None:
        self.paused = False
        self._waiting: list[defer.Deferred] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:
        pass

    def wait(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.paused:
            self._waiting.append(d)
        else:
            d.callback(None)
        return d


@attrs.frozen
class _Batch:
    """One read-ahead batch of ``length`` verified bytes: the DATA frames
    carrying them, either as headers and views of the bytes read (``iov``,
    sent with one ``sendmsg``: no copy) or as one bytes (``wire``, for a
    transport we must write through: TLS); or, when they must be cut at a
    failpoint, the bytes themselves (``pieces``); only one of the three.
    ``error`` ended the batch early, if not None."""

    pieces: list[bytes]
    length: int
    wire: bytes | None
    error: BaseException | None
    iov: list[bytes | memoryview] | None = None
    #: The stream's buffer ``iov`` views, given back once they are sent.
    buffer: memoryview | None = None


_reactor_batch: memoryview = memoryview(bytearray(0))


def reactor_batch_buffer(size: int) -> memoryview:
    """The buffer that every read stream of this process reads a cached
    batch into in the reactor thread, when it is not its own
    (``_ReadStream._read_here``), as ``size`` bytes; in-process reads
    (``wsstorage.inprocess``) read their cached batches into it too.

    It can be shared because it is free again as soon as its reader
    returns: the batch was read, framed and sent (``framing.send_iov``
    copies what the socket does not take before handing it to the
    transport), or copied out as bytes for an in-process consumer, all in
    the reactor thread, of which a process has one.  Never give it to a
    thread.
    """
    global _reactor_batch
    if len(_reactor_batch) < size:
        _reactor_batch = memoryview(bytearray(size))
    return _reactor_batch[:size]


@implementer(IPushProducer)
class _ReadStream:
    """Sends one blob range as DATA frames, paced by the transport.

    Reading and verifying blocks (one pread and a CRC per block, both
    release the GIL) and framing them runs in a thread, up to the factory's
    ``read_batches`` batches of ``read_ahead`` bytes ahead of what the
    reactor thread is sending, so disk work and socket work overlap and a
    thread scheduled late on a busy machine does not stall the socket.
    When nothing is ready and no task runs, the reactor thread reads a
    batch already in the page cache itself (``_read_here``) and, if it is
    the server's only read stream, starts the task for the ones after it.
    Over plain TCP batches are read in place
    into reused buffers: the stream's own (``_buffers``) for a task's
    batches and, while it is the only stream, the reactor thread's; else
    one buffer shared by every stream of the process
    (``reactor_batch_buffer``).  At most read_batches + 2 batches are in
    memory: those ready, the one being read, and the one being sent (whose
    unsent rest the transport copies); a stream keeps at most
    read_batches + 1 buffers of its own, reallocating one only when a
    larger read-ahead (``wsfront.local``'s share grew back) needs it.
    """

    def __init__(self, proto: StorageServerProtocol, rid: int, handle: Any, length: int) -> None:
        self.proto = proto
        self.rid = rid
        self.handle = handle
        self.remaining = length  # not yet sent
        self.to_fetch = length  # not yet asked of the store
        self.sent = 0
        self.paused = False
        self.done: defer.Deferred = defer.Deferred()
        self._in_turn = False
        self._finished = False
        self._fetching = False
        self._ready: deque[_Batch] = deque()
        self._room = threading.Condition()  # notified when a batch is taken
        self._failed = False  # a batch ended with an error: fetch no more
        #: The TCP socket to send frames on with sendmsg, None under TLS.
        self._socket = framing.direct_socket(proto.transport)
        #: Read cached batches in the reactor thread (_read_here): plain TCP,
        #: no read failpoint (it cuts batches in pieces), a store that can.
        self._here = (
            self._socket is not None
            and failpoints.threshold("storage.read.bytes") is None
            and hasattr(handle, "read_into")
        )
        #: Batch buffers (at least read_ahead bytes each when taken) free
        #: for reuse: a batch read in place by a task on plain TCP, or by
        #: the reactor thread while this is the only stream, is sent from
        #: its buffer, which then comes back here.
        self._buffers: deque[memoryview] = deque()
        proto.factory.read_streams += 1
        self._counted = True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        # Straight on, not in a later reactor turn: the transport resumes us
        # from doWrite when its buffer has drained, and the next batch should
        # be in the socket before the kernel's buffer drains too.
        self.paused = False
        if not self._in_turn and not self._finished:
            self._turn()

    def stopProducing(self) -> None:
        self.close()

    def _fill(self) -> None:
        """Start a reading task if there is room and none is running."""
        if (
            not self._fetching
            and not self._failed
            and self.to_fetch
            and len(self._ready) < self.proto.factory.read_batches
            and not self._finished
        ):
            self._fetch()

    def _fetch(self) -> None:
        """One task in a thread reads batches while fewer than read_batches
        are ready, handing each over as soon as it is verified.

        The task does not come back to the reactor between batches (a
        round trip per batch would idle the disk side while the reactor is
        busy or scheduled late, and a thread dispatch costs more than
        reading a cached MiB): when the ready queue is full it waits on
        ``_room``, which the reactor notifies when it takes a batch, and
        only after READ_IDLE seconds without room (a paused consumer) does
        it end and give its pool thread back; it also ends after
        READ_TASK_BATCHES batches so that streams share the pool fairly.
        _fill starts the next task.
        While it runs only it touches ``to_fetch`` and the handle;
        ``_ready`` is a deque, whose append and popleft are atomic.
        """
        self._fetching = True
        factory = self.proto.factory
        handle, rid, ready = self.handle, self.rid, self._ready
        # With a read failpoint armed, batches are cut byte-exactly in the
        # reactor thread (_send_pieces); otherwise framed here, off it.
        frame_here = failpoints.threshold("storage.read.bytes") is None
        direct = self._socket is not None
        in_place = self._here
        take_buffer = self._take_buffer
        arrived = factory.from_thread(self._arrived)

        def read_in_place(n: int) -> _Batch:
            # Into a reused buffer, sent from there: nothing allocated.  At
            # most read_ahead bytes (n, or n and the blob's end): a pooled
            # buffer may be larger, and to_fetch was counted down by n.
            buffer = take_buffer(read_ahead)
            window = buffer[:read_ahead]
            got = 0
            error: BaseException | None = None
            try:
                while got < n:
                    k = handle.read_into(window[got:])
                    if not k:
                        raise StorageError(f"blob ended {n - got} bytes early")
                    got += k
            except Exception as e:
                error = e  # the good blocks before a bad one still go out
            iov = framing.data_frame_iov(rid, [buffer[:got]])
            return _Batch([], got, None, error, iov, buffer)

        def read_batch(n: int) -> _Batch:
            if in_place:
                return read_in_place(n)
            pieces: list[bytes] = []
            left = n
            error: BaseException | None = None
            try:
                while left:
                    data = handle.read(left)
                    if not data:
                        raise StorageError(f"blob ended {left} bytes early")
                    pieces.append(data)
                    left -= len(data)
            except Exception as e:
                error = e  # the good blocks before a bad one still go out
            if frame_here and direct:  # headers and views: no copy at all
                return _Batch([], n - left, None, error, framing.data_frame_iov(rid, pieces))
            if frame_here:  # the frames replace the pieces: one copy held
                return _Batch([], n - left, framing.join_data_frames(rid, pieces), error)
            return _Batch(pieces, n - left, None, error)

        room = self._room
        read_ahead, read_batches = factory.read_ahead, factory.read_batches
        # Inline (unit tests) nobody can take a batch while we wait: don't.
        idle = READ_IDLE if factory.threaded else 0

        def work() -> None:
            for _ in range(READ_TASK_BATCHES):
                with room:
                    while len(ready) >= read_batches and not self._finished:
                        if not room.wait(idle):
                            return  # the consumer is slow: give the thread back
                    if self._finished or not self.to_fetch:
                        return
                    n = min(read_ahead, self.to_fetch)
                    self.to_fetch -= n
                batch = read_batch(n)
                if batch.error is not None:
                    self._failed = True
                ready.append(batch)
                arrived()
                if self._failed:
                    return

        factory.run_blocking(work).addBoth(self._fetched)

    def _make_room(self) -> None:
        """A batch was taken: wake the reading task, or start one."""
        if self._fetching:
            with self._room:
                self._room.notify()
        else:
            self._fill()

    def _arrived(self) -> None:
        """A batch is ready (called in the reactor thread)."""
        if not self.paused and not self._finished:
            self.resumeProducing()

    def _fetched(self, result: Any) -> None:
        self._fetching = False
        if isinstance(result, Failure):  # not a read error: those are in batches
            self._failed = True
            self._ready.append(_Batch([], 0, None, result.value))
        if self._finished:
            # A batch the task read while close() ran is dropped here, not
            # when the stream is collected; the handle only now (the task
            # used it).
            self._ready.clear()
            self._close_handle()
            return
        self._fill()
        if not self.paused:
            self.resumeProducing()

    def _turn(self) -> None:
        """Send ready batches until paused, finished, or waiting for the disk."""
        self._in_turn = True
        try:
            while not self.paused and not self._finished:
                if self.remaining == 0:
                    self._finish({"length": self.sent}, None)
                    return
                if not self._ready:
                    if self._read_here():
                        continue
                    self._fill()  # _fetched resumes us (or already has)
                    if not self._ready:
                        return
                batch = self._ready.popleft()
                self._make_room()
                try:
                    if batch.iov is not None:
                        self._send_iov(batch.iov)
                        self._count(batch.length)
                        if batch.buffer is not None:
                            self._buffers.append(batch.buffer)
                    elif batch.wire is not None:
                        if batch.wire:
                            self.proto.transport.write(batch.wire)
                        self._count(batch.length)
                    else:
                        self._send_pieces(batch.pieces)
                except Exception as e:
                    self._finish(None, e)
                    return
                if batch.error is not None:
                    self._finish(None, batch.error)
                    return
        finally:
            self._in_turn = False

    def _take_buffer(self, size: int) -> memoryview:
        """A free batch buffer of at least ``size`` bytes (either thread may
        call this).  The factory's ``read_ahead`` may change while a stream
        runs (``wsfront.local`` shares a budget among the reads), so a
        pooled buffer too small for this batch is dropped, and the caller
        reads at most ``size`` bytes into a larger one."""
        while True:
            try:
                buffer = self._buffers.pop()
            except IndexError:
                return memoryview(bytearray(size))
            if len(buffer) >= size:
                return buffer

    def _read_here(self) -> bool:
        """Read and verify the next batch in this (the reactor's) thread if
        its bytes and checksums are in the page cache, start a reading task
        for the batches after it, then send it; False (and nothing read) if
        it is not cached, or a reading task runs: the batch then comes from
        the task.

        A cached MiB costs about a tenth of a millisecond to copy and check,
        less than handing the first batch to a thread and back, so a short
        read (one batch) never waits for a thread.  A longer one, while it
        is the server's only read stream (PIPELINED_STREAMS), is sent by
        this thread while the task reads and verifies the next batches on
        another CPU: the copy from the page cache and the checksums (about a
        third of the server's work per byte sent, the rest being the
        socket's copy) then overlap with the sending instead of adding to
        it.  With more streams every batch that is cached is read here, as
        the hand-offs cost CPU the other streams need.  Batches are read
        into a reused buffer and sent from there (``_send_iov`` copies only
        what the socket does not take), so nothing is allocated per batch:
        the stream's own while the task may read beside it, else the one
        buffer all streams of the process share here
        (``reactor_batch_buffer``; 200 downloads in wslocal held a 256 KiB
        buffer each for their whole lives, 50 MiB, before).  The disk itself is never
        waited for here (``RWF_NOWAIT``, and the blob's lock is only
        tried)."""
        if not self._here or self._fetching or self._failed or not self.to_fetch:
            return False
        factory = self.proto.factory
        size = factory.read_ahead
        pipelined = factory.read_streams <= PIPELINED_STREAMS
        own = self._take_buffer(size) if pipelined else None
        buffer = (own if own is not None else reactor_batch_buffer(size))[:size]
        try:
            got = self.handle.read_into(buffer, nowait=True)
            if not got:
                raise StorageError(f"blob ended {self.to_fetch} bytes early")
        except BlockingIOError:
            if own is not None:
                self._buffers.append(own)
            return False
        except Exception as e:
            self._failed = True
            self._finish(None, e)
            return True
        self.to_fetch -= got
        if pipelined:
            self._fill()  # the next batches, read while this one is sent
        self._send_iov(framing.data_frame_iov(self.rid, [buffer[:got]]))
        if own is not None:
            self._buffers.append(own)
        self._count(got)
        return True

    def _send_iov(self, iov: list[bytes | memoryview]) -> None:
        """Send frames with one ``sendmsg`` straight from the bytes read.

        Only while the transport holds nothing unsent (so nothing is
        overtaken); what the socket does not take goes to the transport as
        one bytes (the only copy), and we then wait for the transport to
        drain as if it had paused us, so that the next batch goes direct
        again rather than queueing behind the rest.
        """
        transport = self.proto.transport
        if framing.send_iov(transport, self._socket, iov):
            framing.pause_until_drained(transport)  # this stream is its producer

    def _send_pieces(self, batch: list[bytes]) -> None:
        """Send verified pieces, stopping at the read failpoint's exact byte.

        The frames are headers and views of the pieces (``data_frames``):
        joined into one bytes (a TCP transport takes nothing else)."""
        transport = self.proto.transport
        frames: list[bytes | memoryview] = []
        for data in batch:
            cut = _cut_at_failpoint("storage.read.bytes", _ProcessCounters.read, data)
            if len(cut) < len(data):
                if cut:
                    frames.extend(framing.data_frames(self.rid, cut))
                    self._count(len(cut))
                transport.write(b"".join(frames))
                frames = []
                failpoints.hit("storage.read.bytes", _ProcessCounters.read)
                data = data[len(cut) :]
            frames.extend(framing.data_frames(self.rid, data))
            self._count(len(data))
        if frames:
            transport.write(b"".join(frames))

    def _count(self, n: int) -> None:
        self.remaining -= n
        self.sent += n
        _ProcessCounters.read += n

    def _finish(self, end: dict[str, Any] | None, error: BaseException | None) -> None:
        self._finished = True
        self.proto._read_finished(self)
        if error is not None:
            self.proto._send_error(
                self.rid, error, {"op": "read", "blob": getattr(self.handle, "blob_id", None)}
            )
        else:
            self.proto._send(framing.END, self.rid, end or {})
        self.close()

    def close(self) -> None:
        if self._counted:
            self._counted = False
            self.proto.factory.read_streams -= 1
        self._finished = True
        self._ready.clear()
        self._buffers.clear()
        with self._room:
            self._room.notify()  # a reading task waiting for room ends now
        if not self._fetching:
            self._close_handle()  # else _fetched closes it when the thread is done
        if not self.done.called:
            self.done.callback(None)

    def _close_handle(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            handle.close()


@attrs.define
class _PutRequest:
    """A ``put`` request and the bytes of its DATA frames so far."""

    rid: int
    request: dict[str, Any]
    length: int
    received: int = 0
    pieces: list[bytes] = attrs.Factory(list)


def _store_counted(handle: Any, pieces: list[Any], start: int) -> None:
    """Store a write stream's or a put's bytes through ``handle`` (a put's
    in its thread).  The reactor thread counted them already, as bytes
    ``start`` onwards of ``_ProcessCounters.written``; failpoint
    ``storage.write.bytes`` is hit from that count, and the bytes before
    its threshold are stored before it fires, the rest after, without this
    function touching the counter."""
    write_pieces = getattr(handle, "write_pieces", None)

    def store(part: list[Any]) -> None:
        if not part:
            return
        if write_pieces is None:
            for piece in part:
                handle.write(bytes(piece))
        else:
            write_pieces(part)

    limit = failpoints.threshold("storage.write.bytes")
    if limit is None:
        store(pieces)
        return
    views = [memoryview(p) for p in pieces]
    total = sum(len(v) for v in views)
    if start + total >= limit:
        head, tail = _split_pieces(views, max(0, limit - start))
        store(head)
        failpoints.hit("storage.write.bytes", start + sum(len(v) for v in head))
        store(tail)
    else:
        store(views)
        failpoints.hit("storage.write.bytes", start + total)


class _WriteStream:
    """An open write: DATA frames go straight to the store's handle."""

    def __init__(self, rid: int, blob_id: str, handle: Any) -> None:
        self.rid = rid
        self.blob_id = blob_id
        self.handle = handle
        self.error: StorageError | None = None
        #: Fires when the last fsync started for this stream is done.
        self.syncing: defer.Deferred = defer.succeed(None)
        #: The client's ``drop_cache`` hint has been passed to the handle.
        self.dropping_cache = False
        #: Fires once a full disk's partial blob has given its space back
        #: (``give_back_space``); None unless the stream failed so.
        self.giving_back: defer.Deferred | None = None

    def data(self, proto: StorageServerProtocol, pieces: list[memoryview]) -> None:
        """Store the payloads of consecutive DATA frames (views into the
        received bytes) with one ``write_pieces``, counted as a put's are
        (``_store_counted``: failpoint ``storage.write.bytes`` fires at its
        exact byte)."""
        if self.error is not None:
            return  # already reported; the client will abort
        start = _ProcessCounters.written
        _ProcessCounters.written += sum(len(p) for p in pieces)
        try:
            _store_counted(self.handle, pieces, start)
        except Exception as e:
            proto.write_failed(self, e)

    def drop_cache_behind(self) -> None:
        """The writer's hint (``drop_cache`` on a flush or commit) that this
        replica is not the one read first: the store drops the page cache
        behind what it syncs (``BlobWriteHandle.drop_cache_behind``).  A
        store without it, or a handle no longer the blob's, keeps it."""
        advise = getattr(self.handle, "drop_cache_behind", None)
        if advise is None or self.error is not None or self.dropping_cache:
            return
        self.dropping_cache = True  # the client sends it on every flush
        advise()

    def close(self, factory: StorageServerFactory) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                handle.close()
            except Exception:
                log.failure("closing the write handle of {blob}", blob=self.blob_id)


class _HandleConsumer:
    """IConsumer that writes a peer's read stream into a local write handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.count = 0
        self.error: BaseException | None = None
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.handle.write(data)
            self.count += len(data)
        except Exception as e:
            self.error = storage_error(e)
            if self.producer is not None:
                self.producer.stopProducing()
