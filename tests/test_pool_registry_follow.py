"""The storage pool takes in servers registered and moved after it was
built (``StoragePool.move``, ``StoragePool.lookup``), on the fake storage
tier driven by a Clock; the front end's side, with real processes, is in
``test_registry_follow_procs``."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred, succeed

from tests.test_transfer_pool_and_reads import run, store_blob
from tests.transfer_env import Collector
from wsfront.maintenance.nodes import drain
from wsfront.transfer.errors import NoReplicasAvailable
from wsfront.transfer.pool import (
    NOT_PROBED,
    STORAGE_IDLE_TIMEOUT,
    SURVIVES_MOVE,
    NodeState,
    StoragePool,
)
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsstorage.errors import NodeUnavailable
from wsstorage.records import Health
from wsstorage.testing import FakeStorageCluster


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def cluster(clock):
    return FakeStorageCluster(clock, ["s1", "s2", "s4"])


class Registry:
    """Stands for the front end's ``refresh_registry``: what the catalog
    lists now, taken into the pool; counts the reads."""

    def __init__(self, cluster: FakeStorageCluster) -> None:
        self.cluster = cluster
        self.pool: StoragePool | None = None
        self.listed = {"s1": cluster.endpoint("s1"), "s2": cluster.endpoint("s2")}
        self.reads = 0
        self.answer: Deferred | None = None  # held until the test fires it

    def refresh(self) -> Deferred:
        self.reads += 1
        d = self.answer if self.answer is not None else succeed(None)

        def follow(_):
            for name, endpoint in self.listed.items():
                if name not in self.pool.names():
                    self.pool.add(name, endpoint, self.cluster.client_factory(name, endpoint))

        return d.addCallback(follow)


@pytest.fixture
def registry(cluster):
    return Registry(cluster)


@pytest.fixture
def pool(clock, cluster, registry):
    p = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, refresh=registry.refresh)
    registry.pool = p
    for name, endpoint in registry.listed.items():
        p.add(name, endpoint, cluster.client_factory(name, endpoint))
    run(clock, p.start())
    yield p
    p.stop()


def test_a_replica_on_a_server_registered_since_is_looked_up_once_for_concurrent_reads(
    clock, cluster, registry, pool
):
    data = b"on s4 only" * 1000
    store_blob(clock, cluster, ["s4"], "b4", data)
    registry.listed["s4"] = cluster.endpoint("s4")  # another front end's --storage
    registry.answer = Deferred()
    extent = [ReadExtent("b4", 0, len(data), ("s4",))]
    sinks = [Collector(), Collector()]
    reads = [ReadStream(clock, pool, extent).start(s) for s in sinks]
    clock.advance(0)
    assert registry.reads == 1  # both wait for one read of the registry
    registry.answer.callback(None)
    assert [run(clock, d) for d in reads] == [len(data), len(data)]
    assert [s.data for s in sinks] == [data, data]
    assert pool.is_up("s4")


def test_a_replica_on_a_server_no_registry_lists_fails_with_a_reason_not_a_key_error(
    clock, registry, pool
):
    client = pool.client("s9")
    with pytest.raises(NodeUnavailable, match="s9 is not in this front end's storage pool"):
        run(clock, client.stat("b9"))
    assert pool.lookup(["s9"]) is not None and registry.reads == 1
    assert pool.lookup(["s9"]) is None and registry.reads == 1  # not again this probe interval
    clock.advance(1.0)
    assert pool.lookup(["s9"]) is not None and registry.reads == 2
    assert pool.lookup(["s1", "s2"]) is None  # all known: no read at all


def test_a_moved_server_is_reached_at_its_new_endpoint_and_the_old_ones_probe_is_ignored(
    clock, cluster, pool
):
    new = cluster.add_node("s2-moved")
    cluster.node("s2").freeze()
    late = pool.probe_all()  # s2's probe now hangs at the old address
    old = pool.client("s2")
    pool.move("s2", cluster.endpoint("s2-moved"), new.client())
    run(clock, late)  # the old address's probe times out: not s2's news any more
    assert old is not pool.client("s2")
    assert pool.endpoint("s2") == cluster.endpoint("s2-moved")
    assert pool.is_up("s2")
    [s2] = [n for n in pool.nodes() if n.name == "s2"]
    assert s2.probed and s2.last_error is None  # the new address answered
    data = b"moved" * 100
    store_blob(clock, cluster, ["s2-moved"], "b2", data)
    sink = Collector()
    assert run(
        clock, ReadStream(clock, pool, [ReadExtent("b2", 0, len(data), ("s2",))]).start(sink)
    )
    assert sink.data == data


OURS = "c" * 32


class BindingStore:
    """A store's client whose binds answer when the test says: an
    unbound store holding ``blobs`` blobs."""

    def __init__(self, name: str, blobs: int = 0) -> None:
        self.name = name
        self.cluster_id: str | None = None
        self.blobs = blobs
        self.binds: list[Deferred] = []
        self.health_answers: Deferred | None = None  # None: at once

    def health(self) -> Deferred:
        if self.health_answers is not None:
            return self.health_answers
        return succeed(Health(self.name, 10**12, 10**12, self.blobs, 0, 1))

    def can_bind(self) -> Deferred:
        return succeed(True)

    def bind_cluster(self, cluster_id: str) -> Deferred:
        d: Deferred = Deferred()
        self.binds.append(d)
        return d

    def close(self) -> Deferred:
        return succeed(None)


def test_a_bind_the_old_address_answers_after_a_move_does_not_bind_the_new_store(clock):
    pool = StoragePool(
        clock, probe_timeout=0.5, cluster_id=OURS, knows_node=lambda name: succeed(False)
    )
    old = BindingStore("s1")
    pool.add("s1", "tcp:old:1", old)
    pool.probe_all()
    clock.advance(1.0)  # the old store's bind does not answer: not waited for
    assert len(old.binds) == 1
    # Moved to a store holding blobs this catalog records none of (another
    # cluster's, unbound): never to be bound automatically.
    new = BindingStore("s1", blobs=5)
    pool.move("s1", "tcp:new:2", new)
    [node] = pool.nodes()
    assert node.binding is None
    old.binds[0].callback(OURS)  # the OLD store is bound now, not the new one
    assert not node.bound and not pool.of_this_cluster("s1")
    pool.probe_all()
    clock.advance(1.0)
    assert new.binds == [] and node.foreign == "unbound"
    assert not pool.is_up("s1") and pool.choose(1) == []


def test_a_server_taken_in_while_running_takes_no_writes_before_its_first_probe(
    clock, cluster, pool
):
    # Its probe hangs (a store of another cluster, a typo'd endpoint that
    # accepts the connection): nothing may be placed there meanwhile.
    # (A server moved while running goes on at its old endpoint until the
    # new one's probe passes: ``test_pool_pending_endpoint``.)
    cluster.node("s4").freeze()
    pool.add("s4", cluster.endpoint("s4"), cluster.client_factory("s4", cluster.endpoint("s4")))
    for _ in range(4):
        assert sorted(pool.choose(3)) == ["s1", "s2"]
    assert not pool.is_up("s4")
    # Not known frozen or gone either: a resume's fence still waits for it.
    assert not pool.silent("s4")
    cluster.node("s4").thaw()
    run(clock, pool.probe_all())
    assert sorted(pool.choose(3)) == ["s1", "s2", "s4"]


def test_a_read_failing_at_the_old_address_does_not_mark_the_moved_server_down(
    clock, cluster, pool
):
    data = b"both" * 100
    moved = cluster.add_node("s2-moved")
    store_blob(clock, cluster, ["s2", "s2-moved"], "b2", data)
    cluster.node("s2").freeze()
    sink = Collector()
    reading = ReadStream(clock, pool, [ReadExtent("b2", 0, len(data), ("s2",))]).start(sink)
    pool.move("s2", cluster.endpoint("s2-moved"), moved.client())
    run(clock, pool.probe_all())
    assert pool.is_up("s2")
    cluster.node("s2").kill()  # the read held at the old address fails
    assert run(clock, reading)
    assert sink.data == data
    assert pool.is_up("s2")  # the old address failed, not the new one


def test_a_read_waits_for_no_registry_read_while_a_known_replica_is_up(
    clock, cluster, registry, pool
):
    data = b"on s1" * 100
    store_blob(clock, cluster, ["s1"], "b1", data)
    registry.answer = Deferred()  # the catalog does not answer
    sink = Collector()
    # Only the fallback names a server this front end does not know.
    extent = ReadExtent("b1", 0, len(data), ("s1",), fallback=("s9",))
    assert run(clock, ReadStream(clock, pool, [extent]).start(sink)) == len(data)
    assert sink.data == data and registry.reads == 0


def test_a_read_waits_for_a_hung_registry_read_no_longer_than_the_probe_timeout(
    clock, cluster, registry, pool
):
    registry.answer = Deferred()  # the catalog does not answer
    reading = ReadStream(clock, pool, [ReadExtent("b9", 0, 10, ("s9",))]).start(Collector())
    clock.advance(0.5)  # the probe timeout
    assert registry.reads == 1
    with pytest.raises(NoReplicasAvailable, match="blob b9"):
        run(clock, reading, limit=10)


def test_a_move_resets_every_field_of_the_old_endpoint_and_keeps_the_rest_in_place(clock):
    """Field by field, so that a field added to ``NodeState`` later is
    reset by a move unless named in ``SURVIVES_MOVE`` (it was reset by
    hand, one assignment per field)."""
    pool = StoragePool(clock)
    pool.add("s1", "tcp:old:1", BindingStore("s1"))
    [node] = pool.nodes()
    assert {f.name for f in attrs.fields(NodeState)} >= SURVIVES_MOVE
    before = {}
    for i, field in enumerate(attrs.fields(NodeState)):
        # (A pending endpoint is dropped, its client closed: a real one.)
        if field.name not in ("name", "endpoint", "client", "pending"):
            value = object() if field.name not in SURVIVES_MOVE else f"kept {i}"
            setattr(node, field.name, value)
            before[field.name] = value
    new = BindingStore("s1")
    pool.move("s1", "tcp:new:2", new)
    [moved] = pool.nodes()
    assert moved is node
    fresh = NodeState("s1", "tcp:new:2", new, up=False, last_error=NOT_PROBED)
    for field in attrs.fields(NodeState):
        if field.name in SURVIVES_MOVE - {"name"}:
            assert getattr(node, field.name) is before[field.name], field.name
        else:
            assert getattr(node, field.name) == getattr(fresh, field.name), field.name


def test_every_lookup_waits_for_a_hung_registry_read_no_longer_than_the_probe_timeout(
    clock, cluster, registry, pool
):
    """A drain or a resume's fence looks a server up as a read does; they
    waited for the registry's answer, for ever on a hung catalog."""
    registry.answer = Deferred()  # the catalog does not answer
    first = pool.lookup(["s9"])  # a resume's fence, say
    clock.advance(0.3)
    second = pool.lookup(["s9"])  # a drain, sharing the read
    assert registry.reads == 1 and not first.called and not second.called
    clock.advance(0.2)  # the probe timeout, for the first
    assert first.called and not second.called
    clock.advance(0.3)
    assert second.called
    registry.answer.callback(None)  # it answers at last: nobody left waiting
    assert pool.lookup(["s9"]) is None  # not read again within the probe interval


def test_a_drain_of_a_server_unknown_here_fails_within_the_probe_timeout_on_a_hung_registry(
    clock, registry, pool
):
    registry.answer = Deferred()  # the catalog does not answer
    draining = ensureDeferred(drain(None, pool, None, "s9"))
    clock.advance(0.5)
    with pytest.raises(ValueError, match="unknown storage server 's9'"):
        run(clock, draining, limit=1)


def test_a_read_whose_only_replica_is_on_a_server_unknown_here_names_it_in_its_error(
    clock, registry, pool
):
    """The registry does not list s9 either: the read fails saying why
    (its error's reason was empty: "could be read: ")."""
    extent = [ReadExtent("b9", 0, 10, ("s9",), fallback=("s8",))]
    with pytest.raises(NoReplicasAvailable) as failed:
        run(clock, ReadStream(clock, pool, extent).start(Collector()))
    assert registry.reads == 1
    assert str(failed.value) == (
        "no replica of blob b9 could be read: "
        "s9: not in this front end's storage pool "
        "(not in the catalog's registry when it last read it); "
        "s8: not in this front end's storage pool "
        "(not in the catalog's registry when it last read it)"
    )


def test_lookups_that_gave_up_on_a_hung_registry_read_are_not_kept(clock, registry, pool):
    """Each waiter is forgotten at its timeout: a thousand reads of a
    replica on an unknown server during a hung catalog read held a
    thousand waiters until the read ended (if ever)."""
    registry.answer = Deferred()  # the catalog does not answer
    waits = [pool.lookup(["s9"]) for _ in range(1000)]
    assert registry.reads == 1 and len(pool._refreshing) == 1000
    clock.advance(0.5)  # the probe timeout
    assert all(w.called for w in waits)
    assert pool._refreshing == []  # the read still runs, nobody waits for it


def test_a_hung_registry_read_is_given_up_and_a_later_lookup_reads_again(
    clock, cluster, registry, pool
):
    """Before, no lookup started a read while one hung: a server
    registered since stayed unknown to reads until the catalog answered."""
    registry.answer = Deferred()  # the catalog does not answer
    hung = registry.answer
    pool.lookup(["s4"])
    clock.advance(9.0)
    registry.answer = None  # the catalog answers again
    registry.listed["s4"] = cluster.endpoint("s4")
    assert pool.lookup(["s4"]) is not None and registry.reads == 1  # still the hung one's
    clock.advance(1.0)  # its bound (STORAGE_IDLE_TIMEOUT, the longest a lookup waits)
    assert hung.called  # given up: cancelled
    assert pool.lookup(["s4"]).called and registry.reads == 2  # a fresh read, answered
    assert "s4" in pool.names()


def test_a_lookup_waits_as_long_as_it_asks(clock, registry, pool):
    """A resume's fence waits for the registry read as long as a slow
    server's (``STORAGE_IDLE_TIMEOUT``), a read the probe timeout."""
    registry.answer = Deferred()  # the catalog does not answer
    fence = pool.lookup(["s9"], wait=STORAGE_IDLE_TIMEOUT)
    read = pool.lookup(["s9"])
    clock.advance(0.5)
    assert read.called and not fence.called
    clock.advance(STORAGE_IDLE_TIMEOUT - 0.5)
    assert fence.called
