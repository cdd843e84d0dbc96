"""Storage pool health and read-stream behaviour, on the fake storage tier
driven by a Clock (no sleeps): dead servers stop being chosen, frozen
replicas are failed over after the stall timeout, a consumer that goes away
stops the upstream at once."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from tests.transfer_env import Collector, PausingCollector
from wsfront.transfer.errors import NoReplicasAvailable, TransferAborted
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsstorage.testing import FakeStorageCluster

NAMES = ["s1", "s2", "s3"]


def run(clock: task.Clock, d: Deferred, limit: int = 10_000):
    """Advance the fake clock until ``d`` fires; return its result."""
    results = []
    d.addBoth(results.append)
    for _ in range(limit):
        if results:
            break
        clock.advance(0.01)
    assert results, "the Deferred never fired"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def cluster(clock):
    return FakeStorageCluster(clock, NAMES)


@pytest.fixture
def pool(clock, cluster):
    p = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5)
    for n in NAMES:
        p.add(n, cluster.endpoint(n), cluster.node(n).client())
    run(clock, p.start())
    yield p
    p.stop()


def store_blob(clock, cluster, nodes, blob_id, data):
    for n in nodes:
        w = run(clock, cluster.node(n).write(blob_id, 1, 0, {}))
        w.write(data)
        run(clock, w.commit())


def test_dead_server_is_no_longer_chosen_and_is_chosen_again_when_back(clock, cluster, pool):
    assert sorted(pool.choose(3)) == NAMES
    cluster.node("s2").kill()
    clock.advance(1.0)  # the next probe
    run(clock, pool.probe_all())
    assert "s2" not in pool.choose(3)
    assert not pool.is_up("s2")
    cluster.node("s2").revive()
    clock.advance(1.0)
    run(clock, pool.probe_all())
    assert "s2" in pool.choose(3)


def test_frozen_server_counts_as_down_after_the_probe_timeout(clock, cluster, pool):
    cluster.node("s1").freeze()
    d = pool.probe_all()
    run(clock, d)
    assert not pool.is_up("s1")
    assert pool.is_up("s2")
    # Said in words an operator reads, not Twisted's "(0.5, 'Deferred')".
    (s1,) = [n for n in pool.nodes() if n.name == "s1"]
    assert s1.last_error == "no answer to a health probe within 0.5 s"


def test_choice_prefers_free_space_and_distinct_servers(pool):
    GiB = 1 << 30
    for node, free in zip(pool.nodes(), (10 * GiB, 30 * GiB, 20 * GiB)):
        node.free_bytes = free
    assert pool.choose(2) == ["s2", "s3"]
    assert pool.choose(5) == ["s2", "s3", "s1"]
    assert pool.choose(2, exclude=["s2"]) == ["s3", "s1"]


def test_servers_with_about_the_same_free_space_take_turns(pool):
    """Three servers on one disk: a few bytes apart, whichever probe ran
    last; every one of them gets its share of the writes."""
    for node, free in zip(pool.nodes(), (50 << 30, (50 << 30) + 4096, (50 << 30) - 8192)):
        node.free_bytes = free
    picks = [tuple(pool.choose(2)) for _ in range(30)]
    counts = {name: sum(name in p for p in picks) for name in NAMES}
    assert counts == {name: 20 for name in NAMES}
    assert all(len(set(p)) == 2 for p in picks)


def test_read_fails_over_from_a_frozen_replica_after_the_stall_timeout(clock, cluster, pool):
    data = bytes(range(256)) * 4096  # 1 MiB
    store_blob(clock, cluster, ["s1", "s2"], "b1", data)
    cluster.node("s1").freeze()
    stream = ReadStream(clock, pool, [ReadExtent("b1", 0, len(data), ("s1", "s2"))], 0,
                        stall_timeout=2.0)  # fmt: skip
    sink = Collector()
    # Whichever replica the stream starts on, the frozen one stalls and the
    # stream moves on to the other one.
    n = run(clock, stream.start(sink))
    assert n == len(data)
    assert sink.data == data
    assert stream.serving == "s2"


def test_consumer_stop_cancels_the_upstream_read(clock, cluster, pool):
    data = b"x" * (4 << 20)
    store_blob(clock, cluster, ["s1"], "b2", data)
    stream = ReadStream(clock, pool, [ReadExtent("b2", 0, len(data), ("s1",))])
    sink = PausingCollector(pause_at=1)
    d = stream.start(sink)
    clock.advance(0)
    assert sink.paused.called
    stream.stopProducing()
    with pytest.raises(TransferAborted):
        run(clock, d)
    sent = cluster.node("s1").bytes_read
    for _ in range(50):
        clock.advance(0.01)
    assert cluster.node("s1").bytes_read == sent < len(data)
    assert sink.producer is None


def test_no_readable_replica_is_a_clear_error(clock, cluster, pool):
    store_blob(clock, cluster, ["s1", "s2"], "b3", b"abc")
    cluster.node("s1").kill()
    cluster.node("s2").corrupt("b3", 1)
    stream = ReadStream(clock, pool, [ReadExtent("b3", 0, 3, ("s1", "s2"))])
    with pytest.raises(NoReplicasAvailable, match="b3"):
        run(clock, stream.start(Collector()))


def test_a_blob_of_known_size_goes_where_it_fits_above_the_reserve(clock, cluster, pool):
    MiB = 1 << 20
    for node, free in zip(pool.nodes(), (100 * MiB, 100 * MiB, 100 * MiB)):
        node.free_bytes, node.reserve_bytes = free, 0
    pool.nodes()[0].reserve_bytes = 95 * MiB  # s1: 5 MiB above its reserve
    assert pool.choose(2, size=6 * MiB) == ["s2", "s3"]
    assert sorted(pool.choose(3, size=5 * MiB)) == NAMES
    # What was placed since the last probe counts as taken: s1 has no room
    # for the next 5 MiB, and s2 and s3 (16 MiB placed) none for 90.
    assert sorted(pool.choose(3, size=5 * MiB)) == ["s2", "s3"]
    assert pool.choose(2, size=90 * MiB) == []
    assert pool.out_of_space(90 * MiB)
    assert pool.choose(2, size=80 * MiB) != []
    assert not pool.out_of_space(None)
    # Sizes unknown: placement by free space alone, as ever.
    assert sorted(pool.choose(3)) == NAMES
    # A health answer says what is free now; what was placed is in it.
    run(clock, pool.probe_all())
    assert all(n.placed_bytes == 0 for n in pool.nodes())


def test_a_placement_holds_its_room_across_health_answers_until_its_upload_ends(
    clock, cluster, pool
):
    """Two uploads of 6 MiB placed a probe apart on servers with 10 MiB
    free: the second finds no room (it would fail mid-body on a full disk),
    for the first still holds what it has yet to write; what it wrote, the
    health answers show as used, and are not counted twice."""
    MiB = 1 << 20
    for name in NAMES:
        cluster.node(name).capacity = 10 * MiB
    run(clock, pool.probe_all())
    assert sorted(pool.choose(3, size=6 * MiB, blob_id="b1")) == NAMES
    clock.advance(1.0)
    run(clock, pool.probe_all())
    assert pool.choose(3, size=6 * MiB, blob_id="b2") == []
    assert pool.out_of_space(6 * MiB)
    # Its upload runs and writes 4 MiB: free space shows them from the next
    # answer on, and the placement holds only the 2 MiB still to come.
    written = [0]
    pool.claim("b1", NAMES, lambda: written[0])
    store_blob(clock, cluster, NAMES, "b1", b"x" * (4 * MiB))
    written[0] = 4 * MiB
    run(clock, pool.probe_all())
    assert {n.free_bytes for n in pool.nodes()} == {6 * MiB}
    assert {n.placed_bytes for n in pool.nodes()} == {2 * MiB}
    assert pool.choose(3, size=5 * MiB, blob_id="b2") == []
    # A replica that drops out gives back its room on its server alone.
    pool.release("b1", ["s1"])
    assert [n.placed_bytes for n in pool.nodes()] == [0, 2 * MiB, 2 * MiB]
    # It writes 1 MiB more, then ends: what it wrote since the last answer
    # stays counted until the next one shows it as used.
    store_blob(clock, cluster, ["s2", "s3"], "b1more", b"x" * MiB)
    written[0] = 5 * MiB
    pool.release("b1")
    assert [n.placed_bytes for n in pool.nodes()] == [0, MiB, MiB]
    run(clock, pool.probe_all())
    assert [(n.free_bytes, n.placed_bytes) for n in pool.nodes()] == [
        (6 * MiB, 0),
        (5 * MiB, 0),
        (5 * MiB, 0),
    ]
    assert sorted(pool.choose(3, size=5 * MiB, blob_id="b2")) == NAMES


def test_an_upload_of_unknown_size_goes_where_the_room_is_left_not_where_it_was(
    clock, cluster, pool
):
    """Between two health answers, a known-size upload took most of the two
    emptiest servers' room: an upload of unknown size (an FTP STOR without
    ALLO, a chunked PUT) goes to the server with the most room left, not
    to the two whose last answer said the most free (it would fill them
    and fail mid-body)."""
    GiB = 1 << 30
    for name, capacity in (("s1", 40 * GiB), ("s2", 40 * GiB), ("s3", 30 * GiB)):
        cluster.node(name).capacity = capacity
    run(clock, pool.probe_all())
    assert sorted(pool.choose(2, size=38 * GiB, blob_id="big")) == ["s1", "s2"]
    assert pool.choose(2)[0] == "s3"
    assert pool.choose(1) == ["s3"]


def test_a_placement_no_upload_claims_is_given_back(clock, cluster, pool):
    """A claim gives back the servers whose stream did not open; a
    placement no upload ever claims (a start that failed without giving
    it back) holds its room for ``UNCLAIMED_SECONDS`` only."""
    from wsfront.transfer.pool import UNCLAIMED_SECONDS

    MiB = 1 << 20
    for name in NAMES:
        cluster.node(name).capacity = 10 * MiB
    run(clock, pool.probe_all())
    assert sorted(pool.choose(3, size=6 * MiB, blob_id="b1")) == NAMES
    pool.claim("b1", ["s2"], lambda: 0)
    assert [n.placed_bytes for n in pool.nodes()] == [0, 6 * MiB, 0]
    pool.release("b1")
    assert sorted(pool.choose(3, size=6 * MiB, blob_id="lost")) == NAMES
    clock.advance(UNCLAIMED_SECONDS / 2)
    run(clock, pool.probe_all())
    assert {n.placed_bytes for n in pool.nodes()} == {6 * MiB}
    clock.advance(UNCLAIMED_SECONDS)
    run(clock, pool.probe_all())
    assert {n.placed_bytes for n in pool.nodes()} == {0}
    assert pool._placements == {}


def test_servers_sharing_a_disk_share_its_room(clock, cluster, pool):
    """wslocal's stores share one file system, each reporting its free
    space: a blob placed on one takes room from all, and its two replicas
    there take it twice."""
    MiB = 1 << 20
    for name in NAMES:
        cluster.node(name).capacity = 10 * MiB
    run(clock, pool.probe_all())
    pool.share_disk(NAMES)
    assert len(pool.choose(2, size=4 * MiB, blob_id="b1")) == 2
    # 8 of the 10 MiB are taken, on whichever of the three: no room for 4
    # more, where each server alone would have said 6 or 10.
    assert pool.choose(2, size=4 * MiB, blob_id="b2") == []
    assert pool.out_of_space(4 * MiB)
    pool.release("b1")
    # Room for one replica of 6 MiB, not two: one server is chosen.
    assert len(pool.choose(2, size=6 * MiB, blob_id="b3")) == 1
    pool.release("b3")
    # Servers on disks of their own are charged alone, as before.
    pool.share_disk(["s1", "s2"])
    pool.share_disk(["s3"])
    assert sorted(pool.choose(3, size=4 * MiB, blob_id="b4")) == NAMES
    assert pool.choose(1, size=4 * MiB, exclude=["s3"]) == []
    assert pool.choose(1, size=4 * MiB, exclude=["s1", "s2"]) == ["s3"]


def test_every_server_below_its_reserve_is_out_of_space_not_down(clock, cluster, pool):
    cluster.node("s3").kill()
    run(clock, pool.probe_all())
    s1, s2, _ = pool.nodes()
    for node in (s1, s2):
        node.free_bytes, node.reserve_bytes = 10, 100
    # s3 is down, not full: the two that are up are.
    assert pool.out_of_space(None)
    assert pool.out_of_space(5)
    s2.free_bytes = 1000
    assert not pool.out_of_space(None)
    assert pool.out_of_space(5000)
    s2.draining = True  # a draining server is not one to wait for either
    assert pool.out_of_space(None)


def test_a_server_is_silent_only_after_two_probe_rounds_without_an_answer(clock, cluster, pool):
    """A takeover skips the fence of a silent server (frozen or gone) but
    waits for one a failed connection or a single slow probe marked down
    a moment ago: it may answer, and a replica that misses the fence is
    lost to the upload."""
    pool.mark_down("s2", "a reader's connection failed")
    assert not pool.is_up("s2") and not pool.silent("s2")
    cluster.node("s1").freeze()
    run(clock, pool.probe_all())
    assert not pool.is_up("s1") and not pool.silent("s1")  # one slow probe
    for _ in range(3):  # probe rounds of 1 s (+0.5 s timeout) with no answer
        clock.advance(1.0)
        run(clock, pool.probe_all())
    assert pool.silent("s1")
    assert not pool.silent("s3") and not pool.silent("nobody")
