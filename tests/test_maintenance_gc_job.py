"""``wsfs gc``'s job (a GC pass run now) and the scheduled GC pass never run
at once: not in one front end (both are steps of the same serial tick, with
the same collector) and not across front ends (both need the maintenance
lease).  A runner losing the lease mid-pass stops deleting, re-queues the
job, and starts no scheduled pass after it; the new holder runs the job.

Real in-process storage servers, a real SQLite catalog; the services' clock
is a ``task.Clock`` so the scheduled pass is due exactly when a test says.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, full_path, populate, until
from tests.transfer_env import TransferEnv
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import JOB_DONE, JOB_QUEUED
from wsfront.maintenance.gc import GCSettings
from wsfront.maintenance.lease import LEASE_NAME
from wsfront.maintenance.repair import RepairSettings
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

TTL = 30.0
#: The scheduled GC pass is due this long after a service is made.
GC_EVERY = 5.0


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def service(env, clock, name: str) -> MaintenanceService:
    """A front end's maintenance whose only periodic work due soon is GC."""
    settings = MaintenanceSettings(
        lease_ttl=TTL,
        gc_every=GC_EVERY,
        repair_every=10_000.0,
        audit_every=10_000.0,
        compact_every=None,
        repair=RepairSettings(bytes_per_second=None),
        gc=GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0),
    )
    return MaintenanceService(clock, env.catalog, env.transfers.pool, name, settings)


class WatchedPasses:
    """Wraps a service's ``gc.run_pass``: counts the passes, the most ever
    in flight at once, and holds the first one at ``gate`` until a test
    lets it go."""

    def __init__(self, svc: MaintenanceService, hold_first: bool = False) -> None:
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.gate: defer.Deferred | None = defer.Deferred() if hold_first else None
        self._real = svc.gc.run_pass
        svc.gc.run_pass = self.run_pass

    async def run_pass(self, **kw):
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.calls == 1 and self.gate is not None:
                await self.gate
            return await self._real(**kw)
        finally:
            self.running -= 1


async def delete_files(env, vpaths) -> set[str]:
    """Delete ``vpaths``; return the ids of the blobs they used."""
    blobs = set()
    for vpath in vpaths:
        entry = await env.catalog.stat(full_path(env, vpath))
        blobs |= {extent.blob_id for extent in entry.version.extents}
        await env.transfers.delete(env.user, vpath)
    return blobs


async def put_orphan(env, node: str, blob_id: str) -> None:
    """A blob the catalog does not know on ``node`` (a delete it missed)."""
    writer = await env.transfers.pool.client(node).write(blob_id, 1, 0, {})
    writer.write(b"junk")
    await writer.commit()


async def stored(env) -> set[str]:
    found = set()
    for name in env.nodes:
        found |= await blobs_on(env, name)
    return found


@pytest_twisted.ensureDeferred
async def test_a_gc_job_and_the_scheduled_pass_run_one_after_the_other_never_at_once(env):
    await populate(env, count=4, size=64 * 1024)
    doomed = await delete_files(env, ["/f1.bin", "/f2.bin"])
    clock = task.Clock()
    a, b = service(env, clock, "fe-a"), service(env, clock, "fe-b")
    assert await a.lease.renew()
    passes_a = WatchedPasses(a, hold_first=True)
    passes_b = WatchedPasses(b)
    job = await env.catalog.enqueue_job("gc", {})
    clock.advance(GC_EVERY)  # the scheduled pass is due on both
    first = a.tick()
    await until(lambda: passes_a.running == 1, "the gc job's pass to start")
    # The loop ticking again meanwhile gets the same tick, not a second pass.
    assert a.tick() is first
    # fe-b, without the lease, runs neither its scheduled pass nor the job.
    assert not await b.lease.renew()
    assert await b.tick() == []
    assert passes_b.calls == 0
    assert (await env.catalog.get_job(job.job_id)).owner == "fe-a"
    assert passes_a.calls == 1
    assert passes_a.gate is not None
    passes_a.gate.callback(None)
    # The job's pass stands for the scheduled one due in the same tick: not
    # a second sweep of every server right after it.
    assert await first == ["job"]
    assert passes_a.calls == 1
    clock.advance(GC_EVERY - 1)
    assert await a.tick() == []
    clock.advance(1)
    assert await a.tick() == ["gc"]  # and the schedule goes on from the job's
    assert passes_a.calls == 2 and passes_a.peak == 1
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["forgotten"] == len(doomed)
    assert not doomed & await stored(env)
    for blob_id in doomed:
        with pytest.raises(catalog_errors.NotFound):
            await env.catalog.get_blob(blob_id)


@pytest_twisted.ensureDeferred
async def test_a_gc_job_losing_the_lease_is_requeued_and_no_scheduled_pass_follows(env):
    """The lease goes while the job's pass collects: the pass deletes
    nothing after that (not the next collectable blob, and no orphan: its
    sweep is skipped), the job is re-queued (a GC pass may simply run
    again), the tick starts no scheduled pass without the lease, and the
    new holder runs the job to its end."""
    await populate(env, count=4, size=64 * 1024)
    doomed = await delete_files(env, ["/f0.bin", "/f3.bin"])
    await put_orphan(env, "s2", "borphan42")
    clock = task.Clock()
    a = service(env, clock, "fe-a")
    assert await a.lease.renew()
    passes_a = WatchedPasses(a)
    forget_blob = env.catalog.forget_blob
    forgotten = []

    async def forget_and_pause(blob_id):
        removed = await forget_blob(blob_id)
        forgotten.append(blob_id)
        if len(forgotten) == 1:
            # A long pause outlives fe-a's lease (and makes its scheduled
            # pass due); fe-b takes the lease meanwhile.
            clock.advance(TTL + 1)
            await env.catalog.release_lease(LEASE_NAME, "fe-a")
            assert await env.catalog.acquire_lease(LEASE_NAME, "fe-b", TTL)
        return removed

    env.catalog.forget_blob = forget_and_pause
    try:
        job = await env.catalog.enqueue_job("gc", {})
        assert await a.tick() == ["job"]
    finally:
        del env.catalog.forget_blob
    assert passes_a.calls == 1  # the job's pass only: no scheduled pass without the lease
    # The blob being deleted when the lease went was finished; no other.
    assert len(doomed) >= 2 and len(forgotten) == 1
    for blob_id in doomed - set(forgotten):
        assert (await env.catalog.get_blob(blob_id)).blob_id == blob_id
    assert doomed - set(forgotten) <= await stored(env)
    ended = await env.catalog.get_job(job.job_id)
    assert ended.state == JOB_QUEUED, (ended.state, ended.result)
    assert "fe-a lost the maintenance lease" in ended.error
    assert "borphan42" in await blobs_on(env, "s2")  # no sweep after the lease went
    b = service(env, clock, "fe-b")
    assert await b.lease.renew()
    await b.tick()
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["orphans_deleted"] == 1
    assert "borphan42" not in await blobs_on(env, "s2")
    assert not doomed & await stored(env)


@pytest_twisted.ensureDeferred
async def test_a_lease_lost_during_the_repair_pass_starts_no_gc_pass_after_it(env):
    """Each periodic step checks the lease, not only the tick's start: the
    lease goes to fe-b while fe-a's repair pass runs, and fe-a's GC pass,
    due in the same tick, does not start beside fe-b's."""
    clock = task.Clock()
    a = service(env, clock, "fe-a")
    assert await a.lease.renew()
    passes_a = WatchedPasses(a)
    real_repair = a.repairer.run_pass

    async def repair_losing_the_lease(**kw):
        result = await real_repair(**kw)
        clock.advance(TTL + 1)
        await env.catalog.release_lease(LEASE_NAME, "fe-a")
        assert await env.catalog.acquire_lease(LEASE_NAME, "fe-b", TTL)
        return result

    a.repairer.run_pass = repair_losing_the_lease
    a._next_repair = clock.seconds()  # repair due now, as after an audit that found damage
    clock.advance(GC_EVERY)  # and the GC pass due in the same tick
    assert await a.tick() == ["repair"]
    assert passes_a.calls == 0
