"""The client of a storage server that runs in this very process (``wslocal``).

``twistd -n wslocal`` holds the front end and every storage server in one
process, so one core (the GIL) runs both ends of every storage read.  Over
the wire protocol each byte of a download then crossed a loopback socket
twice (the server's ``sendmsg``, the client's ``recv``) and went through
framing on both sides: about half the process's CPU.

``InProcessClient`` serves ``read`` straight from the server's blob store
with the same verified reads the server uses (``BlobReadHandle``: every
block checked against its checksum, the good bytes before a damaged block
delivered first, then ChecksumError), the same range checks and errors,
and the same flow control (a streaming producer on the caller's consumer:
while it is paused nothing is read).  Every other operation, and a read
while the ``storage.read.bytes`` failpoint is armed (it cuts the server's
stream at an exact byte), goes over the wire through the ``StorageClient``
it wraps, so write streams, health probes and ``wsfs status`` are
unchanged; but ``put`` (a small blob in one request) runs the server's
``seal_put`` here too, in threads of its own (``wsstorage.putthreads``), as the server does.  A
server that stopped listening serves no in-process read either: the read
fails with NodeUnavailable, as a connection to it would, and the reader
fails over.  So does a read whose consumer raised (over the wire the
exception drops the connection), and every read running when the client
is closed; a closed client serves no more reads.  Errors of the store
that map to no wire error are logged as the server logs them.

Cached blocks are read in the reactor thread (``read_into`` with
``nowait``: the page cache only, the blob's lock only tried) into one
buffer shared by every in-process read and copied out once as the bytes
given to the consumer; a batch that needs the disk is read by the
server's ``run_blocking`` (its thread pool), and while it is written the
next batch is read behind it: from the page cache if it is there after
all (the read goes back to reading in the reactor thread), else by the
thread pool.  So a read holds at most two batches.  A batch is the
server's current ``read_ahead`` (``wsfront.local`` shares a budget among
the running reads), but one read from the page cache, until the consumer
first pauses the read, is its ceiling (``read_ahead_max``, see
``_batch_size``).  A read writes about TURN_BYTES (4 MiB) in one reactor call
and goes on in the next turn, so a consumer that never pauses (an FTP
HASH digest) does not hold the reactor for a whole file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsstorage import failpoints
from wsstorage._interfaces import IStorageClient
from wsstorage.counters import ProcessCounters
from wsstorage.errors import BadRequest, NodeUnavailable, StorageError
from wsstorage.fields import int_field
from wsstorage.putthreads import put_threads
from wsstorage.records import check_blob_id
from wsstorage.server import (
    PUT_MAX,
    StorageServerFactory,
    meta_copy,
    open_range,
    reactor_batch_buffer,
    seal_put,
    storage_error,
)

log = Logger()

#: A read writes batches to its consumer in one reactor call until this
#: many bytes are written, then goes on in the next reactor turn.  A consumer
#: that never pauses (``wsfront.ftp.hashing``) took a whole cached file in
#: one call before: 256 MiB held the reactor for half a second (over the
#: wire the longest gap was 13 ms).  4 MiB costs 5-15 ms to hash.  1 MiB
#: cost 200 FTP downloads of one file a quarter of their throughput
#: (``bench/ftp.py``: 0.85 -> 0.61 of pyftpdlib; 4 and 8 MiB as before):
#: their consumers rarely pause within it, and each turn given up is
#: another pass of the reactor over 200 connections.
TURN_BYTES = 4 << 20


@implementer(IStorageClient)
class InProcessClient:
    """``wire`` (a StorageClient of the server ``factory`` serves), with
    reads taken from ``factory``'s store in this process; see the module
    docstring."""

    def __init__(self, wire: Any, factory: StorageServerFactory) -> None:
        self.wire = wire
        self.factory = factory
        self.name = wire.name
        #: The in-process reads not yet ended: close() aborts them.
        self._reads: set[_LocalRead] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<InProcessClient {self.name}>"

    def read(self, blob_id: str, offset: int, length: int | None, consumer: Any) -> defer.Deferred:
        if self._closed:
            return defer.fail(self._closed_error())
        if failpoints.threshold("storage.read.bytes") is not None:
            return self.wire.read(blob_id, offset, length, consumer)
        try:
            check_blob_id(blob_id)
            int_field({"offset": offset}, "offset")
            int_field({"length": length}, "length", optional=True)
        except StorageError as e:
            return defer.fail(e)
        read = _LocalRead(self.factory, blob_id, offset, length, consumer, self._reads.discard)
        self._reads.add(read)
        return read.start()

    def stat(self, blob_id: str) -> defer.Deferred:
        return self.wire.stat(blob_id)

    def write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> defer.Deferred:
        return self.wire.write(blob_id, epoch, offset, meta)

    def put(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> defer.Deferred:
        """The server's ``put`` run here: the same checks, byte count,
        failpoints and ``seal_put`` in a thread (``putthreads``; an inline
        ``run_blocking`` runs it there), without framing the request and
        the reply through two loopback sockets (a small FTP STOR stores two
        replicas: that was about a fifth of the reactor's CPU per file).
        Refused with NodeUnavailable once the server stopped serving or
        this client was closed, as over the wire."""
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        if "put" not in self.factory.ops:
            # A server playing an older one: the wire client's fallback.
            return self.wire.put(blob_id, epoch, meta, data)
        try:
            meta = _checked(blob_id, meta, epoch=epoch)
            data = bytes(data)
            if len(data) > PUT_MAX:
                raise BadRequest(f"a put carries at most {PUT_MAX} bytes, not {len(data)}")
        except Exception as e:  # as the wire client's: a failed Deferred, never a raise
            return defer.fail(e)
        start = ProcessCounters.written
        ProcessCounters.written += len(data)
        store = self.factory.store
        factory = self.factory
        # An inline stand-in for run_blocking (unit tests) runs it at once.
        run = put_threads(factory).run if factory.threaded else factory.run_blocking
        d = run(seal_put, store, blob_id, epoch, meta, [data], start)
        return d.addErrback(
            lambda f: Failure(_wire_error(f, "put of {blob} to", blob_id, self.factory.name))
        )

    def _closed_error(self) -> NodeUnavailable:
        return NodeUnavailable(f"client of {self.name} is closed")

    def _refusal(self) -> NodeUnavailable | None:
        """Why an in-process put or write is refused before it starts, as
        over the wire: this client is closed, or its server is not serving;
        None if neither."""
        if self._closed:
            return self._closed_error()
        if not self.factory.numPorts:
            return not_serving(self.factory)
        return None

    def fence(self, blob_id: str, epoch: int, truncate_to: int) -> defer.Deferred:
        return self.wire.fence(blob_id, epoch, truncate_to)

    def commit(self, blob_id: str, epoch: int) -> defer.Deferred:
        return self.wire.commit(blob_id, epoch)

    def delete(self, blob_id: str) -> defer.Deferred:
        return self.wire.delete(blob_id)

    def list_blobs(self) -> defer.Deferred:
        return self.wire.list_blobs()

    def copy_from(self, blob_id: str, source_endpoint: str) -> defer.Deferred:
        return self.wire.copy_from(blob_id, source_endpoint)

    def health(self) -> defer.Deferred:
        return self.wire.health()

    @property
    def cluster_id(self) -> str | None:
        """The wire client's: its deletes name it."""
        return self.wire.cluster_id

    @cluster_id.setter
    def cluster_id(self, value: str | None) -> None:
        self.wire.cluster_id = value

    def can_bind(self) -> defer.Deferred:
        return self.wire.can_bind()

    def bind_cluster(self, cluster_id: str) -> defer.Deferred:
        """Over the wire, as the deletes that then name the cluster."""
        return self.wire.bind_cluster(cluster_id)

    def close(self) -> defer.Deferred:
        """As the wire client's: the running reads fail with
        NodeUnavailable (fired before this), later ones are refused."""
        self._closed = True
        ended = []
        for read in list(self._reads):
            read.abort(self._closed_error())
            ended.append(read.ended)
        closed = self.wire.close()
        if ended:
            closed.addCallback(
                lambda result: defer.gatherResults(ended).addCallback(lambda _: result)
            )
        return closed


@implementer(IPushProducer)
class _LocalRead:
    """One read: a streaming producer on the consumer, reading as it goes.

    The consumer is called (``registerProducer``, ``write``) only with
    ``_in_turn`` set, so the read never nests: a consumer that pauses and
    resumes us from inside just lets the loop go on.  Once ``_turn`` has
    written TURN_BYTES it leaves the rest to a call in the next reactor
    turn (``_later``).  The read's Deferred fires in a
    later reactor turn than the last write, after the producer is
    unregistered, as a wire read's does on its END frame.
    """

    def __init__(
        self,
        factory: StorageServerFactory,
        blob_id: str,
        offset: int,
        length: int | None,
        consumer: Any,
        forget: Callable[[_LocalRead], None] = lambda read: None,
    ) -> None:
        self.factory = factory
        self.blob_id = blob_id
        self.offset = offset
        self.length = length
        self.consumer = consumer
        self.d: defer.Deferred = defer.Deferred(self._cancel)
        #: Fires (None) once ``d`` has fired or was cancelled; ``forget``
        #: (the client's) is called just before ``d`` fires.
        self.ended: defer.Deferred = defer.Deferred()
        self._forget: Callable[[_LocalRead], None] | None = forget
        self.handle: Any = None
        #: Fires once the read handle is closed (a cancelled read's only
        #: once the batch a thread was reading is done).
        self.closed: defer.Deferred = defer.Deferred()
        self.expected = 0
        self.delivered = 0
        self.paused = False
        self.registered = False
        self._finished = False
        self._in_turn = False
        #: The call that goes on writing in the next reactor turn.
        self._later: Any = None
        #: The next batch, read and verified but not yet written (bytes),
        #: or the store's error that ended the reading there.
        self._ready: bytes | None = None
        self._error: Failure | None = None
        #: A batch is being read in the thread pool.
        self._reading = False
        #: The ready batch came from the thread pool: once it is taken, the
        #: next one is read (from the page cache, else by the thread pool)
        #: while it is written.
        self._disk = False
        self._block: int = getattr(factory.store, "block_size", 1)
        self._counted = False
        #: The consumer has paused us once: its socket filled.
        self._held_back = False

    def start(self) -> defer.Deferred:
        if not self._serving():
            self._finished = True
            self._forget_once()
            self.d.errback(not_serving(self.factory))
            self._done()
            return self.d
        store, blob_id = self.factory.store, self.blob_id
        opened = self.factory.run_blocking(open_range, store, blob_id, self.offset, self.length)
        opened.addCallbacks(self._opened, self._open_failed)
        return self.d

    def abort(self, error: BaseException) -> None:
        """End the read now with ``error`` (its client was closed); nothing
        if it has ended already."""
        self._end(error)

    def _serving(self) -> bool:
        return bool(self.factory.numPorts)

    def _opened(self, result: tuple[Any, int, int]) -> None:
        handle, n, _size = result
        if self._finished:  # cancelled or aborted while it opened
            handle.close()
            self.closed.callback(None)
            return
        self.handle, self.expected = handle, n
        self.factory.in_process_reads += 1
        self._counted = True
        # Registered first: a consumer may stop us from registerProducer.
        # Nor do we write from inside it, should it pause and resume us.
        self.registered = True
        self._in_turn = True
        try:
            self.consumer.registerProducer(self, True)
        except Exception:
            self.registered = False  # it refused us: nothing to unregister
            self._consumer_failed()
            return
        finally:
            self._in_turn = False
        self._go()

    def _open_failed(self, f: Failure) -> None:
        if not self._finished:
            self._finished = True
            self._forget_once()
            self.d.errback(self._logged(f))
            self._done()

    # -- IPushProducer ---------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        self._held_back = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._go()

    def stopProducing(self) -> None:
        self._end(StorageError("read stopped by its consumer"))

    # -- reading ---------------------------------------------------------

    def _batch_size(self, cached: bool = False) -> int:
        """The server's read-ahead, in whole blocks (``read_into`` reads
        whole blocks in place).

        A ``cached`` batch (read in the reactor thread into the shared
        buffer) is the server's ceiling, not its share, until the consumer
        first pauses us.  The share bounds what the reads hold together,
        and such a batch holds nothing once written but what the
        consumer's transport keeps of it, which pauses us as soon as that
        is more than its buffer; from then on (the socket is full, the
        next rest may stay) batches are the share again, as are those
        from the disk (a read may hold two).  Per byte, a 64 KiB batch
        (the share of 200 downloads) costs a read_into with its
        checksum-entry read, a copy out and a send: 200 FTP downloads of
        one cached file (``bench/ftp.py``, 8 runs each way, alternating)
        went from 0.76-0.89 of pyftpdlib's throughput (median 0.83) to
        0.78-1.00 (median 0.87) with this ceiling of 256 KiB, their CPU per
        GiB down by about a tenth, peak RSS unchanged.
        """
        size = self.factory.read_ahead
        if cached and not self._held_back:
            size = max(size, getattr(self.factory, "read_ahead_max", size))
        size = max(size, self._block)
        return size - size % self._block

    def _go(self) -> None:
        """Write on now, unless paused, finished, not yet opened, inside
        ``_turn`` already, or a call in the next reactor turn will."""
        if not (
            self.paused
            or self._finished
            or self._in_turn
            or self.handle is None
            or self._later is not None
        ):
            self._turn()

    def _next_turn(self) -> None:
        self._later = None
        self._go()

    def _turn(self) -> None:
        """Write batches until paused, finished, waiting for the disk, or
        TURN_BYTES are written (then again in the next reactor turn)."""
        self._in_turn = True
        written = 0
        try:
            while not self.paused and not self._finished:
                if self.delivered == self.expected:
                    self._end(None)
                    return
                if not self._serving():
                    self._end(not_serving(self.factory))
                    return
                if written >= TURN_BYTES:
                    self._later = self.factory.reactor.callLater(0, self._next_turn)
                    return
                data = self._next_batch()
                if data is None:
                    return  # ended, or the thread pool reads it: _read_done resumes us
                self.delivered += len(data)
                written += len(data)
                ProcessCounters.read += len(data)
                try:
                    self.consumer.write(data)
                except Exception:
                    self._consumer_failed()
                    return
        finally:
            self._in_turn = False

    def _next_batch(self) -> bytes | None:
        """The next verified bytes; None while the thread pool reads them,
        or once a store error ended the read."""
        if self._ready is None and self._error is None and not self._reading:
            self._fetch()
        if self._ready is not None:
            data, self._ready = self._ready, None
            if self._disk:
                self._fetch()  # the next one is read while this one is written
            return data
        if self._error is not None:
            self._end(self._logged(self._error))
        return None

    def _fetch(self) -> None:
        """Read the next batch into ``_ready`` (or ``_error``) from the page
        cache in this thread if it is there, else start the thread pool on
        it (``_disk``)."""
        handle = self.handle
        self._disk = False
        if self._finished or not handle.remaining:
            return
        read_into = getattr(handle, "read_into", None)
        if read_into is not None and not handle.offset % self._block:
            buffer = reactor_batch_buffer(self._batch_size(cached=True))
            try:
                got = read_into(buffer, nowait=True)
            except BlockingIOError:
                pass  # not in the page cache (or the blob is busy)
            except Exception:
                self._error = Failure()
                return
            else:
                if got:
                    self._ready = bytes(buffer[:got])
                else:
                    self._error = self._ended_early()
                return
        # The disk, or an unaligned start, which reads up to a block
        # boundary so that the batches after it can be read in place.
        size = self._batch_size() - handle.offset % self._block
        self._disk = True
        self._reading = True
        self.factory.run_blocking(handle.read, size).addBoth(self._read_done)

    def _ended_early(self) -> Failure:
        return Failure(StorageError(f"blob ended {self.expected - self.delivered} early"))

    def _read_done(self, result: Any) -> None:
        self._reading = False
        if self._finished:
            self._close_handle()
            return
        if isinstance(result, Failure):
            self._error = result
        elif not result:
            self._error = self._ended_early()
        else:
            self._ready = result
        self._go()

    # -- ending ----------------------------------------------------------

    def _logged(self, f: Failure) -> StorageError:
        return _wire_error(f, "read of {blob} from", self.blob_id, self.factory.name)

    def _consumer_failed(self) -> None:
        """The consumer raised (called in its ``except``): logged, and the
        read fails with NodeUnavailable, as over the wire, where the
        exception drops the connection (and Twisted logs it)."""
        log.failure(
            "the consumer of an in-process read of {blob} from storage server {name} failed",
            blob=self.blob_id,
            name=self.factory.name,
        )
        self._end(NodeUnavailable(f"read from storage server {self.factory.name} broken"))

    # Every way a read ends (done, a store error, stopProducing, the
    # consumer raising, abort, cancel, open failing) goes through ``_end``,
    # ``_cancel`` or ``_open_failed``, each of which acts only on a read not
    # yet ``_finished`` and sets it first; so the handle is closed, the
    # count taken back, the consumer unregistered and ``forget`` called
    # once each, whatever arrives after (an abort after the end, a close
    # while a thread reads a batch, a consumer that stops us from inside
    # ``unregisterProducer``).

    def _end(self, error: BaseException | None) -> None:
        """Stop reading, unregister, and fire the Deferred in a later turn;
        nothing if the read has ended already."""
        if self._finished:
            return
        self._finished = True
        self._release()
        if error is None:
            result: Any = self.delivered
        else:
            result = Failure(storage_error(error))
        self.factory.reactor.callLater(0, self._fire, result)

    def _fire(self, result: Any) -> None:
        self._forget_once()
        if not self.d.called:  # else it was cancelled meanwhile
            if isinstance(result, Failure):
                self.d.errback(result)
            else:
                self.d.callback(result)
        self._done()

    def _forget_once(self) -> None:
        """The client forgets the read, once, just before its Deferred fires."""
        forget, self._forget = self._forget, None
        if forget is not None:
            forget(self)

    def _done(self) -> None:
        self._forget_once()
        if not self.ended.called:
            self.ended.callback(None)

    def _release(self) -> None:
        """Let go of everything, once (the caller set ``_finished``): our
        own state first, the consumer last, so that a consumer that raises
        from ``unregisterProducer`` (logged) leaves nothing held."""
        self._ready = self._error = None
        if self._later is not None:
            if self._later.active():
                self._later.cancel()
            self._later = None
        if self._counted:
            self._counted = False
            self.factory.in_process_reads -= 1
        if not self._reading:
            self._close_handle()  # else _read_done closes it once the thread is done
        if self.registered:
            self.registered = False
            try:
                self.consumer.unregisterProducer()
            except Exception:
                log.failure(
                    "the consumer of an in-process read of {blob} from storage server "
                    "{name} failed to unregister it",
                    blob=self.blob_id,
                    name=self.factory.name,
                )

    def _close_handle(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()
            self.closed.callback(None)

    def _cancel(self, d: defer.Deferred) -> None:
        # The Deferred fails with CancelledError once this returns.
        if not self._finished:
            self._finished = True
            self._release()
        self._done()


def not_serving(factory: StorageServerFactory) -> NodeUnavailable:
    """The error of an in-process call to ``factory``'s server once it
    stopped serving (no listening port): a connection to it would fail."""
    return NodeUnavailable(f"storage server {factory.name} is not serving")


def _checked(blob_id: str, meta: dict[str, Any], **ints: int) -> dict[str, Any]:
    """Check a put's or a write's arguments as the server checks its
    request (the blob id, the integer fields ``ints``) and return ``meta``
    as the server sees it: a copy through JSON, checked for size."""
    check_blob_id(blob_id)
    for name, value in ints.items():
        int_field({name: value}, name)
    return meta_copy(meta)


def _wire_error(f: Failure, what: str, blob_id: str, name: str) -> StorageError:
    """The wire error for the store's error ``f`` (an in-process ``what``:
    "read of {blob} from"); one that maps to no wire error (EIO, a bug) is
    logged, as the server's ``_send_error`` logs it."""
    err = storage_error(f.value)
    if type(err) is StorageError:
        log.failure(f"in-process {what} storage server {{name}} failed", f, blob=blob_id, name=name)
    return err
