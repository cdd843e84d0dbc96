"""Garbage collection over real storage servers and a real SQLite catalog."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import (
    all_sha256,
    blobs_on,
    check_full_strength,
    full_path,
    payload,
    populate,
)
from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_STALE
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.inventory import referenced_blob_ids


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def collector(env, clock, **settings) -> GarbageCollector:
    settings.setdefault("grace_seconds", 100.0)
    settings.setdefault("orphan_grace_seconds", 100.0)
    return GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(**settings))


async def kill(env, name):
    await env.nodes[name].kill()
    await env.transfers.pool.probe_all()


async def revive(env, name):
    port = int(env.endpoints[name].rsplit(":", 1)[1])
    await env.nodes[name].listen(port)
    await env.transfers.pool.probe_all()
    assert env.transfers.pool.is_up(name)


async def stored_blobs(env) -> set[str]:
    found = set()
    for name in env.nodes:
        found |= await blobs_on(env, name)
    return found


@pytest_twisted.ensureDeferred
async def test_files_deleted_while_a_server_was_down_leave_no_orphans_and_no_live_blob_is_touched(
    env,
):
    files = await populate(env, count=8)
    before = all_sha256(files)
    doomed = ["/f1.bin", "/f2.bin", "/f5.bin", "/f6.bin"]
    first_doomed = await env.catalog.stat(full_path(env, doomed[0]))
    victim = first_doomed.version.extents[0].replicas[0].node
    victims_blobs = await blobs_on(env, victim)
    await kill(env, victim)
    for vpath in doomed:
        await env.transfers.delete(env.user, vpath)
        del files[vpath]
    clock = task.Clock()
    gc = collector(env, clock)
    first = await gc.run_pass()
    assert first["forgotten"] == 0 and first["waiting"] >= len(doomed)  # the grace period
    clock.advance(100)
    second = await gc.run_pass()
    assert second["forgotten"] >= len(doomed)
    assert second["left_behind"] > 0  # copies on the dead server
    await revive(env, victim)
    referenced = await referenced_blob_ids(env.catalog)
    orphans = (await blobs_on(env, victim)) - referenced
    assert orphans and orphans <= victims_blobs
    third = await gc.run_pass()
    assert third["orphans_deleted"] == 0  # first sighting starts the clock
    assert third["orphans_waiting"] == len(orphans)
    clock.advance(100)
    fourth = await gc.run_pass()
    assert fourth["orphans_deleted"] == len(orphans)
    assert await stored_blobs(env) == referenced
    assert all_sha256(files) == {p: before[p] for p in files}
    await check_full_strength(env, files)
    for vpath in doomed:
        with pytest.raises(catalog_errors.NotFound):
            await env.catalog.stat(full_path(env, vpath))


@pytest_twisted.ensureDeferred
async def test_an_upload_in_progress_is_never_collected(env):
    from twisted.internet import reactor

    data = payload(512 * 1024)
    session = await env.transfers.open_write(env.user, "/growing.bin")
    await Feeder(reactor, session, data[:200_000]).start()
    await session.checkpoint()
    clock = task.Clock()
    gc = collector(env, clock, expire_uploads=False)
    await gc.run_pass()
    clock.advance(10_000)
    result = await gc.run_pass()
    assert result["forgotten"] == 0 and result["orphans_deleted"] == 0
    await Feeder(reactor, session, data[200_000:]).start()
    await session.finish()
    got, _ = await env.download("/growing.bin")
    assert got == data


@pytest_twisted.ensureDeferred
async def test_overwritten_versions_and_expired_uploads_are_collected(env):
    from twisted.internet import reactor

    files = await populate(env, count=2)
    old = await env.catalog.stat(full_path(env, "/f0.bin"))
    old_blob = old.version.extents[0].blob_id
    files["/f0.bin"] = payload(100_000)
    await env.upload("/f0.bin", files["/f0.bin"])
    session = await env.transfers.open_write(env.user, "/abandoned.bin")
    await Feeder(reactor, session, payload(50_000)).start()
    await session.interrupt()
    clock = task.Clock()
    clock.advance(reactor.seconds() + env.settings.upload_expiry + 1)
    gc = collector(env, clock)
    first = await gc.run_pass()
    assert first["expired_uploads"] == 1
    clock.advance(100)
    await gc.run_pass()
    with pytest.raises(catalog_errors.NotFound):
        await env.catalog.get_blob(old_blob)
    assert old_blob not in await stored_blobs(env)
    assert await stored_blobs(env) == await referenced_blob_ids(env.catalog)
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_expiring_many_uploads_goes_in_transactions_of_a_batch(env):
    from twisted.internet import reactor

    for i in range(5):
        session = await env.transfers.open_write(env.user, f"/abandoned{i}.bin")
        await Feeder(reactor, session, payload(1000)).start()
        await session.interrupt()
    sizes = []
    expire = env.catalog.expire_uploads

    async def counted(now, limit=None):
        expired = await expire(now, limit)
        sizes.append((limit, len(expired)))
        return expired

    env.catalog.expire_uploads = counted
    clock = task.Clock()
    clock.advance(reactor.seconds() + env.settings.upload_expiry + 1)
    result = await collector(env, clock, batch=2).run_pass()
    assert result["expired_uploads"] == 5
    assert sizes == [(2, 2), (2, 2), (2, 1)]
    assert await env.catalog.list_uploads() == []


@pytest_twisted.ensureDeferred
async def test_a_stale_copy_is_removed_once_the_blob_has_its_replicas_elsewhere(env):
    files = await populate(env, count=1)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    holders = [r.node for r in extent.replicas]
    [spare] = set(env.nodes) - set(holders)
    await env.transfers.pool.client(spare).copy_from(
        extent.blob_id, env.transfers.pool.endpoint(holders[0])
    )
    await env.catalog.add_replica(extent.blob_id, spare)
    await env.catalog.mark_replica(extent.blob_id, holders[0], REPLICA_STALE)
    clock = task.Clock()
    gc = collector(env, clock)
    await gc.run_pass()
    clock.advance(100)
    result = await gc.run_pass()
    assert result["strays_deleted"] == 1
    assert extent.blob_id not in await blobs_on(env, holders[0])
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_catalog_that_knows_nothing_of_a_server_makes_gc_touch_nothing(env, tmp_path):
    from twisted.internet import reactor

    from wsfront.catalog import open_catalog

    files = await populate(env, count=10, size=20_000)
    stored = {name: await blobs_on(env, name) for name in env.nodes}
    empty = open_catalog(reactor, f"sqlite:///{tmp_path / 'other.sqlite'}")
    try:
        clock = task.Clock()
        gc = GarbageCollector(clock, empty, env.transfers.pool, GCSettings(orphan_grace_seconds=0))
        result = await gc.run_pass()
        assert result["orphans_deleted"] == 0
        # Also a server holding few blobs: the cluster as a whole looks orphaned.
        assert sorted(result["guarded"]) == sorted(env.nodes)
    finally:
        await empty.close()
    assert {name: await blobs_on(env, name) for name in env.nodes} == stored
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_collection_cut_short_by_the_lease_keeps_the_grace_of_blobs_it_did_not_reach(env):
    """A listing cut short says nothing about the blobs it did not reach:
    their grace goes on counting from when a pass first saw them, and a
    full pass past it deletes them all."""
    await populate(env, count=3)
    doomed = set()
    for vpath in ("/f0.bin", "/f1.bin"):
        entry = await env.catalog.stat(full_path(env, vpath))
        doomed |= {extent.blob_id for extent in entry.version.extents}
        await env.transfers.delete(env.user, vpath)
    assert len(doomed) >= 2
    clock = task.Clock()
    gc = collector(env, clock)
    assert (await gc.collect())["waiting"] == len(doomed)  # both seen at 0
    clock.advance(50)
    checks = [0]

    def lease_for_one_blob() -> bool:
        checks[0] += 1
        return checks[0] <= 2  # the listing and its first blob

    assert (await gc.collect(lease_for_one_blob))["waiting"] == 1
    clock.advance(50)  # 100 s after the first pass saw both
    assert (await gc.collect())["forgotten"] == len(doomed)
    assert not doomed & await stored_blobs(env)


@pytest_twisted.ensureDeferred
async def test_a_one_off_grace_spares_an_unsealed_blob_a_compaction_is_still_building(env):
    """``wsfs gc --grace 0`` frees a deleted file's (sealed) blobs at once,
    but an unsealed collectable blob, such as a compaction's new blob that
    its swap has not referenced yet, keeps the usual grace: collected under
    the compaction, the file would point at bytes that are gone."""
    files = await populate(env, count=2)
    doomed = await env.catalog.stat(full_path(env, "/f1.bin"))
    await env.transfers.delete(env.user, "/f1.bin")
    del files["/f1.bin"]
    building = "bcompaction0000000000000000000001"
    await env.catalog.add_blob(building, ["s1", "s2"], 2)  # as compaction records it
    gc = collector(env, task.Clock())
    stats = await gc.run_pass(grace=0)
    assert stats["forgotten"] == len(doomed.version.extents) and stats["waiting"] == 1, stats
    assert (await env.catalog.get_blob(building)).blob_id == building
    for extent in doomed.version.extents:
        with pytest.raises(catalog_errors.NotFound):
            await env.catalog.get_blob(extent.blob_id)
    await check_full_strength(env, files)
