"""Where repair and rebalance copy a blob: a server whose last reported
free space holds it comes first, whatever else speaks for the others.

The pool's probe loop is stopped so each test can set what the servers
"last reported"; the bytes really go to real in-process storage servers."""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, check_full_strength, full_path, hold_down, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_STALE
from wsfront.maintenance.nodes import rebalance
from wsfront.maintenance.repair import Repairer, RepairSettings
from wsstorage.errors import NodeUnavailable

GiB = 1 << 30


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=4)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    e.transfers.pool.stop()  # free space is the test's to set from here on
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def report_free(env, **free: int) -> None:
    for node in env.transfers.pool.nodes():
        if node.name in free:
            node.free_bytes = free[node.name]


@pytest_twisted.ensureDeferred
async def test_repair_copies_to_a_server_the_blob_fits_on_first(env):
    """The probe's case: a server with 1.5 MiB free came first for a 5 MiB
    blob (it had no copy at all, the other one a stale one)."""
    files = await populate(env, count=1, size=5 << 20)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    blob = await env.catalog.get_blob(extent.blob_id)
    dead, kept = blob.ok_replicas
    small, roomy = sorted({"s1", "s2", "s3", "s4"} - {dead, kept})
    # ``roomy`` once held a copy found damaged; ``small`` has none.
    await env.catalog.add_replica(blob.blob_id, roomy)
    await env.catalog.mark_replica(blob.blob_id, roomy, REPLICA_STALE)
    # Both within the pool's "similar free space" band, so its order alone
    # would not keep ``small`` out.
    report_free(env, **{small: 3 << 19, roomy: 300 << 20})
    await env.kill(dead)
    env.transfers.pool.mark_down(dead, "killed")
    repairer = Repairer(
        task.Clock(),
        env.catalog,
        env.transfers.pool,
        RepairSettings(bytes_per_second=None, grace_seconds=0.0),
    )
    stats = await repairer.run_pass()
    assert (stats["copied"], stats["failed"], stats["under_replicated"]) == (1, 0, 0), stats
    assert set((await env.catalog.get_blob(blob.blob_id)).ok_replicas) == {kept, roomy}
    assert blob.blob_id not in await blobs_on(env, small)
    await check_full_strength(env, files, dead=[dead])


@pytest_twisted.ensureDeferred
async def test_rebalance_sends_no_blob_to_a_server_it_would_not_fit_on(env):
    pool = env.transfers.pool
    # Held down by hand; the probe loop stays stopped, so no background
    # probe undoes the up flag or the free space reported below.
    await hold_down(pool, "s4", "not added yet")
    files = await populate(env, count=6, size=200 << 10)
    pool.nodes()[3].up = True  # s4 comes back, empty
    assert await blobs_on(env, "s4") == set()
    # rebalance probes first: the reports come from a stand-in health.
    sizes = []
    for path in files:
        for extent in (await env.catalog.stat(full_path(env, path))).version.extents:
            sizes.append((await env.catalog.get_blob(extent.blob_id)).length)
    sizes.sort()
    room = sizes[-1] + 10  # any one fits, no two
    real_probe = pool.probe_all

    async def probe_then_report():
        await real_probe()
        report_free(env, s4=room)

    pool.probe_all = probe_then_report
    stats = await rebalance(env.catalog, pool, Repairer(task.Clock(), env.catalog, pool))
    assert stats["moved"] == 1, stats
    assert stats["bytes"] <= room
    await check_full_strength(env, files)


def room_for(node, size: int) -> None:
    """Leave ``node`` exactly ``size`` bytes above its reserve (as
    ``tests/test_compact.py`` does), by far the most free otherwise."""
    node.free_bytes += 1 << 40
    node.reserve_bytes = node.free_bytes - node.placed_bytes - size


async def one_blob_missing_a_replica(env):
    """One 1 MiB file whose blob lost a replica (its server killed, the
    pool told): the files, the blob, the survivor, the two servers
    without a copy."""
    files = await populate(env, count=1, size=1 << 20)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    blob = await env.catalog.get_blob(extent.blob_id)
    dead, kept = blob.ok_replicas
    spare = sorted({"s1", "s2", "s3", "s4"} - {dead, kept})
    await env.kill(dead)
    env.transfers.pool.mark_down(dead, "killed")
    return files, blob, kept, spare


def holds(env) -> dict[str, dict]:
    return {n.name: dict(n.holds) for n in env.transfers.pool.nodes()}


def no_holds(env) -> dict[str, dict]:
    return {n.name: {} for n in env.transfers.pool.nodes()}


@pytest_twisted.ensureDeferred
async def test_a_server_whose_reserve_leaves_it_short_of_the_blob_is_tried_last(env):
    """Both servers without a copy are the most free by far; one's reserve
    leaves it a byte short of the blob: the copy goes to the other, which
    holds its room while it runs and nothing after."""
    files, blob, kept, spare = await one_blob_missing_a_replica(env)
    nodes = {n.name: n for n in env.transfers.pool.nodes()}
    short, roomy = spare
    room_for(nodes[short], blob.length - 1)
    room_for(nodes[roomy], blob.length)
    repairer = Repairer(
        task.Clock(),
        env.catalog,
        env.transfers.pool,
        RepairSettings(bytes_per_second=None, grace_seconds=0.0),
    )
    assert repairer.targets(blob, exclude={kept}) == [roomy, short]
    stats = await repairer.run_pass()
    assert (stats["copied"], stats["failed"], stats["under_replicated"]) == (1, 0, 0), stats
    assert set((await env.catalog.get_blob(blob.blob_id)).ok_replicas) == {kept, roomy}
    assert blob.blob_id not in await blobs_on(env, short)
    assert holds(env) == no_holds(env)
    await check_full_strength(env, files, dead=sorted(set(blob.ok_replicas) - {kept}))


@pytest_twisted.ensureDeferred
async def test_repair_still_copies_where_only_the_reserve_count_says_no_room(env):
    """Every server without a copy is short of the blob by the pool's count
    (their reserves), but their disks are not full and a storage server
    checks its reserve only when a blob is created: the copy is made, on a
    last-resort target without a hold, rather than leaving the blob one
    replica short on every pass."""
    files, blob, kept, spare = await one_blob_missing_a_replica(env)
    nodes = {n.name: n for n in env.transfers.pool.nodes()}
    for name in spare:
        room_for(nodes[name], blob.length - 1)
    repairer = Repairer(
        task.Clock(),
        env.catalog,
        env.transfers.pool,
        RepairSettings(bytes_per_second=None, grace_seconds=0.0),
    )
    stats = await repairer.run_pass()
    assert (stats["copied"], stats["failed"], stats["under_replicated"]) == (1, 0, 0), stats
    assert holds(env) == no_holds(env)
    assert [nodes[name].placed_bytes for name in spare] == [0, 0]
    await check_full_strength(env, files, dead=sorted(set(blob.ok_replicas) - {kept}))


@pytest_twisted.ensureDeferred
async def test_a_copy_holds_the_blobs_room_on_its_target_until_it_ends(env):
    """While the copy runs its target counts the blob's size as taken (a
    second copy or upload placed meanwhile goes elsewhere: here the
    target had room for exactly one), claimed so the pool never gives it
    back with a warning as unclaimed; given back once recorded."""
    _, blob, kept, spare = await one_blob_missing_a_replica(env)
    pool = env.transfers.pool
    nodes = {n.name: n for n in pool.nodes()}
    target, other = spare
    room_for(nodes[target], blob.length)
    repairer = Repairer(task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None))
    client = pool.client(target)
    real_copy_from = client.copy_from
    seen = []

    def copy_from(blob_id, source):
        [placement] = nodes[target].holds.values()
        seen.append(
            (
                placement.size,
                placement.outstanding(),
                placement.written is not None,
                nodes[target].has_room_for(1),
                repairer.targets(blob, exclude={kept}),
            )
        )
        return real_copy_from(blob_id, source)

    client.copy_from = copy_from
    try:
        stats: dict = {"copied": 0, "bytes": 0, "failed": 0}
        assert await repairer.copy(blob, target, [kept], stats)
    finally:
        del client.copy_from
    # The target, full by the pool's count now, is tried last by a second copy.
    assert seen == [(blob.length, blob.length, True, False, [other, target])]
    assert holds(env) == no_holds(env)
    # Its bytes are on the target's disk now: counted as used there until
    # the server's next health answer shows them so.
    assert nodes[target].placed_bytes == blob.length
    assert target in (await env.catalog.get_blob(blob.blob_id)).ok_replicas


@pytest_twisted.ensureDeferred
async def test_a_failed_copy_gives_back_the_room_it_held(env):
    _, blob, kept, spare = await one_blob_missing_a_replica(env)
    pool = env.transfers.pool
    target = spare[0]
    client = pool.client(target)
    held = []

    def copy_from(blob_id, source):
        held.append(holds(env)[target] != {})
        return defer.fail(NodeUnavailable("the source went away"))

    client.copy_from = copy_from
    try:
        stats: dict = {"copied": 0, "bytes": 0, "failed": 0}
        repairer = Repairer(task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None))
        assert not await repairer.copy(blob, target, [kept], stats)
    finally:
        del client.copy_from
    assert (stats["copied"], stats["failed"], held) == (0, 1, [True])
    assert holds(env) == no_holds(env)
    assert all(n.placed_bytes == 0 for n in pool.nodes())


@pytest_twisted.ensureDeferred
async def test_rebalance_sends_only_a_blob_that_fits_above_the_reserve(env):
    """The emptiest server reports plenty free, but its reserve leaves room
    for the smallest blob it could take and no more: that one moves (not
    the largest, which it would refuse, ending the rebalance)."""
    pool = env.transfers.pool
    await hold_down(pool, "s4", "not added yet")
    files = await populate(env, count=6, size=200 << 10)
    pool.nodes()[3].up = True  # s4 comes back, empty
    # The server rebalance moves from: the one holding the most bytes.
    load = {}
    for name in ("s1", "s2", "s3"):
        load[name] = sum(i.size for i in await pool.client(name).list_blobs())
    src = max(load, key=lambda n: (load[n], n))
    smallest = min(i.size for i in await pool.client(src).list_blobs())
    real_probe = pool.probe_all

    async def probe_then_report():
        await real_probe()
        s4 = pool.nodes()[3]
        s4.free_bytes = 1 << 40
        s4.reserve_bytes = s4.free_bytes - smallest - 10

    pool.probe_all = probe_then_report
    stats = await rebalance(env.catalog, pool, Repairer(task.Clock(), env.catalog, pool))
    assert (stats["moved"], stats["bytes"]) == (1, smallest), stats
    assert holds(env) == no_holds(env)
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_repair_leaves_out_a_server_whose_disk_cannot_hold_the_blob(env):
    """A server whose last report shows less free space than the blob, its
    reserve spent, is no target: the copy would fill its disk and fail, on
    every pass.  One whose reserve alone leaves it short is still tried
    last; one that holds a stale copy of the blob gets that copy's room
    counted, since the copy deletes it first."""
    files, blob, kept, spare = await one_blob_missing_a_replica(env)
    nodes = {n.name: n for n in env.transfers.pool.nodes()}
    tiny, roomy = spare
    nodes[tiny].free_bytes = blob.length - 1
    nodes[tiny].reserve_bytes = 0
    repairer = Repairer(
        task.Clock(),
        env.catalog,
        env.transfers.pool,
        RepairSettings(bytes_per_second=None, grace_seconds=0.0),
    )
    assert repairer.targets(blob, exclude={kept}) == [roomy]
    stale = attrs.evolve(blob, replicas=[*blob.replicas, attrs.evolve(blob.replicas[0], node=tiny)])
    assert repairer.targets(stale, exclude={kept}) == [roomy, tiny]
    stats = await repairer.run_pass()
    assert (stats["copied"], stats["failed"], stats["under_replicated"]) == (1, 0, 0), stats
    assert blob.blob_id not in await blobs_on(env, tiny)
    await check_full_strength(env, files, dead=sorted(set(blob.ok_replicas) - {kept}))
