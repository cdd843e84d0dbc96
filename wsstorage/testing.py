"""An in-memory fake of the storage tier, for front-end unit tests.

In the spirit of ``treq.testing``: the transfer layer and the HTTP/FTP
adapters can be tested against a ``FakeStorageCluster`` with the same
interface (``IStorageClient``, ``IBlobWriter``) and the same errors as real
storage servers, plus controls a test needs to stage failures::

    cluster = FakeStorageCluster(reactor, ["s1", "s2", "s3"])
    s1 = cluster.node("s1")              # provides IStorageClient
    writer = yield s1.write("blob", 1, 0, {"inode": 4})
    s1.kill()                            # every call and stream: NodeUnavailable
    s1.revive()                          # back, unsealed blobs INCOMPLETE at durable
    s1.corrupt("blob", 70_000)           # that block fails reads with ChecksumError
    s1.freeze(); s1.thaw()               # calls and streams hang, like SIGSTOP
    s1.bytes_read, s1.bytes_written      # counters
    cluster.endpoint("s2")               # "fake:s2", for copy_from
    cluster.client_factory("s2", "fake:s2")  # a new client, for wsfront.service

Behaviour that mirrors the real client and server (``tests/storage_contract.py``
checks both):

* Every result is delivered asynchronously, in order, through the reactor
  (``callLater(0, ...)``) passed in; a ``twisted.internet.task.Clock`` works
  (call ``clock.advance(0)`` to let the fake run).  Nothing is re-entrant.
* Bad arguments (blob id, epoch, offset) fail the returned Deferred at once
  with BadRequest, as the real client does before it sends anything.
* ``read`` registers a streaming producer on the consumer, delivers
  ``chunk_size`` bytes per reactor turn while not paused, delivers the good
  bytes before a corrupt block and then fails with ChecksumError, and
  unregisters before its Deferred fires.  Cancelling it fails it with
  CancelledError; ``stopProducing`` fails it with StorageError.
* A writer buffers at most ``high_water`` bytes and pauses its registered
  producer until the node has stored them.  Errors of the stream (StaleEpoch
  after a fence, NodeUnavailable, DiskFull past ``capacity``) fire
  ``when_failed()`` and fail ``flush``/``commit``; ``write`` after an error
  drops the bytes and ``write`` after commit/abort raises StorageError.
* ``put`` is ``write`` at 0, the bytes and ``commit`` as one call, with
  their errors; more than ``PUT_MAX`` bytes is BadRequest.
* ``fence`` at 0 of an absent blob creates it empty at its epoch (so an
  older ``write`` or ``put`` is StaleEpoch); above 0 it is BlobNotFound.
* ``abort`` keeps the bytes already stored (only ``durable`` is guaranteed);
  ``kill`` behaves like a power loss: unsealed blobs are cut to their durable
  length and reported INCOMPLETE once the node is revived.
* ``copy_from(blob_id, "fake:NAME")`` copies a sealed blob from another node
  of the same cluster: BlobExists if sealed here already, BadRequest if not
  sealed there, NodeUnavailable for an unknown or dead source.

A node object is itself a client; its ``close()`` fails the streams opened
through it and leaves it usable.  ``node.client()`` gives another client of
the same node whose ``close()`` is final, like a real ``StorageClient``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wsstorage._interfaces import IBlobWriter, IStorageClient
from wsstorage.diskformat import encode_meta
from wsstorage.errors import (
    BadRequest,
    BlobExists,
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    DiskFull,
    InvalidOffset,
    NodeUnavailable,
    StaleEpoch,
    StorageError,
)
from wsstorage.failwatch import FailureWatchers
from wsstorage.records import INCOMPLETE, OPEN, SEALED, BlobInfo, Health, check_blob_id

__all__ = ["FakeStorageClient", "FakeStorageCluster", "FakeStorageNode"]

FAKE_SCHEME = "fake:"
#: Most bytes one ``put`` carries, as on a real server.
PUT_MAX = 256 * 1024
FORMAT_VERSION = 1


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{what} must be a non-negative integer, not {value!r}")
    return value


@attrs.define
class _Blob:
    data: bytearray
    durable: int
    epoch: int
    state: str
    meta: dict[str, Any]
    generation: int = 0
    #: Whether the blob's record is on disk: the real store writes it at
    #: the first flush, seal or fence (or a newer epoch), and a crash
    #: before then loses the blob whole.
    recorded: bool = True

    def info(self, blob_id: str) -> BlobInfo:
        size = len(self.data)
        return BlobInfo(
            blob_id=blob_id,
            size=size,
            durable=size if self.state == SEALED else self.durable,
            state=self.state,
            epoch=self.epoch,
            meta=dict(self.meta),
        )

    def truncate(self, n: int) -> None:
        del self.data[n:]
        self.durable = min(self.durable, n)


class FakeStorageCluster:
    """A set of fake storage nodes that can copy blobs between each other."""

    def __init__(
        self,
        reactor: Any,
        names: Iterable[str] = ("s1", "s2", "s3"),
        *,
        chunk_size: int = 64 * 1024,
        block_size: int = 64 * 1024,
        capacity: int = 1 << 30,
    ) -> None:
        self.reactor = reactor
        self.nodes: dict[str, FakeStorageNode] = {}
        for name in names:
            self.add_node(name, chunk_size=chunk_size, block_size=block_size, capacity=capacity)

    def add_node(self, name: str, **kw: Any) -> FakeStorageNode:
        node = FakeStorageNode(self.reactor, name, cluster=self, **kw)
        self.nodes[name] = node
        return node

    def node(self, name: str) -> FakeStorageNode:
        return self.nodes[name]

    def endpoint(self, name: str) -> str:
        return FAKE_SCHEME + name

    def client_factory(self, name: str, endpoint: str) -> FakeStorageClient:
        """A new client of the node ``endpoint`` (``fake:NAME``) names, else of
        the node called ``name``: fits ``wsfront.service``'s client_factory."""
        node = self.resolve(endpoint) or self.nodes[name]
        return node.client()

    def resolve(self, endpoint: str) -> FakeStorageNode | None:
        """The node an endpoint string names, or None."""
        if not isinstance(endpoint, str) or not endpoint.startswith(FAKE_SCHEME):
            return None
        return self.nodes.get(endpoint[len(FAKE_SCHEME) :])


class FakeStorageNode:
    """One fake storage server: its blobs, its failure controls, and (through
    the methods of ``IStorageClient``) a client of itself."""

    def __init__(
        self,
        reactor: Any,
        name: str,
        *,
        cluster: FakeStorageCluster | None = None,
        chunk_size: int = 64 * 1024,
        block_size: int = 64 * 1024,
        capacity: int = 1 << 30,
        high_water: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.cluster = cluster
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.capacity = capacity
        self.high_water = high_water if high_water is not None else 4 * chunk_size
        self.alive = True
        self.frozen = False
        #: What its health answers say keeps its disk from taking writes
        #: (a test sets it: "read-only file system"); None: none.
        self.disk_problem: str | None = None
        self.bytes_read = 0
        self.bytes_written = 0
        self.blobs: dict[str, _Blob] = {}
        self.corrupted: set[tuple[str, int]] = set()
        self.streams: set[Any] = set()
        self._queue: deque[Callable[[], None]] = deque()
        self._pump_scheduled = False
        self._default = FakeStorageClient(self, final_close=False)

    @property
    def endpoint(self) -> str:
        return FAKE_SCHEME + self.name

    def __repr__(self) -> str:
        return f"<FakeStorageNode {self.name}{'' if self.alive else ' dead'}>"

    # -- scheduling: FIFO, one reactor turn later, held while frozen ------

    def enqueue(self, fn: Callable[[], None]) -> None:
        self._queue.append(fn)
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and not self.frozen and self._queue:
            self._pump_scheduled = True
            self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        for _ in range(len(self._queue)):
            if self.frozen:
                return
            self._queue.popleft()()
        self._schedule_pump()

    # -- test controls ------------------------------------------------

    def kill(self) -> None:
        """Die like a power loss: unsynced bytes go, open streams fail; a
        frozen node dies too (its held calls fail)."""
        self.alive = False
        self.frozen = False
        for blob_id, blob in list(self.blobs.items()):
            if not blob.recorded:
                del self.blobs[blob_id]  # never synced: no record survives
                continue
            if blob.state != SEALED:
                blob.truncate(blob.durable)
                blob.state = INCOMPLETE
                blob.generation += 1
        for stream in list(self.streams):
            stream.fail(NodeUnavailable(f"storage server {self.name} died"))
        self._schedule_pump()

    def revive(self) -> None:
        self.alive = True
        self._schedule_pump()

    def freeze(self) -> None:
        """Hold every call and stream until ``thaw`` (like SIGSTOP)."""
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        self._schedule_pump()

    def corrupt(self, blob_id: str, offset: int) -> None:
        """Make the block holding ``offset`` fail its checksum on reads."""
        self.corrupted.add((blob_id, offset // self.block_size))

    def blob_bytes(self, blob_id: str) -> bytes:
        """The stored bytes (for assertions; no counters, no failures)."""
        return bytes(self.blobs[blob_id].data)

    def blob_info(self, blob_id: str) -> BlobInfo:
        return self.blobs[blob_id].info(blob_id)

    def used_bytes(self) -> int:
        return sum(len(b.data) for b in self.blobs.values())

    def client(self) -> FakeStorageClient:
        """Another client of this node, with its own streams and close()."""
        return FakeStorageClient(self, final_close=True)

    # -- IStorageClient through the default client ----------------------

    def stat(self, blob_id: str) -> defer.Deferred:
        return self._default.stat(blob_id)

    def read(self, blob_id: str, offset: int, length: int | None, consumer: Any) -> Any:
        return self._default.read(blob_id, offset, length, consumer)

    def write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> Any:
        return self._default.write(blob_id, epoch, offset, meta)

    def put(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> defer.Deferred:
        return self._default.put(blob_id, epoch, meta, data)

    def fence(self, blob_id: str, epoch: int, truncate_to: int) -> defer.Deferred:
        return self._default.fence(blob_id, epoch, truncate_to)

    def commit(self, blob_id: str, epoch: int) -> defer.Deferred:
        return self._default.commit(blob_id, epoch)

    def delete(self, blob_id: str) -> defer.Deferred:
        return self._default.delete(blob_id)

    def list_blobs(self) -> defer.Deferred:
        return self._default.list_blobs()

    def copy_from(self, blob_id: str, source_endpoint: str) -> defer.Deferred:
        return self._default.copy_from(blob_id, source_endpoint)

    def health(self) -> defer.Deferred:
        return self._default.health()

    def close(self) -> defer.Deferred:
        return self._default.close()

    # -- the server's rules (run from the queue) -------------------------

    def get(self, blob_id: str) -> _Blob:
        blob = self.blobs.get(blob_id)
        if blob is None:
            raise BlobNotFound(f"no blob {blob_id} on {self.name}")
        return blob

    def open_write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> _Blob:
        blob = self.blobs.get(blob_id)
        if blob is None:
            if offset != 0:
                raise InvalidOffset(f"blob {blob_id} does not exist; writes start at 0")
            blob = _Blob(bytearray(), 0, epoch, OPEN, meta, recorded=False)
            self.blobs[blob_id] = blob
            return blob
        if blob.state == SEALED:
            raise BlobSealed(f"blob {blob_id} is sealed")
        if epoch < blob.epoch:
            raise StaleEpoch(f"blob {blob_id} is at epoch {blob.epoch} > {epoch}")
        if offset > len(blob.data):
            raise InvalidOffset(f"offset {offset} beyond the end of {blob_id}")
        blob.truncate(offset)
        if epoch > blob.epoch:
            blob.recorded = True  # a newer epoch is adopted durably
        blob.epoch, blob.meta, blob.state = epoch, meta, OPEN
        blob.generation += 1
        return blob

    def do_put(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> BlobInfo:
        """``write`` at 0, the bytes and ``commit``, as one step."""
        blob = self.open_write(blob_id, epoch, 0, meta)
        if self.used_bytes() + len(data) > self.capacity:
            raise DiskFull(f"{self.name} is full")
        blob.data += data
        self.bytes_written += len(data)
        blob.generation += 1
        blob.state, blob.durable, blob.recorded = SEALED, len(blob.data), True
        return blob.info(blob_id)

    def do_fence(self, blob_id: str, epoch: int, truncate_to: int) -> BlobInfo:
        if truncate_to == 0 and blob_id not in self.blobs:
            # Created empty at the fence's epoch, recorded: a writer that had
            # not created it yet is refused for its epoch when it comes.
            self.blobs[blob_id] = _Blob(bytearray(), 0, epoch, OPEN, {})
            return self.blobs[blob_id].info(blob_id)
        blob = self.get(blob_id)
        if epoch < blob.epoch:
            raise StaleEpoch(f"blob {blob_id} is at epoch {blob.epoch} > {epoch}")
        size = len(blob.data)
        if blob.state == SEALED:
            if truncate_to != size:
                raise BlobSealed(f"blob {blob_id} is sealed at {size}")
            return blob.info(blob_id)
        if truncate_to > size:
            raise InvalidOffset(f"truncate_to {truncate_to} beyond the end of {blob_id}")
        unchanged = truncate_to == size == blob.durable and blob.state == OPEN
        blob.recorded = True
        if not (epoch == blob.epoch and unchanged):
            blob.generation += 1
            blob.truncate(truncate_to)
            blob.durable = truncate_to
            blob.epoch, blob.state = epoch, OPEN
        return blob.info(blob_id)

    def do_commit(self, blob_id: str, epoch: int) -> BlobInfo:
        blob = self.get(blob_id)
        if epoch < blob.epoch:
            raise StaleEpoch(f"blob {blob_id} is at epoch {blob.epoch} > {epoch}")
        if blob.state != SEALED:
            blob.generation += 1
            blob.epoch, blob.state, blob.durable = epoch, SEALED, len(blob.data)
            blob.recorded = True
        return blob.info(blob_id)

    def do_delete(self, blob_id: str) -> None:
        blob = self.get(blob_id)
        blob.generation += 1
        del self.blobs[blob_id]
        self.corrupted = {c for c in self.corrupted if c[0] != blob_id}

    def first_bad_block(self, blob_id: str, start: int, end: int) -> int | None:
        """Offset where the first corrupt block in ``[start, end)`` begins."""
        bs = self.block_size
        for index in range(start // bs, -(-end // bs)):
            if (blob_id, index) in self.corrupted:
                return max(index * bs, start)
        return None

    def do_copy(self, blob_id: str, source_endpoint: str) -> BlobInfo:
        local = self.blobs.get(blob_id)
        if local is not None and local.state == SEALED:
            raise BlobExists(f"blob {blob_id} is already sealed on {self.name}")
        source = self.cluster.resolve(source_endpoint) if self.cluster else None
        if source is None or not source.alive or source.frozen:
            raise NodeUnavailable(f"cannot reach {source_endpoint!r}")
        blob = source.get(blob_id)
        if blob.state != SEALED:
            raise BadRequest(f"blob {blob_id} is not sealed on {source_endpoint}")
        size = len(blob.data)
        if source.first_bad_block(blob_id, 0, size) is not None:
            raise ChecksumError(f"blob {blob_id} is damaged on {source_endpoint}")
        if self.used_bytes() + size > self.capacity:
            raise DiskFull(f"{self.name} has no room for {size} bytes")
        if local is not None:
            local.generation += 1
        source.bytes_read += size
        self.bytes_written += size
        self.blobs[blob_id] = _Blob(bytearray(blob.data), size, blob.epoch, SEALED, dict(blob.meta))
        return self.blobs[blob_id].info(blob_id)

    def do_health(self) -> Health:
        used = self.used_bytes()
        return Health(
            name=self.name,
            free_bytes=max(self.capacity - used, 0),
            total_bytes=self.capacity,
            blobs=len(self.blobs),
            active_streams=len(self.streams),
            version=FORMAT_VERSION,
            problem=self.disk_problem,
        )


@implementer(IStorageClient)
class FakeStorageClient:
    """A client of one fake node (what a front end would hold)."""

    def __init__(self, node: FakeStorageNode, *, final_close: bool = True) -> None:
        self.node = node
        self.name = node.name
        self._final_close = final_close
        self._closed = False
        self._streams: set[Any] = set()

    def __repr__(self) -> str:
        return f"<FakeStorageClient of {self.node.name}>"

    def _call(self, fn: Callable[[], Any]) -> defer.Deferred:
        """Run ``fn`` on the node one reactor turn later; its result or error
        fires the returned Deferred."""
        if self._closed:
            return defer.fail(NodeUnavailable(f"client of {self.name} is closed"))
        d: defer.Deferred = defer.Deferred()
        node = self.node

        def run() -> None:
            if d.called:
                return
            if not node.alive:
                d.errback(NodeUnavailable(f"storage server {self.name} is down"))
                return
            try:
                result = fn()
            except StorageError as e:
                d.errback(e)
            else:
                d.callback(result)

        node.enqueue(run)
        return d

    def stat(self, blob_id: str) -> defer.Deferred:
        try:
            check_blob_id(blob_id)
        except StorageError as e:
            return defer.fail(e)
        return self._call(lambda: self.node.get(blob_id).info(blob_id))

    def read(self, blob_id: str, offset: int, length: int | None, consumer: Any) -> Any:
        try:
            check_blob_id(blob_id)
            _check_int(offset, "offset")
            if length is not None:
                _check_int(length, "length")
        except StorageError as e:
            return defer.fail(e)
        if self._closed:
            return defer.fail(NodeUnavailable(f"client of {self.name} is closed"))
        stream = _FakeReadStream(self, blob_id, offset, length, consumer)
        self.node.enqueue(stream.start)
        return stream.d

    def write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> Any:
        try:
            check_blob_id(blob_id)
            _check_int(epoch, "epoch")
            _check_int(offset, "offset")
            meta = encode_meta(meta)
        except StorageError as e:
            return defer.fail(e)

        def open_() -> _FakeBlobWriter:
            blob = self.node.open_write(blob_id, epoch, offset, meta)
            return _FakeBlobWriter(self, blob_id, epoch, offset, blob.generation)

        return self._call(open_)

    def put(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> defer.Deferred:
        try:
            check_blob_id(blob_id)
            _check_int(epoch, "epoch")
            meta = encode_meta(meta)
            if len(data) > PUT_MAX:
                raise BadRequest(f"a put carries at most {PUT_MAX} bytes, not {len(data)}")
        except StorageError as e:
            return defer.fail(e)
        data = bytes(data)
        return self._call(lambda: self.node.do_put(blob_id, epoch, meta, data))

    def fence(self, blob_id: str, epoch: int, truncate_to: int) -> defer.Deferred:
        try:
            check_blob_id(blob_id)
            _check_int(epoch, "epoch")
            _check_int(truncate_to, "truncate_to")
        except StorageError as e:
            return defer.fail(e)
        return self._call(lambda: self.node.do_fence(blob_id, epoch, truncate_to))

    def commit(self, blob_id: str, epoch: int) -> defer.Deferred:
        try:
            check_blob_id(blob_id)
            _check_int(epoch, "epoch")
        except StorageError as e:
            return defer.fail(e)
        return self._call(lambda: self.node.do_commit(blob_id, epoch))

    def delete(self, blob_id: str) -> defer.Deferred:
        try:
            check_blob_id(blob_id)
        except StorageError as e:
            return defer.fail(e)
        return self._call(lambda: self.node.do_delete(blob_id))

    def list_blobs(self) -> defer.Deferred:
        return self._call(lambda: [b.info(i) for i, b in sorted(self.node.blobs.items())])

    def copy_from(self, blob_id: str, source_endpoint: str) -> defer.Deferred:
        try:
            check_blob_id(blob_id)
        except StorageError as e:
            return defer.fail(e)
        return self._call(lambda: self.node.do_copy(blob_id, source_endpoint))

    def health(self) -> defer.Deferred:
        return self._call(self.node.do_health)

    def close(self) -> defer.Deferred:
        """Fail this client's open streams with NodeUnavailable."""
        if self._final_close:
            self._closed = True
        for stream in list(self._streams):
            stream.fail(NodeUnavailable(f"client of {self.name} closed"))
        d: defer.Deferred = defer.Deferred()
        self.node.reactor.callLater(0, d.callback, None)
        return d

    def track(self, stream: Any) -> None:
        self._streams.add(stream)
        self.node.streams.add(stream)

    def untrack(self, stream: Any) -> None:
        self._streams.discard(stream)
        self.node.streams.discard(stream)


@implementer(IPushProducer)
class _FakeReadStream:
    """A read delivering ``chunk_size`` bytes per turn while not paused."""

    def __init__(
        self,
        client: FakeStorageClient,
        blob_id: str,
        offset: int,
        length: int | None,
        consumer: Any,
    ) -> None:
        self.client = client
        self.node = client.node
        self.blob_id = blob_id
        self.pos = offset
        self.end = -1
        self.length = length
        self.consumer = consumer
        self.delivered = 0
        self.paused = False
        self.registered = False
        self.scheduled = False
        self.d: defer.Deferred = defer.Deferred(self._cancel)

    def start(self) -> None:
        if self.d.called:
            return
        node = self.node
        if not node.alive:
            self.fail(NodeUnavailable(f"storage server {node.name} is down"))
            return
        try:
            size = len(node.get(self.blob_id).data)
        except StorageError as e:
            self.fail(e)
            return
        n = size - self.pos if self.length is None else self.length
        if self.pos > size or self.pos + n > size:
            self.fail(InvalidOffset(f"read of {n} bytes at {self.pos} is past the end ({size})"))
            return
        self.end = self.pos + n
        self.client.track(self)
        self.consumer.registerProducer(self, True)
        self.registered = True
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled and not self.paused and not self.d.called:
            self.scheduled = True
            self.node.enqueue(self._deliver)

    def _deliver(self) -> None:
        self.scheduled = False
        if self.d.called or self.paused:
            return
        node = self.node
        if not node.alive:
            self.fail(NodeUnavailable(f"storage server {node.name} died"))
            return
        if self.pos >= self.end:
            self._finish()
            return
        blob = node.blobs.get(self.blob_id)
        if blob is None or len(blob.data) < self.end:
            self.fail(InvalidOffset(f"blob {self.blob_id} was truncated or deleted"))
            return
        stop = min(self.pos + node.chunk_size, self.end)
        bad = node.first_bad_block(self.blob_id, self.pos, stop)
        if bad == self.pos:
            self.fail(ChecksumError(f"blob {self.blob_id} block at {bad} fails its checksum"))
            return
        if bad is not None:
            stop = bad
        chunk = bytes(blob.data[self.pos : stop])
        self.pos = stop
        self.delivered += len(chunk)
        node.bytes_read += len(chunk)
        self.consumer.write(chunk)
        self._schedule()

    def _unregister(self) -> None:
        self.client.untrack(self)
        if self.registered:
            self.registered = False
            self.consumer.unregisterProducer()

    def _finish(self) -> None:
        self._unregister()
        self.d.callback(self.delivered)

    def fail(self, err: BaseException) -> None:
        if self.d.called:
            return
        self._unregister()
        self.d.errback(err)

    def _cancel(self, d: defer.Deferred) -> None:
        self._unregister()

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.fail(StorageError("read stopped by its consumer"))


@implementer(IBlobWriter)
class _FakeBlobWriter:
    """A write stream into a fake node; see the module docstring."""

    def __init__(
        self,
        client: FakeStorageClient,
        blob_id: str,
        epoch: int,
        offset: int,
        generation: int,
    ) -> None:
        self.client = client
        self.node = client.node
        self.blob_id = blob_id
        self.epoch = epoch
        self.offset = offset
        self.error: StorageError | None = None
        self.finished = False
        self._generation = generation
        self._watchers = FailureWatchers()
        self._producer: Any = None
        self._streaming = False
        self._paused_producer = False
        self._buffered = 0
        client.track(self)

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered on this writer")
        self._producer = producer
        self._streaming = bool(streaming)
        if not streaming:
            self.node.enqueue(self._pull)

    def unregisterProducer(self) -> None:
        self._producer = None
        self._streaming = False
        self._paused_producer = False

    def _pull(self) -> None:
        if self._producer is not None and self.error is None and not self.finished:
            self._producer.resumeProducing()

    def write(self, data: bytes) -> None:
        if self.finished:
            raise StorageError("write after commit or abort")
        if self.error is not None or not data:
            return
        data = bytes(data)
        self.offset += len(data)
        self._buffered += len(data)
        if self._streaming and self._buffered > self.node.high_water and not self._paused_producer:
            self._paused_producer = True
            self._producer.pauseProducing()
        self.node.enqueue(lambda: self._apply(data))

    def _blob(self) -> _Blob:
        """The blob if this stream still owns it, else raise the reason."""
        node = self.node
        if not node.alive:
            raise NodeUnavailable(f"storage server {node.name} died")
        blob = node.blobs.get(self.blob_id)
        if blob is None:
            raise BlobNotFound(f"blob {self.blob_id} was deleted")
        if blob.epoch > self.epoch:
            raise StaleEpoch(f"blob {self.blob_id} is at epoch {blob.epoch} > {self.epoch}")
        if blob.state == SEALED:
            raise BlobSealed(f"blob {self.blob_id} is sealed")
        if blob.generation != self._generation:
            raise StaleEpoch(f"blob {self.blob_id} was taken over by another writer")
        return blob

    def _apply(self, data: bytes) -> None:
        self._buffered -= len(data)
        if self.error is not None or self.finished:
            return
        try:
            blob = self._blob()
            if self.node.used_bytes() + len(data) > self.node.capacity:
                raise DiskFull(f"{self.node.name} is full")
        except StorageError as e:
            self.fail(e)
            return
        blob.data += data
        self.node.bytes_written += len(data)
        if self._paused_producer and self._buffered <= self.node.high_water // 2:
            self._paused_producer = False
            if self._producer is not None:
                self._producer.resumeProducing()
        elif not self._streaming and self._buffered == 0:
            self.node.enqueue(self._pull)

    def _after_queue(self, fn: Callable[[], Any]) -> defer.Deferred:
        """Run ``fn`` after every byte written so far has been applied."""
        if self.error is not None:
            return defer.fail(self.error)
        d: defer.Deferred = defer.Deferred()

        def run() -> None:
            if self.error is not None:
                d.errback(self.error)
                return
            try:
                d.callback(fn())
            except StorageError as e:
                self.fail(e)
                d.errback(e)

        self.node.enqueue(run)
        return d

    def flush(self) -> defer.Deferred:
        def sync() -> int:
            blob = self._blob()
            blob.durable = len(blob.data)
            blob.recorded = True
            return blob.durable

        return self._after_queue(sync)

    def commit(self) -> defer.Deferred:
        self.unregisterProducer()

        def seal() -> BlobInfo:
            blob = self._blob()
            blob.durable = len(blob.data)
            blob.state = SEALED
            blob.recorded = True
            blob.generation += 1
            self._end()
            return blob.info(self.blob_id)

        return self._after_queue(seal)

    def abort(self) -> defer.Deferred:
        self.unregisterProducer()
        self._end()
        d: defer.Deferred = defer.Deferred()
        self.node.enqueue(lambda: d.callback(None))
        return d

    def when_failed(self) -> defer.Deferred:
        return self._watchers.watch(self.error)

    def fail(self, err: StorageError) -> None:
        """The stream broke: report it once to every watcher."""
        if self.error is not None or self.finished:
            return
        self.error = err
        self._producer = None
        self.client.untrack(self)
        self._watchers.fail(err)

    def _end(self) -> None:
        self.finished = True
        self._watchers.forget()
        self.client.untrack(self)
