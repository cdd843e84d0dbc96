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
from wsfront.catalog.records import REPLICA_OK

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


def all_sha256(files: dict[str, bytes]) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
