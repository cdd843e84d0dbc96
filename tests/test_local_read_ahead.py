"""wslocal's storage read-ahead: one process-wide budget shared by the reads.

In ``twistd -n wslocal`` the storage servers run in the front end's
process, so what their read streams hold counts in its RSS.  Each stream's
batch is an equal share of ``READ_AHEAD_BUDGET`` among the front end's
running reads: a lone download reads 256 KiB batches, 200 read 64 KiB ones,
and the share grows back as reads end.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.testing import Clock

from tests.storage_procs import DrainConsumer, pattern, write_blob
from tests.support import free_port
from tests.transfer_env import sha256
from wsfront import local
from wsfront.transfer import reader
from wsfront.transfer.errors import TransferAborted
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsfront.transfer.shares import fair_share
from wsstorage import server
from wsstorage.blobstore import BlobReadHandle, BlobStore
from wsstorage.client import StorageClient

KiB, MiB = 1 << 10, 1 << 20


def test_a_fair_share_splits_the_budget_within_its_bounds_in_whole_steps():
    assert fair_share(8 * MiB, 0, 64 * KiB, 256 * KiB) == 256 * KiB
    assert fair_share(8 * MiB, 1, 64 * KiB, 256 * KiB) == 256 * KiB
    assert fair_share(8 * MiB, 32, 64 * KiB, 256 * KiB) == 256 * KiB
    assert fair_share(8 * MiB, 50, 64 * KiB, 256 * KiB) == 8 * MiB // 50
    # Rounded down to whole steps (blocks), never under the floor.
    assert fair_share(8 * MiB, 50, 64 * KiB, 256 * KiB, 64 * KiB) == 128 * KiB
    assert fair_share(8 * MiB, 33, 64 * KiB, 256 * KiB, 64 * KiB) == 192 * KiB
    assert fair_share(8 * MiB, 200, 64 * KiB, 256 * KiB, 64 * KiB) == 64 * KiB
    assert fair_share(8 * MiB, 10**6, 64 * KiB, 256 * KiB, 64 * KiB) == 64 * KiB


class _Silent:
    """A storage client whose reads never answer (until cancelled)."""

    def read(self, blob_id, offset, count, consumer):
        return defer.Deferred()


class _Pool:
    def lookup(self, *groups):
        return None  # knows every server

    lookup_for_read = lookup

    def order_for_read(self, replicas, spread=0):
        return list(replicas)

    def client(self, node):
        return _Silent()


def _factory(clock, ceiling=local.LOCAL_READ_AHEAD):
    return local.LocalStorageFactory(
        clock, None, "s1", b"k" * 32, run_blocking=lambda f, *a: defer.succeed(f(*a)),
        read_ahead=ceiling, read_batches=1,
    )  # fmt: skip


def _start_reads(clock, count):
    extents = [ReadExtent("b" * 32, 0, MiB, ("s1",))]
    streams = [ReadStream(clock, _Pool(), extents) for _ in range(count)]
    done = [s.start(DrainConsumer()) for s in streams]
    for d in done:
        d.addErrback(lambda f: f.trap(TransferAborted))
    return streams, done


def test_the_read_ahead_shrinks_as_reads_start_and_grows_back_as_they_end():
    clock = Clock()
    factory = _factory(clock)
    assert reader.active_reads() == 0
    assert factory.read_ahead == local.LOCAL_READ_AHEAD
    many, many_done = _start_reads(clock, 200)
    assert reader.active_reads() == 200
    assert factory.read_ahead == local.READ_AHEAD_MIN
    for s in many[:150]:
        s.stopProducing()
    assert reader.active_reads() == 50
    assert factory.read_ahead == 128 * KiB
    for s in many[150:]:
        s.stopProducing()
    assert all(d.called for d in many_done)
    assert reader.active_reads() == 0
    assert factory.read_ahead == local.LOCAL_READ_AHEAD
    clock.advance(60)  # no stall timer left behind
    assert not clock.getDelayedCalls()


def test_the_ceiling_given_is_kept_and_a_small_one_is_its_own_floor():
    clock = Clock()
    assert _factory(clock, 128 * KiB).read_ahead == 128 * KiB
    small = _factory(clock, 16 * KiB)
    streams, _ = _start_reads(clock, 300)
    try:
        assert small.read_ahead == 16 * KiB
        assert _factory(clock).read_ahead == local.READ_AHEAD_MIN
    finally:
        for s in streams:
            s.stopProducing()
    assert reader.active_reads() == 0


class _PausingAt(DrainConsumer):
    """Pauses its producer once ``at`` bytes arrived and calls ``then``."""

    def __init__(self, points) -> None:
        super().__init__()
        self.points = list(points)

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.points and self.count >= self.points[0][0]:
            _, then = self.points.pop(0)
            then()
            producer = self.producer
            producer.pauseProducing()
            reactor.callLater(0, producer.resumeProducing)


@pytest.fixture
def local_server(tmp_path):
    store = BlobStore.open(tmp_path / "s1")
    factory = local.LocalStorageFactory(
        reactor, store, "s1", b"k" * 32, read_ahead=local.LOCAL_READ_AHEAD, read_batches=1
    )
    port = reactor.listenTCP(free_port(), factory, interface="127.0.0.1")
    client = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{port.getHost().port}", b"k" * 32, idle_timeout=30
    )
    yield factory, client
    pytest_twisted.blockon(client.close())
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
    store.close()


@pytest_twisted.ensureDeferred
async def test_a_read_whose_share_changes_midway_delivers_every_byte(local_server, monkeypatch):
    """The server's batches follow the share as it changes, whether read
    in the reactor thread or by a task, and a stream's pooled buffers,
    allocated at one share, serve batches of another without losing or
    repeating a byte."""
    _factory, client = local_server
    # The server reads ahead of the sink by what the sockets' buffers hold
    # (loopback TCP autotunes them to about 10 MiB under load): each share
    # lasts 12 MiB of the sink's bytes, and the last "alone" starts 33 MiB
    # before the end, so a gap of up to that still sees alone, crowded,
    # alone in the server's batches (with 6 MiB windows and 24 MiB, a
    # 13 MiB gap under load once saw no "alone" again).
    size = 48 * MiB + 4321
    data = pattern(size, seed=11)
    await write_blob(client, "blob", data, chunk=MiB)
    batches = []
    count = server._ReadStream._count

    def counting(stream, n):
        batches.append(n)
        return count(stream, n)

    monkeypatch.setattr(server._ReadStream, "_count", counting)

    def crowd():
        monkeypatch.setattr(reader, "_active_reads", 500)

    def alone():
        monkeypatch.setattr(reader, "_active_reads", 1)

    for offset, length in [(0, None), (12345, size - 23456)]:
        batches.clear()
        alone()
        sink = _PausingAt([(3 * MiB, crowd), (15 * MiB, alone), (27 * MiB + 1, crowd)])
        end = size if length is None else offset + length
        assert await client.read("blob", offset, length, sink) == end - offset
        assert sink.sha.hexdigest() == sha256(data[offset:end])
        assert sum(batches) == end - offset
        # Both shares were read at, in this order: alone, crowded, alone.
        small = [i for i, n in enumerate(batches) if n == local.READ_AHEAD_MIN]
        large = [i for i, n in enumerate(batches) if n == local.LOCAL_READ_AHEAD]
        assert small and large
        assert large[0] < small[0] < large[-1]


@pytest.mark.parametrize("block", [512, 64 * KiB, 48 * KiB, 96 * KiB, 1536])
def test_the_share_is_whole_blocks_of_the_store(block, monkeypatch):
    """A store whose block is not 64 KiB gets batches of whole blocks of
    its own, from about READ_AHEAD_MIN up to the ceiling; one whose block
    divides 64 KiB the same 64 KiB steps as before."""
    factory = _factory(Clock())
    factory.store = SimpleNamespace(block_size=block)
    step = local.READ_AHEAD_MIN if local.READ_AHEAD_MIN % block == 0 else block
    for active in [0, 1, 33, 50, 100, 200, 10**4]:
        monkeypatch.setattr(reader, "_active_reads", active)
        share = factory.read_ahead
        assert share % step == 0, (active, share)
        assert local.READ_AHEAD_MIN <= share <= local.LOCAL_READ_AHEAD
        assert (
            share >= min(local.LOCAL_READ_AHEAD, local.READ_AHEAD_BUDGET // max(1, active)) - step
        )


@pytest_twisted.ensureDeferred
async def test_a_store_of_96_kib_blocks_reads_cached_batches_in_place(tmp_path, monkeypatch):
    """With 200 reads running (a 64 KiB share) the batches of a store of
    96 KiB blocks are whole blocks, so the reactor thread reads the cached
    ones in place instead of refusing them all as unaligned."""
    store = BlobStore.open(tmp_path / "s1", block_size=96 * KiB)
    factory = local.LocalStorageFactory(
        reactor, store, "s1", b"k" * 32, read_ahead=local.LOCAL_READ_AHEAD, read_batches=1
    )
    port = reactor.listenTCP(free_port(), factory, interface="127.0.0.1")
    client = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{port.getHost().port}", b"k" * 32, idle_timeout=30
    )
    try:
        data = pattern(6 * MiB + 7, seed=12)
        await write_blob(client, "blob", data, chunk=MiB)
        monkeypatch.setattr(reader, "_active_reads", 200)
        refused = []
        read_into = BlobReadHandle.read_into

        def noting(handle, buffer, nowait=False):
            try:
                return read_into(handle, buffer, nowait)
            except BlockingIOError as e:
                refused.append(str(e))
                raise

        monkeypatch.setattr(BlobReadHandle, "read_into", noting)
        sink = DrainConsumer()
        assert await client.read("blob", 0, None, sink) == len(data)
        assert sink.sha.hexdigest() == sha256(data)
        assert not [r for r in refused if "unaligned" in r]
    finally:
        await client.close()
        await defer.maybeDeferred(port.stopListening)
        store.close()
