"""A store is bound to at most one cluster (``wsstorage.binding``): the
``bind`` op over a real server on 127.0.0.1 and a real store on disk binds
an unbound store durably, confirms the same cluster, refuses another;
health names the binding; a delete naming another cluster is refused; the
binding survives a restart; a server that does not list ``bind`` (older)
leaves the client unbound (None) and its deletes as they were."""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from wsstorage.blobstore import BlobStore
from wsstorage.client import StorageClient
from wsstorage.diskformat import CLUSTER_FILE, FormatError
from wsstorage.errors import BadRequest, BlobNotFound, WrongCluster
from wsstorage.server import StorageServerFactory

SECRET = b"binding-test-secret-0123456789abcdef"
OURS = "a" * 32
THEIRS = "b" * 32


class Server:
    """One in-process storage server on a real store and a real port."""

    def __init__(self, path) -> None:
        self.path = path
        self.store = BlobStore.open(path)
        self.factory = StorageServerFactory(reactor, self.store, "s1", SECRET)
        self.port = None
        self.clients: list[StorageClient] = []

    async def start(self, port: int = 0) -> Server:
        ep = serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
        self.port = await ep.listen(self.factory)
        return self

    def client(self) -> StorageClient:
        c = StorageClient(reactor, "s1", f"tcp:127.0.0.1:{self.port.getHost().port}", SECRET)
        self.clients.append(c)
        return c

    async def stop(self, clients: bool = True) -> None:
        """Stop serving and close the store; ``clients``: close ours too
        (False: a test's client outlives the restart, as a front end's)."""
        if clients:
            for c in self.clients:
                await c.close()
        await self.port.stopListening()
        for conn in list(self.factory.connections):
            conn.transport.abortConnection()
        self.store.close()


async def put(client: StorageClient, blob_id: str) -> None:
    await client.put(blob_id, 1, {}, b"x" * 1000)


@pytest_twisted.ensureDeferred
async def test_bind_binds_once_confirms_the_same_and_refuses_another(tmp_path) -> None:
    server = await Server(tmp_path / "s1").start()
    try:
        c = server.client()
        assert (await c.health()).cluster_id is None
        assert await c.bind_cluster(OURS) == OURS
        assert (await c.health()).cluster_id == OURS
        # Durable: the file is there, in its documented form.
        with open(os.path.join(tmp_path / "s1", CLUSTER_FILE), "rb") as f:
            assert json.loads(f.read())["cluster_id"] == OURS
        assert await c.bind_cluster(OURS) == OURS  # idempotent
        other = server.client()
        with pytest.raises(WrongCluster) as e:
            await other.bind_cluster(THEIRS)
        assert e.value.bound_to == OURS
        assert other.cluster_id is None
        with pytest.raises(BadRequest):
            await other.bind_cluster("not-an-id")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_delete_naming_another_cluster_is_refused_and_the_blob_kept(tmp_path) -> None:
    server = await Server(tmp_path / "s1").start()
    try:
        ours = server.client()
        await ours.bind_cluster(OURS)
        await put(ours, "kept")
        # A front end of another cluster that believes (on a stale answer,
        # or by a bug) it may delete here: the store refuses.
        theirs = server.client()
        theirs.cluster_id = THEIRS
        with pytest.raises(WrongCluster):
            await theirs.delete("kept")
        assert (await ours.stat("kept")).size == 1000
        await ours.delete("kept")  # its own cluster's delete goes through
        with pytest.raises(BlobNotFound):
            await ours.stat("kept")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_the_binding_survives_a_restart_and_a_damaged_file_stops_the_store(tmp_path) -> None:
    server = await Server(tmp_path / "s1").start()
    try:
        await server.client().bind_cluster(OURS)
    finally:
        await server.stop()
    server = await Server(tmp_path / "s1").start()
    try:
        c = server.client()
        assert (await c.health()).cluster_id == OURS
        with pytest.raises(WrongCluster):
            await c.bind_cluster(THEIRS)
    finally:
        await server.stop()
    with open(os.path.join(tmp_path / "s1", CLUSTER_FILE), "wb") as f:
        f.write(b"{not json")
    with pytest.raises(FormatError, match="CLUSTER"):
        BlobStore.open(tmp_path / "s1")


@pytest_twisted.ensureDeferred
async def test_a_server_without_bind_leaves_the_client_unbound(tmp_path) -> None:
    """An older server (no ``bind`` in READY's ops): the client says so
    (None), and its deletes carry no cluster, which such a server could
    not check anyway."""
    server = await Server(tmp_path / "s1").start()
    server.factory.ops = tuple(o for o in server.factory.ops if o != "bind")
    try:
        c = server.client()
        assert await c.bind_cluster(OURS) is None
        assert c.cluster_id is None
        await put(c, "b1")
        await c.delete("b1")
        assert not os.path.exists(os.path.join(tmp_path / "s1", CLUSTER_FILE))
    finally:
        await server.stop()


def test_the_cluster_option_wants_a_cluster_id(tmp_path) -> None:
    """``wsstorage --cluster ID`` (the deliberate bind, docs/operations.md)."""
    from twisted.python import usage

    from wsstorage.service import Options

    base = ["--listen", "tcp:0", "--data", str(tmp_path / "d"), "--name", "s1",
            "--secret-file", str(tmp_path / "secret")]  # fmt: skip
    with pytest.raises(usage.UsageError, match="--cluster must be 32 lowercase hex digits"):
        Options().parseOptions([*base, "--cluster", "not-an-id"])
    opts = Options()
    opts.parseOptions([*base, "--cluster", OURS])
    assert opts["cluster"] == OURS


def test_a_second_bind_while_one_hangs_is_busy_at_once(tmp_path) -> None:
    """A bind stuck in its fsync (a hung disk) holds one thread; another
    bind meanwhile (a front end's next probe after its timeout) is Busy at
    once instead of queueing a thread of its own behind it."""
    import threading

    from wsstorage.binding import ClusterBond
    from wsstorage.errors import Busy
    from wsstorage.fsops import OsFileSystem

    entered, release = threading.Event(), threading.Event()

    class HangingFsync(OsFileSystem):
        def fsync(self, fd: int) -> None:
            entered.set()
            assert release.wait(30)
            super().fsync(fd)

    bond = ClusterBond(str(tmp_path), HangingFsync(), None)
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(bond.bind(OURS)))
    first.start()
    try:
        assert entered.wait(30)
        with pytest.raises(Busy):
            bond.bind(OURS)
        with pytest.raises(Busy):
            bond.bind(THEIRS)
    finally:
        release.set()
        first.join(30)
    assert bond.cluster_id == OURS and len(results) == 1
    assert bond.bind(OURS).cluster_id == OURS  # bound: confirmed, never busy
    with pytest.raises(WrongCluster):
        bond.bind(THEIRS)
    assert (tmp_path / CLUSTER_FILE).exists()


def test_a_binding_read_at_open_is_made_durable_first(tmp_path) -> None:
    """A CLUSTER file found at open may be one a bind renamed just before a
    crash, its directory never synced: the directory is synced before the
    binding is reported, as IDENTITY's is, so a power cut cannot take back
    a binding the front ends were told of."""
    from wsstorage.binding import ClusterBond
    from wsstorage.fsops import OsFileSystem

    class Recording(OsFileSystem):
        def __init__(self) -> None:
            self.synced: list[str] = []

        def fsync_dir(self, path: str) -> None:
            self.synced.append(path)
            super().fsync_dir(path)

    ClusterBond(str(tmp_path), OsFileSystem(), None).bind(OURS)
    fs = Recording()
    bond = ClusterBond.load(str(tmp_path), fs)
    assert bond.cluster_id == OURS
    assert fs.synced == [str(tmp_path)]
    # No CLUSTER file: nothing to make durable, nothing synced.
    empty = tmp_path / "empty"
    empty.mkdir()
    fs = Recording()
    assert ClusterBond.load(str(empty), fs).cluster_id is None
    assert fs.synced == []


@pytest_twisted.ensureDeferred
async def test_a_retired_client_keeps_no_connection_once_its_operations_end(tmp_path) -> None:
    """A moved server's old client (``StorageClient.retire``): its idle
    connection is closed at once, and one an operation opens afterwards
    once that operation ends; the operation itself works."""
    server = await Server(tmp_path / "s1").start()
    try:
        client = server.client()
        await client.health()
        [idle] = list(client._conns)
        client.retire()
        await idle.lost.addTimeout(5, reactor)  # bounded: without retire it never comes
        assert client.connections == 0
        assert (await client.health()).name == "s1"
        for conn in list(client._conns):
            await conn.lost.addTimeout(5, reactor)
        assert client.connections == 0
    finally:
        await server.stop()
