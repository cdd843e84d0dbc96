"""fsck: cross-check catalog and storage servers, report, fix."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, check_full_strength, full_path, make_stray, populate
from tests.transfer_env import TransferEnv, disk_problem
from wsfront.maintenance.fsck import fsck
from wsfront.maintenance.gc import GarbageCollector, GCSettings
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


async def _sees_disk_problem(env, node: str) -> None:
    """Wait until the pool knows ``node``'s health names a disk problem
    (its server probes its disk on every health request here)."""
    from twisted.internet import reactor

    env.nodes[node].factory.disk_check.ttl = 0.0
    pool = env.transfers.pool
    deadline = reactor.seconds() + 15
    while True:
        await pool.probe_all()
        if disk_problem(pool, node) is not None:
            return
        assert reactor.seconds() < deadline, "the disk problem was never seen"
        await task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_server_that_answers_but_lost_its_blobs_directory_fails_and_is_repaired(
    env, tmp_path
):
    """``rm -rf <data>/blobs`` under a running server: it answers, but its
    listing fails with a disk error; it is reported failing (not merely
    unreachable) and every replica it held as missing, which fix repairs
    onto the other servers."""
    import shutil

    files = await populate(env, count=4)
    holdings = {n: await blobs_on(env, n) for n in sorted(env.nodes)}
    victim = max(holdings, key=lambda n: len(holdings[n]))
    held = holdings[victim]
    assert held, "the victim must hold replicas for the test to mean much"
    assert env.nodes[victim].store.wait_fanned_out(30)  # no mkdir racing the rmtree
    shutil.rmtree(tmp_path / victim / "blobs")
    await _sees_disk_problem(env, victim)
    assert env.transfers.pool.is_up(victim)

    report = await run(env)
    assert report["unreachable_nodes"] == []
    assert [f["node"] for f in report["failing_nodes"]] == [victim]
    assert str(tmp_path) not in str(report["failing_nodes"])
    assert sorted(m["blob"] for m in report["missing"] if m["node"] == victim) == sorted(held)

    fixed = await run(env, fix=True)
    assert fixed["marked"] == len(held)
    assert fixed["repair"]["copied"] == len(held)
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_reported_and_its_replicas_are_not_judged(env):
    await populate(env, count=4)
    victim = sorted(env.nodes)[0]
    await env.kill(victim)
    await env.transfers.pool.probe_all()
    report = await run(env)
    assert report["unreachable_nodes"] == [victim]
    assert report["failing_nodes"] == [] and report["missing"] == []


#: The strays' grace in the fake-clock tests below.
GRACE = 100.0


def collector(env, clock: task.Clock, **settings) -> GarbageCollector:
    settings.setdefault("orphan_grace_seconds", GRACE)
    return GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(**settings))


async def check_with(env, gc: GarbageCollector) -> dict:
    """An fsck (no fix) judged by ``gc`` (its clock is the test's)."""
    pool = env.transfers.pool
    repairer = Repairer(task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None))
    return await fsck(env.catalog, pool, repairer, gc)


@pytest_twisted.ensureDeferred
async def test_a_stray_whose_blob_lost_another_copy_is_a_problem_and_gets_no_grace(env):
    """A stray of a blob whose counted-ok copy this check found missing is
    the surplus copy only as far as the catalog knows: counted waiting, its
    grace started by the check, a sweep at the grace's end took it and left
    one copy of two.  It is a problem, and the sweep's grace starts later."""
    await populate(env, count=1)
    blob_id, stray, [lost, _] = await make_stray(env)
    env.nodes[lost].store.delete(blob_id)  # behind the catalog's back
    clock = task.Clock()
    gc = collector(env, clock)
    report = await check_with(env, gc)
    assert report["missing"] == [{"blob": blob_id, "node": lost}]
    assert (report["strays"], report["strays_waiting"]) == (1, 0), report
    assert report["strays_collected_after"] is None
    assert report["problems"] == 2  # the missing copy and the stray
    clock.advance(GRACE)
    swept = await gc.sweep()
    assert (swept["strays_deleted"], swept["strays_waiting"]) == (0, 1), swept
    assert blob_id in await blobs_on(env, stray)


@pytest_twisted.ensureDeferred
async def test_a_second_check_reports_the_first_checks_collection_time(env):
    """The grace counts from the first sighting, an fsck's included: a
    check later reports the same time, not one pushed back by its own."""
    await populate(env, count=1)
    await make_stray(env)
    clock = task.Clock()
    gc = collector(env, clock)
    first = await check_with(env, gc)
    assert (first["strays_waiting"], first["strays_collected_after"]) == (1, GRACE), first
    clock.advance(GRACE / 2)
    second = await check_with(env, gc)
    assert (second["strays_waiting"], second["strays_collected_after"]) == (1, GRACE), second
    assert second["problems"] == 0


@pytest_twisted.ensureDeferred
async def test_the_sweep_collects_a_stray_when_the_check_said_it_would(env):
    """The time fsck reports is the sweep's: nothing goes a second before
    it, the stray goes at it."""
    files = await populate(env, count=1)
    blob_id, stray, _ = await make_stray(env)
    clock = task.Clock()
    gc = collector(env, clock)
    after = (await check_with(env, gc))["strays_collected_after"]
    assert after == GRACE
    clock.advance(after - 1)
    swept = await gc.sweep()
    assert (swept["strays_deleted"], swept["strays_waiting"]) == (0, 1), swept
    assert blob_id in await blobs_on(env, stray)
    clock.advance(1)
    swept = await gc.sweep()
    assert (swept["strays_deleted"], swept["strays_waiting"]) == (1, 0), swept
    assert blob_id not in await blobs_on(env, stray)
    await check_full_strength(env, files)


def write_orphans(env, node: str, count: int) -> None:
    """``count`` small blobs the catalog does not know, on ``node``."""
    store = env.nodes[node].store
    for i in range(count):
        handle = store.open_write(f"borphan{i:04d}", 1, 0, {"path": "/nowhere"})
        handle.write(b"nobody refers to me")
        handle.seal()


#: A guard that trips on 1 orphan when they are over half the blobs.
GUARD = {"orphan_guard": 0.5, "orphan_guard_min": 1}


@pytest_twisted.ensureDeferred
async def test_a_stray_on_a_guarded_server_is_a_problem_not_waiting(env):
    """The sweep leaves a server with too many orphans alone: its stray's
    grace never runs out, so it is not waiting for anything."""
    await populate(env, count=4)
    _, stray, _ = await make_stray(env)
    held = {n: len(await blobs_on(env, n)) for n in env.nodes}
    orphans = held[stray] + 1  # over half of the stray's server's blobs ...
    assert orphans <= sum(held.values())  # ... not of the cluster's: no cluster-wide guard
    write_orphans(env, stray, orphans)
    gc = collector(env, task.Clock(), **GUARD)
    report = await check_with(env, gc)
    assert report["guarded_nodes"] == [stray]
    assert (report["strays"], report["strays_waiting"]) == (1, 0), report
    assert report["problems"] == orphans + 1
    assert (await gc.sweep(grace=0))["guarded"] == [stray]


@pytest_twisted.ensureDeferred
async def test_a_stray_under_the_cluster_wide_guard_is_a_problem_not_waiting(env):
    """Orphans over half of all the blobs stop the sweep on every server,
    the stray's too though it holds none."""
    await populate(env, count=4)
    _, stray, _ = await make_stray(env)
    other = min(set(env.nodes) - {stray})
    held = {n: len(await blobs_on(env, n)) for n in env.nodes}
    orphans = sum(held.values()) + 1
    write_orphans(env, other, orphans)
    gc = collector(env, task.Clock(), **GUARD)
    report = await check_with(env, gc)
    assert report["guarded_nodes"] == [other]  # the stray's server is not guarded itself
    assert (report["strays"], report["strays_waiting"]) == (1, 0), report
    assert report["problems"] == orphans + 1
    swept = await gc.sweep(grace=0)
    assert stray in swept["guarded"] and swept["strays_deleted"] == 0, swept


@pytest_twisted.ensureDeferred
async def test_orphans_on_a_server_not_bound_to_the_cluster_do_not_stop_the_strays_grace(
    env, monkeypatch
):
    """The sweep leaves a server not bound to this cluster out, its blobs
    out of the cluster-wide guard's count too; so does fsck, or it would
    call a stray the sweep is about to delete a problem."""
    await populate(env, count=4)
    blob_id, stray, _ = await make_stray(env)
    unbound = min(set(env.nodes) - {stray})
    held = {n: len(await blobs_on(env, n)) for n in env.nodes}
    write_orphans(env, unbound, sum(held.values()) + 1)  # enough for the cluster-wide guard
    pool = env.transfers.pool
    monkeypatch.setattr(pool, "of_this_cluster", lambda name: name != unbound)
    clock = task.Clock()
    gc = collector(env, clock, **GUARD)
    report = await check_with(env, gc)
    assert (report["strays"], report["strays_waiting"]) == (1, 1), report
    assert report["strays_collected_after"] == GRACE
    clock.advance(GRACE)
    swept = await gc.sweep()
    assert (swept["strays_deleted"], swept["orphans_deleted"]) == (1, 0), swept
    assert blob_id not in await blobs_on(env, stray)


@pytest_twisted.ensureDeferred
async def test_after_a_fix_no_stray_is_said_to_wait(env):
    """``--fix`` sweeps with no grace: the strays the check counted
    waiting are deleted, and the report no longer says they wait."""
    files = await populate(env, count=1)
    blob_id, stray, _ = await make_stray(env)
    pool = env.transfers.pool
    repairer = Repairer(task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None))
    fixed = await fsck(env.catalog, pool, repairer, collector(env, task.Clock()), fix=True)
    assert fixed["gc"]["strays_deleted"] == 1
    assert (fixed["strays"], fixed["strays_waiting"]) == (1, 0), fixed
    assert fixed["strays_collected_after"] is None
    assert blob_id not in await blobs_on(env, stray)
    await check_full_strength(env, files)
