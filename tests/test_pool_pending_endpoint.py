"""A server the registry moves while the pool runs goes on at its old
endpoint until a probe of the new one passes (``StoragePool.move``: the
new one is *pending*), on the fake storage tier driven by a Clock.

Before, a move took the new endpoint at once and the server was down
until it answered: one front end's typo in ``--storage`` (which
re-registers the server for every front end) stopped writes to a working
server on every running front end.  Real processes:
``test_registry_follow_procs``."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.logger import formatEvent, globalLogPublisher

from tests.test_transfer_pool_and_reads import run, store_blob
from tests.transfer_env import Collector
from wsfront.transfer.binding import BIND_TIMEOUT
from wsfront.transfer.pool import NOT_PROBED, StoragePool, UnusableClient
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsstorage.errors import AuthenticationFailed
from wsstorage.records import Health
from wsstorage.testing import FakeStorageCluster


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def cluster(clock):
    return FakeStorageCluster(clock, ["s1", "s2"])


@pytest.fixture
def switched():
    """What the pool handed its owner at each switch: (name, old client)."""
    return []


@pytest.fixture
def pool(clock, cluster, switched):
    p = StoragePool(
        clock,
        probe_interval=1.0,
        probe_timeout=0.5,
        on_switch=lambda name, old: switched.append((name, old)),
    )
    for name in ("s1", "s2"):
        p.add(name, cluster.endpoint(name), cluster.client_factory(name, cluster.endpoint(name)))
    run(clock, p.start())
    yield p
    p.stop()


def node_of(pool: StoragePool, name: str):
    [node] = [n for n in pool.nodes() if n.name == name]
    return node


def probe_round(clock: task.Clock, pool: StoragePool) -> None:
    clock.advance(1.0)  # the probe interval: the looping probe runs
    run(clock, pool.probe_all())


def test_a_pending_endpoint_that_proves_is_switched_to(clock, cluster, pool, switched):
    old = pool.client("s2")
    moved = cluster.add_node("s2-moved")
    moved.freeze()  # its first probe hangs
    pool.move("s2", moved.endpoint, moved.client())
    assert pool.client("s2") is old and pool.endpoint("s2") == cluster.endpoint("s2")
    assert pool.registered("s2") == moved.endpoint
    assert pool.is_up("s2") and sorted(pool.choose(2)) == ["s1", "s2"]
    moved.thaw()
    probe_round(clock, pool)
    assert pool.endpoint("s2") == moved.endpoint and pool.client("s2") is not old
    assert pool.registered("s2") == moved.endpoint
    assert pool.is_up("s2") and node_of(pool, "s2").pending is None
    assert node_of(pool, "s2").free_bytes == moved.capacity  # its answer's
    assert switched == [("s2", old)]  # the old client, for the reads still on it
    data = b"at the new endpoint" * 50
    store_blob(clock, cluster, ["s2-moved"], "b2", data)
    sink = Collector()
    extent = [ReadExtent("b2", 0, len(data), ("s2",))]
    assert run(clock, ReadStream(clock, pool, extent).start(sink)) == len(data)
    assert sink.data == data


def test_a_pending_endpoint_that_never_proves_leaves_the_old_one_serving_writes(
    clock, cluster, pool, switched
):
    old = pool.client("s2")
    typo = cluster.add_node("s2-typo")
    typo.kill()  # nothing answers there
    pool.move("s2", typo.endpoint, typo.client())
    for _ in range(3):
        probe_round(clock, pool)
        assert pool.is_up("s2") and pool.client("s2") is old
        assert sorted(pool.choose(2)) == ["s1", "s2"]
    node = node_of(pool, "s2")
    assert node.last_error is None and node.endpoint == cluster.endpoint("s2")
    assert node.pending.probed and not node.pending.up
    assert "down" in node.pending.last_error
    assert switched == []
    # A write placed there goes to the old endpoint's store.
    writer = run(clock, pool.client("s2").write("w2", 1, 0, {}))
    writer.write(b"still written")
    run(clock, writer.commit())
    assert cluster.node("s2").blob_bytes("w2") == b"still written"


class Refusing:
    """A server at the new endpoint that refuses this front end's secret."""

    def health(self) -> Deferred:
        d: Deferred = Deferred()
        d.errback(AuthenticationFailed("the server refused our secret"))
        return d

    def close(self) -> Deferred:
        return succeed(None)


def test_a_pending_endpoint_refusing_our_secret_is_not_taken(clock, cluster, pool):
    pool.move("s2", "tcp:127.0.0.1:9", Refusing())
    probe_round(clock, pool)
    node = node_of(pool, "s2")
    assert pool.is_up("s2") and node.endpoint == cluster.endpoint("s2")
    assert node.pending.secret_refused and "secret" in node.pending.last_error
    assert not pool.secret_refused("s2")  # the server in use accepts it


def test_a_move_while_pending_replaces_the_pending_endpoint(clock, cluster, pool, switched):
    old = pool.client("s2")
    first = cluster.add_node("s2-first")
    first.freeze()
    first_client = first.client()
    pool.move("s2", first.endpoint, first_client)
    second = cluster.add_node("s2-second")
    second.freeze()
    pool.move("s2", second.endpoint, second.client())
    first.thaw()
    clock.advance(0)  # first's probe, still held, answers now: nobody's news
    assert first_client._closed  # the superseded pending client is closed
    assert pool.registered("s2") == second.endpoint
    assert pool.client("s2") is old and switched == []
    second.thaw()
    probe_round(clock, pool)
    assert pool.endpoint("s2") == second.endpoint and switched == [("s2", old)]
    assert pool.is_up("s2")


def test_the_registry_naming_the_current_endpoint_again_drops_the_pending_one(
    clock, cluster, pool, switched
):
    typo = cluster.add_node("s2-typo")
    typo.freeze()
    typo_client = typo.client()
    pool.move("s2", typo.endpoint, typo_client)
    pool.unpend("s2")
    clock.advance(0)
    assert typo_client._closed and node_of(pool, "s2").pending is None
    assert pool.registered("s2") == cluster.endpoint("s2")
    typo.thaw()
    probe_round(clock, pool)
    assert pool.endpoint("s2") == cluster.endpoint("s2") and switched == []


def test_an_old_endpoint_down_and_a_new_one_that_proves_switches(clock, cluster, pool, switched):
    cluster.node("s2").kill()  # its server moved: nothing at the old address
    probe_round(clock, pool)
    assert not pool.is_up("s2")
    moved = cluster.add_node("s2-moved")
    moved.kill()  # registered before its server listens there
    pool.move("s2", moved.endpoint, moved.client())
    probe_round(clock, pool)
    node = node_of(pool, "s2")
    assert not pool.is_up("s2") and node.pending is not None and node.pending.probed
    moved.revive()
    probe_round(clock, pool)
    assert pool.is_up("s2") and pool.endpoint("s2") == moved.endpoint
    assert sorted(pool.choose(2)) == ["s1", "s2"] and len(switched) == 1


OURS = "c" * 32
THEIRS = "d" * 32


class Store:
    """A store's client answering health at once, bound to ``bound``."""

    def __init__(self, name: str, bound: str | None) -> None:
        self.name = name
        self.bound = bound
        self.cluster_id: str | None = None

    def health(self) -> Deferred:
        return succeed(Health(self.name, 10**12, 10**12, 0, 0, 1, cluster_id=self.bound))

    def close(self) -> Deferred:
        return succeed(None)


def test_a_pending_endpoint_whose_store_is_another_clusters_is_not_taken(clock):
    pool = StoragePool(clock, probe_timeout=0.5, cluster_id=OURS)
    old = Store("s1", OURS)
    pool.add("s1", "tcp:old:1", old)
    run(clock, pool.start())
    pool.move("s1", "tcp:new:2", Store("s1", THEIRS))
    clock.advance(0)
    [node] = pool.nodes()
    assert pool.is_up("s1") and pool.client("s1") is old and node.foreign is None
    assert node.pending.foreign == THEIRS and "another cluster" in node.pending.last_error
    assert node.last_error is None and node.pending.last_error != NOT_PROBED
    pool.stop()


class Unbound(Store):
    """An unbound store whose bind answers when the test says."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.binds: list[Deferred] = []

    def can_bind(self) -> Deferred:
        return succeed(True)

    def bind_cluster(self, cluster_id: str) -> Deferred:
        d: Deferred = Deferred()

        def bound(result):
            self.bound = result
            return result

        self.binds.append(d.addCallback(bound))
        return d


def test_a_pending_endpoint_is_taken_once_its_stores_bind_is_sent(clock):
    """A bind still running is sent: the store is used unbound meanwhile,
    as at a probe of the endpoint in use; its outcome is the next probe's."""
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, cluster_id=OURS)
    old = Store("s1", OURS)
    pool.add("s1", "tcp:old:1", old)
    run(clock, pool.start())
    new = Unbound("s1")
    pool.move("s1", "tcp:new:2", new)
    clock.advance(0.5)  # the probe waits for the bind no longer
    [node] = pool.nodes()
    assert len(new.binds) == 1 and pool.client("s1") is new and node.pending is None
    assert node.binding is None and not node.bound  # the bind's outcome is not known yet
    new.binds[0].callback(OURS)
    assert not node.bound  # its outcome went to the discarded pending state
    clock.advance(0.5)
    run(clock, pool.probe_all())
    assert pool.client("s1") is new and node.bound and node.binding is None
    assert pool.of_this_cluster("s1") and pool.is_up("s1") and len(new.binds) == 1
    pool.stop()


class Dead:
    """A store's client at an address nothing answers at any more."""

    def health(self) -> Deferred:
        d: Deferred = Deferred()
        d.errback(ConnectionRefusedError("connection refused"))
        return d

    def close(self) -> Deferred:
        return succeed(None)


def test_a_server_whose_new_stores_bind_hangs_comes_up_at_its_new_endpoint(clock):
    """Its old address dead and the new store's bind hanging (an fsync
    stuck past BIND_TIMEOUT): before, every probe of the new endpoint
    failed ("binding ... takes longer than a probe"), each bind timed out
    and the next probe started another: the server stayed down for good."""
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, cluster_id=OURS)
    pool.add("s1", "tcp:old:1", Dead())
    run(clock, pool.start())
    assert not pool.is_up("s1")
    new = Unbound("s1")
    pool.move("s1", "tcp:new:2", new)
    clock.advance(0.5)
    [node] = pool.nodes()
    assert pool.client("s1") is new and pool.is_up("s1") and node.pending is None
    for _ in range(int(BIND_TIMEOUT) + 5):  # past the bind's timeout, and the next one's start
        probe_round(clock, pool)
        assert pool.is_up("s1") and pool.endpoint("s1") == "tcp:new:2"
        assert pool.choose(1) == ["s1"]
    # The pending state's bind, the node's own at its first probe, and
    # the node's again once that one timed out: each tried in turn.
    assert len(new.binds) == 3 and not node.bound
    new.binds[-1].callback(OURS)
    assert node.bound and node.binding is None
    pool.stop()


@pytest.fixture
def logged():
    seen: list[tuple[str, str]] = []

    def observe(event) -> None:
        level = event.get("log_level")
        if level is not None:
            seen.append((level.name, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_an_on_switch_hook_that_fails_leaves_the_server_up_at_its_new_endpoint(clock, logged):
    """The hook is the owner's (it keeps the old client for the reads on
    it): run last, its failure logged.  Before, it ran before the answer
    was recorded, and a failure left the server down with a stale error,
    swallowed by ``probe_all``'s DeferredList without a word."""

    def broken(name, old):
        raise RuntimeError("the owner's hook broke")

    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, on_switch=broken)
    pool.add("s1", "tcp:old:1", Dead())
    run(clock, pool.start())
    new = Store("s1", None)
    pool.move("s1", "tcp:new:2", new)
    [node] = pool.nodes()
    assert pool.client("s1") is new and pool.is_up("s1") and node.last_error is None
    assert node.free_bytes == 10**12 and pool.choose(1) == ["s1"]
    assert any(
        level == "critical" and "handing storage server s1's old client over" in text
        for level, text in logged
    )
    pool.stop()


def test_a_cluster_the_pending_stores_was_seen_bound_to_is_kept_at_the_switch(clock):
    """Its probes saw the new store bound to another cluster; the operator
    bound it to this one (``--cluster``), and it was taken.  Found unbound
    later (its CLUSTER file deleted), it is not bound automatically: what
    the pending state learned is the server's.  It was dropped at the
    switch, and the store bound again on its own."""
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, cluster_id=OURS)
    pool.add("s1", "tcp:old:1", Store("s1", OURS))
    run(clock, pool.start())
    new = Unbound("s1")
    new.bound = THEIRS
    pool.move("s1", "tcp:new:2", new)
    clock.advance(0)
    [node] = pool.nodes()
    assert node.pending.seen_foreign == THEIRS and node.seen_foreign is None
    new.bound = OURS  # bound to this cluster on purpose
    probe_round(clock, pool)
    assert pool.client("s1") is new and pool.is_up("s1") and node.seen_foreign == THEIRS
    new.bound = None  # its CLUSTER file deleted
    probe_round(clock, pool)
    assert new.binds == [] and not pool.is_up("s1") and node.foreign == "unbound"
    pool.stop()


def test_a_move_to_an_unusable_endpoint_is_logged_once(clock, cluster, pool, logged):
    """Before, once as an error by the move and again as a warning by its
    first probe's failure, for the same reason."""
    reason = "bad endpoint 'tcp:nowhere': no port"
    pool.move("s2", "tcp:nowhere", UnusableClient(reason), reason)
    for _ in range(3):
        probe_round(clock, pool)
    said = [(level, text) for level, text in logged if reason in text]
    assert len(said) == 1 and said[0][0] == "error", said
    node = node_of(pool, "s2")
    assert pool.is_up("s2") and node.pending.last_error == reason and node.pending.probed


def test_a_pending_probe_answering_while_the_pool_closes_switches_nothing(
    clock, cluster, pool, switched
):
    """The front end's stop closes every client, the pending ones too: a
    probe answering meanwhile must not make a closing client the one in
    use (nor hand the old one over, to be retired after its close)."""
    old = pool.client("s2")
    moved = cluster.add_node("s2-moved")
    moved.freeze()
    pool.move("s2", moved.endpoint, moved.client())
    pool.closing = True  # stopping
    moved.thaw()
    clock.advance(0)
    assert pool.client("s2") is old and switched == []


class Held(Store):
    """A store whose health answers when the test says."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.answers: list[Deferred] = []
        self.binds: list[Deferred] = []

    def health(self) -> Deferred:
        d: Deferred = Deferred()
        self.answers.append(d)
        return d

    def can_bind(self) -> Deferred:
        return succeed(True)

    def bind_cluster(self, cluster_id: str) -> Deferred:
        d: Deferred = Deferred()
        self.binds.append(d)
        return d


def moved_twice(clock, first) -> tuple[StoragePool, Store]:
    """A pool bound to OURS whose s1 moved to ``first``, then, before that
    was taken, to an endpoint where nothing answers."""
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, cluster_id=OURS)
    old = Store("s1", OURS)
    pool.add("s1", "tcp:old:1", old)
    run(clock, pool.start())
    pool.move("s1", "tcp:first:2", first)
    pool.move("s1", "tcp:second:3", Dead())
    return pool, old


def test_a_replaced_pending_endpoints_late_answer_binds_nothing(clock):
    """Its store is no longer the server's (a typo, say): bound to this
    cluster on the strength of a dropped probe, it would be another's."""
    first = Held("s1")
    pool, old = moved_twice(clock, first)
    health = Health("s1", 10**12, 10**12, 0, 0, 1, cluster_id=None)
    first.answers[0].callback(health)
    clock.advance(0.5)
    assert first.binds == [] and pool.client("s1") is old
    pool.stop()


def test_a_replaced_pending_endpoint_whose_bind_ends_is_not_switched_to(clock):
    """Its probe was waiting for its store's bind when the registry moved
    the server again: the bind's end must not make it the one in use."""
    first = Unbound("s1")
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5, cluster_id=OURS)
    old = Store("s1", OURS)
    pool.add("s1", "tcp:old:1", old)
    run(clock, pool.start())
    pool.move("s1", "tcp:first:2", first)
    assert len(first.binds) == 1  # the probe waits for it (at most the probe timeout)
    pool.move("s1", "tcp:second:3", Dead())
    first.binds[0].callback(OURS)
    [node] = pool.nodes()
    assert pool.client("s1") is old and pool.registered("s1") == "tcp:second:3"
    assert node.pending.endpoint == "tcp:second:3"
    pool.stop()


def test_a_replaced_pending_endpoints_late_failure_is_not_reported(clock, logged):
    first = Held("s1")
    pool, old = moved_twice(clock, first)
    first.answers[0].errback(ConnectionRefusedError("connection refused"))
    assert not [text for _level, text in logged if "tcp:first:2" in text]
    assert pool.client("s1") is old and pool.is_up("s1")
    pool.stop()
