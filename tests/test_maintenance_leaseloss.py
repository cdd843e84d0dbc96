"""A job runner that loses the maintenance lease stops after the unit of
work in flight (a blob's move, a blob's check), on both catalogs.

The lease is lost the way a long pause loses it: the runner's clock jumps
past the expiry it was granted while a unit is in flight, and another front
end (fe-b) takes the lease in the catalog.  The runner must finish that unit
(so fe-b never finds a copy recorded with its source still counted) and
start no other: fe-b may be running the same job again.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import postgres_schema_url
from tests.maintenance_env import blobs_on, full_path, hold_down, populate
from tests.test_maintenance_postgres import PostgresTransferEnv
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import JOB_DONE, JOB_FAILED, JOB_QUEUED, REPLICA_OK
from wsfront.maintenance.gc import GCSettings
from wsfront.maintenance.inventory import referenced_blob_ids
from wsfront.maintenance.lease import LEASE_NAME
from wsfront.maintenance.repair import RepairSettings
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

TTL = 30.0


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


def service(env, clock, name: str) -> MaintenanceService:
    settings = MaintenanceSettings(
        lease_ttl=TTL,
        repair=RepairSettings(bytes_per_second=None),
        gc=GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0),
    )
    return MaintenanceService(clock, env.catalog, env.transfers.pool, name, settings)


async def take_over(env, clock: task.Clock) -> None:
    """fe-a's pause outlives its lease; fe-b takes the lease meanwhile."""
    clock.advance(TTL + 1)
    await env.catalog.release_lease(LEASE_NAME, "fe-a")  # expired, as far as fe-b cares
    assert await env.catalog.acquire_lease(LEASE_NAME, "fe-b", TTL)


def lose_lease_during_first_copy(env, svc: MaintenanceService, clock: task.Clock) -> list:
    """Make the lease go while the first copy is in flight; return the list
    of (blob, target) copies the runner made."""
    copies = []
    copy = svc.repairer.copy

    async def copy_and_pause(blob, target, sources, stats):
        done = await copy(blob, target, sources, stats)
        copies.append((blob.blob_id, target))
        if len(copies) == 1:
            await take_over(env, clock)
        return done

    svc.repairer.copy = copy_and_pause
    return copies


async def ok_nodes(env, blob_id: str) -> set[str]:
    blob = await env.catalog.get_blob(blob_id)
    return {r.node for r in blob.replicas if r.state == REPLICA_OK}


@pytest_twisted.ensureDeferred
async def test_a_drain_stops_after_the_move_in_flight_when_the_lease_is_lost(env):
    files = await populate(env, count=6, size=64 * 1024)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    leaving = entry.version.extents[0].replicas[0].node
    clock = task.Clock()
    a = service(env, clock, "fe-a")
    assert await a.lease.renew()
    copies = lose_lease_during_first_copy(env, a, clock)
    job = await env.catalog.enqueue_job("drain", {"node": leaving})
    await a.tick()
    assert len(copies) == 1  # the move in flight, then nothing
    ended = await env.catalog.get_job(job.job_id)
    assert ended.state == JOB_QUEUED, (ended.state, ended.result)
    assert "fe-a lost the maintenance lease" in ended.error
    # The move in flight was finished: new copy counted, source no longer.
    moved, target = copies[0]
    assert await ok_nodes(env, moved) >= {target}
    assert leaving not in await ok_nodes(env, moved)
    # fe-b runs the re-queued drain to the end.
    b = service(env, clock, "fe-b")
    assert await b.lease.renew()
    await b.tick()
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["stuck"] == []
    for blob_id in await referenced_blob_ids(env.catalog):
        assert leaving not in await ok_nodes(env, blob_id)
    assert len(files) == 6


@pytest_twisted.ensureDeferred
async def test_a_rebalance_stops_after_the_move_in_flight_when_the_lease_is_lost(env):
    pool = env.transfers.pool
    await hold_down(pool, "s4", "not added yet")
    await populate(env, count=8, size=64 * 1024)
    await pool.start()
    assert await blobs_on(env, "s4") == set()
    clock = task.Clock()
    a = service(env, clock, "fe-a")
    assert await a.lease.renew()
    copies = lose_lease_during_first_copy(env, a, clock)
    job = await env.catalog.enqueue_job("rebalance", {})
    await a.tick()
    assert len(copies) == 1
    ended = await env.catalog.get_job(job.job_id)
    # Not re-queued: a second run would move more than the operator asked.
    assert ended.state == JOB_FAILED, (ended.state, ended.result)
    assert "fe-a lost the maintenance lease" in ended.error
    moved, target = copies[0]
    assert target == "s4"
    assert await blobs_on(env, "s4") == {moved}
    on_s4 = [b for b in await referenced_blob_ids(env.catalog) if "s4" in await ok_nodes(env, b)]
    assert on_s4 == [moved]
    assert len(await ok_nodes(env, moved)) == 2  # the source was marked stale


@pytest_twisted.ensureDeferred
async def test_an_fsck_stops_at_the_blob_in_flight_when_the_lease_is_lost(env):
    await populate(env, count=4, size=64 * 1024)
    entry = await env.catalog.stat(full_path(env, "/f3.bin"))
    damaged = entry.version.extents[-1]
    node = damaged.replicas[0].node
    await env.transfers.pool.client(node).delete(damaged.blob_id)
    clock = task.Clock()
    a = service(env, clock, "fe-a")
    assert await a.lease.renew()
    # The first blob's check is the unit in flight when the lease goes.
    seen = []
    get_blob = env.catalog.get_blob

    async def get_blob_and_pause(blob_id):
        blob = await get_blob(blob_id)
        seen.append(blob_id)
        if len(seen) == 1:
            await take_over(env, clock)
        return blob

    env.catalog.get_blob = get_blob_and_pause
    try:
        job = await env.catalog.enqueue_job("fsck", {"fix": True})
        await a.tick()
    finally:
        del env.catalog.get_blob
    # No blob after the one in flight (whose record a missing copy's
    # confirmation reads once more: fsck_confirm.confirm).
    assert len(set(seen)) == 1, seen
    ended = await env.catalog.get_job(job.job_id)
    assert ended.state == JOB_QUEUED, (ended.state, ended.result)
    assert "fe-a lost the maintenance lease" in ended.error
    # Nothing fixed by the runner that lost the lease: fe-b's fsck will.
    assert node in await ok_nodes(env, damaged.blob_id)
    assert await env.catalog.count_under_replicated() == 0


class QuietPass:
    """A repair or compaction pass: stops quietly when ``keep_going()``
    turns false, returning what it did (as the periodic passes want)."""

    def __init__(self, units: int, lose_after: int, lease: list[bool]) -> None:
        self.units, self.lose_after, self.lease, self.done = units, lose_after, lease, 0

    async def run_pass(self, keep_going, **kw) -> dict:
        while self.done < self.units and keep_going():
            self.done += 1
            if self.done == self.lose_after:
                self.lease[0] = False
        return {"done": self.done}


@pytest.mark.parametrize("kind", ["repair", "compact"])
@pytest_twisted.ensureDeferred
async def test_a_pass_cut_short_by_the_lease_ends_its_job_interrupted_not_done(kind):
    """repair and compact stop quietly (their periodic passes do the same);
    their job must not then be reported done with a partial summary."""
    from wsfront.maintenance.handlers import job_handlers
    from wsfront.maintenance.jobs import JobInterrupted

    lease = [True]
    work = QuietPass(units=5, lose_after=1, lease=lease)

    async def report(progress):
        pass

    handlers = job_handlers(work, None, None, None, compactor=work, keep_going=lambda: lease[0])
    with pytest.raises(JobInterrupted):
        await handlers[kind]({}, report)
    assert work.done == 1


@pytest_twisted.ensureDeferred
async def test_a_job_its_runner_could_not_end_is_ended_when_the_runner_holds_the_lease_again(env):
    """Losing the lease and reaching the catalog often fail together: the
    runner that could not re-queue its job then does so at its next tick
    with the lease, instead of leaving it ``running`` under a front end
    every other one sees alive."""
    await populate(env, count=6, size=64 * 1024)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    leaving = entry.version.extents[0].replicas[0].node
    clock = task.Clock()
    a = service(env, clock, "fe-a")
    assert await a.lease.renew()
    lose_lease_during_first_copy(env, a, clock)
    job = await env.catalog.enqueue_job("drain", {"node": leaving})
    requeue = env.catalog.requeue_job

    def unreachable(*args, **kwargs):
        return defer.fail(ConnectionError("catalog unreachable"))

    env.catalog.requeue_job = unreachable  # the outage that cost the lease
    await a.tick()
    env.catalog.requeue_job = requeue
    assert (await env.catalog.get_job(job.job_id)).owner == "fe-a"
    # fe-b goes; fe-a, alive all along, holds the lease again.
    await env.catalog.release_lease(LEASE_NAME, "fe-b")
    assert await a.lease.renew()
    await a.tick()
    done = await env.catalog.get_job(job.job_id)
    # Re-queued, then claimed and run to its end by fe-a in the same tick.
    assert done.state == JOB_DONE, (done.state, done.error)
    assert done.result["stuck"] == []
