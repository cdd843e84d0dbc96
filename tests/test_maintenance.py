"""The maintenance service: lease, admin jobs, periodic passes, drain, rebalance."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, check_full_strength, full_path, hold_down, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import JOB_DONE, JOB_FAILED
from wsfront.maintenance.gc import GCSettings
from wsfront.maintenance.jobs import JobRunner
from wsfront.maintenance.lease import LeaseKeeper, liveness_lease
from wsfront.maintenance.repair import RepairSettings
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=4)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def service(env, clock, name="fe-a", **kw) -> MaintenanceService:
    settings = MaintenanceSettings(
        repair=RepairSettings(bytes_per_second=None, grace_seconds=30.0),
        gc=GCSettings(grace_seconds=10.0, orphan_grace_seconds=10.0),
        **kw,
    )
    return MaintenanceService(clock, env.catalog, env.transfers.pool, name, settings)


async def kill(env, name):
    await env.nodes[name].kill()
    await env.transfers.pool.probe_all()


@pytest_twisted.ensureDeferred
async def test_only_one_front_end_holds_the_maintenance_lease(env):
    clock = task.Clock()
    a = LeaseKeeper(clock, env.catalog, "fe-a", ttl_seconds=30)
    b = LeaseKeeper(clock, env.catalog, "fe-b", ttl_seconds=30)
    assert await a.renew() and a.valid
    assert not await b.renew() and not b.valid
    assert await a.renew()  # renewal by the holder
    await a.stop()
    assert not a.valid
    assert await b.renew() and b.valid
    clock.advance(31)
    assert not b.valid  # past the expiry we were granted, until renewed


@pytest_twisted.ensureDeferred
async def test_a_queued_repair_job_is_run_by_the_lease_holder_with_progress(env):
    files = await populate(env, count=5)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    victim = entry.version.extents[0].replicas[0].node
    await kill(env, victim)
    clock = task.Clock()
    holder, other = service(env, clock, "fe-a"), service(env, clock, "fe-b")
    await holder.lease.renew()
    await other.lease.renew()
    job = await env.catalog.enqueue_job("repair", {"now": True})
    assert await other.tick() == []  # no lease: no claim
    assert (await env.catalog.get_job(job.job_id)).state == "queued"
    assert await holder.tick() == ["job"]
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["lost_nodes"] == [victim]
    assert done.result["under_replicated"] == 0
    assert done.progress["phase"] == "done"
    await check_full_strength(env, files, dead=[victim])


@pytest_twisted.ensureDeferred
async def test_a_job_whose_handler_fails_is_finished_failed_with_the_error(env):
    async def broken(args, report):
        await report({"step": 1})
        raise RuntimeError("disk on fire")

    runner = JobRunner(task.Clock(), env.catalog, "fe-a", {"broken": broken})
    job = await env.catalog.enqueue_job("broken", {})
    finished = await runner.run_one()
    assert finished.job_id == job.job_id
    assert finished.state == JOB_FAILED
    assert "disk on fire" in finished.error
    assert await runner.run_one() is None


@pytest_twisted.ensureDeferred
async def test_the_service_repairs_after_the_grace_period_and_collects_garbage(env):
    files = await populate(env, count=4)
    clock = task.Clock()
    svc = service(env, clock, repair_every=5.0, gc_every=7.0)
    await svc.lease.renew()
    entry = await env.catalog.stat(full_path(env, "/f1.bin"))
    victim = entry.version.extents[0].replicas[0].node
    await kill(env, victim)
    await env.transfers.delete(env.user, "/f3.bin")
    del files["/f3.bin"]
    assert await svc.tick() == []  # nothing due yet
    clock.advance(5)
    assert await svc.tick() == ["repair"]
    assert await env.catalog.count_under_replicated() == 0  # still in grace
    clock.advance(2)
    assert await svc.tick() == ["gc"]
    clock.advance(30)
    await svc.lease.renew()
    assert await svc.tick() == ["repair", "gc"]  # lost after the grace; garbage past its grace
    clock.advance(10)
    await svc.lease.renew()
    assert await svc.tick() == ["repair", "gc"]
    await check_full_strength(env, files, dead=[victim])
    assert len(await env.catalog.collectable_blobs()) == 0


@pytest_twisted.ensureDeferred
async def test_the_service_starts_and_stops_cleanly_releasing_its_lease(env):
    clock = task.Clock()
    svc = service(env, clock)
    svc.startService()
    await svc.lease.renew()
    assert svc.lease.held
    await svc.stopService()
    other = LeaseKeeper(clock, env.catalog, "fe-b")
    assert await other.renew()


@pytest_twisted.ensureDeferred
async def test_drain_rehomes_every_replica_then_the_server_can_go(env):
    files = await populate(env, count=6)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    leaving = entry.version.extents[0].replicas[0].node
    clock = task.Clock()
    svc = service(env, clock)
    await svc.lease.renew()
    job = await env.catalog.enqueue_job("drain", {"node": leaving})
    await svc.tick()
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["moved"] > 0 and done.result["stuck"] == []
    await svc.gc.sweep(grace=0)
    assert await blobs_on(env, leaving) == set()
    await kill(env, leaving)
    await check_full_strength(env, files, dead=[leaving])


@pytest_twisted.ensureDeferred
async def test_rebalance_moves_replicas_to_a_new_empty_server(env):
    pool = env.transfers.pool
    await hold_down(pool, "s4", "not added yet")
    files = await populate(env, count=8, size=100 * 1024)
    await pool.start()
    assert await blobs_on(env, "s4") == set()
    clock = task.Clock()
    svc = service(env, clock)
    await svc.lease.renew()
    job = await env.catalog.enqueue_job("rebalance", {})
    await svc.tick()
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    after = done.result["after"]
    assert after["s4"] > 0
    biggest = max(len(d) for d in files.values())
    assert max(after.values()) - min(after.values()) <= 2 * biggest
    await svc.gc.sweep(grace=0)
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_jobs_left_running_by_a_stuck_front_end_are_failed_not_waited_for(env):
    """A restart ends our own jobs (rebalance cannot simply run again: it
    is failed; tests/test_maintenance_orphans.py has the re-queued kinds);
    a live front end's job without progress for stale_job_seconds is
    failed, not re-queued, as its runner may still be going."""
    import time

    orphaned = await env.catalog.enqueue_job("repair", {"now": True})
    await env.catalog.claim_job("fe-stuck", ["repair"])
    assert await env.catalog.acquire_lease(liveness_lease("fe-stuck"), "fe-stuck", 10_000)
    mine = await env.catalog.enqueue_job("rebalance", {})
    await env.catalog.claim_job("fe-a", ["rebalance"])
    clock = task.Clock()
    clock.advance(time.time())
    svc = service(env, clock, stale_job_seconds=600.0)
    assert await svc.fail_abandoned_jobs(mine=True) == 1  # ours, from a previous life
    assert (await env.catalog.get_job(mine.job_id)).state == JOB_FAILED
    assert await svc.fail_abandoned_jobs() == 0  # fe-stuck's job is still fresh
    clock.advance(601)
    assert await svc.fail_abandoned_jobs() == 1
    job = await env.catalog.get_job(orphaned.job_id)
    assert job.state == JOB_FAILED and "abandoned" in job.error and "fe-stuck" in job.error


@pytest_twisted.ensureDeferred
async def test_a_repair_pass_stops_when_the_lease_is_lost(env):
    await populate(env, count=3)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    victim = entry.version.extents[0].replicas[0].node
    await kill(env, victim)
    svc = service(env, task.Clock())
    result = await svc.repairer.run_pass(now=True, keep_going=lambda: False)
    assert result["copied"] == 0
    assert result["under_replicated"] > 0
