"""GC forgetting a blob while repair copies it, over real storage servers,
on both catalog backends: whichever records last, no replica row outlives
its blob and no copy is left on a storage server for the sweep to find.
(The two catalog transactions racing on one row: tests/test_catalog_races.py.)"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, full_path, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_STALE
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.repair import Repairer, RepairSettings

pytest_plugins = ["tests.catalog_fixtures"]


@pytest.fixture
def env(tmp_path, catalog_url):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3, catalog_url=catalog_url)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def collector(env) -> GarbageCollector:
    """A collector with no grace: a blob is deleted the first time it is listed."""
    settings = GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0)
    return GarbageCollector(task.Clock(), env.catalog, env.transfers.pool, settings)


def repairer(env) -> Repairer:
    settings = RepairSettings(bytes_per_second=None)
    return Repairer(task.Clock(), env.catalog, env.transfers.pool, settings)


async def one_file(env):
    """A file of one blob; its blob, the servers holding it, the third."""
    await populate(env, count=1, size=50_000)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    holders = sorted(r.node for r in extent.replicas)
    [spare] = set(env.nodes) - set(holders)
    return extent.blob_id, holders, spare


async def replicas_without_blob(env) -> list:
    return await env.catalog._runner.run(
        lambda tx: tx.all(
            "SELECT r.blob_id, r.node FROM replicas r"
            " WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.blob_id = r.blob_id)"
        ),
        write=False,
    )


async def held_anywhere(env, blob_id: str) -> list[str]:
    return [name for name in sorted(env.nodes) if blob_id in await blobs_on(env, name)]


@pytest_twisted.ensureDeferred
async def test_a_repair_copy_finished_after_gc_forgot_its_blob_is_deleted(env):
    """Repair copies an under-replicated blob to the spare server; before
    it records the copy, the file is deleted and GC collects the blob.
    The record is refused (the blob is gone), so repair deletes its copy
    and ends its pass normally."""
    blob_id, holders, _spare = await one_file(env)
    await env.catalog.mark_replica(blob_id, holders[0], REPLICA_STALE)
    add_replica = env.catalog.add_replica
    collected = []

    async def gc_first(blob, node):
        assert blob_id in await blobs_on(env, node)  # the copy is made
        await env.transfers.delete(env.user, "/f0.bin")
        collected.append(await collector(env).collect())
        return await add_replica(blob, node)

    env.catalog.add_replica = gc_first
    try:
        result = await repairer(env).run_pass()
    finally:
        del env.catalog.add_replica
    assert collected and collected[0]["forgotten"] == 1
    assert result["copied"] == 0 and result["under_replicated"] == 0
    with pytest.raises(catalog_errors.NotFound):
        await env.catalog.get_blob(blob_id)
    assert await replicas_without_blob(env) == []
    assert await held_anywhere(env, blob_id) == []


@pytest_twisted.ensureDeferred
async def test_a_repair_copy_recorded_between_gc_s_listing_and_its_forget_is_deleted(env):
    """GC lists the collectable blob (two replicas); repair's copy to the
    spare server is recorded before GC forgets it.  The forget names the
    new replica as well, and GC deletes that copy too."""
    blob_id, holders, spare = await one_file(env)
    blob = await env.catalog.get_blob(blob_id)
    await env.transfers.delete(env.user, "/f0.bin")
    listing = env.catalog.collectable_blobs

    async def copied_after_listing(limit=100):
        listed = await listing(limit)
        if any(b.blob_id == blob_id for b in listed):
            stats = {"copied": 0, "bytes": 0, "failed": 0}
            assert await repairer(env).copy(blob, spare, [holders[0]], stats)
        return listed

    env.catalog.collectable_blobs = copied_after_listing
    try:
        result = await collector(env).collect()
    finally:
        del env.catalog.collectable_blobs
    assert result["forgotten"] == 1 and result["left_behind"] == 0
    assert await replicas_without_blob(env) == []
    assert await held_anywhere(env, blob_id) == []
