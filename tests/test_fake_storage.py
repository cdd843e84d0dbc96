"""The fake storage tier's own behaviour: asynchrony and the test controls.

Driven by a ``Clock``: ``settle`` lets the fake run until it is idle (a
``Clock`` runs calls scheduled during ``advance(0)`` in the same advance, so
streams are held with a pausing consumer to observe them mid-way).  The
semantics it shares with the real servers are in the contract suite
(tests/test_storage_contract_fake.py)."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.storage_contract import ChunkProducer, Collector
from wsstorage.errors import (
    BlobNotFound,
    ChecksumError,
    DiskFull,
    NodeUnavailable,
    StaleEpoch,
    StorageError,
)
from wsstorage.records import INCOMPLETE, SEALED
from wsstorage.testing import FakeStorageCluster

CHUNK = 1000


def settle(clock: Clock, limit: int = 10_000) -> None:
    for _ in range(limit):
        if not clock.getDelayedCalls():
            return
        clock.advance(0)
    raise AssertionError("the fake never went idle")


def outcome(d: defer.Deferred):
    """The result of a fired Deferred (a Failure if it failed); None if pending."""
    box: list = []
    d.addBoth(lambda r: box.append(r) or None)
    return box[0] if box else None


def failure_of(d: defer.Deferred, error: type[BaseException]) -> Failure:
    result = outcome(d)
    assert isinstance(result, Failure), f"expected {error.__name__}, got {result!r}"
    result.trap(error)
    return result


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cluster(clock):
    return FakeStorageCluster(clock, ["a", "b"], chunk_size=CHUNK, block_size=4096)


def store(clock, node, blob_id, data, epoch=1, commit=True):
    d = node.write(blob_id, epoch, 0, {"owner": "t"})
    settle(clock)
    writer = outcome(d)
    writer.write(data)
    done = writer.commit() if commit else writer.flush()
    settle(clock)
    return writer, outcome(done)


def test_results_arrive_on_a_later_reactor_turn(clock, cluster):
    node = cluster.node("a")
    d = node.list_blobs()
    assert not d.called
    clock.advance(0)
    assert outcome(d) == []


def test_read_delivers_in_chunks_and_counts_bytes(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", b"0123456789" * 350)
    sink = Collector(pause_after=1)
    d = node.read("x", 0, None, sink)
    settle(clock)
    assert [len(p) for p in sink.parts] == [CHUNK]
    assert not d.called
    sink.producer.resumeProducing()
    settle(clock)
    assert outcome(d) == 3500 and sink.data() == b"0123456789" * 350
    assert [len(p) for p in sink.parts] == [CHUNK, CHUNK, CHUNK, 500]
    assert (node.bytes_read, node.bytes_written) == (3500, 3500)


def test_calls_run_in_the_order_they_were_made(clock, cluster):
    node = cluster.node("a")
    writer, _ = store(clock, node, "x", b"a" * 10, commit=False)
    writer.write(b"b" * 5)
    durable = writer.flush()
    stat = node.stat("x")
    settle(clock)
    assert outcome(durable) == 15
    assert outcome(stat).durable == 15


def test_kill_fails_streams_and_calls_and_revive_reports_incomplete(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "sealed", b"s" * 5000)
    writer, durable = store(clock, node, "open", b"o" * 300, commit=False)
    assert durable == 300
    writer.write(b"unsynced")
    broken = writer.when_failed()
    sink = Collector(pause_after=1)
    reading = node.read("sealed", 0, None, sink)
    settle(clock)
    node.kill()
    failure_of(broken, NodeUnavailable)
    failure_of(reading, NodeUnavailable)
    assert sink.producer is None
    stat = node.stat("sealed")
    settle(clock)
    failure_of(stat, NodeUnavailable)
    failure_of(writer.flush(), NodeUnavailable)
    node.revive()
    stat = node.stat("open")
    settle(clock)
    info = outcome(stat)
    assert (info.state, info.size, info.durable) == (INCOMPLETE, 300, 300)
    assert node.blob_info("sealed").state == SEALED


def test_a_blob_never_synced_is_lost_in_a_kill_like_on_a_real_server(clock, cluster):
    # The real store writes a blob's record at its first flush, seal or
    # fence: a crash before that loses the blob whole (never reported durable).
    node = cluster.node("a")
    d = node.write("fresh", 1, 0, {"owner": "t"})
    settle(clock)
    outcome(d).write(b"never flushed")
    d = node.write("fenced", 1, 0, {"owner": "t"})
    settle(clock)
    outcome(d).write(b"f" * 10)
    fence = node.fence("fenced", 2, 0)
    settle(clock)
    assert outcome(fence).durable == 0
    node.kill()
    node.revive()
    gone = node.stat("fresh")
    kept = node.stat("fenced")
    settle(clock)
    failure_of(gone, BlobNotFound)
    assert outcome(kept).epoch == 2  # a fence writes the record


def test_frozen_node_holds_calls_until_thawed(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", b"x" * 10)
    node.freeze()
    d = node.stat("x")
    for _ in range(5):
        clock.advance(1)
    assert not d.called
    node.thaw()
    settle(clock)
    assert outcome(d).size == 10


def test_corrupt_block_fails_reads_of_that_block_only(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", bytes(range(256)) * 48)  # 3 blocks of 4096
    node.corrupt("x", 5000)
    good = Collector()
    d = node.read("x", 8192, None, good)
    settle(clock)
    assert outcome(d) == 4096
    bad = Collector()
    d = node.read("x", 0, None, bad)
    settle(clock)
    failure_of(d, ChecksumError)
    assert bad.count == 4096


def test_fenced_writer_fails_on_its_next_write(clock, cluster):
    node = cluster.node("a")
    writer, _ = store(clock, node, "x", b"x" * 100, commit=False)
    broken = writer.when_failed()
    fenced = node.client().fence("x", 2, 50)
    settle(clock)
    assert outcome(fenced).size == 50
    assert not broken.called
    writer.write(b"late")
    settle(clock)
    failure_of(broken, StaleEpoch)
    failure_of(writer.when_failed(), StaleEpoch)
    assert node.blob_bytes("x") == b"x" * 50


def test_writer_past_capacity_fails_with_disk_full(clock):
    cluster = FakeStorageCluster(clock, ["a"], capacity=1000)
    node = cluster.node("a")
    writer, _ = store(clock, node, "x", b"x" * 900, commit=False)
    writer.write(b"y" * 200)
    d = writer.flush()
    settle(clock)
    failure_of(d, DiskFull)
    assert len(node.blob_bytes("x")) == 900


def test_cancelling_a_read_unregisters_its_producer(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", b"x" * 5000)
    sink = Collector(pause_after=1)
    d = node.read("x", 0, None, sink)
    settle(clock)
    d.cancel()
    failure_of(d, defer.CancelledError)
    settle(clock)
    assert sink.producer is None and sink.count < 5000


def test_consumer_stopping_the_producer_ends_the_read(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", b"x" * 5000)
    sink = Collector(pause_after=1)
    d = node.read("x", 0, None, sink)
    settle(clock)
    sink.producer.stopProducing()
    failure_of(d, StorageError)
    assert sink.events == ["register", "unregister"]


def test_closed_client_fails_its_streams_and_refuses_calls(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", b"x" * 5000)
    client = node.client()
    sink = Collector(pause_after=1)
    d = client.read("x", 0, None, sink)
    settle(clock)
    client.close()
    failure_of(d, NodeUnavailable)
    failure_of(client.stat("x"), NodeUnavailable)
    other = node.stat("x")
    settle(clock)
    assert outcome(other).size == 5000


def test_copy_from_dead_or_damaged_source_fails(clock, cluster):
    a, b = cluster.node("a"), cluster.node("b")
    store(clock, a, "x", b"x" * 9000)
    a.corrupt("x", 8200)
    damaged = b.copy_from("x", cluster.endpoint("a"))
    unknown = b.copy_from("x", "fake:nowhere")
    settle(clock)
    failure_of(damaged, ChecksumError)
    failure_of(unknown, NodeUnavailable)
    a.kill()
    dead = b.copy_from("x", cluster.endpoint("a"))
    settle(clock)
    failure_of(dead, NodeUnavailable)
    missing = b.stat("x")
    settle(clock)
    failure_of(missing, BlobNotFound)


def test_pull_producer_is_asked_for_more_until_done(clock, cluster):
    node = cluster.node("a")
    d = node.write("x", 1, 0, {})
    settle(clock)
    writer = outcome(d)

    class Pull:
        left = 5

        def resumeProducing(self):
            if self.left:
                self.left -= 1
                writer.write(b"p" * 100)

        def stopProducing(self):
            pass

    writer.registerProducer(Pull(), False)
    settle(clock)
    writer.unregisterProducer()
    d = writer.commit()
    settle(clock)
    assert outcome(d).size == 500


def test_writer_pauses_a_fast_producer(clock, cluster):
    node = cluster.node("a")
    d = node.write("x", 1, 0, {})
    settle(clock)
    writer = outcome(d)
    producer = ChunkProducer(writer, b"z" * 50_000, chunk=700)
    writer.registerProducer(producer, True)
    producer.resumeProducing()
    assert producer.paused and producer.pos < 50_000
    settle(clock)
    assert producer.done.called and producer.pauses > 1
    d = writer.commit()
    settle(clock)
    assert outcome(d).size == 50_000


def test_health_reports_capacity_blobs_and_streams(clock, cluster):
    node = cluster.node("a")
    store(clock, node, "x", b"x" * 100)
    store(clock, node, "y", b"y" * 100, commit=False)
    d = node.health()
    settle(clock)
    health = outcome(d)
    assert (health.name, health.blobs, health.active_streams) == ("a", 2, 1)
    assert health.free_bytes == health.total_bytes - 200


def test_killing_a_frozen_node_fails_its_held_calls(clock, cluster):
    node = cluster.node("a")
    node.freeze()
    d = node.list_blobs()
    settle(clock)
    assert not d.called
    node.kill()
    settle(clock)
    failure_of(d, NodeUnavailable)


def test_client_factory_gives_clients_of_the_named_node(clock, cluster):
    store(clock, cluster.node("b"), "x", b"x" * 10)
    client = cluster.client_factory("b", cluster.endpoint("b"))
    assert client.name == "b"
    d = client.stat("x")
    settle(clock)
    assert outcome(d).size == 10
