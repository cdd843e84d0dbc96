"""The pool binds the stores it uses (``wsfront.transfer.binding``): real
in-process storage servers on real stores and sockets.  First contact
binds; a store bound to another cluster is down and its client refuses
everything (delete included); a store that cannot bind (older) is used,
with one warning."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from tests.test_storage_cluster_binding import OURS, THEIRS, Server, put
from wsfront.transfer.pool import StoragePool
from wsstorage.errors import NodeUnavailable


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
