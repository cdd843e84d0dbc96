"""GC forgetting a blob while repair (or a drain, a rebalance) copies it,
over real storage servers, on both catalog backends: whichever records
last, no replica row outlives its blob, no copy is left on a storage
server for the sweep to find, and the job goes on.
(The two catalog transactions racing on one row: tests/test_catalog_races.py.)"""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, full_path, hold_down, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_STALE
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.nodes import drain, rebalance
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


@pytest_twisted.ensureDeferred
async def test_a_drain_whose_blob_gc_forgets_after_its_copy_is_recorded_goes_on(env):
    """A drain copies a blob off the draining server and records the copy;
    before it marks the draining server's replica stale, the file is
    deleted and GC collects the blob (its delete of the new copy fails).
    The mark finds no blob: that blob needs no move any more, the drain
    deletes the copy itself and moves the next blob, and ends normally."""
    await populate(env, count=2, size=50_000)
    blobs = {}
    for vpath in ("/f0.bin", "/f1.bin"):
        [extent] = (await env.catalog.stat(full_path(env, vpath))).version.extents
        blobs[vpath] = extent.blob_id
    # The draining server holds both (3 servers, 2 replicas each).
    counts = {n: 0 for n in env.nodes}
    for blob_id in blobs.values():
        for r in (await env.catalog.get_blob(blob_id)).replicas:
            counts[r.node] += 1
    leaving = min(n for n, c in counts.items() if c == 2)
    await env.catalog.set_node_draining(leaving, True)
    first = min(blobs.values())  # the drain goes by blob id
    pool = env.transfers.pool
    real_mark = env.catalog.mark_replica
    collected = []

    async def gc_first(blob_id, node, state):
        if blob_id == first and not collected:
            ok = (await env.catalog.get_blob(blob_id)).ok_replicas
            [copy] = set(ok) - set(holders_before[blob_id])  # recorded, its source still ok
            await env.transfers.delete(env.user, vpath_of[blob_id])
            client = pool.client(copy)
            client.delete = lambda blob_id: defer.fail(RuntimeError("busy"))
            try:
                collected.append((copy, await collector(env).collect()))
            finally:
                del client.delete
            assert blob_id in await blobs_on(env, copy)  # GC could not delete it
        return await real_mark(blob_id, node, state)

    holders_before = {
        b: [r.node for r in (await env.catalog.get_blob(b)).replicas] for b in blobs.values()
    }
    vpath_of = {b: p for p, b in blobs.items()}
    env.catalog.mark_replica = gc_first
    try:
        stats = await drain(env.catalog, pool, repairer(env), leaving)
    finally:
        del env.catalog.mark_replica
    [(_, gc)] = collected
    assert (gc["forgotten"], gc["left_behind"]) == (1, 1)
    assert (stats["moved"], stats["stuck"], stats["failed"]) == (1, [], 0), stats
    assert await held_anywhere(env, first) == []  # the drain deleted the copy
    assert await replicas_without_blob(env) == []
    [other] = set(blobs.values()) - {first}
    after = await env.catalog.get_blob(other)
    assert leaving not in after.ok_replicas and len(after.ok_replicas) == 2
    assert [n.holds for n in pool.nodes()] == [{}, {}, {}]


@pytest_twisted.ensureDeferred
async def test_a_rebalance_whose_blob_gc_forgets_after_its_copy_is_recorded_goes_on(env):
    """As for a drain: the first blob rebalance moves is collected between
    its copy's record and the mark of its source; the rebalance deletes
    the copy and goes on with the next."""
    pool = env.transfers.pool
    await hold_down(pool, "s3", "not added yet")
    files = await populate(env, count=4, size=50_000)
    await pool.start()
    assert await blobs_on(env, "s3") == set()
    vpath_of = {}
    for vpath in files:
        [extent] = (await env.catalog.stat(full_path(env, vpath))).version.extents
        vpath_of[extent.blob_id] = vpath
    real_mark = env.catalog.mark_replica
    collected = []

    async def gc_first(blob_id, node, state):
        if not collected:
            await env.transfers.delete(env.user, vpath_of[blob_id])
            collected.append((blob_id, await collector(env).collect()))
        return await real_mark(blob_id, node, state)

    env.catalog.mark_replica = gc_first
    try:
        stats = await rebalance(env.catalog, pool, repairer(env))
    finally:
        del env.catalog.mark_replica
    [(gone, gc)] = collected
    assert gc["forgotten"] == 1
    assert stats["moved"] >= 1, stats
    assert await held_anywhere(env, gone) == []
    assert await replicas_without_blob(env) == []
    assert await blobs_on(env, "s3") - {gone} != set()


@pytest_twisted.ensureDeferred
async def test_a_copy_replacing_a_stale_replica_after_gc_deleted_it_is_deleted(env):
    """GC lists the collectable blob (a stale replica, an ok one) and
    deletes the stale one's copy; before it deletes the other, a copier
    that read the blob while it was referenced replaces the stale copy
    from the ok one and records it, before GC forgets the blob.  The forget
    names that server, whose row GC listed stale: GC deletes there again,
    so no copy is left for the sweep.  The ok replica's server, which no
    copier targets, gets one delete only."""
    blob_id, holders, _spare = await one_file(env)
    stale, ok = holders
    await env.catalog.mark_replica(blob_id, stale, REPLICA_STALE)
    blob = await env.catalog.get_blob(blob_id)  # the copier's read
    await env.transfers.delete(env.user, "/f0.bin")
    listing = env.catalog.collectable_blobs

    async def stale_first(limit=100):
        # GC deletes in the listing's order of the replicas: the stale
        # one first here, so the ok one is still there to copy from.
        return [
            attrs.evolve(b, replicas=tuple(sorted(b.replicas, key=lambda r: r.node != stale)))
            for b in await listing(limit)
        ]

    env.catalog.collectable_blobs = stale_first
    pool = env.transfers.pool
    deletes = {stale: 0, ok: 0}
    copied = []

    def counting(node):
        client = pool.client(node)
        real_delete = client.delete

        async def delete(blob_id):
            deletes[node] += 1
            try:
                return await real_delete(blob_id)
            finally:
                if node == stale and not copied:
                    copied.append(None)  # the copier's own delete of the old copy
                    stats = {"copied": 0, "bytes": 0, "failed": 0}
                    copied[0] = await repairer(env).copy(blob, stale, [ok], stats)

        client.delete = lambda blob_id: defer.ensureDeferred(delete(blob_id))
        return client

    clients = [counting(stale), counting(ok)]
    try:
        result = await collector(env).collect()
    finally:
        del env.catalog.collectable_blobs
        for client in clients:
            del client.delete
    assert copied == [True]
    assert (result["forgotten"], result["left_behind"]) == (1, 0)
    assert await held_anywhere(env, blob_id) == []
    assert await replicas_without_blob(env) == []
    # The stale server: GC's delete, the copier's of what it replaced
    # (gone), GC's again; the ok one: GC's alone.
    assert deletes == {stale: 3, ok: 1}
