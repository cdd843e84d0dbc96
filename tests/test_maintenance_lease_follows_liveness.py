"""``--liveness-lease-seconds`` applies to a frozen front end that holds the
maintenance lease too: its uploads are marked interrupted by another front
end once that long passed, not after the maintenance lease's life.  That
life follows the option down to a floor (``MIN_MAINTENANCE_TTL_SECONDS``):
a live holder keeps the lease through a renewal held up by one catalog
lock wait.  On SQLite and PostgreSQL; the catalog and the services share
one ``task.Clock``."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from wsfront.catalog import open_catalog
from wsfront.catalog.postgres import SESSION_DEFAULTS
from wsfront.catalog.records import ACTIVE, INTERRUPTED
from wsfront.config import FrontendConfig
from wsfront.maintenance.lease import DEFAULT_TTL_SECONDS, MIN_MAINTENANCE_TTL_SECONDS
from wsfront.maintenance.service import MaintenanceService, maintenance_settings

pytest_plugins = ["tests.catalog_fixtures"]

LIVENESS = 6.0


@pytest.fixture
def tclock() -> task.Clock:
    c = task.Clock()
    c.advance(1_000_000.0)
    return c


@pytest.fixture
def cat(catalog_url, tclock):
    c = open_catalog(reactor, catalog_url, clock=tclock.seconds)
    yield c
    c.close()


class NoServers:
    """A storage pool of no servers (the tick notes which are down)."""

    def names(self) -> list[str]:
        return []


def config(name: str, liveness: float = LIVENESS) -> FrontendConfig:
    return FrontendConfig(
        name=name, catalog="sqlite:///unused", storage=(), replicas=1, secret=b"s" * 32,
        liveness_lease_seconds=liveness,
    )  # fmt: skip


def front_end(cat, clock, name: str, liveness: float = LIVENESS) -> MaintenanceService:
    """A front end's maintenance service as ``wsfront`` builds it from its
    options, not started: the test renews its leases."""
    settings = maintenance_settings(config(name, liveness))
    return MaintenanceService(clock, cat, NoServers(), name, settings)


@pytest_twisted.ensureDeferred
async def test_a_frozen_maintenance_holders_uploads_are_interrupted_after_the_liveness_life(
    cat, tclock
):
    a, b = front_end(cat, tclock, "fe-a"), front_end(cat, tclock, "fe-b")
    assert await a.liveness.renew() and await b.liveness.renew()
    assert await a.lease.renew()  # fe-a holds the maintenance lease
    assert not await b.lease.renew()
    up = await cat.begin_upload(
        "alice", "/x", base_length=0, blob_id="bx", replicas=["s1", "s2"], wanted_replicas=2,
        owner="fe-a", expires_at=tclock.seconds() + 3600,
    )  # fmt: skip
    # fe-a is SIGSTOPped: it renews nothing any more.
    tclock.advance(LIVENESS + 1)
    assert LIVENESS + 1 < MIN_MAINTENANCE_TTL_SECONDS < DEFAULT_TTL_SECONDS
    assert await b.liveness.renew()
    assert not await b.lease.renew()  # fe-a's maintenance lease lives on
    # Every front end's tick looks at the holder's liveness lease.
    assert await b.tick() == []
    assert (await cat.get_upload(up.upload_id)).state == INTERRUPTED
    assert await b.interrupt_a_dead_holders_uploads() == 0  # once only
    tclock.advance(MIN_MAINTENANCE_TTL_SECONDS)
    assert await b.lease.renew()  # the successor, once the lease lapsed
    assert await b.interrupt_orphaned_uploads() == 0


@pytest_twisted.ensureDeferred
async def test_a_live_holders_uploads_are_left_alone_by_the_others(cat, tclock):
    a, b = front_end(cat, tclock, "fe-a"), front_end(cat, tclock, "fe-b")
    assert await a.liveness.renew() and await a.lease.renew()
    up = await cat.begin_upload(
        "alice", "/x", base_length=0, blob_id="bx", replicas=["s1", "s2"], wanted_replicas=2,
        owner="fe-a", expires_at=tclock.seconds() + 3600,
    )  # fmt: skip
    tclock.advance(LIVENESS - 1)
    assert await b.interrupt_a_dead_holders_uploads() == 0
    assert await a.interrupt_a_dead_holders_uploads() == 0  # the holder itself
    assert (await cat.get_upload(up.upload_id)).state == ACTIVE


def test_the_maintenance_lease_follows_the_liveness_life_down_to_a_floor():
    short = maintenance_settings(config("fe", 3.0))
    assert (short.liveness_ttl, short.lease_ttl) == (3.0, MIN_MAINTENANCE_TTL_SECONDS)
    long = maintenance_settings(config("fe", 45.0))
    assert (long.liveness_ttl, long.lease_ttl) == (45.0, 45.0)
    # The floor's reason: the renewal sent a third into the lease's life
    # may wait out one whole lock wait and still land before its end.
    lock_wait = float(SESSION_DEFAULTS["lock_timeout"].removesuffix("s"))
    assert lock_wait < MIN_MAINTENANCE_TTL_SECONDS * 2 / 3


@pytest_twisted.ensureDeferred
async def test_a_holder_keeps_the_lease_through_a_renewal_held_up_by_a_lock_wait(cat, tclock):
    """--liveness-lease-seconds 3: the maintenance lease lived 3 s too, so
    a renewal that waited on a row lock (up to lock_timeout) let another
    front end take maintenance over while the holder's job step ran."""
    a, b = front_end(cat, tclock, "fe-a", 3.0), front_end(cat, tclock, "fe-b", 3.0)
    assert await a.lease.renew()
    lock_wait = float(SESSION_DEFAULTS["lock_timeout"].removesuffix("s"))
    # The next renewal is sent a third into the life and waits on a lock.
    tclock.advance(a.lease.ttl / 3 + lock_wait)
    assert not await b.lease.renew()
    assert await a.lease.renew() and a.lease.valid


@pytest_twisted.ensureDeferred
async def test_a_live_holder_keeps_the_maintenance_lease_past_the_liveness_life(cat, tclock):
    a, b = front_end(cat, tclock, "fe-a"), front_end(cat, tclock, "fe-b")
    assert await a.lease.renew()
    up = await cat.begin_upload(
        "alice", "/x", base_length=0, blob_id="bx", replicas=["s1", "s2"], wanted_replicas=2,
        owner="fe-a", expires_at=tclock.seconds() + 3600,
    )  # fmt: skip
    for _ in range(4):  # renewed every third of its life, as the loop does
        tclock.advance(LIVENESS / 3)
        assert await a.liveness.renew() and await a.lease.renew()
        assert not await b.lease.renew()
    assert await a.interrupt_orphaned_uploads() == 0
    assert (await cat.get_upload(up.upload_id)).state == ACTIVE
