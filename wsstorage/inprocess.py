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
it wraps, so writes, health probes and ``wsfs status`` are unchanged.  A
server that stopped listening serves no in-process read either: the read
fails with NodeUnavailable, as a connection to it would, and the reader
fails over.

Cached blocks are read in the reactor thread (``read_into`` with
``nowait``: the page cache only, the blob's lock only tried) into one
buffer shared by every in-process read and copied out once as the bytes
given to the consumer; a batch that needs the disk is read by the
server's ``run_blocking`` (its thread pool), and while the disk is being
read the next batch is read behind it, so a read holds at most two
batches.  A batch is the server's current ``read_ahead``
(``wsfront.local`` shares a budget among the running reads).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from wsstorage import failpoints
from wsstorage._interfaces import IStorageClient
from wsstorage.errors import BadRequest, NodeUnavailable, StorageError
from wsstorage.records import check_blob_id
from wsstorage.server import StorageServerFactory, open_range, storage_error

_shared: memoryview = memoryview(bytearray(0))


def _shared_buffer(size: int) -> memoryview:
    """The buffer every in-process read of this process reads cached blocks
    into in the reactor thread: free again as soon as its bytes are copied
    out, in the same call.  Never given to a thread."""
    global _shared
    if len(_shared) < size:
        _shared = memoryview(bytearray(size))
    return _shared[:size]


@implementer(IStorageClient)
class InProcessClient:
    """``wire`` (a StorageClient of the server ``factory`` serves), with
    reads taken from ``factory``'s store in this process; see the module
    docstring."""

    def __init__(self, wire: Any, factory: StorageServerFactory) -> None:
        self.wire = wire
        self.factory = factory
        self.name = wire.name

    def __repr__(self) -> str:
        return f"<InProcessClient {self.name}>"

    def read(self, blob_id: str, offset: int, length: int | None, consumer: Any) -> defer.Deferred:
        if failpoints.threshold("storage.read.bytes") is not None:
            return self.wire.read(blob_id, offset, length, consumer)
        try:
            check_blob_id(blob_id)
            _check_range(offset, length)
        except StorageError as e:
            return defer.fail(e)
        return _LocalRead(self.factory, blob_id, offset, length, consumer).start()

    def stat(self, blob_id: str) -> defer.Deferred:
        return self.wire.stat(blob_id)

    def write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> defer.Deferred:
        return self.wire.write(blob_id, epoch, offset, meta)

    def put(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> defer.Deferred:
        return self.wire.put(blob_id, epoch, meta, data)

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

    def close(self) -> defer.Deferred:
        return self.wire.close()


def _check_range(offset: Any, length: Any) -> None:
    """The server's checks of a read's fields (``_int_field``)."""
    for name, value in (("offset", offset), ("length", length)):
        if value is None and name == "length":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"field {name!r} must be a non-negative integer")


@implementer(IPushProducer)
class _LocalRead:
    """One read: a streaming producer on the consumer, reading as it goes.

    Bytes are written to the consumer from ``_turn`` only, which runs while
    the read is not paused and never nests (a consumer that pauses and
    resumes us from its ``write`` just lets the loop go on).  The read's
    Deferred fires in a later reactor turn than the last write, after the
    producer is unregistered, as a wire read's does on its END frame.
    """

    def __init__(
        self,
        factory: StorageServerFactory,
        blob_id: str,
        offset: int,
        length: int | None,
        consumer: Any,
    ) -> None:
        self.factory = factory
        self.blob_id = blob_id
        self.offset = offset
        self.length = length
        self.consumer = consumer
        self.d: defer.Deferred = defer.Deferred(self._cancel)
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
        #: A batch the thread pool read, not yet written (bytes), or the
        #: error that ended the reading there.
        self._ready: bytes | None = None
        self._error: BaseException | None = None
        #: A batch is being read in the thread pool.
        self._reading = False
        #: The last batch needed the disk: read the next one in the thread
        #: pool while this one is written, rather than try the page cache.
        self._disk = False
        self._block: int = getattr(factory.store, "block_size", 1)
        self._counted = False

    def start(self) -> defer.Deferred:
        if not self._serving():
            self.d.errback(self._unavailable())
            return self.d
        store, blob_id = self.factory.store, self.blob_id
        opened = self.factory.run_blocking(open_range, store, blob_id, self.offset, self.length)
        opened.addCallbacks(self._opened, self._open_failed)
        return self.d

    def _serving(self) -> bool:
        return bool(self.factory.numPorts)

    def _unavailable(self) -> NodeUnavailable:
        return NodeUnavailable(f"storage server {self.factory.name} is not serving")

    def _opened(self, result: tuple[Any, int, int]) -> None:
        handle, n, _size = result
        if self._finished:  # cancelled while it opened
            handle.close()
            self.closed.callback(None)
            return
        self.handle, self.expected = handle, n
        self.factory.in_process_reads += 1
        self._counted = True
        # Registered first: a consumer may stop us from registerProducer.
        self.registered = True
        self.consumer.registerProducer(self, True)
        if not self._finished:
            self._turn()

    def _open_failed(self, f: Failure) -> None:
        if not self._finished:
            self._finished = True
            self.d.errback(storage_error(f.value))

    # -- IPushProducer ---------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self._in_turn and not self._finished and self.handle is not None:
            self._turn()

    def stopProducing(self) -> None:
        if not self._finished:
            self._end(StorageError("read stopped by its consumer"))

    # -- reading ---------------------------------------------------------

    def _batch_size(self) -> int:
        """The server's read-ahead, in whole blocks (``read_into`` reads
        whole blocks in place)."""
        size = max(self.factory.read_ahead, self._block)
        return size - size % self._block

    def _turn(self) -> None:
        """Write batches until paused, finished, or waiting for the disk."""
        self._in_turn = True
        try:
            while not self.paused and not self._finished:
                if self.delivered == self.expected:
                    self._end(None)
                    return
                if not self._serving():
                    self._end(self._unavailable())
                    return
                data = self._next_batch()
                if data is None:
                    if self._ready is None and self._error is None:
                        return  # the thread pool reads it; _read_done resumes us
                    continue  # read already (a run_blocking that runs inline)
                self.delivered += len(data)
                self.consumer.write(data)
        finally:
            self._in_turn = False

    def _next_batch(self) -> bytes | None:
        """The next verified bytes, or None while the disk is being read."""
        if self._ready is not None:
            data, self._ready = self._ready, None
            if self._disk:
                self._read_on()  # the disk reads the next batch while this one goes out
            return data
        if self._error is not None:
            self._end(self._error)
            return None
        if self._reading:
            return None
        handle = self.handle
        read_into = getattr(handle, "read_into", None)
        if read_into is not None and not handle.offset % self._block:
            buffer = _shared_buffer(self._batch_size())
            try:
                got = read_into(buffer, nowait=True)
            except BlockingIOError:
                self._disk = True  # not in the page cache (or the blob is busy)
            except Exception as e:
                self._end(e)
                return None
            else:
                self._disk = False
                if not got:
                    self._end(StorageError(f"blob ended {self.expected - self.delivered} early"))
                    return None
                return bytes(buffer[:got])
        self._read_on()  # an unaligned start, or the disk: in the thread pool
        return None

    def _read_on(self) -> None:
        """Read the next batch in the thread pool, unless one is being read
        or is waiting, or everything is."""
        handle = self.handle
        if self._reading or self._ready is not None or self._error is not None:
            return
        if self._finished or not handle.remaining:
            return
        # An unaligned start reads up to a block boundary, so the batches
        # after it can be read in place.
        size = self._batch_size() - handle.offset % self._block
        self._reading = True
        self.factory.run_blocking(handle.read, size).addBoth(self._read_done)

    def _read_done(self, result: Any) -> None:
        self._reading = False
        if self._finished:
            self._close_handle()
            return
        if isinstance(result, Failure):
            self._error = result.value
        elif not result:
            self._error = StorageError(f"blob ended {self.expected - self.delivered} early")
        else:
            self._ready = result
        if not self.paused and not self._in_turn:
            self._turn()

    # -- ending ----------------------------------------------------------

    def _end(self, error: BaseException | None) -> None:
        """Stop reading, unregister, and fire the Deferred in a later turn."""
        self._finished = True
        self._release()
        if error is None:
            result: Any = self.delivered
        else:
            result = Failure(storage_error(error))
        self.factory.reactor.callLater(0, self._fire, result)

    def _fire(self, result: Any) -> None:
        if not self.d.called:
            if isinstance(result, Failure):
                self.d.errback(result)
            else:
                self.d.callback(result)

    def _release(self) -> None:
        self._ready = None
        if self.registered:
            self.registered = False
            self.consumer.unregisterProducer()
        if self._counted:
            self._counted = False
            self.factory.in_process_reads -= 1
        if not self._reading:
            self._close_handle()  # else _read_done closes it once the thread is done

    def _close_handle(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()
            self.closed.callback(None)

    def _cancel(self, d: defer.Deferred) -> None:
        # The Deferred fails with CancelledError once this returns.
        self._finished = True
        self._release()
