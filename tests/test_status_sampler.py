"""The status page's sampler and the latency histogram, on a fake clock:
rates are bytes over the seconds between samples, finished sessions are
forgotten, the history is bounded, and histogram buckets are cumulative."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from wsfront.metrics_catalog import LatencyHistogram
from wsfront.status.sampler import ThroughputSampler
from wsfront.transfer.stats import TransferStats


def transfers():
    return SimpleNamespace(stats=TransferStats(), sessions={})


def test_throughput_is_bytes_per_second_between_samples_and_history_is_bounded():
    clock, t = Clock(), transfers()
    sampler = ThroughputSampler(clock, t, interval=1.0, history=3)
    sampler.start()
    for second in range(1, 6):
        t.stats.read_bytes += 1000 * second
        t.stats.write_bytes += 10
        clock.advance(1.0)
    sampler.stop()
    assert [(round(at), r, w) for at, r, w in sampler.points] == [
        (3, 3000, 10),
        (4, 4000, 10),
        (5, 5000, 10),
    ]
    assert not clock.getDelayedCalls()


def test_session_rate_follows_its_offset_and_is_forgotten_when_it_ends():
    clock, t = Clock(), transfers()
    session = SimpleNamespace(offset=0)
    t.sessions["u1"] = session
    sampler = ThroughputSampler(clock, t, interval=0.5)
    sampler.sample()
    assert sampler.rate("u1") == 0.0
    clock.advance(0.5)
    session.offset = 1000
    sampler.sample_if_stale()
    assert sampler.rate("u1") == 2000.0
    sampler.sample_if_stale()  # not stale yet: no new point
    assert sampler.rate("u1") == 2000.0
    del t.sessions["u1"]
    clock.advance(0.5)
    sampler.sample()
    assert sampler.rate("u1") == 0.0


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative_and_end_with_the_count(values):
    h = LatencyHistogram()
    for v in values:
        h.observe(v)
    counts = [c for _le, c in h.cumulative()]
    assert counts == sorted(counts)
    assert counts[-1] == h.count == len(values)
    for le, c in h.cumulative()[:-1]:
        assert c == sum(1 for v in values if v <= float(le))
