"""What the maintenance tick logs when it keeps failing: once per change of
state, not every 2 seconds, and without a traceback for a catalog outage."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from tests.catalog_outage import make_writes_wait_briefly, write_locked
from tests.transfer_env import TransferEnv
from wsfront.catalog.errors import CatalogFull
from wsfront.maintenance.failure_log import FailureLog
from wsfront.maintenance.service import MaintenanceService


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def lines(events: list[dict], level: LogLevel | None = None) -> list[str]:
    """Text of the events about the tick (at ``level``)."""
    return [
        formatEvent(e)
        for e in events
        if "maintenance tick" in formatEvent(e) and level in (None, e.get("log_level"))
    ]


@pytest_twisted.ensureDeferred
async def test_a_locked_catalog_fails_the_tick_with_one_warn_line_then_one_recovery_line(
    tmp_path, events
):
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path).start()
    clock = task.Clock()
    svc = MaintenanceService(clock, env.catalog, env.transfers.pool, "fe-a")
    try:
        assert await svc.lease.renew()
        await make_writes_wait_briefly(env.catalog)
        with write_locked(tmp_path / "catalog.sqlite"):
            for _ in range(5):
                await svc.tick()
                clock.advance(2)
        assert [e for e in events if e.get("log_level") is LogLevel.critical] == []
        warned = lines(events, LogLevel.warn)
        assert len(warned) == 1 and "CatalogUnavailable" in warned[0], lines(events)
        assert all("log_failure" not in e for e in events if "maintenance tick" in formatEvent(e))
        await svc.tick()
        again = lines(events, LogLevel.info)
        assert len(again) == 1 and "works again after 5 failures" in again[0], again
        await svc.tick()
        assert len(lines(events)) == 2
    finally:
        await env.stop()


def test_each_change_of_failure_is_logged_once_with_a_reminder_while_it_lasts(events):
    clock = task.Clock()
    failures = FailureLog(clock, "maintenance tick", remind_every=600)
    for _ in range(3):
        failures.failed(Failure(CatalogFull("sqlite: database or disk is full")))
        clock.advance(2)
    assert len(lines(events)) == 1
    clock.advance(600)
    failures.failed(Failure(CatalogFull("sqlite: database or disk is full")))
    reminder = lines(events)[-1]
    assert len(lines(events)) == 2 and "still failing" in reminder and "4 times" in reminder
    for _ in range(3):
        failures.failed(Failure(RuntimeError("a bug")))  # a new kind: one traceback
    critical = [e for e in events if e.get("log_level") is LogLevel.critical]
    assert len(critical) == 1 and critical[0]["log_failure"].check(RuntimeError)
    failures.succeeded()
    failures.succeeded()
    assert len(lines(events, LogLevel.info)) == 1


@pytest_twisted.ensureDeferred
async def test_lease_renewals_and_registry_updates_log_an_outage_once(tmp_path, events):
    """The lease keepers renew every third of their TTL and the front end
    records the storage registry every probe round: while the catalog is
    locked each says so once (no traceback), then once when it works again,
    instead of a warning each time."""
    from twisted.internet import reactor

    from wsfront.config import FrontendConfig
    from wsfront.maintenance.lease import LeaseKeeper
    from wsfront.service import FrontendService

    env = await TransferEnv(reactor, tmp_path).start()
    clock = task.Clock()
    keeper = LeaseKeeper(clock, env.catalog, "fe-a", "front-end:fe-a")
    # Not started: record_node_health needs only its catalog and pool.
    config = FrontendConfig(name="fe-a", catalog="sqlite:///unused", storage=(), replicas=1,
                            secret=b"s" * 32)  # fmt: skip
    fe = FrontendService(reactor, config)
    fe.catalog, fe.pool = env.catalog, env.transfers.pool
    try:
        assert await keeper.renew()
        await fe.record_node_health()
        await make_writes_wait_briefly(env.catalog)
        with write_locked(tmp_path / "catalog.sqlite"):
            for _ in range(4):
                assert not await keeper.renew()
                await fe.record_node_health()
                clock.advance(10)
        assert [e for e in events if e.get("log_level") is LogLevel.critical] == []
        warned = [formatEvent(e) for e in events if e.get("log_level") is LogLevel.warn]
        about_lease = [w for w in warned if "lease renewal" in w]
        about_registry = [w for w in warned if "storage registry" in w or "health of" in w]
        assert len(about_lease) == 1 and "CatalogUnavailable" in about_lease[0], warned
        assert len(about_registry) == 1 and "CatalogUnavailable" in about_registry[0], warned
        assert await keeper.renew()
        await fe.record_node_health()
        infos = [formatEvent(e) for e in events if e.get("log_level") is LogLevel.info]
        assert sum("lease renewal works again after 4 failures" in i for i in infos) == 1, infos
        assert sum("storage registry update works again" in i for i in infos) == 1, infos
    finally:
        await keeper.stop()
        await env.stop()
