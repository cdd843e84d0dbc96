"""A write that fails on a full disk gives its partial blob's space back at
once, not after the front ends' orphan grace (an hour): the blob is
removed when nothing of it was ever reported durable, and cut back to its
durable length when something was (a checkpoint may name those bytes, a
takeover resume from them).

A real storage server on a real tmpfs (skipped where one cannot be
mounted), reached over TCP by the real client."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import pytest_twisted

from tests.catalog_outage import fill, tmpfs
from tests.transfer_env import SECRET, Collector, StorageNode
from wsfront.transfer.service import new_blob_id
from wsstorage.client import StorageClient
from wsstorage.errors import BlobNotFound, DiskFull

KiB = 1 << 10
MiB = 1 << 20
META = {"path": "/alice/f", "owner": "alice"}


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def files_of(root, blob_id: str) -> list[str]:
    return sorted(
        name for _dirs, _sub, names in os.walk(root) for name in names if name.startswith(blob_id)
    )


@contextmanager
def small_disk(tmp_path, size: str = "2m"):
    with tmpfs(tmp_path / "disk", size) as where:
        yield where


class Server:
    """One storage server on ``path`` and a client of it."""

    async def start(self, path) -> Server:
        from twisted.internet import reactor

        self.path = path
        self.node = StorageNode(reactor, "s1", path / "data")
        endpoint = await self.node.listen()
        self.client = StorageClient(reactor, "s1", endpoint, SECRET)
        return self

    async def stop(self) -> None:
        await self.client.close()
        await self.node.kill()
        self.node.store.close()


async def fill_stream(writer, total: int = 4 * MiB) -> None:
    """Send ``total`` bytes into ``writer`` with no flush between (none of
    them becomes durable), more than the disk holds: its commit is
    refused for the full disk."""
    for _ in range(total // (64 * KiB)):
        writer.write(os.urandom(64 * KiB))
    with pytest.raises(DiskFull):
        await writer.commit()


@pytest_twisted.ensureDeferred
async def test_a_stream_that_fills_the_disk_before_anything_was_durable_is_removed(tmp_path):
    with small_disk(tmp_path) as disk:
        server = await Server().start(disk)
        try:
            before = free_bytes(disk)
            blob = new_blob_id()
            writer = await server.client.write(blob, 1, 0, META)
            await fill_stream(writer)
            await writer.abort()
            assert files_of(disk, blob) == []
            assert free_bytes(disk) == before
            with pytest.raises(BlobNotFound):
                await server.client.stat(blob)
            assert [i.blob_id for i in await server.client.list_blobs()] == []
            # The server goes on taking blobs that fit.
            info = await server.client.put(new_blob_id(), 1, META, b"z" * 1000)
            assert info.sealed
        finally:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_stream_that_fills_the_disk_keeps_its_durable_bytes_for_a_takeover(tmp_path):
    with small_disk(tmp_path) as disk:
        server = await Server().start(disk)
        try:
            blob = new_blob_id()
            durable = os.urandom(256 * KiB)
            writer = await server.client.write(blob, 1, 0, META)
            writer.write(durable)
            assert await writer.flush() == len(durable)  # a checkpoint may name these
            await fill_stream(writer)
            await writer.abort()
            # The bytes past the durable length are gone, the durable ones stay.
            info = await server.client.stat(blob)
            assert (info.size, info.durable, info.sealed) == (len(durable), len(durable), False)
            [data] = [n for n in files_of(disk, blob) if n.endswith(".data")]
            assert os.path.getsize(next(_paths(disk, data))) == len(durable)
            # A takeover fences it at its checkpoint and reads it back whole.
            fenced = await server.client.fence(blob, 2, len(durable))
            assert fenced.size == len(durable)
            await server.client.commit(blob, 2)
            sink = Collector()
            await server.client.read(blob, 0, None, sink)
            assert sink.data == durable
        finally:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_put_refused_for_a_full_disk_leaves_no_files(tmp_path):
    with small_disk(tmp_path) as disk:
        server = await Server().start(disk)
        try:
            filler = fill(disk)
            # 128 KiB back: less than the put needs, more than none.
            with open(filler, "r+b") as f:
                f.truncate(os.path.getsize(filler) - 128 * KiB)
            before = free_bytes(disk)
            blob = new_blob_id()
            with pytest.raises(DiskFull):
                await server.client.put(blob, 1, META, os.urandom(200 * KiB))
            assert files_of(disk, blob) == []
            assert free_bytes(disk) == before
            with pytest.raises(BlobNotFound):
                await server.client.stat(blob)
        finally:
            await server.stop()


def _paths(root, name: str):
    for directory, _sub, names in os.walk(root):
        if name in names:
            yield os.path.join(directory, name)


@pytest_twisted.ensureDeferred
async def test_wslocal_in_process_stream_that_fills_the_disk_is_removed(tmp_path):
    """wslocal writes into its stores in process (``wsstorage.inprocess_write``),
    not over a socket: the same space comes back there, by the time the
    writer's abort is answered."""
    from tests.test_local_sockets import options, started
    from wsfront.local import InProcessWriteClient

    with tmpfs(tmp_path / "data", "16m") as data:
        cluster = await started(options(data, "--reserve", "0"))
        try:
            client = cluster.frontend.pool.client("s1")
            assert isinstance(client, InProcessWriteClient)
            before = free_bytes(data)
            blob = new_blob_id()
            writer = await client.write(blob, 1, 0, META)
            await fill_stream(writer, 24 * MiB)
            await writer.abort()
            assert files_of(data, blob) == []
            # Give or take what the catalog's SQLite wrote meanwhile.
            assert free_bytes(data) >= before - 64 * KiB
            with pytest.raises(BlobNotFound):
                await client.stat(blob)
        finally:
            await cluster.stopService()
