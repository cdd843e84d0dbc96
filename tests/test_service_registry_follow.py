"""The front end's side of following the storage registry while running
(``FrontendService.refresh_registry``, ``record_node_health``) on a real
catalog (SQLite and PostgreSQL), with reads of it that answer when the
test says: the races between a read of the registry and a server's move
that real processes hit only now and then."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed

from wsfront.config import FrontendConfig
from wsfront.service import FrontendService
from wsfront.transfer.pool import StoragePool
from wsstorage.errors import NodeUnavailable
from wsstorage.records import Health

pytest_plugins = ["tests.catalog_fixtures"]

OLD = "tcp:127.0.0.1:7001"
NEW = "tcp:127.0.0.1:7101"


class Client:
    """A storage client nothing is asked of (the pool is not started)."""

    def close(self) -> Deferred:
        return succeed(None)


class HeldReads:
    """The catalog, each ``list_nodes`` answer held until ``release``:
    ``read(i)`` fires once the i-th read itself is done."""

    def __init__(self, catalog) -> None:
        self._catalog = catalog
        self._reads: list[tuple[Deferred, Deferred]] = []
        self._snapshots: list = []

    def __getattr__(self, name: str):
        return getattr(self._catalog, name)

    def list_nodes(self) -> Deferred:
        read = self._catalog.list_nodes()
        read.addCallback(self._snapshots.append)
        answer: Deferred = Deferred()
        self._reads.append((read, answer))
        return answer

    def read(self, i: int) -> Deferred:
        return self._reads[i][0]

    def release(self, i: int) -> None:
        self._reads[i][1].callback(self._snapshots[i])


def front_end(catalog) -> FrontendService:
    """A front end, not started: ``refresh_registry`` and
    ``record_node_health`` need only its catalog and pool."""
    config = FrontendConfig(
        name="fe-a", catalog="sqlite:///unused", storage=(), replicas=1, secret=b"s" * 32
    )
    fe = FrontendService(reactor, config, client_factory=lambda name, endpoint: Client())
    fe.catalog = HeldReads(catalog)
    fe.pool = StoragePool(reactor, on_switch=fe._retire)
    return fe


@pytest_twisted.ensureDeferred
async def test_a_registry_read_answering_after_a_later_one_does_not_move_a_server_back(catalog):
    await catalog.register_node("s1", OLD)
    fe = front_end(catalog)
    fe.pool.add("s1", OLD, Client())
    first = fe.refresh_registry()  # a record round's read: s1 at OLD
    await fe.catalog.read(0)
    await catalog.register_node("s1", NEW)  # moved, by another front end
    second = fe.refresh_registry()  # a read's lookup: s1 at NEW
    await fe.catalog.read(1)
    fe.catalog.release(1)
    await second
    assert fe.pool.endpoint("s1") == NEW
    fe.catalog.release(0)  # the older snapshot answers last
    await first
    assert fe.pool.endpoint("s1") == NEW


@pytest_twisted.ensureDeferred
async def test_a_probe_of_an_address_moved_since_the_registry_was_read_is_not_recorded(catalog):
    """The front end read the registry (s1 at OLD, as its pool has it),
    then another front end moved s1 and recorded it up at NEW: this one's
    "down" for OLD must not overwrite that (``wsfs status`` flapping)."""
    await catalog.register_node("s1", OLD)
    fe = front_end(catalog)
    fe.pool.add("s1", OLD, Client())
    [node] = fe.pool.nodes()
    node.up, node.probed, node.last_error = False, True, "connection refused"
    recording = fe.record_node_health()
    await fe.catalog.read(0)
    await catalog.register_node("s1", NEW)
    await catalog.set_node_health("s1", "up", 20, 100, 9.0, None, NEW)
    fe.catalog.release(0)
    await recording
    [s1] = await catalog.list_nodes()
    assert (s1.endpoint, s1.state, s1.last_error, s1.seen_at) == (NEW, "up", None, 9.0)


class Retirable(Client):
    def __init__(self) -> None:
        self.retired = False
        self.closed = 0

    def retire(self) -> None:
        self.retired = True

    def close(self) -> Deferred:
        self.closed += 1
        return succeed(None)


@pytest_twisted.ensureDeferred
async def test_a_server_moved_twice_keeps_one_retired_client(catalog):
    """Each move retires the old client (no idle connection kept); the one
    before it is closed: a server moving again and again does not pile up
    clients, and sockets, until the front end stops."""
    await catalog.register_node("s1", OLD)
    fe = front_end(catalog)
    first = Retirable()
    fe.pool.add("s1", OLD, first)
    for i, endpoint in enumerate((NEW, "tcp:127.0.0.1:7201")):
        await catalog.register_node("s1", endpoint)
        reading = fe.refresh_registry()
        await fe.catalog.read(i)
        fe.catalog.release(i)
        await reading
        assert fe.pool.endpoint("s1") == endpoint
    assert first.retired and first.closed == 1
    assert list(fe._retired_clients) == ["s1"]


class Answering(Client):
    """A server that answers health probes."""

    def health(self) -> Deferred:
        return succeed(Health("s1", 7 << 30, 10 << 30, 0, 0, 1))


class Refusing(Client):
    """Nothing answers at this endpoint (a typo)."""

    def health(self) -> Deferred:
        return fail(NodeUnavailable("Connection refused"))


@pytest_twisted.ensureDeferred
async def test_a_registered_endpoint_that_is_not_taken_is_recorded_down_naming_the_one_used(
    catalog,
):
    """Another front end's typo moved s1 to an endpoint where nothing
    answers: this front end goes on using OLD, and records the probe of
    the endpoint the registry names (``wsfs status`` shows it), saying
    which one it still uses; once the registry names OLD again, OLD's."""
    await catalog.register_node("s1", OLD)
    fe = front_end(catalog)
    fe.catalog = catalog
    fe._client_factory = lambda name, endpoint: Refusing()
    fe.pool.add("s1", OLD, Answering())
    await fe.pool.start()
    try:
        await catalog.register_node("s1", NEW)
        await fe.record_node_health()
        assert fe.pool.endpoint("s1") == OLD and fe.pool.is_up("s1")
        [s1] = await catalog.list_nodes()
        assert (s1.endpoint, s1.state, s1.free_bytes) == (NEW, "down", None)
        assert s1.last_error == f"Connection refused (not taken: this front end still uses {OLD})"
        await catalog.register_node("s1", OLD)  # the typo mended
        await fe.record_node_health()
        assert fe.pool.registered("s1") == OLD
        [s1] = await catalog.list_nodes()
        assert (s1.endpoint, s1.state, s1.free_bytes, s1.last_error) == (OLD, "up", 7 << 30, None)
    finally:
        fe.pool.stop()


class RetireFails(Retirable):
    def retire(self) -> None:
        raise RuntimeError("retire broke")


@pytest_twisted.ensureDeferred
async def test_an_old_client_whose_retire_fails_is_still_closed_at_stop(catalog):
    """``_retire`` keeps the old client before anything that may fail:
    the server is up at its new endpoint, and the old client closed at
    stop, not left open."""
    await catalog.register_node("s1", OLD)
    fe = front_end(catalog)
    fe.catalog = catalog
    fe._client_factory = lambda name, endpoint: Answering()
    old = RetireFails()
    fe.pool.add("s1", OLD, old)
    await fe.pool.start()
    await catalog.register_node("s1", NEW)
    await fe.refresh_registry()
    assert fe.pool.endpoint("s1") == NEW and fe.pool.is_up("s1")
    fe.catalog = None  # the fixture's, closed by it
    await fe.stopService()
    assert old.closed == 1


class RefusingCounted(Refusing):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> Deferred:
        self.closed += 1
        return succeed(None)


@pytest_twisted.ensureDeferred
async def test_a_pending_endpoints_client_is_closed_at_stop(catalog):
    """An endpoint the registry names that was never taken (a typo) has a
    client of its own, opened for its probes: the stop closes it too."""
    await catalog.register_node("s1", OLD)
    fe = front_end(catalog)
    fe.catalog = catalog
    typo = RefusingCounted()
    fe._client_factory = lambda name, endpoint: typo
    used = Retirable()
    fe.pool.add("s1", OLD, used)
    await fe.pool.start()
    await catalog.register_node("s1", NEW)
    await fe.refresh_registry()
    assert fe.pool.endpoint("s1") == OLD and fe.pool.registered("s1") == NEW
    fe.catalog = None  # the fixture's, closed by it
    await fe.stopService()
    assert (used.closed, typo.closed) == (1, 1)
