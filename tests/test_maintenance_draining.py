"""A server being drained is no home for a replica: rebalance, repair,
drain (of another server) and compaction never copy onto it.  On SQLite
and PostgreSQL, with real in-process storage servers.

These tests set the registry state only; the front end's own health record
(which tells the pool) does not run here, as it would not have yet in the
seconds after ``wsfs drain`` began: the maintenance code must ask the
catalog."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import postgres_schema_url
from tests.maintenance_env import (
    blobs_on,
    check_full_strength,
    full_path,
    hold_down,
    payload,
    populate,
)
from tests.test_maintenance_postgres import PostgresTransferEnv
from tests.transfer_env import TransferEnv
from wsfront.maintenance.compact import Compactor, CompactSettings
from wsfront.maintenance.nodes import drain, rebalance
from wsfront.maintenance.repair import Repairer, RepairSettings

KiB = 1 << 10


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path):
    from twisted.internet import reactor

    def run(e):
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        return e

    if request.param == "sqlite":
        e = run(TransferEnv(reactor, tmp_path, nodes=4))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))
        return
    for url in postgres_schema_url():
        e = run(PostgresTransferEnv(reactor, tmp_path, url, nodes=4))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def repairer(env) -> Repairer:
    return Repairer(
        task.Clock(), env.catalog, env.transfers.pool, RepairSettings(bytes_per_second=None)
    )


async def set_draining(env, node: str) -> None:
    await env.catalog.set_node_draining(node, True)


async def populate_without(env, node: str, **kw) -> dict[str, bytes]:
    """Files on every server but ``node`` (then back up and empty)."""
    pool = env.transfers.pool
    await hold_down(pool, node, "not there yet")
    files = await populate(env, **kw)
    await pool.start()
    assert pool.is_up(node) and await blobs_on(env, node) == set()
    return files


@pytest_twisted.ensureDeferred
async def test_rebalance_moves_nothing_onto_a_draining_server(env):
    files = await populate_without(env, "s4", count=8, size=100 * KiB)
    await set_draining(env, "s4")
    stats = await rebalance(env.catalog, env.transfers.pool, repairer(env))
    assert await blobs_on(env, "s4") == set()
    assert "s4" not in stats["before"] and "s4" not in stats["after"]
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_drained_server_holds_nothing_after_a_rebalance(env):
    """The probe's case: drain s1 to the end, then rebalance; s1 can go."""
    files = await populate(env, count=8, size=100 * KiB)
    await set_draining(env, "s1")
    stats = await drain(env.catalog, env.transfers.pool, repairer(env), "s1")
    assert stats["stuck"] == [] and stats["moved"] > 0
    await rebalance(env.catalog, env.transfers.pool, repairer(env))
    for path in files:
        entry = await env.catalog.stat(full_path(env, path))
        for extent in entry.version.extents:
            blob = await env.catalog.get_blob(extent.blob_id)
            assert "s1" not in blob.ok_replicas, (path, blob)
    await env.kill("s1")
    await env.transfers.pool.probe_all()
    await check_full_strength(env, files, dead=["s1"])


@pytest_twisted.ensureDeferred
async def test_repair_copies_onto_no_draining_server(env):
    files = await populate_without(env, "s4", count=6)
    await set_draining(env, "s4")
    await env.kill("s1")
    await env.transfers.pool.probe_all()
    stats = await repairer(env).run_pass(now=True)
    assert stats["copied"] > 0 and stats["under_replicated"] == 0
    assert await blobs_on(env, "s4") == set()
    await check_full_strength(env, files, dead=["s1"])


@pytest_twisted.ensureDeferred
async def test_a_drain_moves_nothing_onto_another_draining_server(env):
    files = await populate_without(env, "s4", count=6)
    await set_draining(env, "s4")
    await set_draining(env, "s1")
    stats = await drain(env.catalog, env.transfers.pool, repairer(env), "s1")
    assert stats["moved"] > 0 and stats["stuck"] == []
    assert await blobs_on(env, "s4") == set()
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_compaction_writes_its_new_blob_on_no_draining_server(env):
    from twisted.internet import reactor

    pool = env.transfers.pool
    await hold_down(pool, "s4", "not there yet")
    contents = {}
    for i in range(4):
        vpath, content = f"/log{i}.bin", b""
        for offset, length in [(0, 40 * KiB), (40 * KiB, 30 * KiB), (70 * KiB, 20 * KiB)]:
            data = payload(length)
            await env.upload(vpath, data, offset=offset)
            content = content[:offset] + data
        contents[vpath] = content
    await pool.start()
    assert await blobs_on(env, "s4") == set()
    await set_draining(env, "s4")
    asked = []
    list_nodes = env.catalog.list_nodes
    env.catalog.list_nodes = lambda: asked.append(1) or list_nodes()
    settings = CompactSettings(bytes_per_second=None, min_extents=3, batch=2)
    try:
        stats = await Compactor(reactor, env.catalog, pool, settings).run_pass()
    finally:
        del env.catalog.list_nodes
    assert stats["compacted"] == 4, stats
    assert len(asked) == 2  # once a page of two files, not once a file
    assert await blobs_on(env, "s4") == set()
    for vpath, content in contents.items():
        got, _ = await env.download(vpath)
        assert got == content


@pytest_twisted.ensureDeferred
async def test_a_drain_copies_a_blob_whose_only_copies_are_lost_before_it_says_done(env):
    """A file's two replicas were marked lost (their servers down past the
    grace period, then back with their disks intact), one of them on the
    server being drained: that copy may be the last one.  The drain makes a
    verified copy of it elsewhere (not onto the other lost copy's server)
    before it reports the server empty; it used to skip the blob, say done,
    and leave the file's only copies behind."""
    from wsfront.catalog.records import REPLICA_LOST

    files = await populate(env, count=4, size=40 * KiB)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    blob = await env.catalog.get_blob(extent.blob_id)
    leaving, other = sorted(blob.ok_replicas)
    for node in (leaving, other):
        await env.catalog.mark_replica(blob.blob_id, node, REPLICA_LOST)
    await set_draining(env, leaving)
    stats = await drain(env.catalog, env.transfers.pool, repairer(env), leaving)
    assert stats["stuck"] == [] and stats["failed"] == 0, stats
    after = await env.catalog.get_blob(blob.blob_id)
    [verified] = after.ok_replicas
    assert verified not in (leaving, other)
    assert blob.blob_id in await blobs_on(env, verified)
    await env.catalog.set_node_draining(leaving, False)
    await repairer(env).run_pass()
    await check_full_strength(env, files)
