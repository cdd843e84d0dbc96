"""``StoreWatch``, the lease holder's check of the servers' store ids, over
real in-process storage servers (real disks, real wire clients) and a
SQLite catalog: what is marked, what is kept, and what two front ends do.

(The end-to-end case, a process restarted on a wiped directory, is in
``test_wiped_storage``.)"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from tests.maintenance_env import full_path, populate
from tests.transfer_env import SECRET, Collector, TransferEnv
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK
from wsfront.maintenance.identity import StoreWatch
from wsstorage.blobstore import BlobStore
from wsstorage.fsshims import NoRoomFileSystem
from wsstorage.server import StorageServerFactory

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


async def sha256_on(pool, node: str, blob_id: str) -> str:
    """sha256 of ``node``'s whole copy of ``blob_id``, read from it."""
    client = pool.client(node)
    size = (await client.stat(blob_id)).size
    sink = Collector()
    await client.read(blob_id, 0, size, sink)
    assert len(sink.data) == size
    return hashlib.sha256(sink.data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_an_older_store_on_a_full_disk_serves_and_its_first_id_is_no_replacement(
    env, warnings
):
    """s1 restarts on a store made before identities (no IDENTITY, the
    catalog knows no id for it) whose disk is full: its IDENTITY cannot be
    written.  It starts anyway and serves reads and deletes; its health
    answers name no store, and StoreWatch marks nothing.  Once there is
    room, the next health answer writes IDENTITY and names it, and
    StoreWatch takes it as s1's first id: no replacement, nothing lost."""
    from twisted.internet import reactor

    files = await populate(env, count=3, size=50_000)
    victim = "s1"
    node = env.nodes[victim]
    stray = "a" * 32  # a blob no file refers to, for the delete
    await env.transfers.pool.client(victim).put(stray, 1, {}, b"x" * 100_000)
    held = await blobs_of(env, files, victim)
    assert held
    registry = {n.name: n for n in await env.catalog.list_nodes()}
    assert registry[victim].store_id is None  # as from before schema 8
    port = node.port.getHost().port
    await node.kill()
    node.store.close()
    os.unlink(node.path / "IDENTITY")
    fs = NoRoomFileSystem()
    fs.full = True
    node.store = BlobStore.open(node.path, fs=fs)  # raised ENOSPC before
    node.factory = StorageServerFactory(reactor, node.store, victim, SECRET)
    await node.listen(port)
    assert node.store.identity is None
    [warning] = warnings
    assert "no IDENTITY file yet" in warning and "the disk is full" in warning

    # A front end that heard nothing of s1 before (one that had heard the
    # id this test's removal took away would keep it, as pools do).
    pool = (await env.front_end("fe-b")).pool
    await quiet(pool)
    health = await pool.client(victim).health()
    assert (health.store_id, health.store_created) == (None, None)
    nodes = {n.name: n for n in pool.nodes()}
    assert nodes[victim].up and nodes[victim].store_id is None
    for blob_id in held:
        blob = await env.catalog.get_blob(blob_id)
        other = next(r.node for r in blob.replicas if r.node != victim)
        assert await sha256_on(pool, victim, blob_id) == await sha256_on(pool, other, blob_id)
    await pool.client(victim).delete(stray)
    watch = StoreWatch(env.catalog, pool)
    for _ in range(3):
        await pool.probe_all()
        assert await watch.check() == []
    assert {n.name: n for n in await env.catalog.list_nodes()}[victim].store_id is None
    assert set((await blobs_of(env, files, victim)).values()) == {REPLICA_OK}
    # One line about IDENTITY, not one per health answer (the pool says,
    # once, that s1 takes no new writes: the disk check finds it full).
    assert [w for w in warnings if "IDENTITY" in w or "store" in w] == [warning]
    assert not [w for w in warnings if "another data directory" in w]

    fs.full = False  # the room the delete gave back
    await pool.probe_all()
    written = json.loads((node.path / "IDENTITY").read_text())["store_id"]
    assert {n.name: n for n in pool.nodes()}[victim].store_id == written
    assert await watch.check() == []
    row = {n.name: n for n in await env.catalog.list_nodes()}[victim]
    assert (row.store_id, row.store_replaced, row.store_lost) == (written, None, None)
    assert set((await blobs_of(env, files, victim)).values()) == {REPLICA_OK}
    assert await env.catalog.count_under_replicated() == 0
    assert [w for w in warnings if "IDENTITY" in w or "store" in w] == [warning]
    assert not [w for w in warnings if "another data directory" in w]


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
