"""fsck's confirmations in flight (``fsck_confirm``), against real
in-process storage servers on SQLite and PostgreSQL: at most
``STATS_PER_SERVER`` stats to a server at once, and a check that fails
(a confirmation, the catalog under its main loop, ``keep_going``)
raises its own failure only once no confirmation is left running."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.fsck_flight import InFlight
from tests.maintenance_env import populate
from tests.test_fsck_confirm import FILES, collector, held_by
from tests.test_fsck_confirm import env as env  # the fixture
from wsfront.maintenance.fsck import check
from wsfront.maintenance.fsck_confirm import CONFIRM_CONCURRENCY, STATS_PER_SERVER


async def lose_all(env, victim: str) -> list[str]:
    """Delete every copy ``victim`` holds (behind the catalog's back)."""
    await populate(env, count=FILES, size=8 * 1024)
    held = await held_by(env, victim)
    for blob in held:
        env.nodes[victim].store.delete(blob)
    return held


@pytest_twisted.ensureDeferred
async def test_at_most_stats_per_server_go_to_one_server_at_once(env, monkeypatch):
    """Every copy of one server gone: more blobs' confirmations at once
    than ``STATS_PER_SERVER`` ask it, and it is asked that many at once."""
    held = await lose_all(env, "s1")
    assert len(held) > CONFIRM_CONCURRENCY > STATS_PER_SERVER
    flight = InFlight(env, monkeypatch)
    report = await check(env.catalog, env.transfers.pool, collector(env))
    assert sorted(m["blob"] for m in report["missing"]) == sorted(held), report
    assert flight.peak["s1"] == STATS_PER_SERVER, flight.peak
    assert flight.total == 0


@pytest_twisted.ensureDeferred
async def test_a_confirmation_failing_while_others_are_in_flight_fails_the_check(env, monkeypatch):
    """The record of one suspect blob cannot be read again (the catalog
    fails) while other blobs' stats are under way: the check raises that
    failure, once they are done, and does not hang."""
    await lose_all(env, "s1")
    flight = InFlight(env, monkeypatch)
    real = env.catalog.get_blob
    reads: dict[str, int] = {}
    at_failure: list[int] = []

    async def get_blob(blob_id):
        # The first blob read again (its confirmation's) while others'
        # stats are under way.
        reads[blob_id] = reads.get(blob_id, 0) + 1
        if reads[blob_id] == 2 and flight.total and not at_failure:
            at_failure.append(flight.total)
            raise RuntimeError("catalog away")
        return await real(blob_id)

    monkeypatch.setattr(env.catalog, "get_blob", get_blob)
    with pytest.raises(RuntimeError, match="catalog away"):
        await check(env.catalog, env.transfers.pool, collector(env))
    assert at_failure and at_failure[0] > 0, at_failure  # others were in flight
    assert flight.total == 0


@pytest.mark.parametrize("where", ["the catalog", "keep_going"])
@pytest_twisted.ensureDeferred
async def test_a_check_failing_in_its_main_loop_leaves_no_confirmation_running(
    env, monkeypatch, where
):
    """The main loop fails (the catalog, reading the next blob; the lease
    check raising) while confirmations are under way: the check raises
    its failure only once they are done, none left asking servers or
    reading records behind it."""
    await lose_all(env, "s1")
    # Not held: the check fails before every slot is taken.
    flight = InFlight(env, monkeypatch, hold=False)
    real = env.catalog.get_blob
    seen: set[str] = set()
    ended: list[int] = []

    async def get_blob(blob_id):
        # A blob read the first time is the main loop's (a confirmation
        # reads one it was given again).
        if where == "the catalog" and blob_id not in seen and flight.total:
            raise RuntimeError("catalog away")
        seen.add(blob_id)
        return await real(blob_id)

    def keep_going() -> bool:
        if where == "keep_going" and flight.total:
            raise RuntimeError("lease check failed")
        return True

    monkeypatch.setattr(env.catalog, "get_blob", get_blob)
    with pytest.raises(RuntimeError, match=r"catalog away|lease check failed"):
        try:
            await check(env.catalog, env.transfers.pool, collector(env), keep_going)
        finally:
            ended.append(flight.total)
    assert ended == [0], ended
