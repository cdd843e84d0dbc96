"""``--liveness-lease-seconds`` applies to a frozen front end that holds the
maintenance lease too: its uploads are marked interrupted by a successor
once that long passed, not after the maintenance lease's default 30 s
(only the maintenance lease holder sweeps orphaned uploads).  On SQLite and
PostgreSQL; the catalog and the services share one ``task.Clock``."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from wsfront.catalog import open_catalog
from wsfront.catalog.records import ACTIVE, INTERRUPTED
from wsfront.config import FrontendConfig
from wsfront.maintenance.lease import DEFAULT_TTL_SECONDS
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


def front_end(cat, clock, name: str) -> MaintenanceService:
    """A front end's maintenance service as ``wsfront`` builds it from its
    options, not started: the test renews its leases."""
    config = FrontendConfig(
        name=name, catalog="sqlite:///unused", storage=(), replicas=1, secret=b"s" * 32,
        liveness_lease_seconds=LIVENESS,
    )  # fmt: skip
    return MaintenanceService(clock, cat, None, name, maintenance_settings(config))


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
    assert LIVENESS + 1 < DEFAULT_TTL_SECONDS
    assert await b.liveness.renew()
    assert await b.lease.renew()  # the successor holds maintenance already
    assert await b.interrupt_orphaned_uploads() == 1
    assert (await cat.get_upload(up.upload_id)).state == INTERRUPTED


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
