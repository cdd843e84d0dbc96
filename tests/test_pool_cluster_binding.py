"""The pool binds the stores it uses (``wsfront.transfer.binding``): real
in-process storage servers on real stores and sockets.  First contact
binds; a store bound to another cluster is down and its client refuses
everything (delete included); a store that cannot bind (older) is used,
with one warning."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from tests.test_storage_cluster_binding import OURS, THEIRS, Server, put
from wsfront.transfer.pool import StoragePool
from wsstorage.errors import NodeUnavailable

pytest_plugins = ["tests.catalog_fixtures"]


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


@pytest_twisted.ensureDeferred
async def test_first_contact_binds_and_another_cluster_finds_it_foreign(tmp_path, logged):
    server = await Server(tmp_path / "s1").start()
    try:
        ours = StoragePool(reactor, cluster_id=OURS)
        ours.add("s1", "ep", server.client())
        await ours.probe_all()
        [node] = ours.nodes()
        assert node.up and node.foreign is None and node.bound
        assert server.store.cluster_id == OURS
        await put(ours.client("s1"), "b1")

        theirs = StoragePool(reactor, cluster_id=THEIRS)
        theirs.add("s1", "ep", server.client())
        await theirs.probe_all()
        [node] = theirs.nodes()
        assert not node.up and node.foreign == OURS
        assert not theirs.is_up("s1") and theirs.choose(1) == []
        for op in (lambda c: c.delete("b1"), lambda c: c.list_blobs(), lambda c: c.stat("b1")):
            with pytest.raises(NodeUnavailable, match="bound to another cluster"):
                await op(theirs.client("s1"))
        assert (await ours.client("s1").stat("b1")).size == 1000
        errors = [t for lvl, t in logged if lvl == "error" and "another cluster" in t]
        assert len(errors) == 1 and OURS in errors[0] and THEIRS in errors[0]
        await theirs.probe_all()  # said once, not at every probe
        assert len([t for lvl, t in logged if lvl == "error" and "another cluster" in t]) == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_server_that_cannot_bind_is_used_with_one_warning(tmp_path, logged):
    server = await Server(tmp_path / "s1").start()
    server.factory.ops = tuple(o for o in server.factory.ops if o != "bind")
    try:
        pool = StoragePool(reactor, cluster_id=OURS)
        pool.add("s1", "ep", server.client())
        await pool.probe_all()
        await pool.probe_all()
        [node] = pool.nodes()
        assert node.up and node.foreign is None and node.unprotected
        warnings = [t for lvl, t in logged if lvl == "warn" and "predates cluster binding" in t]
        assert len(warnings) == 1
        assert server.store.cluster_id is None
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_store_rebound_since_the_last_probe_refuses_the_stale_delete(tmp_path):
    """The pool's view is a probe old.  The store was rebound meanwhile
    (its CLUSTER removed, the server restarted on the same port, another
    catalog's front end bound it): a delete decided on the old view, as
    GC's would be, is refused by the store, and the next probe shows the
    server foreign."""
    from wsstorage.diskformat import CLUSTER_FILE
    from wsstorage.errors import WrongCluster

    server = await Server(tmp_path / "s1").start()
    port = server.port.getHost().port
    client = server.client()
    pool = StoragePool(reactor, cluster_id=OURS)
    pool.add("s1", "ep", client)
    try:
        await pool.probe_all()
        await put(pool.client("s1"), "b1")
        await server.stop(clients=False)
        (tmp_path / "s1" / CLUSTER_FILE).unlink()
        server = await Server(tmp_path / "s1").start(port)
        await server.client().bind_cluster(THEIRS)
        assert pool.is_up("s1")  # not probed since: the stale view
        with pytest.raises(WrongCluster):
            await pool.client("s1").delete("b1")
        assert (await server.clients[0].stat("b1")).size == 1000
        await pool.probe_all()
        assert not pool.is_up("s1") and pool.nodes()[0].foreign == THEIRS
    finally:
        await client.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_store_whose_disk_is_full_is_used_unbound_and_bound_once_there_is_room(
    tmp_path, logged
):
    """Its CLUSTER cannot be written: the server still serves (a full disk
    serves reads), one warning, and the bind is tried at each probe until
    it works."""
    from twisted.internet.endpoints import serverFromString

    from tests.test_storage_cluster_binding import SECRET
    from wsstorage.blobstore import BlobStore
    from wsstorage.client import StorageClient
    from wsstorage.fsshims import NoRoomFileSystem
    from wsstorage.server import StorageServerFactory

    fs = NoRoomFileSystem()
    store = BlobStore.open(tmp_path / "s1", fs=fs)
    factory = StorageServerFactory(reactor, store, "s1", SECRET)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    client = StorageClient(reactor, "s1", f"tcp:127.0.0.1:{port.getHost().port}", SECRET)
    try:
        fs.full = True
        pool = StoragePool(reactor, cluster_id=OURS)
        pool.add("s1", "ep", client)
        await pool.probe_all()
        await pool.probe_all()
        [node] = pool.nodes()
        assert node.up and node.foreign is None and not node.bound
        assert store.cluster_id is None
        warned = [t for lvl, t in logged if lvl == "warn" and "could not bind" in t]
        assert len(warned) == 1 and "No space left" in warned[0]
        fs.full = False
        await pool.probe_all()
        assert node.bound and store.cluster_id == OURS
    finally:
        await client.close()
        await port.stopListening()
        store.close()


@pytest_twisted.ensureDeferred
async def test_a_store_unbound_since_is_bound_again_with_a_warning(tmp_path, logged):
    from wsstorage.diskformat import CLUSTER_FILE

    server = await Server(tmp_path / "s1").start()
    port = server.port.getHost().port
    client = server.client()
    pool = StoragePool(reactor, cluster_id=OURS)
    pool.add("s1", "ep", client)
    try:
        await pool.probe_all()
        await server.stop(clients=False)
        (tmp_path / "s1" / CLUSTER_FILE).unlink()
        server = await Server(tmp_path / "s1").start(port)
        assert server.store.cluster_id is None
        await pool.probe_all()  # finds the pooled connection cut by the restart
        await pool.probe_all()
        assert pool.is_up("s1") and server.store.cluster_id == OURS
        assert any(lvl == "warn" and "was unbound since" in t for lvl, t in logged)
    finally:
        await client.close()
        await server.stop()


async def _restart_unbound(server: Server, path) -> Server:
    """Stop ``server``, delete its CLUSTER file, start it on the same port
    (the clients of the pools under test outlive the restart)."""
    from wsstorage.diskformat import CLUSTER_FILE

    port = server.port.getHost().port
    await server.stop(clients=False)
    (path / CLUSTER_FILE).unlink()
    return await Server(path).start(port)


@pytest_twisted.ensureDeferred
async def test_a_store_seen_foreign_that_comes_back_unbound_is_not_taken(tmp_path, logged):
    """Bound to another cluster when this front end saw it, then unbound
    (its CLUSTER deleted, its data restored from an old copy): never bound
    automatically, an error says how to bind it on purpose, and nothing
    of it is used, deletes included."""
    server = await Server(tmp_path / "s1").start()
    theirs = server.client()
    await theirs.bind_cluster(THEIRS)
    await put(theirs, "b1")
    client = server.client()
    pool = StoragePool(reactor, cluster_id=OURS)
    pool.add("s1", "ep", client)
    try:
        await pool.probe_all()
        assert pool.nodes()[0].foreign == THEIRS
        server = await _restart_unbound(server, tmp_path / "s1")
        await pool.probe_all()  # finds the pooled connection cut by the restart
        await pool.probe_all()
        await pool.probe_all()
        [node] = pool.nodes()
        assert server.store.cluster_id is None
        assert not node.up and node.foreign is not None and not pool.of_this_cluster("s1")
        with pytest.raises(NodeUnavailable):
            await pool.client("s1").delete("b1")
        assert (await server.client().stat("b1")).size == 1000
        refused = [t for lvl, t in logged if lvl == "error" and "not bound to this cluster" in t]
        assert len(refused) == 1 and THEIRS in refused[0] and f"--cluster {OURS}" in refused[0]
    finally:
        await client.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_non_empty_store_the_catalog_knows_nothing_of_is_not_bound(
    tmp_path, logged, catalog
):
    """An unbound store holding blobs of which the catalog records no
    replica (another cluster's, never bound) is left alone: not bound, not
    used; an upgraded store (blobs the catalog knows) is bound."""
    strange = await Server(tmp_path / "s1").start()
    known = await Server(tmp_path / "s2").start()
    await put(strange.client(), "b1")
    await put(known.client(), "b2")
    await catalog.register_node("s2", "ep")
    await catalog.add_blob("b2", ["s2"], 1)
    pool = StoragePool(reactor, cluster_id=OURS, knows_node=catalog.has_replicas_on)
    pool.add("s1", "ep", strange.client())
    pool.add("s2", "ep", known.client())
    try:
        await pool.probe_all()
        await pool.probe_all()
        s1, s2 = pool.nodes()
        assert strange.store.cluster_id is None and not s1.up and s1.foreign is not None
        assert not pool.of_this_cluster("s1")
        with pytest.raises(NodeUnavailable):
            await pool.client("s1").delete("b1")
        refused = [t for lvl, t in logged if lvl == "error" and "not bound to this cluster" in t]
        assert len(refused) == 1 and "holds 1 blobs" in refused[0]
        assert f"--cluster {OURS}" in refused[0]
        assert known.store.cluster_id == OURS and s2.up and pool.of_this_cluster("s2")
    finally:
        await strange.stop()
        await known.stop()


@pytest_twisted.ensureDeferred
async def test_the_operator_binds_a_refused_store_with_wsstorage_cluster(tmp_path):
    """The deliberate bind: the storage server started with ``--cluster``
    (``start_storage_server(cluster=...)``) binds its store before serving,
    and the pool then uses it; a store bound to another cluster is refused
    the start."""
    from tests.test_storage_cluster_binding import SECRET
    from wsstorage.client import StorageClient
    from wsstorage.errors import WrongCluster
    from wsstorage.service import start_storage_server

    server = await Server(tmp_path / "s1").start()
    await put(server.client(), "b1")
    port = server.port.getHost().port
    await server.stop()

    async def start(cluster):
        return await start_storage_server(
            reactor, f"tcp:{port}:interface=127.0.0.1", str(tmp_path / "s1"), "s1", SECRET,
            cluster=cluster,
        )  # fmt: skip

    running = await start(OURS)
    client = StorageClient(reactor, "s1", f"tcp:127.0.0.1:{port}", SECRET)
    pool = StoragePool(reactor, cluster_id=OURS, knows_node=lambda name: defer.succeed(False))
    pool.add("s1", "ep", client)
    try:
        await pool.probe_all()
        [node] = pool.nodes()
        assert node.up and node.foreign is None and pool.of_this_cluster("s1")
        assert (await pool.client("s1").stat("b1")).size == 1000
    finally:
        await client.close()
        await running.stop()
    with pytest.raises(WrongCluster):
        await start(THEIRS)


class _FullDiskServer:
    """A storage server whose disk takes no write (its CLUSTER cannot be
    written: every bind fails) until ``fs.full`` is cleared."""

    async def start(self, path) -> _FullDiskServer:
        from twisted.internet.endpoints import serverFromString

        from tests.test_storage_cluster_binding import SECRET
        from wsstorage.blobstore import BlobStore
        from wsstorage.client import StorageClient
        from wsstorage.fsshims import NoRoomFileSystem
        from wsstorage.server import StorageServerFactory

        self.fs = NoRoomFileSystem()
        self.store = BlobStore.open(path, fs=self.fs)
        factory = StorageServerFactory(reactor, self.store, "s1", SECRET)
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"
        self.client = StorageClient(reactor, "s1", endpoint, SECRET)
        self.other = StorageClient(reactor, "s1", endpoint, SECRET)
        await put(self.other, "b1")
        self.fs.full = True
        self.pool = StoragePool(reactor, cluster_id=OURS)
        self.pool.add("s1", "ep", self.client)
        await self.pool.probe_all()
        [node] = self.pool.nodes()
        assert node.up and not node.bound and self.store.cluster_id is None
        return self

    async def stop(self) -> None:
        await self.client.close()
        await self.other.close()
        await self.port.stopListening()
        self.store.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_bind_still_names_the_cluster_in_deletes(tmp_path):
    """The bind failed (a full disk): the store is used, but its deletes
    name this cluster from the pool's creation, so a store another cluster
    bound meanwhile refuses them."""
    from wsstorage.errors import WrongCluster

    s = await _FullDiskServer().start(tmp_path / "s1")
    try:
        s.fs.full = False
        await s.other.bind_cluster(THEIRS)  # another cluster's front end, before our next probe
        with pytest.raises(WrongCluster):
            await s.pool.client("s1").delete("b1")
        assert (await s.other.stat("b1")).size == 1000
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_gc_sweeps_no_orphan_on_a_store_whose_bind_failed(tmp_path):
    """Not bound to this cluster (yet): another cluster may bind it, and
    its blobs are not this catalog's to judge; neither GC nor fsck --fix
    (which sweeps through GC) lists it for orphans."""
    from wsfront.maintenance.gc import GarbageCollector

    class NoCatalog:  # a sweep that listed s1 would ask it about each blob
        def __getattr__(self, name):
            raise AssertionError(f"the catalog was asked ({name}): s1 was swept")

    s = await _FullDiskServer().start(tmp_path / "s1")
    try:
        stats = await GarbageCollector(reactor, NoCatalog(), s.pool).sweep(grace=0.0)
        assert stats["orphans_deleted"] == 0
        assert (await s.other.stat("b1")).size == 1000
        s.fs.full = False
        await s.pool.probe_all()
        assert s.pool.nodes()[0].bound and s.pool.of_this_cluster("s1")
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_a_bind_that_never_answers_holds_no_probe_past_its_timeout(tmp_path):
    """A hung disk: the store's bind blocks (its fsync never returns).
    The probe waits for it at most the probe timeout (the pool's clock,
    advanced here by hand), then completes; the bind ends on its own."""
    import threading

    from twisted.internet import task

    server = await Server(tmp_path / "s1").start()
    entered = defer.Deferred()
    release = threading.Event()
    bind = server.store.bind_cluster

    def hung_bind(cluster_id):
        reactor.callFromThread(entered.callback, None)
        release.wait()
        return bind(cluster_id)

    server.store.bind_cluster = hung_bind
    clock = task.Clock()
    pool = StoragePool(clock, probe_timeout=2.0, cluster_id=OURS)
    pool.add("s1", "ep", server.client())
    try:
        probed = pool.probe_all()
        await entered
        assert not probed.called
        clock.advance(2.0)
        assert probed.called, "the probe waited for the hung bind past its timeout"
        [node] = pool.nodes()
        assert node.up and not node.bound and not pool.of_this_cluster("s1")
        again = pool.probe_all()  # the bind runs on: not waited for, not sent twice
        await again
        release.set()
        await node.binding
        assert node.bound and server.store.cluster_id == OURS
    finally:
        release.set()
        await server.stop()
