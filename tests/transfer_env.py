"""A transfer layer over real storage servers and a real SQLite catalog.

``TransferEnv`` runs N storage servers in this process (real BlobStores on
disk, real TCP on 127.0.0.1, the real wire-protocol client), one SQLite
catalog file, a ``StoragePool`` and ``Transfers`` named ``fe-a``, and a user.
A second ``Transfers`` on the same catalog (``env.second_front_end()``)
stands for another front end.  Tests for FTP and HTTP build on it too.

``kill(node)`` makes a storage server vanish (stop listening, drop every
connection): the in-process stand-in for SIGKILL; tests that need a real
SIGKILL run ``twistd -n wsstorage`` subprocesses instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from wsfront.catalog import open_catalog
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.service import Transfers, TransferSettings
from wsstorage.blobstore import BlobStore
from wsstorage.client import StorageClient
from wsstorage.server import StorageServerFactory

SECRET = b"transfer-env-secret-0123456789abcdef"
PASSWORD = "correct horse battery"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@implementer(IConsumer)
def disk_problem(pool: StoragePool, name: str) -> str | None:
    """Why server ``name`` takes no new blobs though it may answer (its
    ``NodeState.problem``: a disk problem it or a writer reported), or None."""
    [node] = [n for n in pool.nodes() if n.name == name]
    return node.problem


class Collector:
    """A consumer that keeps what it receives (tests move MiBs, not GiBs)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.producer = None
        self.received = 0

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class PausingCollector(Collector):
    """Pauses its producer once ``pause_at`` bytes arrived, so a test can
    act mid-stream while the server cannot race ahead to the end."""

    def __init__(self, pause_at: int) -> None:
        super().__init__()
        self.pause_at = pause_at
        self.paused = defer.Deferred()

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.received >= self.pause_at and not self.paused.called:
            self.producer.pauseProducing()
            self.paused.callback(self.received)


@implementer(IPushProducer)
class Feeder:
    """Writes ``data`` into a consumer in chunks, honouring pause/resume,
    yielding to the reactor between chunks like a network client would."""

    def __init__(self, reactor, consumer, data: bytes, chunk: int = 64 * 1024, stop_at=None):
        self.reactor = reactor
        self.consumer = consumer
        self.data = memoryview(data)
        self.chunk = chunk
        self.stop_at = len(data) if stop_at is None else stop_at
        self.pos = 0
        self.paused = False
        self.stopped = False
        self.done: defer.Deferred = defer.Deferred()
        self._call = None

    def start(self) -> defer.Deferred:
        self.consumer.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self):
        if self._call is None and not self.paused and not self.stopped:
            self._call = self.reactor.callLater(0, self._step)

    def _step(self):
        self._call = None
        if self.paused or self.stopped:
            return
        if self.pos >= self.stop_at:
            self.consumer.unregisterProducer()
            self.done.callback(self.pos)
            return
        end = min(self.pos + self.chunk, self.stop_at)
        piece = bytes(self.data[self.pos : end])
        self.pos = end
        self.consumer.write(piece)
        self._schedule()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._schedule()

    def stopProducing(self):
        self.stopped = True
        if not self.done.called:
            self.done.callback(self.pos)


class StorageNode:
    """One in-process storage server."""

    def __init__(self, reactor, name: str, path: Path) -> None:
        self.reactor = reactor
        self.name = name
        self.path = path
        self.store = BlobStore.open(path)
        self.factory = StorageServerFactory(reactor, self.store, name, SECRET)
        self.port = None

    async def listen(self, port: int = 0) -> str:
        ep = serverFromString(self.reactor, f"tcp:{port}:interface=127.0.0.1")
        self.port = await ep.listen(self.factory)
        return f"tcp:127.0.0.1:{self.port.getHost().port}"

    async def kill(self) -> None:
        """Stop listening and cut every connection at once."""
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for conn in list(self.factory.connections):
            conn.transport.abortConnection()

    def blob_path(self, blob_id: str) -> str:
        for root, _dirs, files in os.walk(self.path):
            for f in files:
                if f.startswith(blob_id) and f.endswith(".data"):
                    return os.path.join(root, f)
        raise FileNotFoundError(blob_id)


class TransferEnv:
    """Storage servers, catalog, pool and Transfers for one test.

    ``backend="real"`` runs real storage servers in-process over TCP;
    ``backend="fake"`` uses ``wsstorage.testing.FakeStorageCluster``.
    """

    def __init__(
        self,
        reactor,
        tmp_path: Path,
        nodes: int = 3,
        replicas: int = 2,
        backend: str = "real",
        catalog_dir: Path | None = None,
        catalog_url: str | None = None,
        **settings,
    ):
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.catalog_dir = catalog_dir or tmp_path
        self._catalog_url = catalog_url  # None: SQLite in catalog_dir
        self.backend = backend
        self.cluster = None
        self.node_count = nodes
        self.settings = TransferSettings(replicas=replicas, **settings)
        self.nodes: dict[str, StorageNode] = {}
        self.endpoints: dict[str, str] = {}
        self.clients: list[StorageClient] = []
        self.catalogs = []
        self.pools: list[StoragePool] = []

    async def start(self) -> TransferEnv:
        names = [f"s{i}" for i in range(1, self.node_count + 1)]
        if self.backend == "fake":
            from wsstorage.testing import FakeStorageCluster

            self.cluster = FakeStorageCluster(self.reactor, names)
            for name in names:
                self.endpoints[name] = self.cluster.endpoint(name)
        else:
            for name in names:
                node = StorageNode(self.reactor, name, self.tmp_path / name)
                self.nodes[name] = node
                self.endpoints[name] = await node.listen()
        self.catalog_url = self._catalog_url or f"sqlite:///{self.catalog_dir / 'catalog.sqlite'}"
        self.catalog = self._open_catalog()
        for name, ep in self.endpoints.items():
            await self.catalog.register_node(name, ep)
        self.user = await self.catalog.add_user("alice", PASSWORD)
        self.transfers = await self.front_end("fe-a")
        return self

    def _open_catalog(self):
        catalog = open_catalog(self.reactor, self.catalog_url)
        self.catalogs.append(catalog)
        return catalog

    async def front_end(self, name: str) -> Transfers:
        """A Transfers named ``name`` with its own catalog connection and pool."""
        catalog = self.catalog if not self.pools else self._open_catalog()
        pool = StoragePool(self.reactor, probe_interval=0.5, probe_timeout=2.0)
        for node, ep in self.endpoints.items():
            if self.cluster is not None:
                client = self.cluster.node(node).client()
            else:
                client = StorageClient(self.reactor, node, ep, SECRET, idle_timeout=3.0)
            self.clients.append(client)
            pool.add(node, ep, client)
        self.pools.append(pool)
        await pool.start()
        return Transfers(self.reactor, catalog, pool, name, self.settings)

    async def kill(self, name: str) -> None:
        """The storage server ``name`` dies (connections cut, no listening)."""
        if self.cluster is not None:
            self.cluster.node(name).kill()
        else:
            await self.nodes[name].kill()

    def corrupt(self, name: str, blob_id: str, offset: int) -> None:
        """Damage the byte at ``offset`` of a blob on one server."""
        if self.cluster is not None:
            self.cluster.node(name).corrupt(blob_id, offset)
            return
        path = self.nodes[name].blob_path(blob_id)
        with open(path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0xFF]))

    async def refresh_user(self):
        self.user = await self.catalog.get_user("alice")
        return self.user

    async def upload(self, vpath: str, data: bytes, offset: int = 0, transfers=None, **kw):
        transfers = transfers or self.transfers
        session = await transfers.open_write(self.user, vpath, offset, **kw)
        await Feeder(self.reactor, session, data).start()
        return await session.finish()

    async def download(self, vpath: str, offset: int = 0, transfers=None) -> tuple[bytes, object]:
        transfers = transfers or self.transfers
        handle = await transfers.open_read(self.user, vpath, offset)
        sink = Collector()
        await handle.stream.start(sink)
        return sink.data, handle.stream

    async def stop(self) -> None:
        for pool in self.pools:
            pool.stop()
        for client in self.clients:
            await client.close()
        for node in self.nodes.values():
            await node.kill()
            close = getattr(node.store, "close", None)
            if close is not None:
                close()
        for catalog in self.catalogs:
            await catalog.close()
        # Let aborted connections finish closing before the next test.
        await task.deferLater(self.reactor, 0, lambda: None)
