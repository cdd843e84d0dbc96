"""GC's grace clock belongs to one tenure of the maintenance lease.

A front end that loses the lease and takes it back must not carry its old
first sightings over: meanwhile the other holder may have seen the copy
counted ok again, and the copy be a stray anew; a sighting an hour old
would give it no grace at all.  Real storage servers, a real SQLite
catalog, the service's own lease keeper; only the clock is fake.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, make_stray, populate
from tests.transfer_env import TransferEnv
from wsfront.maintenance.fsck import check
from wsfront.maintenance.gc import GCSettings
from wsfront.maintenance.lease import LEASE_NAME
from wsfront.maintenance.repair import RepairSettings
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

GRACE = 100.0
TTL = 30.0


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def service(env, clock: task.Clock) -> MaintenanceService:
    settings = MaintenanceSettings(
        lease_ttl=TTL,
        repair=RepairSettings(bytes_per_second=None),
        gc=GCSettings(orphan_grace_seconds=GRACE),
    )
    return MaintenanceService(clock, env.catalog, env.transfers.pool, "fe-a", settings)


async def sighted_at_0(env, svc: MaintenanceService) -> tuple[str, str]:
    """Take the lease, make a stray and have an fsck see it at 0: its
    grace ends at ``GRACE``.  Fire with the blob id and the stray's server."""
    await populate(env, count=1)
    blob_id, stray, _ = await make_stray(env)
    assert await svc.lease.renew()
    report = await check(env.catalog, env.transfers.pool, svc.gc)
    assert (report["strays_waiting"], report["strays_collected_after"]) == (1, GRACE), report
    return blob_id, stray


async def starts_its_grace_again(env, svc: MaintenanceService, clock, blob_id, stray) -> None:
    """Past the old grace, the stray is seen anew: not deleted, its grace
    counted from now, as fsck says."""
    report = await check(env.catalog, env.transfers.pool, svc.gc)
    assert report["strays_collected_after"] == clock.seconds() + GRACE, report
    swept = await svc.gc.sweep()
    assert (swept["strays_deleted"], swept["strays_waiting"]) == (0, 1), swept
    assert blob_id in await blobs_on(env, stray)


@pytest_twisted.ensureDeferred
async def test_a_front_end_that_takes_the_lease_back_forgets_its_old_sightings(env):
    clock = task.Clock()
    svc = service(env, clock)
    blob_id, stray = await sighted_at_0(env, svc)
    # fe-b holds the lease a while (fe-a's lapsed; the catalog's clock is
    # real, so fe-a's row goes first), then gives it back.
    clock.advance(TTL + 1)
    await env.catalog.release_lease(LEASE_NAME, "fe-a")
    assert await env.catalog.acquire_lease(LEASE_NAME, "fe-b", TTL)
    assert not await svc.lease.renew()
    await env.catalog.release_lease(LEASE_NAME, "fe-b")
    clock.advance(GRACE)
    assert await svc.lease.renew()
    await starts_its_grace_again(env, svc, clock, blob_id, stray)


@pytest_twisted.ensureDeferred
async def test_a_lease_renewed_after_it_lapsed_counts_as_taken_again(env):
    """A frozen holder's lease lapses; another may have held it meanwhile
    and given it up, unseen by the one renewing."""
    clock = task.Clock()
    svc = service(env, clock)
    blob_id, stray = await sighted_at_0(env, svc)
    clock.advance(GRACE)  # well past the lease's expiry (TTL)
    assert await svc.lease.renew()
    await starts_its_grace_again(env, svc, clock, blob_id, stray)


@pytest_twisted.ensureDeferred
async def test_a_renewal_in_time_keeps_the_sightings(env):
    """Renewing a lease still held is one tenure: the grace goes on."""
    clock = task.Clock()
    svc = service(env, clock)
    blob_id, stray = await sighted_at_0(env, svc)
    for _ in range(int(GRACE // (TTL / 3)) + 1):
        clock.advance(TTL / 3)
        assert await svc.lease.renew()
    swept = await svc.gc.sweep()
    assert swept["strays_deleted"] == 1, swept
    assert blob_id not in await blobs_on(env, stray)
