"""Reading a committed version, failing over between replicas mid-stream.

A ``ReadStream`` is the push producer a protocol adapter registers on its
client connection.  It walks the version's extents and reads each from one
replica.  When that replica dies, stalls or reports a damaged block, it
reopens the same extent on another replica at exactly the next undelivered
byte, so the consumer sees one continuous stream and the client a short
stall at most.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.transfer.cache_hint import cached_replica
from wsfront.transfer.errors import NoReplicasAvailable, TransferAborted
from wsfront.transfer.extent_cache import ExtentCache
from wsfront.transfer.pool import NOT_IN_POOL, StoragePool
from wsfront.transfer.shares import fair_share
from wsstorage import errors as storage_errors
from wsstorage import failpoints
from wsstorage.framing import tcp_transport

log = Logger()

#: Checks of a read's progress per stall timeout: a frozen replica is given
#: up on between 1 and 1 + 1/STALL_CHECKS timeouts after its last byte.
STALL_CHECKS = 4

_spread = itertools.count()
#: Reads of each blob running in this process now (``_replica_order``).
_reading: dict[str, int] = {}

#: How many bytes the storage connections of all running reads of this
#: process may pull from their sockets in one go, together.  A storage
#: connection reads up to 1 MiB per reactor turn (wsstorage.framing's
#: TRANSPORT_BUFFER), and a read paused by a slow client keeps that chunk
#: until the client takes it: 200 downloads held 200 MiB.  Each read gets an
#: equal share, between RECV_MIN and RECV_MAX, and never much more than what
#: is left to read, so one big download still moves 1 MiB per turn while many
#: concurrent ones (or small files) stay small.
RECV_BUDGET = 16 << 20
RECV_MAX = 1 << 20
RECV_MIN = 64 << 10
_active_reads = 0


def recv_size(active: int, left: int) -> int:
    """Socket read size for one of ``active`` reads with ``left`` bytes to go."""
    return min(fair_share(RECV_BUDGET, active, RECV_MIN, RECV_MAX), left + RECV_MIN)


def active_reads() -> int:
    """How many ``ReadStream``s of this process are streaming now: the
    count every per-read share is taken by (``wsfront.local`` sizes its
    storage servers' read-ahead by it too)."""
    return _active_reads


def raise_buffers(transport, size: int, send_limit: int | None = None) -> Callable[[], None]:
    """Let the TCP socket under ``transport`` (beneath TLS or a PROXY
    wrapper too: ``wsstorage.framing.tcp_transport``) read ``size`` bytes per
    reactor turn, and send up to ``send_limit`` per call when given, instead
    of Twisted's 64 KiB and 128 KiB; returns the callable that restores
    both.  Nothing changes without a TCP socket or when it reads as much
    already.  Shared by every adapter that streams (GET, PUT bodies, storage
    reads), so they agree on what is tuned and how it is undone."""
    tcp = tcp_transport(transport)
    if tcp is None or tcp.bufferSize >= size:
        return _nothing
    saved = tcp.bufferSize, tcp.SEND_LIMIT
    tcp.bufferSize = size
    if send_limit is not None:
        tcp.SEND_LIMIT = send_limit

    def restore() -> None:
        tcp.bufferSize, tcp.SEND_LIMIT = saved

    return restore


def widen(transport, length: int) -> Callable[[], None]:
    """Let a consumer's socket buffer and send, per reactor turn, what one
    more read of ``length`` bytes may pull from storage per turn
    (``recv_size``); returns the callable that restores the defaults.  For
    an adapter to call around ``ReadStream.start`` (a GET of 256 MiB made
    42% fewer Python calls per MiB).  A small file fits the defaults."""
    tcp = tcp_transport(transport)
    if tcp is None or length <= tcp.bufferSize:
        return _nothing
    share = recv_size(_active_reads + 1, length)
    return raise_buffers(tcp, share, share)


def _nothing() -> None:
    pass


def _transport_of(producer):
    """The TCP transport under a storage read (``wsstorage.client``'s read
    call), or None.  A stopgap until the storage client takes a read size
    itself: only ``bufferSize`` is touched, and restored afterwards."""
    return tcp_transport(getattr(getattr(producer, "proto", None), "transport", None))


@attrs.frozen
class ReadExtent:
    """One piece of a file: ``length`` bytes of ``blob_id`` from ``blob_offset``."""

    blob_id: str
    blob_offset: int
    length: int
    replicas: tuple[str, ...]
    fallback: tuple[str, ...] = ()
    """Replicas the catalog does not count as ok (stale, lost): tried last."""


class _Stalled(Exception):
    """No byte arrived from a replica for the stall timeout."""


@implementer(IConsumer)
class _ExtentSink:
    """The consumer handed to one storage read: counts and forwards bytes,
    and routes pause/resume from the real consumer to the storage producer."""

    #: It sizes the storage connection's socket reads itself (``resize``),
    #: so the storage client starts the read with small ones
    #: (``wsstorage.client.READ_FIRST_RECV``).
    sizes_reads = True

    def __init__(self, stream: ReadStream, want: int) -> None:
        self._stream = stream
        self.want = want
        self.producer = None
        self.delivered = 0
        self.closed = False
        self._transport = None
        self._saved_size = None

    def registerProducer(self, producer, streaming):
        self.producer = producer
        transport = _transport_of(producer)
        if transport is not None:
            self._transport, self._saved_size = transport, transport.bufferSize
            self.resize()
        if self._stream._paused:
            producer.pauseProducing()

    def resize(self) -> None:
        """Take this read's current share: reads that started alone give
        back their 1 MiB as others start (called on every resume)."""
        if self._transport is not None:
            self._transport.bufferSize = recv_size(_active_reads, self.want - self.delivered)

    def unregisterProducer(self):
        self.producer = None
        self._restore()

    def _restore(self) -> None:
        if self._transport is not None:
            self._transport.bufferSize = self._saved_size
            self._transport = None

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.delivered += len(data)
        self._stream._deliver(data)


@implementer(IPushProducer)
class ReadStream:
    """Streams ``extents`` (a file's version) from file offset ``offset``."""

    def __init__(
        self,
        clock: IReactorTime,
        pool: StoragePool,
        extents: Sequence[ReadExtent],
        offset: int = 0,
        length: int | None = None,
        stall_timeout: float = 5.0,
        max_rounds: int = 2,
        stats=None,
        on_damage=None,
        cache: ExtentCache | None = None,
    ) -> None:
        self._clock = clock
        self._cache = cache
        self._collected: list[bytes] | None = None
        self._pool = pool
        self._extents = list(extents)
        self._offset = offset
        total = sum(e.length for e in extents)
        self._end = total if length is None else min(total, offset + length)
        self._stall_timeout = stall_timeout
        self._max_rounds = max_rounds
        self._stats = stats
        self._on_damage = on_damage
        self._paused = False
        self._stopped = False
        self._sink: _ExtentSink | None = None
        self._current: Deferred | None = None
        self._consumer: IConsumer | None = None
        self._stall_call = None
        self._stall_since = 0.0  # when the read last made progress or was resumed
        self._stalled_read: Deferred | None = None
        self.delivered = 0
        self.failovers = 0
        self.serving: str | None = None

    @property
    def length(self) -> int:
        return max(0, self._end - self._offset)

    def start(self, consumer: IConsumer) -> Deferred:
        """Register on ``consumer`` and stream; fires with the byte count.

        The producer is unregistered before the Deferred fires.  It fails
        with TransferAborted when the consumer stopped us, and with
        NoReplicasAvailable when no replica of some extent could be read.
        """
        global _active_reads
        self._consumer = consumer
        consumer.registerProducer(self, True)
        if self._stats is not None:
            self._stats.reads_started += 1
        _active_reads += 1
        d = self._run()

        def unregister(result):
            global _active_reads
            _active_reads -= 1
            consumer.unregisterProducer()
            if self._stats is not None:
                self._stats.reads_ended += 1
                if not isinstance(result, Failure):
                    self._stats.reads_completed += 1
            return result

        return d.addBoth(unregister)

    @inlineCallbacks
    def _run(self):
        position = 0
        for extent in self._extents:
            extent_start, extent_end = position, position + extent.length
            position = extent_end
            lo, hi = max(extent_start, self._offset), min(extent_end, self._end)
            if lo >= hi:
                continue
            yield self._read_extent(extent, lo - extent_start, hi - lo)
        return self.delivered

    @inlineCallbacks
    def _read_extent(self, extent: ReadExtent, skip: int, want: int):
        """Read ``want`` bytes of ``extent`` from ``skip``: a small whole
        extent from the cache of verified bytes when it is there (and into
        it when it was not), anything else from a replica."""
        key = None
        cache = self._cache
        if cache is not None and skip == 0 and want == extent.length and cache.wants(want):
            key = (extent.blob_id, extent.blob_offset, want)
            cached = cache.get(key)
            if cached is not None:
                self._deliver(cached)
                return
            self._collected = []
        try:
            yield self._read_extent_from_replicas(extent, skip, want)
        finally:
            collected, self._collected = self._collected, None
        if key is not None and collected is not None:
            cache.put(key, b"".join(collected))

    @inlineCallbacks
    def _read_extent_from_replicas(self, extent: ReadExtent, skip: int, want: int):
        """Read ``want`` bytes of ``extent`` from ``skip``, failing over."""
        blob_id = extent.blob_id
        # A replica on a server registered since the pool last read the
        # registry (another front end's --storage): read it again first,
        # unless a known one is up.
        looked_up = self._pool.lookup_for_read(extent.replicas, extent.fallback)
        if looked_up is not None:
            yield looked_up
        order = self._replica_order(extent)
        _reading[blob_id] = _reading.get(blob_id, 0) + 1
        try:
            yield self._read_replicas(extent, skip, want, order)
        finally:
            left = _reading.pop(blob_id) - 1
            if left:
                _reading[blob_id] = left

    def _replica_order(self, extent: ReadExtent) -> list[str]:
        """Replicas to try, in order: healthy ones first, turned by a
        counter so concurrent readers of one file share the load; but a
        blob's only reader starts with the replica that kept the blob in
        its page cache when it was written (``cache_hint``), if it is up,
        as the others may have to read the disk."""
        order = None
        if not _reading.get(extent.blob_id) and len(extent.replicas) > 1:
            # The pool turns its healthy replicas (listed first, in order)
            # by ``spread``: turn them so that this one comes first.
            keep = cached_replica(extent.blob_id, extent.replicas)
            unturned = self._pool.order_for_read(extent.replicas)
            if keep in unturned:
                order = self._pool.order_for_read(extent.replicas, unturned.index(keep))
                if order[0] != keep:  # it is down: share the load as usual
                    order = None
        if order is None:
            order = self._pool.order_for_read(extent.replicas, next(_spread))
        order += [n for n in self._pool.order_for_read(extent.fallback) if n not in order]
        return order

    @inlineCallbacks
    def _read_replicas(self, extent: ReadExtent, skip: int, want: int, order: list[str]):
        got = 0
        errors: list[str] = []
        for attempt, node in enumerate(order * self._max_rounds):
            if attempt:
                self.failovers += 1
                if self._stats is not None:
                    self._stats.read_failovers += 1
                    self._stats.event(
                        self._clock.seconds(),
                        "failover",
                        blob=extent.blob_id,
                        to=node,
                        at=extent.blob_offset + skip + got,
                        errors=list(errors),
                    )
                log.info(
                    "read of {blob} fails over to {node} at byte {at}",
                    blob=extent.blob_id,
                    node=node,
                    at=extent.blob_offset + skip + got,
                )
            self.serving = node
            sink = _ExtentSink(self, want - got)
            self._sink = sink
            try:
                client = self._pool.client(node)
                yield self._read_from(node, extent, skip + got, want - got, sink, client)
            except Exception as e:
                sink.closed = True
                sink._restore()
                got += sink.delivered
                if self._stopped:
                    raise TransferAborted("consumer stopped the read") from e
                if getattr(self._pool, "closing", False):  # a test's pool may not say
                    raise TransferAborted("the front end is stopping") from e
                reason = f"{node}: {e.__class__.__name__}: {e}"
                errors.append(reason)
                if isinstance(e, storage_errors.NodeUnavailable | _Stalled):
                    self._pool.mark_down(node, reason, client)
                elif isinstance(e, storage_errors.ChecksumError) and self._on_damage is not None:
                    # Repair replaces a damaged replica; don't wait for scrub.
                    self._on_damage(extent.blob_id, node)
                if got >= want:
                    return
                continue
            got += sink.delivered
            if got >= want:
                return
            errors.append(f"{node}: short read ({got} of {want})")
        # The replicas the pool does not know were not tried (``order``):
        # say so, or a replica only there failed with no reason at all.
        for node in dict.fromkeys((*extent.replicas, *extent.fallback)):
            if node not in order:
                errors.append(f"{node}: {NOT_IN_POOL}")
        raise NoReplicasAvailable(
            f"no replica of blob {extent.blob_id} could be read: " + "; ".join(errors)
        )

    def _read_from(self, node, extent, skip, count, sink, client) -> Deferred:
        d = client.read(extent.blob_id, extent.blob_offset + skip, count, sink)
        self._current = d
        self._arm_stall(d, sink)

        def finished(result):
            if self._current is d:
                self._current = None
                self._cancel_stall()
            return result

        def translate(failure):
            if failure.check(CancelledError) and self._stalled_read is d:
                raise _Stalled(f"no byte for {self._stall_timeout}s")
            return failure

        return d.addBoth(finished).addErrback(translate)

    # -- stall detection -------------------------------------------------

    def _arm_stall(self, d: Deferred, sink: _ExtentSink) -> None:
        """Fail read ``d`` once no byte came for the stall timeout while the
        read was let go on.  Checked every quarter of the timeout, so a
        replica that froze just after a byte is given up on within 1.25
        timeouts of it, not two (a check that saw bytes used to wait a
        whole timeout again); a pause, or a resume (``_stall_since``),
        starts the count again: a replica owes no bytes while held."""
        self._cancel_stall()
        seen = sink.delivered
        self._stall_since = self._clock.seconds()
        interval = self._stall_timeout / STALL_CHECKS

        def check():
            nonlocal seen
            self._stall_call = None
            if self._current is not d:
                return
            now = self._clock.seconds()
            if self._paused or sink.delivered != seen:
                seen, self._stall_since = sink.delivered, now
            elif now - self._stall_since >= self._stall_timeout - 0.001:  # float sums
                self._stalled_read = d
                d.cancel()
                return
            self._stall_call = self._clock.callLater(interval, check)

        self._stall_call = self._clock.callLater(interval, check)

    def _cancel_stall(self) -> None:
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None

    # -- data path -------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        limit = failpoints.threshold("transfer.read.bytes")
        if limit is not None and self.delivered + len(data) >= limit > self.delivered:
            cut = limit - self.delivered
            if self._collected is not None:
                self._collected.append(data[:cut])
            self._consumer.write(data[:cut])
            self.delivered += cut
            if self._stats is not None:
                self._stats.read_bytes += cut
            failpoints.hit("transfer.read.bytes", self.delivered)
            data = data[cut:]
            if not data:
                return
        self.delivered += len(data)
        if self._stats is not None:
            self._stats.read_bytes += len(data)
        if self._collected is not None:
            self._collected.append(data)
        self._consumer.write(data)

    # -- IPushProducer ---------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self._sink is not None and self._sink.producer is not None:
            self._sink.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._stall_call is not None:
            self._stall_since = self._clock.seconds()  # the replica may send again
        if self._sink is not None and self._sink.producer is not None:
            self._sink.resize()
            self._sink.producer.resumeProducing()

    def stopProducing(self) -> None:
        """The client went away: stop the upstream read at once."""
        self._stopped = True
        self._cancel_stall()
        if self._current is not None:
            self._current.cancel()
