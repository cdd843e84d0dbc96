"""One contract for every ``IStorageClient``: the fake and the real servers.

Use it by subclassing ``StorageContract`` in a ``test_*.py`` module and
defining a fixture named ``storage`` (any scope) that yields an object with:

``names``
    A sequence of at least two storage server names.
``block_size``
    The servers' checksum block size in bytes (the real store: 65536).
``client(name)``
    An ``IStorageClient`` of server ``name``, or a Deferred firing with one.
    The fixture owns the clients it hands out and closes them at teardown;
    tests may call this several times (a second client is "another front
    end").
``endpoint(name)``
    The endpoint string another server uses to reach ``name`` (the
    ``source_endpoint`` of ``copy_from``).
``corrupt(name, blob_id, offset)``
    Damage the stored byte at ``offset`` of the sealed blob ``blob_id`` on
    server ``name`` (flip it in the data file), so a read of the block that
    holds it fails its checksum.  May return a Deferred.

Every test makes its own blob ids, so one set of servers can serve the
whole class.  Tests run on the global reactor through pytest-twisted and
move a few MiB at most.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wsstorage._interfaces import IBlobWriter, IStorageClient
from wsstorage.errors import (
    BadRequest,
    BlobExists,
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    InvalidOffset,
    StaleEpoch,
    StorageError,
)
from wsstorage.records import OPEN, SEALED

MiB = 1024 * 1024


def new_id() -> str:
    return "c" + uuid.uuid4().hex


def pattern(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@implementer(IConsumer)
class Collector:
    """A consumer that keeps what it gets and can pause after ``pause_after``."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.parts: list[bytes] = []
        self.count = 0
        self.producer: Any = None
        self.events: list[str] = []
        self.pause_after = pause_after
        self.paused = defer.Deferred()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming, "reads must register a streaming producer"
        self.producer = producer
        self.events.append("register")

    def unregisterProducer(self) -> None:
        self.producer = None
        self.events.append("unregister")

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))
        self.count += len(data)
        if self.pause_after is not None and self.count >= self.pause_after:
            self.pause_after = None
            self.producer.pauseProducing()
            self.paused.callback(self.count)

    def data(self) -> bytes:
        return b"".join(self.parts)


@implementer(IPushProducer)
class ChunkProducer:
    """Writes ``data`` into a consumer in chunks for as long as it is not
    paused; records how often it was paused."""

    def __init__(self, consumer: Any, data: bytes, chunk: int = 64 * 1024) -> None:
        self.consumer = consumer
        self.data = data
        self.chunk = chunk
        self.pos = 0
        self.paused = False
        self.pauses = 0
        self.done = defer.Deferred()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.pos < len(self.data):
            piece = self.data[self.pos : self.pos + self.chunk]
            self.pos += len(piece)
            self.consumer.write(piece)
        if self.pos >= len(self.data) and not self.done.called:
            self.done.callback(None)

    def stopProducing(self) -> None:
        self.paused = True


@defer.inlineCallbacks
def put(
    client: Any,
    blob_id: str,
    data: bytes,
    *,
    epoch: int = 1,
    offset: int = 0,
    meta: dict[str, Any] | None = None,
    commit: bool = True,
    chunk: int = 100_000,
) -> Any:
    """Write ``data``, then commit (-> BlobInfo) or flush (-> durable)."""
    writer = yield client.write(blob_id, epoch, offset, meta if meta is not None else {})
    for i in range(0, len(data), chunk):
        writer.write(data[i : i + chunk])
    result = yield (writer.commit() if commit else writer.flush())
    return writer, result


@defer.inlineCallbacks
def get(client: Any, blob_id: str, offset: int = 0, length: int | None = None) -> Any:
    sink = Collector()
    n = yield client.read(blob_id, offset, length, sink)
    assert n == sink.count
    assert sink.producer is None and sink.events == ["register", "unregister"]
    return sink.data()


@defer.inlineCallbacks
def refused(d: defer.Deferred, error: type[StorageError]) -> Any:
    """Wait for ``d`` and check it failed with ``error``."""
    try:
        result = yield d
    except error:
        return
    pytest.fail(f"expected {error.__name__}, got {result!r}")


class StorageContract:
    """The behaviour every IStorageClient shows; see the module docstring."""

    @pytest.fixture
    def storage(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError("a subclass provides the 'storage' fixture")

    @defer.inlineCallbacks
    def _client(self, storage: Any, index: int = 0) -> Any:
        client = yield defer.maybeDeferred(storage.client, storage.names[index])
        return client

    @pytest_twisted.inlineCallbacks
    def test_write_flush_commit_read_roundtrip_keeps_sha256(self, storage):
        client = yield self._client(storage)
        assert verifyObject(IStorageClient, client)
        blob, data = new_id(), pattern(3 * MiB + 12345)
        writer = yield client.write(blob, 1, 0, {"inode": 42, "extent": 0})
        assert verifyObject(IBlobWriter, writer)
        for i in range(0, len(data), 200_000):
            writer.write(data[i : i + 200_000])
        assert writer.offset == len(data)
        durable = yield writer.flush()
        assert durable == len(data)
        info = yield writer.commit()
        assert (info.blob_id, info.size, info.durable, info.state) == (
            blob,
            len(data),
            len(data),
            SEALED,
        )
        assert (info.epoch, info.meta) == (1, {"inode": 42, "extent": 0})
        assert (yield client.stat(blob)) == info
        got = yield get(client, blob)
        assert sha(got) == sha(data)

    @pytest_twisted.inlineCallbacks
    def test_put_creates_and_seals_a_small_blob_in_one_request(self, storage):
        client = yield self._client(storage)
        blob, data = new_id(), pattern(70_000)
        info = yield client.put(blob, 2, {"inode": 7}, data)
        assert (info.blob_id, info.size, info.durable, info.state, info.epoch) == (
            blob,
            len(data),
            len(data),
            SEALED,
            2,
        )
        assert info.meta == {"inode": 7}
        assert (yield client.stat(blob)) == info
        assert (yield get(client, blob)) == data
        empty = yield client.put(new_id(), 1, {}, b"")
        assert (empty.size, empty.state) == (0, SEALED)
        # The connection is usable again: a second put, and a stream.
        assert (yield client.put(new_id(), 1, {}, b"z" * 10)).size == 10
        _, info = yield put(client, new_id(), b"after")
        assert info.size == 5

    @pytest_twisted.inlineCallbacks
    def test_put_is_refused_as_write_and_commit_would_be(self, storage):
        client = yield self._client(storage)
        sealed = new_id()
        yield client.put(sealed, 1, {}, b"abc")
        yield refused(client.put(sealed, 1, {}, b"other"), BlobSealed)
        fenced = new_id()
        writer, _ = yield put(client, fenced, b"x" * 100, commit=False)
        yield writer.abort()
        yield client.fence(fenced, 3, 100)
        yield refused(client.put(fenced, 2, {}, b"late"), StaleEpoch)
        yield refused(client.put("../x", 1, {}, b"a"), BadRequest)
        yield refused(client.put(new_id(), 1, {}, b"x" * (256 * 1024 + 1)), BadRequest)
        # An unsealed blob is rewritten from 0, as a write at 0 would.
        info = yield client.put(fenced, 3, {}, b"fresh")
        assert (info.size, info.state, info.epoch) == (5, SEALED, 3)
        assert (yield get(client, fenced)) == b"fresh"
        assert (yield client.stat(sealed)).size == 3

    @pytest_twisted.inlineCallbacks
    def test_abort_leaves_blob_unsealed_with_its_durable_bytes(self, storage):
        client = yield self._client(storage)
        blob = new_id()
        writer, durable = yield put(client, blob, pattern(150_000), commit=False)
        assert durable == 150_000
        yield writer.abort()
        info = yield client.stat(blob)
        assert (info.state, info.durable) == (OPEN, 150_000)

    @pytest_twisted.inlineCallbacks
    def test_rewrite_at_smaller_offset_truncates_first(self, storage):
        client = yield self._client(storage)
        blob, first, second = new_id(), pattern(300_000, 1), pattern(50_000, 2)
        writer, _ = yield put(client, blob, first, commit=False)
        yield writer.abort()
        writer, info = yield put(client, blob, second, offset=100_000)
        assert info.size == 150_000
        assert (yield get(client, blob)) == first[:100_000] + second

    @pytest_twisted.inlineCallbacks
    def test_write_beyond_the_end_is_invalid_offset(self, storage):
        client = yield self._client(storage)
        blob = new_id()
        yield refused(client.write(blob, 1, 10, {}), InvalidOffset)
        yield refused(client.stat(blob), BlobNotFound)
        writer, _ = yield put(client, blob, b"x" * 100, commit=False)
        yield writer.abort()
        yield refused(client.write(blob, 1, 101, {}), InvalidOffset)

    @pytest_twisted.inlineCallbacks
    def test_stale_writer_is_refused_after_fence(self, storage):
        client = yield self._client(storage)
        other = yield self._client(storage)
        blob, data = new_id(), pattern(200_000)
        writer, _ = yield put(client, blob, data, commit=False)
        broken = writer.when_failed()
        info = yield other.fence(blob, 2, 120_000)
        assert (info.size, info.durable, info.epoch, info.state) == (120_000, 120_000, 2, OPEN)
        writer.write(b"late bytes")
        yield refused(writer.flush(), StaleEpoch)
        yield refused(broken, StaleEpoch)
        yield refused(writer.commit(), StaleEpoch)
        assert (yield client.stat(blob)).size == 120_000
        yield refused(client.write(blob, 1, 120_000, {}), StaleEpoch)
        _, info = yield put(other, blob, b"new", epoch=2, offset=120_000)
        assert (info.size, info.epoch) == (120_003, 2)
        assert (yield get(other, blob)) == data[:120_000] + b"new"

    @pytest_twisted.inlineCallbacks
    def test_fence_refuses_older_epoch_and_offset_beyond_end(self, storage):
        client = yield self._client(storage)
        blob = new_id()
        writer, _ = yield put(client, blob, pattern(1000), epoch=3, commit=False)
        yield writer.abort()
        yield refused(client.fence(blob, 2, 500), StaleEpoch)
        yield refused(client.fence(blob, 3, 1001), InvalidOffset)
        yield refused(client.fence(new_id(), 3, 1), BlobNotFound)
        first = yield client.fence(blob, 4, 600)
        again = yield client.fence(blob, 4, 600)
        assert first == again
        assert (first.size, first.epoch) == (600, 4)

    @pytest_twisted.inlineCallbacks
    def test_fence_at_zero_of_an_absent_blob_creates_it_and_refuses_older_writers(self, storage):
        """A takeover fences a blob its old writer has not created yet (a
        small upload held for a put): the old writer's put or write, coming
        after, is refused for its epoch; the new epoch can still write it."""
        client = yield self._client(storage)
        other = yield self._client(storage)
        blob = new_id()
        info = yield other.fence(blob, 2, 0)
        assert (info.blob_id, info.size, info.durable, info.state) == (blob, 0, 0, OPEN)
        assert info.epoch == 2
        assert (yield client.stat(blob)) == info
        assert (yield other.fence(blob, 2, 0)) == info  # a retried fence
        yield refused(client.put(blob, 1, {"old": 1}, b"late"), StaleEpoch)
        yield refused(client.write(blob, 1, 0, {}), StaleEpoch)
        assert (yield client.stat(blob)) == info
        sealed = yield other.put(blob, 2, {"new": 1}, b"fresh")
        assert (sealed.size, sealed.state, sealed.epoch, sealed.meta) == (
            5,
            SEALED,
            2,
            {"new": 1},
        )
        assert (yield get(client, blob)) == b"fresh"
        streamed = new_id()
        yield other.fence(streamed, 3, 0)
        yield refused(client.put(streamed, 2, {}, b"late"), StaleEpoch)
        _, done = yield put(other, streamed, b"stream", epoch=3)
        assert (done.size, done.state, done.epoch) == (6, SEALED, 3)
        yield refused(other.fence(new_id(), 3, 10), BlobNotFound)

    @pytest_twisted.inlineCallbacks
    def test_commit_without_stream_seals_after_takeover(self, storage):
        client = yield self._client(storage)
        blob, data = new_id(), pattern(90_000)
        writer, _ = yield put(client, blob, data, commit=False)
        yield writer.abort()
        yield client.fence(blob, 2, 70_000)
        yield refused(client.commit(blob, 1), StaleEpoch)
        info = yield client.commit(blob, 2)
        assert (info.state, info.size, info.durable, info.epoch) == (SEALED, 70_000, 70_000, 2)
        assert (yield get(client, blob)) == data[:70_000]

    @pytest_twisted.inlineCallbacks
    def test_sealed_blob_refuses_writes_and_changing_fences(self, storage):
        client = yield self._client(storage)
        blob = new_id()
        _, sealed = yield put(client, blob, b"abc" * 1000)
        yield refused(client.write(blob, 1, 3000, {}), BlobSealed)
        yield refused(client.write(blob, 9, 0, {}), BlobSealed)
        yield refused(client.fence(blob, 9, 10), BlobSealed)
        assert (yield client.fence(blob, 9, 3000)).state == SEALED
        assert (yield client.stat(blob)).size == sealed.size

    @pytest_twisted.inlineCallbacks
    def test_read_range_and_read_past_end(self, storage):
        client = yield self._client(storage)
        blob, data = new_id(), pattern(500_000)
        yield put(client, blob, data)
        assert (yield get(client, blob, 123_456, 100_001)) == data[123_456:223_457]
        assert (yield get(client, blob, 400_000)) == data[400_000:]
        assert (yield get(client, blob, 500_000, 0)) == b""
        yield refused(client.read(blob, 499_999, 2, Collector()), InvalidOffset)
        yield refused(client.read(blob, 500_001, None, Collector()), InvalidOffset)
        yield refused(client.read(new_id(), 0, None, Collector()), BlobNotFound)

    @pytest_twisted.inlineCallbacks
    def test_damaged_block_fails_with_checksum_error_after_good_bytes(self, storage):
        client = yield self._client(storage)
        bs = storage.block_size
        blob, data = new_id(), pattern(6 * bs)
        yield put(client, blob, data)
        bad = 3 * bs + 17
        yield defer.maybeDeferred(storage.corrupt, storage.names[0], blob, bad)
        sink = Collector()
        yield refused(client.read(blob, 0, None, sink), ChecksumError)
        assert sink.producer is None
        assert sink.data() == data[: 3 * bs]
        assert (yield get(client, blob, bs, 2 * bs)) == data[bs : 3 * bs]
        yield refused(client.read(blob, 4 * bs - 1, 1, Collector()), ChecksumError)

    @pytest_twisted.inlineCallbacks
    def test_delete_list_and_health(self, storage):
        client = yield self._client(storage)
        kept, gone, open_ = new_id(), new_id(), new_id()
        yield put(client, kept, b"k" * 10)
        yield put(client, gone, b"g" * 20)
        writer, _ = yield put(client, open_, b"o" * 30, commit=False)
        yield writer.abort()
        listed = {i.blob_id: i for i in (yield client.list_blobs())}
        assert listed[kept].state == SEALED and listed[gone].size == 20
        assert (listed[open_].state, listed[open_].durable) == (OPEN, 30)
        assert (yield client.delete(gone)) is None
        yield refused(client.stat(gone), BlobNotFound)
        yield refused(client.delete(gone), BlobNotFound)
        listed = {i.blob_id for i in (yield client.list_blobs())}
        assert kept in listed and gone not in listed
        health = yield client.health()
        assert health.name == storage.names[0]
        assert 0 <= health.free_bytes <= health.total_bytes
        assert health.blobs >= 2 and health.version >= 1

    @pytest_twisted.inlineCallbacks
    def test_copy_from_peer_makes_identical_sealed_blob(self, storage):
        source = yield self._client(storage, 0)
        target = yield self._client(storage, 1)
        blob, data = new_id(), pattern(700_000)
        _, info = yield put(source, blob, data, epoch=5, meta={"inode": 9})
        copied = yield target.copy_from(blob, storage.endpoint(storage.names[0]))
        assert copied == info
        assert sha((yield get(target, blob))) == sha(data)
        yield refused(target.copy_from(blob, storage.endpoint(storage.names[0])), BlobExists)
        missing = new_id()
        yield refused(target.copy_from(missing, storage.endpoint(storage.names[0])), BlobNotFound)
        unsealed = new_id()
        writer, _ = yield put(source, unsealed, b"u" * 10, commit=False)
        yield writer.abort()
        yield refused(target.copy_from(unsealed, storage.endpoint(storage.names[0])), BadRequest)

    @pytest_twisted.inlineCallbacks
    def test_a_small_put_reads_back_ranges_and_copies_to_a_peer(self, storage):
        """A put small enough that a real store keeps it in its record reads
        whole and in ranges, and copies to a peer, as any sealed blob."""
        source = yield self._client(storage, 0)
        target = yield self._client(storage, 1)
        blob, data = new_id(), pattern(4096 + 3)
        info = yield source.put(blob, 4, {"inode": 11}, data)
        assert (yield get(source, blob)) == data
        assert (yield get(source, blob, 4000, 50)) == data[4000:4050]
        copied = yield target.copy_from(blob, storage.endpoint(storage.names[0]))
        assert copied == info
        assert (yield get(target, blob)) == data

    @pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 129, ".x"])
    @pytest_twisted.inlineCallbacks
    def test_bad_blob_ids_are_bad_requests(self, storage, bad):
        client = yield self._client(storage)
        yield refused(client.stat(bad), BadRequest)
        yield refused(client.write(bad, 1, 0, {}), BadRequest)
        yield refused(client.read(bad, 0, None, Collector()), BadRequest)
        yield refused(client.fence(bad, 1, 0), BadRequest)
        yield refused(client.commit(bad, 1), BadRequest)
        yield refused(client.delete(bad), BadRequest)
        yield refused(client.copy_from(bad, storage.endpoint(storage.names[1])), BadRequest)

    @pytest_twisted.inlineCallbacks
    def test_paused_consumer_stops_delivery_until_resumed(self, storage):
        client = yield self._client(storage)
        blob, data = new_id(), pattern(8 * MiB, 3)
        yield put(client, blob, data, chunk=MiB)
        sink = Collector(pause_after=1)
        reading = client.read(blob, 0, None, sink)
        at_pause = yield sink.paused
        for _ in range(32):  # real round trips give an unpaused stream time to run
            yield client.stat(blob)
        assert not reading.called
        assert sink.count - at_pause <= 512 * 1024
        sink.producer.resumeProducing()
        n = yield reading
        assert n == len(data) and sha(sink.data()) == sha(data)

    @pytest_twisted.inlineCallbacks
    def test_writer_pauses_registered_producer_and_keeps_every_byte(self, storage):
        # 16 MiB written in one reactor turn: more than the socket buffers
        # (4 MiB send buffer at most here) can take while the server, in
        # this process, cannot read, even though the wire client hands
        # what the socket takes straight to it and queues only the rest.
        client = yield self._client(storage)
        blob, data = new_id(), pattern(16 * MiB, 4)
        writer = yield client.write(blob, 1, 0, {})
        producer = ChunkProducer(writer, data)
        writer.registerProducer(producer, True)
        producer.resumeProducing()
        yield producer.done
        writer.unregisterProducer()
        assert producer.pauses >= 1
        info = yield writer.commit()
        assert info.size == len(data)
        assert sha((yield get(client, blob))) == sha(data)
