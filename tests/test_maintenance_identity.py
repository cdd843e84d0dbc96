"""``StoreWatch``, the lease holder's check of the servers' store ids, over
real in-process storage servers (real disks, real wire clients) and a
SQLite catalog: what is marked, what is kept, and what two front ends do.

(The end-to-end case, a process restarted on a wiped directory, is in
``test_wiped_storage``.)"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from tests.maintenance_env import full_path, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK
from wsfront.maintenance.identity import StoreWatch

NEW = "f" * 32


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest.fixture
def warnings():
    seen: list[str] = []

    def observe(event) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def quiet(pool) -> None:
    """No more probes: the store ids a test sets stand (a probe would put
    back what the servers, not wiped here, say); one probe first, after
    any the loop had on the way."""
    pool.stop()
    await pool.probe_all()


async def blobs_of(env, files, node: str) -> dict[str, str]:
    """Blob id -> the state of its replica on ``node``, for the files."""
    states = {}
    for vpath in files:
        entry = await env.catalog.stat(full_path(env, vpath))
        for extent in entry.version.extents:
            blob = await env.catalog.get_blob(extent.blob_id)
            for r in blob.replicas:
                if r.node == node:
                    states[blob.blob_id] = r.state
    return states


@pytest_twisted.ensureDeferred
async def test_only_the_replicas_a_new_store_lacks_are_marked_lost_and_once(env, warnings):
    pool = env.transfers.pool
    files = await populate(env, count=6, size=50_000)
    await quiet(pool)
    watch = StoreWatch(env.catalog, pool)
    assert await watch.check() == []  # first ids: taken silently
    registry = {n.name: n for n in await env.catalog.list_nodes()}
    assert all(registry[n.name].store_id == n.store_id is not None for n in pool.nodes())
    assert not warnings
    victim = "s1"
    old = registry[victim].store_id
    held = await blobs_of(env, files, victim)
    assert len(held) >= 2
    # The new store lacks some (gone with the old directory) and holds the
    # rest (as blobs written to it before the check would be).
    gone = sorted(held)[: len(held) // 2]
    for blob_id in gone:
        await pool.client(victim).delete(blob_id)
    pool._nodes[victim].store_id = NEW  # what its next health answer names

    assert await watch.check() == [victim]
    states = await blobs_of(env, files, victim)
    assert {b for b, s in states.items() if s == REPLICA_LOST} == set(gone)
    assert {b for b, s in states.items() if s == REPLICA_OK} == set(held) - set(gone)
    node = {n.name: n for n in await env.catalog.list_nodes()}[victim]
    assert (node.store_id, node.store_replaced, node.store_lost) == (NEW, old, len(gone))
    [warning] = warnings
    assert f"storage server {victim} came back on another data directory" in warning
    assert f"store {NEW}" in warning and f"store {old}" in warning
    assert f"lists {len(held)} replica(s) there; {len(gone)} of them are gone" in warning
    assert await env.catalog.count_under_replicated() == len(gone)

    # Checked again (the next tick) or by another front end that still
    # knew the old id: nothing more is marked, said or recorded.
    other = StoreWatch(env.catalog, pool)
    other._confirmed[victim] = old
    assert await watch.check() == [] and await other.check() == []
    assert len(warnings) == 1
    assert await blobs_of(env, files, victim) == states


@pytest_twisted.ensureDeferred
async def test_a_new_store_that_cannot_be_listed_is_left_for_the_next_check(env, warnings):
    """Down again before its listing: nothing is marked nor recorded, and
    the next check, once it answers, does it all."""
    pool = env.transfers.pool
    files = await populate(env, count=3, size=50_000)
    await quiet(pool)
    watch = StoreWatch(env.catalog, pool)
    await watch.check()
    victim = "s2"
    old = {n.name: n for n in await env.catalog.list_nodes()}[victim].store_id
    held = await blobs_of(env, files, victim)
    assert held
    pool._nodes[victim].store_id = NEW
    await env.kill(victim)  # the pool has not probed it since: still up for it
    assert await watch.check() == []
    assert [w for w in warnings if "cannot be listed yet" in w]
    assert set((await blobs_of(env, files, victim)).values()) == {REPLICA_OK}
    node = {n.name: n for n in await env.catalog.list_nodes()}[victim]
    assert (node.store_id, node.store_replaced) == (old, None)


@pytest_twisted.ensureDeferred
async def test_a_new_store_that_keeps_failing_its_listing_is_tried_ever_more_rarely(
    env, warnings, monkeypatch
):
    """A replacement store that answers health but cannot be listed (down,
    or EIO on its disk) costs a walk of the catalog per try: the tries
    thin out (waits of 1, 2, 4 ... checks) and one warning says so, not
    one per tick.  Once it can be listed, the replacement is handled."""
    from wsfront.maintenance import identity

    pool = env.transfers.pool
    files = await populate(env, count=2, size=50_000)
    await quiet(pool)
    watch = StoreWatch(env.catalog, pool)
    await watch.check()
    victim = "s3"
    pool._nodes[victim].store_id = NEW
    walks = []
    listing_fails = [True]
    real = identity.missing_replicas

    async def counted(catalog, pool_, node):
        walks.append(node)
        if listing_fails[0]:
            raise OSError("EIO listing blobs/")
        return await real(catalog, pool_, node)

    monkeypatch.setattr(identity, "missing_replicas", counted)
    seen = []
    for _ in range(10):
        assert await watch.check() == []
        seen.append(len(walks))
    # Tries at checks 1, 3 and 6, then 4 skipped (waits of 1, 2, 4).
    assert seen == [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    assert len([w for w in warnings if "cannot be listed yet" in w]) == 1
    listing_fails[0] = False
    assert await watch.check() == [victim]  # the 11th: tried again, handled
    assert len(walks) == 4
    assert await blobs_of(env, files, victim)


def test_a_creation_time_that_is_not_a_time_is_unknown():
    """A health answer's store_created of NaN or infinity (a damaged or
    hostile IDENTITY) is taken as unknown, and never breaks the warning."""
    from wsfront.maintenance.identity import _when
    from wsstorage.records import store_identity

    for created in (float("nan"), float("inf"), -float("inf")):
        assert store_identity({"store_id": NEW, "store_created": created}) == {
            "store_id": NEW,
            "store_created": None,
        }
        assert _when(created) == "at an unknown time"
    assert _when(1e300) == "at an unknown time"
    assert _when(0.0) == "1970-01-01 00:00:00 UTC"


def test_an_identity_file_whose_creation_time_is_not_a_time_is_refused():
    """json reads NaN and Infinity: a damaged IDENTITY saying so is refused
    like any other damage, not given to health answers."""
    from wsstorage.diskformat import FormatError, StoreIdentity

    for created in ("NaN", "Infinity", "-Infinity"):
        raw = f'{{"created": {created}, "store_id": "{NEW}"}}'.encode()
        with pytest.raises(FormatError):
            StoreIdentity.decode(raw, "IDENTITY")
    assert StoreIdentity.decode(f'{{"created": 5, "store_id": "{NEW}"}}'.encode(), "I").created == 5
