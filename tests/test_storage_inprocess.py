"""Reads of a storage server in this process, straight from its store.

``wslocal`` gives its front end ``InProcessClient``s of its own servers
(``wsfront.local``): reads and puts come from the store, everything else
goes over the wire.  The storage contract holds for them as for the wire client; and
a read through them moves no byte over the server's socket, holds back
while paused, fails with NodeUnavailable once the server stopped serving
(so the front end fails over), and goes over the wire while the
``storage.read.bytes`` failpoint is armed.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from tests.storage_contract import (
    Collector,
    StorageContract,
    get,
    new_id,
    pattern,
    put,
    refused,
    sha,
)
from tests.storage_loopback import run_now
from tests.test_storage_contract_real import SECRET, RealStorage
from wsfront.transfer.errors import NoReplicasAvailable
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsstorage import failpoints, putthreads, server
from wsstorage.blobstore import BlobReadHandle, BlobStore
from wsstorage.client import StorageClient
from wsstorage.errors import (
    BadRequest,
    BlobNotFound,
    ChecksumError,
    NodeUnavailable,
    StorageError,
)
from wsstorage.inprocess import TURN_BYTES, InProcessClient
from wsstorage.service import start_storage_server

MiB = 1 << 20


class InProcessStorage(RealStorage):
    """Real servers in this process, reached by in-process clients."""

    def client(self, name: str) -> InProcessClient:
        wire = StorageClient(reactor, name, self.endpoint(name), SECRET, idle_timeout=10)
        self.clients.append(wire)
        return InProcessClient(wire, self.servers[name].factory)


@pytest_twisted.async_yield_fixture
async def inprocess_storage(tmp_path):
    servers = {}
    for name in InProcessStorage.names:
        servers[name] = await start_storage_server(
            reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / name), name, SECRET
        )
    storage = InProcessStorage(servers)
    yield storage
    for c in storage.clients:
        await c.close()
    for s in servers.values():
        if s.port.connected:
            await s.stop()
        else:
            s.store.close()


class TestInProcessContract(StorageContract):
    @pytest.fixture
    def storage(self, inprocess_storage):
        return inprocess_storage


@pytest.fixture
def uncached(monkeypatch):
    """Every block as if it were not in the page cache: in-process reads
    then read every batch in the thread pool (``nowait`` reads refuse)."""
    read_into = BlobReadHandle.read_into
    nowait_reads = []

    def not_cached(self, buffer, nowait=False):
        if nowait:
            nowait_reads.append(len(buffer))
            raise BlockingIOError("not in the page cache")
        return read_into(self, buffer)

    monkeypatch.setattr(BlobReadHandle, "read_into", not_cached)
    return nowait_reads


class TestInProcessFromDiskContract(StorageContract):
    """The contract again with every batch read in the thread pool."""

    @pytest.fixture
    def storage(self, inprocess_storage, uncached):
        return inprocess_storage


@pytest.fixture(params=["cached", "disk"])
def mode(request):
    if request.param == "disk":
        request.getfixturevalue("uncached")
    return request.param


def _wire_reads(monkeypatch) -> list[int]:
    """Record the lengths of the read streams the servers send."""
    streams: list[int] = []
    init = server._ReadStream.__init__

    def counting(self, proto, rid, handle, length):
        streams.append(length)
        init(self, proto, rid, handle, length)

    monkeypatch.setattr(server._ReadStream, "__init__", counting)
    return streams


@pytest_twisted.ensureDeferred
async def test_reads_come_from_the_store_not_the_socket(inprocess_storage, monkeypatch, mode):
    client = inprocess_storage.client("s1")
    data = pattern(3 * MiB + 12345, 5)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    streams = _wire_reads(monkeypatch)
    # Unaligned starts and ends, a whole blob, a single byte.
    for offset, length in [(0, None), (70_001, 2 * MiB + 3), (len(data) - 1, 1)]:
        end = len(data) if length is None else offset + length
        assert await get(client, blob, offset, length) == data[offset:end]
    assert streams == []
    assert inprocess_storage.servers["s1"].factory.in_process_reads == 0


@pytest_twisted.ensureDeferred
async def test_a_paused_read_holds_no_more_than_two_batches(inprocess_storage, mode):
    """While paused nothing reaches the consumer and nothing more is read:
    what the read holds is the batch being written and at most one read
    ahead, and the server counts it as an active stream meanwhile."""
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    data = pattern(16 * MiB, 6)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    sink = Collector(pause_after=1)
    reading = client.read(blob, 0, None, sink)
    at_pause = await sink.paused
    for _ in range(20):
        await deferLater(reactor, 0.001, lambda: None)
    assert not reading.called
    assert sink.count == at_pause <= factory.read_ahead
    read = sink.producer
    assert read.handle.offset - sink.count <= 2 * factory.read_ahead
    assert factory.active_streams == 1
    sink.producer.resumeProducing()
    assert await reading == len(data)
    assert sha(sink.data()) == sha(data)
    assert factory.active_streams == 0


@pytest_twisted.ensureDeferred
async def test_a_read_of_a_stopped_server_fails_as_unavailable(inprocess_storage, mode):
    client = inprocess_storage.client("s1")
    data = pattern(2 * MiB, 7)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    sink = Collector(pause_after=1)
    reading = client.read(blob, 0, None, sink)
    await sink.paused
    await inprocess_storage.servers["s1"].port.stopListening()
    sink.producer.resumeProducing()
    await refused(reading, NodeUnavailable)
    assert sink.producer is None and sink.events == ["register", "unregister"]
    await refused(client.read(blob, 0, None, Collector()), NodeUnavailable)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_read_stops_and_closes_its_handle(inprocess_storage, mode):
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    data = pattern(4 * MiB, 8)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    sink = Collector(pause_after=1)
    reading = client.read(blob, 0, None, sink)
    at_pause = await sink.paused
    read = sink.producer
    reading.cancel()
    await refused_cancel(reading)
    assert sink.producer is None and sink.events == ["register", "unregister"]
    assert factory.active_streams == 0
    await read.closed  # at once, or once the batch a thread reads is in
    assert read.handle is None and sink.count == at_pause


async def refused_cancel(d: defer.Deferred) -> None:
    with pytest.raises(defer.CancelledError):
        await d


@pytest_twisted.ensureDeferred
async def test_reads_go_over_the_wire_while_the_read_failpoint_is_armed(
    inprocess_storage, monkeypatch
):
    client = inprocess_storage.client("s1")
    data = pattern(MiB, 9)
    blob = new_id()
    await put(client, blob, data)
    streams = _wire_reads(monkeypatch)
    armed = failpoints.Failpoints(f"storage.read.bytes=raise@{1 << 40}")
    monkeypatch.setattr(failpoints, "_global", armed)
    assert await get(client, blob) == data
    assert streams == [len(data)]


@pytest_twisted.ensureDeferred
async def test_a_download_fails_over_from_a_damaged_or_stopped_local_replica(
    inprocess_storage, mode
):
    """The front end's reader, over in-process clients: a damaged block on
    one replica is read from the other, reported as damage, and the
    download is whole; with one replica stopped the other serves it."""
    storage = inprocess_storage
    pool = StoragePool(reactor)
    for name in storage.names:
        pool.add(name, storage.endpoint(name), storage.client(name))
    bs = storage.block_size
    data = pattern(8 * bs + 99, 10)
    blob = new_id()
    for name in storage.names:
        await put(pool.client(name), blob, data)
    storage.corrupt("s1", blob, 5 * bs + 3)
    damaged = []
    extents = [ReadExtent(blob, 0, len(data), ("s1", "s2"))]

    class Order:
        def __getattr__(self, name):
            return getattr(pool, name)

        def order_for_read(self, replicas, spread=0):
            return list(replicas)

    stream = ReadStream(reactor, Order(), extents, on_damage=lambda b, n: damaged.append((b, n)))
    sink = Collector()
    assert await stream.start(sink) == len(data)
    assert sink.data() == data and damaged == [(blob, "s1")]
    assert stream.failovers == 1

    await storage.servers["s2"].port.stopListening()
    stream = ReadStream(reactor, Order(), [ReadExtent(blob, 0, 4 * bs, ("s2", "s1"))])
    sink = Collector()
    assert await stream.start(sink) == 4 * bs
    assert sink.data() == data[: 4 * bs] and not pool.is_up("s2")
    stream = ReadStream(reactor, Order(), extents)
    with pytest.raises(NoReplicasAvailable, match=ChecksumError.__name__):
        await stream.start(Collector())


@pytest.mark.parametrize("offset", [0, 100_003])
def test_reads_work_with_a_run_blocking_that_runs_inline(tmp_path, uncached, offset):
    """A server whose ``run_blocking`` runs the work at once (unit tests):
    every batch read "in the thread pool" is ready before the read asks
    for it, and the read goes on rather than wait for a resume."""
    clock = Clock()
    store = BlobStore.open(tmp_path / "s1")
    try:
        factory = server.StorageServerFactory(clock, store, "s1", SECRET, run_blocking=run_now)
        factory.doStart()  # as if listening
        data = pattern(3 * MiB + 5, 11)
        handle = store.open_write("b1", 1, 0, {})
        handle.write(data)
        handle.seal()
        handle.close()
        client = InProcessClient(StorageClient(clock, "s1", "tcp:127.0.0.1:1", SECRET), factory)
        sink = Collector()
        reading = client.read("b1", offset, None, sink)
        clock.advance(0)
        assert reading.called and reading.result == len(data) - offset
        assert sink.data() == data[offset:]
        assert uncached  # the page cache was tried, and refused
    finally:
        store.close()


class RaisingConsumer(Collector):
    """A consumer whose ``write`` raises once it has ``after`` bytes (as
    the reader's does when the ``transfer.read.bytes`` failpoint raises),
    or whose ``registerProducer`` does."""

    def __init__(self, after: int | None = None, refuse: bool = False) -> None:
        super().__init__()
        self.after = after
        self.refuse = refuse
        self.read: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.refuse:
            raise RuntimeError("a producer is registered already")
        self.read = producer
        super().registerProducer(producer, streaming)

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.after is not None and self.count >= self.after:
            raise RuntimeError("the consumer broke")


@pytest.fixture
def logged():
    """The failures logged while the test runs."""
    failures: list[Failure] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_consumer_that_raises_fails_the_read_as_unavailable(
    inprocess_storage, mode, logged
):
    """As over the wire, where the exception drops the connection: the
    read fails with NodeUnavailable (the reader fails over), the exception
    is logged, and the read lets go of everything and reads no more."""
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    data = pattern(4 * MiB, 12)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    sink = RaisingConsumer(after=100_000)
    await refused(client.read(blob, 0, None, sink), NodeUnavailable)
    assert sink.events == ["register", "unregister"]
    assert factory.in_process_reads == 0 and factory.active_streams == 0
    assert [f.type for f in logged] == [RuntimeError]
    await sink.read.closed  # at once, or once the batch a thread reads is in
    assert sink.read.handle is None and len(sink.parts) == 1  # nothing after the raise
    assert not client._reads


def test_a_consumer_that_refuses_the_producer_fails_the_read(tmp_path, logged):
    clock, store, factory, client, _ = _inline_server(tmp_path)
    try:
        sink = RaisingConsumer(refuse=True)
        reading = client.read("b1", 0, None, sink)
        clock.advance(0)
        assert reading.called and isinstance(reading.result.value, NodeUnavailable)
        reading.addErrback(lambda f: None)
        assert sink.events == [] and sink.count == 0  # never unregistered: never registered
        assert factory.in_process_reads == 0
        assert [f.type for f in logged] == [RuntimeError]
    finally:
        store.close()


class TurnClock(Clock):
    """A Clock that can run one reactor turn: the calls due now, not the
    ones they schedule (``advance`` runs those too)."""

    def turn(self) -> None:
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            if call in self.calls:  # not cancelled by an earlier one
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def _inline_server(tmp_path, clock=None, read_ahead=MiB, size=3 * MiB + 5):
    """A server whose ``run_blocking`` runs the work at once, on a Clock,
    holding a blob "b1" of ``size`` bytes, and an in-process client."""
    clock = clock or Clock()
    store = BlobStore.open(tmp_path / "s1")
    factory = server.StorageServerFactory(
        clock, store, "s1", SECRET, run_blocking=run_now, read_ahead=read_ahead
    )
    factory.doStart()  # as if listening
    data = pattern(size, 11)
    handle = store.open_write("b1", 1, 0, {})
    handle.write(data)
    handle.seal()
    handle.close()
    client = InProcessClient(StorageClient(clock, "s1", "tcp:127.0.0.1:1", SECRET), factory)
    return clock, store, factory, client, data


def test_a_read_yields_to_the_reactor_after_a_turns_bytes(tmp_path, mode):
    """A consumer that never pauses (FTP HASH) gets at most TURN_BYTES per
    reactor turn, whole batches, and the read goes on in the next turn;
    the Deferred fires in a turn after the last write."""
    clock, store, _, client, data = _inline_server(
        tmp_path, TurnClock(), read_ahead=TURN_BYTES // 4, size=3 * TURN_BYTES + 5
    )
    try:
        sink = Collector()
        reading = client.read("b1", 0, None, sink)  # opened and written at once, inline
        per_turn = [sink.count]
        while not reading.called:
            before = sink.count
            clock.turn()
            per_turn.append(sink.count - before)
            assert len(per_turn) < 100
        assert per_turn == [TURN_BYTES, TURN_BYTES, TURN_BYTES, 5, 0]
        assert reading.result == len(data) and sink.data() == data
        assert sink.events == ["register", "unregister"]
    finally:
        store.close()


def test_a_read_paused_between_turns_waits_for_its_resume(tmp_path):
    """A pause while the next turn's call is pending holds the read there;
    the resume goes on at once, and the pending call, run later, neither
    writes twice nor nests."""
    clock, store, _, client, data = _inline_server(tmp_path, TurnClock(), size=3 * TURN_BYTES + 5)
    try:
        sink = Collector()
        reading = client.read("b1", 0, None, sink)
        assert sink.count == TURN_BYTES
        read = sink.producer
        read.pauseProducing()
        clock.turn()
        assert sink.count == TURN_BYTES and clock.calls == []
        read.resumeProducing()
        assert sink.count == 2 * TURN_BYTES
        read.pauseProducing()
        read.resumeProducing()  # the next turn's call is pending: it goes on then
        assert sink.count == 2 * TURN_BYTES
        clock.turn()
        assert sink.count == 3 * TURN_BYTES
        while not reading.called:
            clock.turn()
        assert sink.data() == data
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_a_read_goes_back_to_the_page_cache_after_the_disk(inprocess_storage, monkeypatch):
    """A batch that needed the disk (or found the blob busy) does not send
    the rest of the read to the thread pool: the next batch is tried in
    the page cache first."""
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    data = pattern(16 * MiB, 13)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    read_into, read = BlobReadHandle.read_into, BlobReadHandle.read
    calls = {"refused": 0, "cached": 0, "thread": 0}

    def first_uncached(self, buffer, nowait=False):
        if nowait and not calls["refused"]:
            calls["refused"] += 1
            raise BlockingIOError("the first batch is not cached")
        calls["cached"] += nowait
        return read_into(self, buffer, nowait)

    def counted(self, n):
        calls["thread"] += 1
        return read(self, n)

    monkeypatch.setattr(BlobReadHandle, "read_into", first_uncached)
    monkeypatch.setattr(BlobReadHandle, "read", counted)
    assert await get(client, blob) == data
    batches = len(data) // factory.read_ahead
    assert calls == {"refused": 1, "cached": batches - 1, "thread": 1}


@pytest_twisted.ensureDeferred
async def test_close_fails_running_reads_and_refuses_new_ones(inprocess_storage, mode):
    """As the wire client's close: a paused read fails with
    NodeUnavailable (before close's Deferred fires), and lets go of its
    handle and its stream; later reads are refused."""
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    data = pattern(4 * MiB, 14)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    sink = Collector(pause_after=1)
    reading = client.read(blob, 0, None, sink)
    at_pause = await sink.paused
    read = sink.producer
    await client.close()
    assert reading.called
    await refused(reading, NodeUnavailable)
    assert sink.events == ["register", "unregister"] and factory.active_streams == 0
    await read.closed
    assert read.handle is None and sink.count == at_pause
    await refused(client.read(blob, 0, None, Collector()), NodeUnavailable)


@pytest.mark.parametrize("where", ["cache", "disk"])
@pytest_twisted.ensureDeferred
async def test_an_internal_store_error_is_logged(inprocess_storage, monkeypatch, logged, where):
    """An error of the store that maps to no wire error (EIO) fails the
    read as the server's does, and is logged as the server logs it; an
    error that is an answer (BlobNotFound) is not."""
    client = inprocess_storage.client("s1")
    data = pattern(2 * MiB, 15)
    blob = new_id()
    await put(client, blob, data, chunk=MiB)
    read_into = BlobReadHandle.read_into

    def failing_read_into(self, buffer, nowait=False):
        if where == "disk" and nowait:
            raise BlockingIOError("not in the page cache")
        raise OSError(errno.EIO, "Input/output error")

    def failing_read(self, n):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(BlobReadHandle, "read_into", failing_read_into)
    monkeypatch.setattr(BlobReadHandle, "read", failing_read)
    with pytest.raises(StorageError, match="internal error: OSError") as e:
        await client.read(blob, 0, None, Collector())
    assert type(e.value) is StorageError
    assert [f.type for f in logged] == [OSError]
    monkeypatch.setattr(BlobReadHandle, "read_into", read_into)
    await refused(client.read(new_id(), 0, None, Collector()), BlobNotFound)
    assert len(logged) == 1


@pytest_twisted.ensureDeferred
async def test_in_process_reads_count_in_the_process_read_counter(inprocess_storage, monkeypatch):
    """``wsstorage_process_bytes{direction="read"}`` counts them as it
    counts the bytes a server sends."""
    client = inprocess_storage.client("s1")
    data = pattern(MiB + 7, 16)
    blob = new_id()
    await put(client, blob, data)
    monkeypatch.setattr(server._ProcessCounters, "read", 0)
    assert await get(client, blob, 3) == data[3:]
    assert server._ProcessCounters.read == len(data) - 3


class _Ledger:
    """Counts what a read lets go of: ``forget`` calls and handle closes
    (per handle), so a test can check each happens exactly once."""

    def __init__(self, monkeypatch) -> None:
        self.forgotten = 0
        self.closes: dict[int, int] = {}
        close = BlobReadHandle.close

        def counted_close(handle):
            self.closes[id(handle)] = self.closes.get(id(handle), 0) + 1
            close(handle)

        monkeypatch.setattr(BlobReadHandle, "close", counted_close)

    def forget(self, read) -> None:
        self.forgotten += 1


class _HeldRunBlocking:
    """A ``run_blocking`` that runs opens at once but holds every batch
    read (``handle.read``, the thread pool's part) until ``release``: a
    batch "still in a thread" for as long as the test likes."""

    def __init__(self) -> None:
        self.held: list[tuple[Any, tuple[Any, ...], defer.Deferred]] = []

    def __call__(self, f: Any, *args: Any) -> defer.Deferred:
        if getattr(f, "__name__", "") != "read":
            return run_now(f, *args)
        d: defer.Deferred = defer.Deferred()
        self.held.append((f, args, d))
        return d

    def release(self) -> None:
        held, self.held = self.held, []
        for f, args, d in held:
            run_now(f, *args).chainDeferred(d)


def _local_read(factory, consumer, ledger):
    from wsstorage.inprocess import _LocalRead

    return _LocalRead(factory, "b1", 0, None, consumer, ledger.forget)


def test_an_abort_or_stop_after_the_end_lets_go_of_nothing_twice(tmp_path, monkeypatch):
    """A read that ended (all delivered, its Deferred not yet fired) and is
    then aborted (its client closed), stopped and cancelled: it is
    forgotten once, its handle closed once, and it still succeeds."""
    ledger = _Ledger(monkeypatch)
    clock, store, factory, _client, data = _inline_server(tmp_path, size=MiB + 5)
    try:
        sink = Collector()
        read = _local_read(factory, sink, ledger)
        reading = read.start()
        assert sink.count == len(data) and not reading.called  # fires in a later turn
        read.abort(NodeUnavailable("client closed"))
        read.stopProducing()
        clock.advance(0)
        assert reading.called and reading.result == len(data)
        reading.cancel()  # fired already: nothing
        assert ledger.forgotten == 1 and list(ledger.closes.values()) == [1]
        assert sink.events == ["register", "unregister"] and factory.in_process_reads == 0
    finally:
        store.close()


def test_a_close_while_a_thread_reads_a_batch_closes_the_handle_once_after_it(
    tmp_path, monkeypatch, uncached
):
    """The read fails at once; its handle is closed once the thread's
    batch is in, not before (the thread still uses it) and not twice, even
    if the read is stopped and aborted again meanwhile."""
    ledger = _Ledger(monkeypatch)
    clock, store, factory, _client, _data = _inline_server(tmp_path, size=3 * MiB)
    held = _HeldRunBlocking()
    factory.run_blocking = held
    try:
        sink = Collector()
        read = _local_read(factory, sink, ledger)
        reading = read.start()
        assert len(held.held) == 1 and sink.count == 0  # the first batch is in a "thread"
        read.abort(NodeUnavailable("client closed"))
        read.stopProducing()
        read.abort(NodeUnavailable("client closed again"))
        clock.advance(0)
        assert reading.called and isinstance(reading.result.value, NodeUnavailable)
        reading.addErrback(lambda f: None)
        assert factory.in_process_reads == 0 and sink.events == ["register", "unregister"]
        assert ledger.closes == {} and not read.closed.called  # the thread still reads
        held.release()
        assert list(ledger.closes.values()) == [1] and read.closed.called
        assert ledger.forgotten == 1 and sink.count == 0 and not held.held
    finally:
        store.close()


class _StopsInUnregister(Collector):
    """A consumer that stops its producer from ``write`` and then raises
    from ``unregisterProducer`` (a consumer tearing itself down)."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.stopProducing()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        raise RuntimeError("the consumer broke while unregistering")


def test_a_consumer_that_raises_while_stopping_the_read_leaves_nothing_held(
    tmp_path, monkeypatch, logged
):
    """The read still ends: handle closed, count taken back, forgotten,
    its Deferred failed, the consumer's exception logged."""
    ledger = _Ledger(monkeypatch)
    clock, store, factory, _client, _data = _inline_server(tmp_path, size=3 * MiB)
    try:
        sink = _StopsInUnregister()
        read = _local_read(factory, sink, ledger)
        reading = read.start()
        clock.advance(0)
        assert reading.called and isinstance(reading.result.value, StorageError)
        reading.addErrback(lambda f: None)
        assert factory.in_process_reads == 0 and read.handle is None
        assert list(ledger.closes.values()) == [1] and ledger.forgotten == 1
        assert sink.events == ["register", "unregister"] and len(sink.parts) == 1
        assert RuntimeError in [f.type for f in logged]
    finally:
        store.close()


@pytest.mark.parametrize("cached", [True, False])
def test_cached_batches_are_the_ceiling_until_the_consumer_first_pauses(
    tmp_path, monkeypatch, cached
):
    """With 200 downloads running, wslocal's share is 64 KiB; a batch read
    from the page cache holds nothing once written while the consumer's
    socket takes it all, so it is the 256 KiB ceiling until the consumer
    first pauses the read, then the share.  A batch from the disk (a read
    holds two) is always the share."""
    from wsfront import local
    from wsfront.transfer import reader

    if not cached:
        request_uncached(monkeypatch)
    monkeypatch.setattr(reader, "_active_reads", 200)
    clock = Clock()
    store = BlobStore.open(tmp_path / "s1")
    try:
        factory = local.LocalStorageFactory(
            clock, store, "s1", SECRET, run_blocking=run_now,
            read_ahead=local.LOCAL_READ_AHEAD, read_batches=local.LOCAL_READ_BATCHES,
        )  # fmt: skip
        factory.doStart()  # as if listening
        share, ceiling = local.READ_AHEAD_MIN, local.LOCAL_READ_AHEAD
        assert factory.read_ahead == share
        data = pattern(2 * MiB, 17)
        handle = store.open_write("b1", 1, 0, {})
        handle.write(data)
        handle.seal()
        handle.close()
        client = InProcessClient(StorageClient(clock, "s1", "tcp:127.0.0.1:1", SECRET), factory)
        sink = Collector(pause_after=MiB)
        reading = client.read("b1", 0, None, sink)
        first = len(sink.parts)
        sink.producer.resumeProducing()
        clock.advance(0)
        assert reading.called and reading.result == len(data) and sink.data() == data
        before, after = sink.parts[:first], sink.parts[first:]
        assert {len(p) for p in before} == {ceiling if cached else share}
        assert {len(p) for p in after} == {share}
    finally:
        store.close()


def request_uncached(monkeypatch) -> None:
    """The ``uncached`` fixture's patch, for a parametrized test."""
    read_into = BlobReadHandle.read_into

    def not_cached(self, buffer, nowait=False):
        if nowait:
            raise BlockingIOError("not in the page cache")
        return read_into(self, buffer)

    monkeypatch.setattr(BlobReadHandle, "read_into", not_cached)


@pytest_twisted.ensureDeferred
async def test_puts_go_to_the_store_not_the_socket(inprocess_storage, monkeypatch):
    """A small blob's ``put`` runs in this process: no put request reaches
    the server's socket, the bytes count in the process write counter as
    the server counts them, the blob is sealed and reads back, and its
    meta is the server's copy, not the caller's dict."""
    client = inprocess_storage.client("s1")
    wire_puts: list[int] = []
    begin = server.StorageServerProtocol._begin_put

    def counting(self, rid, req):
        wire_puts.append(rid)
        begin(self, rid, req)

    monkeypatch.setattr(server.StorageServerProtocol, "_begin_put", counting)
    monkeypatch.setattr(server._ProcessCounters, "written", 0)
    data = pattern(4096 + 5, 17)
    blob = new_id()
    meta = {"inode": 7}
    info = await client.put(blob, 3, meta, data)
    meta["inode"] = 8
    assert wire_puts == []
    assert server._ProcessCounters.written == len(data)
    assert info.sealed and info.size == info.durable == len(data) and info.epoch == 3
    assert info.meta == {"inode": 7}
    assert (await client.stat(blob)).meta == {"inode": 7}
    assert await get(client, blob) == data
    await refused(client.put(blob, 3, {}, b"again"), StorageError)
    await refused(client.put("not a blob id", 1, {}, b"x"), StorageError)
    await refused(client.put(new_id(), 1, {}, bytes(server.PUT_MAX + 1)), StorageError)
    assert wire_puts == []


@pytest_twisted.ensureDeferred
async def test_puts_to_one_server_run_at_once_off_the_reactor_thread(
    inprocess_storage, monkeypatch
):
    """The puts of one server run in threads of their own, several at once
    (as in the reactor's thread pool before): a put waiting for its disk
    does not hold up the next one.  Each seal here waits until the other
    is in its seal too, so run one after the other they would fail."""
    import threading

    client = inprocess_storage.client("s1")
    store = inprocess_storage.servers["s1"].factory.store
    both = threading.Barrier(2, timeout=20)
    ran_in: set[int] = set()
    open_put = store.open_put

    def meeting_open_put(*args, **kwargs):
        ran_in.add(threading.get_ident())
        both.wait()
        return open_put(*args, **kwargs)

    monkeypatch.setattr(store, "open_put", meeting_open_put)
    blobs = [new_id(), new_id()]
    infos = await defer.gatherResults([client.put(b, 1, {}, b"x" * 10) for b in blobs])
    assert [info.size for info in infos] == [10, 10]
    assert len(ran_in) == 2 and threading.main_thread().ident not in ran_in
    assert [await get(client, b) for b in blobs] == [b"x" * 10] * 2


@pytest_twisted.ensureDeferred
async def test_a_put_to_a_stopped_server_or_by_a_closed_client_is_unavailable(inprocess_storage):
    client = inprocess_storage.client("s1")
    await inprocess_storage.servers["s1"].port.stopListening()
    await refused(client.put(new_id(), 1, {}, b"x"), NodeUnavailable)
    other = inprocess_storage.client("s2")
    await other.close()
    await refused(other.put(new_id(), 1, {}, b"x"), NodeUnavailable)


@pytest_twisted.ensureDeferred
async def test_an_internal_store_error_of_a_put_is_logged(inprocess_storage, monkeypatch, logged):
    """As the server's: an error that maps to no wire error (EIO) fails the
    put with StorageError and is logged once."""
    client = inprocess_storage.client("s1")
    store = inprocess_storage.servers["s1"].factory.store

    def failing_open_put(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store, "open_put", failing_open_put)
    with pytest.raises(StorageError, match="internal error: OSError") as e:
        await client.put(new_id(), 1, {}, b"abc")
    assert type(e.value) is StorageError
    assert [f.type for f in logged] == [OSError]


@pytest_twisted.ensureDeferred
async def test_a_put_of_meta_that_is_not_json_fails_its_deferred(inprocess_storage):
    """As the wire client's put: a caller's mistake (meta JSON cannot hold)
    is a failed Deferred, never an exception raised at the call."""
    client = inprocess_storage.client("s1")
    d = client.put(new_id(), 1, {"inode": b"bytes"}, b"x")
    await refused(d, TypeError)


@pytest_twisted.ensureDeferred
async def test_an_idle_put_thread_ends_and_a_later_put_starts_another(
    inprocess_storage, monkeypatch
):
    """A server's put threads end once idle for PUT_IDLE (they do not
    outlive its use), and the next put still runs, in a new thread."""
    from twisted.internet import threads

    monkeypatch.setattr(putthreads, "PUT_IDLE", 0.2)
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    first = new_id()
    await client.put(first, 1, {}, b"one")
    [thread] = putthreads.put_threads(factory)._threads
    await threads.deferToThread(thread.join, 20)
    assert not thread.is_alive()
    second = new_id()
    await client.put(second, 1, {}, b"two")
    # Checked in the reactor turn the put came back in: the new thread can
    # only be told to end in a later one (its idle time is short here).
    assert [t.is_alive() for t in putthreads.put_threads(factory)._threads] == [True]
    assert [await get(client, b) for b in (first, second)] == [b"one", b"two"]


@pytest_twisted.ensureDeferred
async def test_a_put_checks_its_meta_as_the_server_does(inprocess_storage):
    """Meta that is not an object, or larger than the server takes, is
    refused as the server refuses it, and nothing is stored."""
    client = inprocess_storage.client("s1")
    blob = new_id()
    await refused(client.put(blob, 1, ["not", "an", "object"], b"x"), BadRequest)
    await refused(client.put(blob, 1, {"k": "v" * server.MAX_META}, b"x"), BadRequest)
    await refused(client.stat(blob), BlobNotFound)


@pytest_twisted.ensureDeferred
async def test_a_server_without_put_gets_the_wire_clients_fallback(inprocess_storage, monkeypatch):
    """A server playing one that lacks ``put`` (its ``ops``) is written as
    the wire client writes it: a write stream and a commit, not in process."""
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    monkeypatch.setattr(factory, "ops", tuple(op for op in factory.ops if op != "put"))
    streams: list[str] = []
    begin = server.StorageServerProtocol._op_write

    def counting(self, rid, req):
        streams.append(req.get("blob"))
        return begin(self, rid, req)

    monkeypatch.setattr(server.StorageServerProtocol, "_op_write", counting)
    blob = new_id()
    info = await client.put(blob, 1, {}, b"abc")
    assert info.sealed and info.size == 3
    assert streams == [blob]
    assert await get(client, blob) == b"abc"


@pytest_twisted.ensureDeferred
async def test_a_put_whose_thread_cannot_start_fails_and_leaves_no_count_behind(
    inprocess_storage, monkeypatch
):
    """The system refusing a new thread made ``put`` raise instead of
    failing its Deferred, with its counts already raised for good (so its
    threads never retired again).  Now the put fails, and the next one,
    with threads allowed again, is stored and answered."""
    client = inprocess_storage.client("s1")
    factory = inprocess_storage.servers["s1"].factory
    puts = putthreads.put_threads(factory)
    real_start = threading.Thread.start

    def refuse(thread):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    blob = new_id()
    with pytest.raises(StorageError, match="can't start new thread"):
        await client.put(blob, 1, {}, b"x")
    assert (puts._running, puts._workers) == (0, 0)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    await client.put(blob, 1, {}, b"stored")
    assert await get(client, blob) == b"stored"
    assert puts._running == 0 and puts._workers == 1
