"""fsck: cross-check catalog and storage servers, report, fix."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, check_full_strength, full_path, populate
from tests.transfer_env import TransferEnv
from wsfront.maintenance.fsck import fsck
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.repair import Repairer, RepairSettings


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def tools(env):
    clock = task.Clock()
    pool = env.transfers.pool
    repairer = Repairer(clock, env.catalog, pool, RepairSettings(bytes_per_second=None))
    return repairer, GarbageCollector(clock, env.catalog, pool)


async def run(env, fix=False):
    repairer, gc = tools(env)
    return await fsck(env.catalog, env.transfers.pool, repairer, gc, fix=fix)


@pytest_twisted.ensureDeferred
async def test_a_consistent_cluster_has_no_problems(env):
    await populate(env, count=4)
    report = await run(env)
    assert report["problems"] == 0
    assert report["blobs_checked"] == 4
    assert report["replicas_checked"] == 8


@pytest_twisted.ensureDeferred
async def test_fsck_reports_a_lost_replica_and_an_orphan_and_fix_heals_both(env):
    files = await populate(env, count=3)
    entry = await env.catalog.stat(full_path(env, "/f1.bin"))
    [extent] = entry.version.extents
    victim = extent.replicas[0].node
    env.nodes[victim].store.delete(extent.blob_id)  # lost behind the catalog's back
    stray_store = env.nodes["s3"].store
    handle = stray_store.open_write("borphan0001", 1, 0, {"path": "/nowhere"})
    handle.write(b"nobody refers to me")
    handle.seal()

    report = await run(env)
    assert report["missing"] == [{"blob": extent.blob_id, "node": victim}]
    assert report["orphans"] == 1
    assert report["problems"] == 2
    assert "borphan0001" in await blobs_on(env, "s3")  # a check changes nothing

    fixed = await run(env, fix=True)
    assert fixed["marked"] == 1
    assert fixed["repair"]["copied"] == 1
    assert fixed["gc"]["orphans_deleted"] == 1
    assert (await run(env))["problems"] == 0
    assert "borphan0001" not in await blobs_on(env, "s3")
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_fsck_reports_a_replica_with_the_wrong_size(env):
    files = await populate(env, count=1)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    victim = extent.replicas[1].node
    store = env.nodes[victim].store
    store.delete(extent.blob_id)
    handle = store.open_write(extent.blob_id, 1, 0, {})
    handle.write(b"short")
    handle.seal()
    report = await run(env)
    assert [w["node"] for w in report["wrong"]] == [victim]
    assert report["wrong"][0]["size"] == 5
    await run(env, fix=True)
    assert (await run(env))["problems"] == 0
    await check_full_strength(env, files)
