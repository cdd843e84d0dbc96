"""The name claim (``wsfront.maintenance.name_claim``) on a fake clock, with
real catalogs (SQLite and PostgreSQL): how long a start watches a name's
liveness lease held by another life, and that neither a late renewal of a
live holder nor a clock skew between the hosts lets it take the name."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater

from wsfront.catalog import open_catalog
from wsfront.maintenance.host_life import ProcessMark, holder_text, this_process
from wsfront.maintenance.name_claim import Life, NameInUse, claim_name, this_life

pytest_plugins = ["tests.catalog_fixtures"]

LEASE = "front-end:fe"
HOLDER = Life("life1", "host a, pid 1, started then")
STARTER = Life("life2", "host b, pid 2, started now")


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_000_000)
    return clock


@pytest.fixture
def catalogs(catalog_url, clock):
    """Two front-end hosts' catalogs on one database: the starter's, on
    ``clock``, and a factory of the holder's, on ``clock`` shifted."""
    opened = []

    def open_(skew: float = 0.0):
        cat = open_catalog(reactor, catalog_url, clock=lambda: clock.seconds() + skew)
        opened.append(cat)
        return cat

    yield open_
    for cat in opened:
        cat.close()


async def _advance_to(clock: Clock, when: float, claim: Deferred) -> None:
    """Move the fake clock to ``when`` (relative to the start, 1_000_000),
    one timer of the claim at a time: each step waits until the claim is
    waiting on the clock (its catalog reads run on the real reactor)."""
    target = 1_000_000 + when
    while clock.seconds() < target and not claim.called:
        calls = clock.getDelayedCalls()
        if not calls:
            await deferLater(reactor, 0, lambda: None)
            continue
        clock.advance(min(min(c.getTime() for c in calls), target) - clock.seconds())


async def _outcome(claim: Deferred):
    try:
        return await claim
    except NameInUse as e:
        return e


@pytest.mark.parametrize(("ttl", "late"), [(30.0, 21.0), (3.0, 2.5)])
@pytest_twisted.ensureDeferred
async def test_a_renewal_late_by_a_lock_wait_keeps_the_name(catalogs, clock, ttl, late):
    """The holder renews every third of its ttl; one renewal held up by a
    catalog lock wait lands after 2/3 of the ttl (the old watch's end),
    still within its ttl: the start is refused, the holder keeps its name."""
    holder, starter = catalogs(), catalogs()
    assert await holder.acquire_lease(LEASE, "fe", ttl, HOLDER.token, HOLDER.holder)
    claim = ensureDeferred(claim_name(clock, starter, "fe", ttl, STARTER))
    await _advance_to(clock, late, claim)
    assert not claim.called, "took the name of a live holder"
    assert await holder.acquire_lease(LEASE, "fe", ttl, HOLDER.token, HOLDER.holder)
    await _advance_to(clock, ttl + 1, claim)
    refused = await _outcome(claim)
    assert isinstance(refused, NameInUse) and HOLDER.holder in str(refused)
    assert (await starter.get_lease_row(LEASE)).token == HOLDER.token


@pytest_twisted.ensureDeferred
async def test_a_dead_life_is_watched_a_full_ttl_then_taken_over(catalogs, clock):
    holder, starter = catalogs(), catalogs()
    assert await holder.acquire_lease(LEASE, "fe", 30, HOLDER.token, HOLDER.holder)
    seen = await holder.get_lease_row(LEASE)
    claim = ensureDeferred(claim_name(clock, starter, "fe", 9, STARTER))
    await _advance_to(clock, 29.5, claim)
    assert not claim.called
    await _advance_to(clock, 31, claim)
    assert await claim == seen
    assert clock.seconds() == 1_000_030
    assert (await starter.get_lease_row(LEASE)).token == STARTER.token
    # The dead life, were it only frozen, is refused on waking.
    assert not await holder.acquire_lease(
        LEASE, "fe", 30, HOLDER.token, HOLDER.holder, lapsed=False
    )


async def _settled(clock: Clock, claim: Deferred) -> None:
    """Wait (on the real reactor) until the claim is done or waits on the
    fake clock (a watch), without moving the clock."""
    for _ in range(100_000):
        if claim.called or clock.getDelayedCalls():
            return
        await deferLater(reactor, 0, lambda: None)
    raise AssertionError("the claim neither finished nor waited on the clock")


def _a_reaped_childs_holder() -> str:
    """The holder a life of a process of this host that is gone records."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        mark = ProcessMark(this_process().host, child.pid, ticks)
    finally:
        child.stdin.close()
        child.wait()
    return holder_text(child.pid, "then", mark)


@pytest_twisted.ensureDeferred
async def test_a_life_dead_on_this_host_is_taken_over_at_once(catalogs, clock):
    """Its process is gone from this host (same host, boot and pid
    namespace): nothing could renew the lease, so no watch (it made every
    restart after a crash wait a full ttl)."""
    dead = Life("life1", _a_reaped_childs_holder())
    holder, starter = catalogs(), catalogs()
    assert await holder.acquire_lease(LEASE, "fe", 30, dead.token, dead.holder)
    seen = await holder.get_lease_row(LEASE)
    claim = ensureDeferred(claim_name(clock, starter, "fe", 30, STARTER))
    await _settled(clock, claim)
    assert claim.called, "watched the lease of a process gone from this host"
    assert await claim == seen and clock.seconds() == 1_000_000
    assert (await starter.get_lease_row(LEASE)).token == STARTER.token


@pytest_twisted.ensureDeferred
async def test_a_life_of_a_process_running_on_this_host_is_still_watched(catalogs, clock):
    """Its process runs (here: this one, a life of the same pid and start):
    watched its full ttl as before, refused if it renews."""
    alive = Life("life1", this_life().holder)
    holder, starter = catalogs(), catalogs()
    assert await holder.acquire_lease(LEASE, "fe", 30, alive.token, alive.holder)
    claim = ensureDeferred(claim_name(clock, starter, "fe", 30, STARTER))
    await _settled(clock, claim)
    assert not claim.called, "took the name of a live process"
    await _advance_to(clock, 10, claim)
    assert await holder.acquire_lease(LEASE, "fe", 30, alive.token, alive.holder)
    await _advance_to(clock, 31, claim)
    assert isinstance(await _outcome(claim), NameInUse)


@pytest_twisted.ensureDeferred
async def test_a_starter_whose_clock_runs_ahead_still_watches(catalogs, clock):
    """25 s ahead of the holder's host, the start saw the live holder's
    lease as lapsed: it took it at once, and the holder's next renewal was
    refused (it exits).  Now it watches, sees the renewal, and is refused."""
    holder, starter = catalogs(-25.0), catalogs()
    assert await holder.acquire_lease(LEASE, "fe", 30, HOLDER.token, HOLDER.holder)
    clock.advance(6)  # the holder renews at 10
    claim = ensureDeferred(claim_name(clock, starter, "fe", 30, STARTER))
    await _advance_to(clock, 10, claim)
    assert not claim.called, "took a live holder's lease by its own clock"
    assert await holder.acquire_lease(LEASE, "fe", 30, HOLDER.token, HOLDER.holder)
    await _advance_to(clock, 40, claim)
    assert isinstance(await _outcome(claim), NameInUse)
    assert await holder.acquire_lease(LEASE, "fe", 30, HOLDER.token, HOLDER.holder)


@pytest_twisted.ensureDeferred
async def test_a_dead_lifes_lease_lapsed_by_a_skewed_clock_is_watched_and_said(catalogs, clock):
    """Lapsed by the starter's clock or not, a lease of another life is
    taken only after the watch, by compare-and-set, and the start says
    whose (the caller logs the previous life; it was None, unsaid)."""
    holder, starter = catalogs(-25.0), catalogs()
    assert await holder.acquire_lease(LEASE, "fe", 30, HOLDER.token, HOLDER.holder)
    seen = await holder.get_lease_row(LEASE)
    clock.advance(6)
    claim = ensureDeferred(claim_name(clock, starter, "fe", 30, STARTER))
    await _advance_to(clock, 35.5, claim)
    assert not claim.called
    await _advance_to(clock, 37, claim)
    assert await claim == seen


async def _older_codes_lease(catalog) -> bool:
    """The liveness lease as code before schema 11 took it: no token,
    holder or ttl recorded."""
    if not await catalog.acquire_lease(LEASE, "fe", 30):
        return False
    sql = "UPDATE leases SET token = NULL, holder = NULL, ttl_seconds = NULL WHERE name = ?"
    await catalog._write(lambda tx: tx.execute(sql, LEASE))
    return (await catalog.get_lease_row(LEASE)).ttl_seconds is None


@pytest_twisted.ensureDeferred
async def test_a_row_of_older_code_is_watched_past_its_expiry(catalogs, clock):
    """No ttl recorded: watched max(own ttl, its expiry as seen + 10 s)."""
    holder, starter = catalogs(), catalogs()
    assert await _older_codes_lease(holder)
    claim = ensureDeferred(claim_name(clock, starter, "fe", 9, STARTER))
    await _advance_to(clock, 35, claim)
    assert not claim.called
    assert await holder.acquire_lease(LEASE, "fe", 30)
    await _advance_to(clock, 80, claim)
    assert isinstance(await _outcome(claim), NameInUse)
    # Not renewed: taken over once its expiry + 10 s passed.
    await holder.release_lease(LEASE, "fe")
    assert await _older_codes_lease(holder)
    start = clock.seconds()
    seen = await holder.get_lease_row(LEASE)
    claim = ensureDeferred(claim_name(clock, starter, "fe", 9, STARTER))
    await _advance_to(clock, start - 1_000_000 + 50, claim)
    assert await claim == seen
    assert clock.seconds() == start + 40


@pytest_twisted.ensureDeferred
async def test_a_free_name_or_a_clean_stop_is_taken_at_once(catalogs, clock):
    starter = catalogs()
    assert await claim_name(clock, starter, "fe", 30, STARTER) is None
    assert await starter.release_lease(LEASE, "fe", STARTER.token)
    assert await claim_name(clock, starter, "fe", 30, HOLDER) is None
    assert clock.seconds() == 1_000_000


@pytest_twisted.ensureDeferred
async def test_a_front_ends_life_is_that_of_the_process_that_starts_it(tmp_path, monkeypatch):
    """twistd builds the service, then daemonizes (a fork: another pid),
    then starts it: the life recorded with the lease (and named by a start
    it refuses) must carry the pid of the process that runs."""
    import os

    from wsfront.config import FrontendConfig
    from wsfront.maintenance import name_claim
    from wsfront.service import FrontendService

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    config = FrontendConfig(
        name="fe", catalog=url, storage=(), replicas=1, secret=b"s" * 32,
        http="tcp:0:interface=127.0.0.1",
    )  # fmt: skip
    fe = FrontendService(reactor, config)
    daemon = os.getpid() + 1
    monkeypatch.setattr(name_claim.os, "getpid", lambda: daemon)
    fe.startService()
    try:
        await fe.ready
        row = await fe.catalog.get_lease_row(LEASE)
        assert f"pid {daemon}," in row.holder and row.token == fe.life.token
    finally:
        await fe.stopService()


@pytest_twisted.ensureDeferred
async def test_a_life_frozen_on_a_host_ahead_does_not_take_its_name_back(catalogs, clock):
    """The name was taken over while this life was frozen; its host's clock
    runs 25 s ahead, so the successor's lease looks lapsed to it: its
    liveness renewal (``MaintenanceService.liveness``) is refused all the
    same (it lost the name), and the successor keeps it."""
    from wsfront.maintenance.lease import LeaseKeeper
    from wsfront.maintenance.service import MaintenanceService

    successor, frozen = catalogs(), catalogs(25.0)
    assert await successor.acquire_lease(LEASE, "fe", 30, STARTER.token, STARTER.holder)
    clock.advance(6)
    lost: list[bool] = []
    maintenance = MaintenanceService(
        clock, frozen, None, "fe", life=HOLDER, on_name_lost=lambda: lost.append(True)
    )
    keeper: LeaseKeeper = maintenance.liveness
    assert not await keeper.renew()
    assert lost == [True]
    assert (await successor.get_lease_row(LEASE)).token == STARTER.token
    # The maintenance lease between front ends keeps its expiry rule.
    assert maintenance.lease.ttl and await successor.acquire_lease("maintenance", "fe-b", 30)
    clock.advance(31)
    assert await maintenance.lease.renew()
