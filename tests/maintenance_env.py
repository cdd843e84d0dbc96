"""Helpers for the maintenance tests: a populated cluster and strength checks.

Builds on ``tests.transfer_env.TransferEnv`` (real in-process storage
servers, SQLite catalog, real wire-protocol clients).  ``replica_sha256``
reads one replica straight from one storage server, so a test can check
every copy, not just the one a failover reader happens to pick.
"""

from __future__ import annotations

import hashlib
import os

from tests.transfer_env import Collector
from wsfront.catalog.records import REPLICA_OK, REPLICA_STALE

MiB = 1 << 20


def payload(size: int) -> bytes:
    block = os.urandom(min(size, 64 * 1024)) or b""
    return (block * (size // max(len(block), 1) + 1))[:size]


async def populate(env, count: int = 6, size: int = 300 * 1024) -> dict[str, bytes]:
    """Upload ``count`` files of different sizes; return path -> bytes."""
    files = {}
    for i in range(count):
        data = payload(size + i * 7919)
        await env.upload(f"/f{i}.bin", data)
        files[f"/f{i}.bin"] = data
    return files


async def hold_down(pool, name: str, reason: str) -> None:
    """Keep ``name`` out of ``pool``'s choices until the caller's ``await
    pool.start()``.  ``mark_down`` alone lasts only until the pool's next
    probe (every ``probe_interval``, 0.5 s in these envs), which brings the
    server back up in the middle of uploads that take longer on a loaded
    machine: the probe loop is stopped meanwhile, and a probe of ours is
    awaited first, after any the loop still had on the way (it could
    otherwise answer after the ``mark_down``)."""
    pool.stop()
    await pool.probe_all()
    pool.mark_down(name, reason)


def full_path(env, vpath: str) -> str:
    return env.transfers.full_path(env.user, vpath)


async def replica_sha256(env, blob_id: str, node: str, offset: int, length: int) -> str:
    """sha256 of ``length`` bytes at ``offset`` of ``node``'s copy."""
    sink = Collector()
    await env.transfers.pool.client(node).read(blob_id, offset, length, sink)
    return hashlib.sha256(sink.data).hexdigest()


async def check_full_strength(env, files: dict[str, bytes], dead=()) -> None:
    """Every file reads back identical, and every extent has its wanted
    number of ok replicas on distinct live servers, each holding the right
    bytes."""
    for vpath, data in files.items():
        got, _ = await env.download(vpath)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), vpath
        entry = await env.catalog.stat(full_path(env, vpath))
        for extent in entry.version.extents:
            blob = await env.catalog.get_blob(extent.blob_id)
            ok = [r.node for r in blob.replicas if r.state == REPLICA_OK]
            assert len(ok) >= blob.wanted_replicas, (vpath, blob)
            assert len(set(ok)) == len(ok)
            assert not set(ok) & set(dead), (vpath, blob)
            want = hashlib.sha256(
                data[extent.file_offset : extent.file_offset + extent.length]
            ).hexdigest()
            for node in ok:
                got_sha = await replica_sha256(
                    env, extent.blob_id, node, extent.blob_offset, extent.length
                )
                assert got_sha == want, (vpath, node)


async def blobs_on(env, node: str) -> set[str]:
    return {info.blob_id for info in await env.transfers.pool.client(node).list_blobs()}


async def make_stray(env, vpath: str = "/f0.bin") -> tuple[str, str, list[str]]:
    """Leave a stray copy of ``vpath``'s blob as a drain does: a copy on
    the spare server, counted ok, and the first holder's marked stale.
    Fire with the blob id, the stray's server and the ok replicas' ones."""
    entry = await env.catalog.stat(full_path(env, vpath))
    [extent] = entry.version.extents
    holders = [r.node for r in extent.replicas]
    [spare] = set(env.nodes) - set(holders)
    pool = env.transfers.pool
    await pool.client(spare).copy_from(extent.blob_id, pool.endpoint(holders[0]))
    await env.catalog.add_replica(extent.blob_id, spare)
    await env.catalog.mark_replica(extent.blob_id, holders[0], REPLICA_STALE)
    return extent.blob_id, holders[0], [holders[1], spare]


def all_sha256(files: dict[str, bytes]) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


class ProcessCluster:
    """``twistd -n wsstorage`` subprocesses, a SQLite catalog, one in-process
    front end (``Transfers`` + ``MaintenanceService`` on the real reactor),
    and the ``wsfs`` CLI run as a subprocess without blocking the reactor.
    Offers what ``check_full_strength`` needs (catalog, transfers, user,
    download)."""

    def __init__(
        self,
        reactor,
        tmp_path,
        nodes: int = 3,
        replicas: int = 2,
        *,
        catalog_url: str | None = None,
        procs: dict | None = None,
        name: str = "fe-a",
    ) -> None:
        """``procs``: the storage processes of another ``ProcessCluster``,
        shared (started and stopped by it): a second catalog pointed at the
        same servers.  ``catalog_url``: None for SQLite in ``tmp_path``."""
        from tests.storage_procs import StorageProcess

        self.reactor = reactor
        self.tmp = tmp_path
        self.shared = procs is not None
        self.procs = procs or {
            f"s{i}": StorageProcess(tmp_path, f"s{i}") for i in range(1, nodes + 1)
        }
        self.catalog_url = catalog_url or f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        self.name = name
        self.replicas = replicas
        self.service = None
        self.pool = None
        self.catalog = None
        self.clients = []

    async def start(self, **maintenance) -> ProcessCluster:
        """Start the storage processes together (one that fails stops the
        others), then the catalog, user alice and the front end; if anything
        fails, stop what started before raising: the fixture's teardown does
        not run when its setup raises."""
        from tests.support import start_all
        from tests.transfer_env import PASSWORD
        from wsfront.catalog import open_catalog

        if not self.shared:
            start_all(self.procs.values())
        try:
            self.catalog = open_catalog(self.reactor, self.catalog_url)
            for name, proc in self.procs.items():
                await self.catalog.register_node(name, proc.endpoint)
            self.user = await self.catalog.add_user("alice", PASSWORD)
            await self.front_end(**maintenance)
        except BaseException:
            await self.stop()
            raise
        return self

    async def front_end(self, **maintenance) -> None:
        from wsfront.maintenance.repair import RepairSettings
        from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings
        from wsfront.transfer.pool import StoragePool
        from wsfront.transfer.service import Transfers, TransferSettings

        self.pool = StoragePool(
            self.reactor,
            probe_interval=0.5,
            probe_timeout=2.0,
            cluster_id=await self.catalog.cluster_id(),
        )
        for name, proc in self.procs.items():
            client = proc.client(self.reactor, idle_timeout=3.0)
            self.clients.append(client)
            self.pool.add(name, proc.endpoint, client)
        await self.pool.start()
        settings = TransferSettings(replicas=self.replicas)
        self.transfers = Transfers(self.reactor, self.catalog, self.pool, self.name, settings)
        maintenance.setdefault("tick_seconds", 0.1)
        maintenance.setdefault("repair", RepairSettings(bytes_per_second=None))
        self.service = MaintenanceService(
            self.reactor, self.catalog, self.pool, self.name, MaintenanceSettings(**maintenance)
        )
        self.service.startService()

    async def upload(self, vpath: str, data: bytes):
        from tests.transfer_env import Feeder

        session = await self.transfers.open_write(self.user, vpath)
        await Feeder(self.reactor, session, data).start()
        return await session.finish()

    async def download(self, vpath: str):
        handle = await self.transfers.open_read(self.user, vpath)
        sink = Collector()
        await handle.stream.start(sink)
        return sink.data, handle.stream

    async def wsfs(self, *args: str) -> tuple[str, str, int]:
        """Run the CLI; fire with (stdout, stderr, exit code)."""
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        from tests.support import python_env

        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "wsfront.cli", "--catalog", self.catalog_url, *args],
            env=python_env(),
            path=str(self.tmp),
            reactor=self.reactor,
        )
        return out.decode(), err.decode(), code

    async def stop(self) -> None:
        """Stop whatever ``start`` got to, the storage processes last."""
        try:
            if self.service is not None and self.service.running:
                await self.service.stopService()
            if self.pool is not None:
                self.pool.stop()
            for client in self.clients:
                await client.close()
            if self.catalog is not None:
                await self.catalog.close()
        finally:
            if not self.shared:
                for proc in self.procs.values():
                    proc.stop()


async def until(condition, what: str, timeout: float = 10.0) -> None:
    """Wait (polling the reactor every 10 ms) until ``condition()`` is true;
    fail after ``timeout`` seconds.  For states a test cannot get a Deferred
    for, such as "the relay is waiting on its throttle"."""
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)
