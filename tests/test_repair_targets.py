"""Where repair and rebalance copy a blob: a server whose last reported
free space holds it comes first, whatever else speaks for the others.

The pool's probe loop is stopped so each test can set what the servers
"last reported"; the bytes really go to real in-process storage servers."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, check_full_strength, full_path, hold_down, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_STALE
from wsfront.maintenance.nodes import rebalance
from wsfront.maintenance.repair import Repairer, RepairSettings

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
