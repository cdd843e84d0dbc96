"""A frozen replica is failed over after the read's stall timeout, counted
from its last byte (or from the moment the client let the read go on), not
after up to twice that: on the fake storage tier driven by a Clock."""

from __future__ import annotations

import pytest
from twisted.internet import task

from tests.transfer_env import Collector
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsstorage.testing import FakeStorageCluster

NAMES = ["s1", "s2"]
STALL = 5.0
DATA = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def cluster(clock):
    return FakeStorageCluster(clock, NAMES)


@pytest.fixture
def pool(clock, cluster):
    p = StoragePool(clock, probe_interval=60.0, probe_timeout=30.0)
    for n in NAMES:
        p.add(n, cluster.endpoint(n), cluster.node(n).client())
    started = p.start()
    clock.advance(0)
    assert started.called
    for n in NAMES:
        w = cluster.node(n).write("b1", 1, 0, {})
        clock.advance(0)
        w = w.result
        w.write(DATA)
        committed = w.commit()
        clock.advance(0)
        assert committed.called
    yield p
    p.stop()


class RateLimited(Collector):
    """A slow client: pauses the read after each chunk; the test resumes it."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()


def advance_to(clock: task.Clock, when: float) -> None:
    while clock.seconds() < when - 1e-9:
        clock.advance(min(0.01, when - clock.seconds()))


def test_a_replica_frozen_just_after_a_byte_is_failed_over_one_stall_timeout_later(
    clock, cluster, pool
):
    stream = ReadStream(clock, pool, [ReadExtent("b1", 0, len(DATA), NAMES)], stall_timeout=STALL)
    sink = RateLimited()
    done = stream.start(sink)
    clock.advance(0)
    first = stream.serving
    assert sink.received and not done.called
    advance_to(clock, 0.5)  # the client reads on early in the stall window
    cluster.node(first).freeze()
    stream.resumeProducing()
    clock.advance(0)
    # From here on the client takes every byte at once.
    sink.write = lambda data: Collector.write(sink, data)
    advance_to(clock, 0.5 + STALL * 1.3)
    assert stream.failovers == 1 and stream.serving != first
    assert done.called and sink.data == DATA


def test_a_client_that_reads_on_just_before_a_stall_check_gives_the_replica_its_time(
    clock, cluster, pool
):
    # Paused for long (a slow client): the replica owes no bytes meanwhile.
    # Once the client reads on, the replica has the whole stall timeout to
    # answer, however soon a periodic check comes.
    stream = ReadStream(clock, pool, [ReadExtent("b1", 0, len(DATA), NAMES)], stall_timeout=STALL)
    sink = RateLimited()
    done = stream.start(sink)
    clock.advance(0)
    serving = stream.serving
    for when in (STALL * 2 - 0.05, STALL * 4 - 0.05, STALL * 6 - 0.05):
        advance_to(clock, when)
        cluster.node(serving).freeze()  # slow to answer this time
        stream.resumeProducing()
        advance_to(clock, when + STALL * 0.9)
        assert stream.failovers == 0
        cluster.node(serving).thaw()
        clock.advance(0)
    sink.write = lambda data: Collector.write(sink, data)
    stream.resumeProducing()
    clock.advance(0)
    assert done.called and sink.data == DATA and stream.failovers == 0
