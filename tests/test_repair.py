"""Repair over real storage servers: lost servers, grace, throttling, damage."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import (
    blobs_on,
    check_full_strength,
    full_path,
    populate,
)
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_LOST, REPLICA_STALE
from wsfront.maintenance.repair import Repairer, RepairSettings
from wsfront.maintenance.throttle import Throttle


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(
        defer.ensureDeferred(TransferEnv(reactor, tmp_path, nodes=4).start())
    )
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def repairer(env, clock=None, **settings) -> Repairer:
    from twisted.internet import reactor

    settings.setdefault("bytes_per_second", None)
    return Repairer(clock or reactor, env.catalog, env.transfers.pool, RepairSettings(**settings))


async def busiest(env) -> str:
    """The storage server holding the most blobs.  Placement goes by free
    space, and with every server on one disk that others write to, a given
    name may well hold nothing: pick the victim by what it holds."""
    held = {name: len(await blobs_on(env, name)) for name in sorted(env.nodes)}
    name = max(held, key=held.get)
    assert held[name], "the victim must hold replicas for the test to mean much"
    return name


async def kill(env, name: str) -> None:
    await env.nodes[name].kill()
    await env.transfers.pool.probe_all()
    assert not env.transfers.pool.is_up(name)


@pytest_twisted.ensureDeferred
async def test_repair_now_restores_every_file_after_a_server_is_lost_for_good(env):
    files = await populate(env, count=8)
    victim = await busiest(env)
    await kill(env, victim)
    progress = []
    result = await repairer(env).run_pass(now=True, progress=progress.append)
    assert result["lost_nodes"] == [victim]
    assert result["marked_lost"] > 0
    assert result["copied"] == result["marked_lost"]
    assert result["under_replicated"] == 0
    assert progress[0]["phase"] == "marking"
    assert progress[-1]["phase"] == "done"
    await check_full_strength(env, files, dead=[victim])


@pytest_twisted.ensureDeferred
async def test_automatic_repair_waits_the_grace_period_before_counting_a_server_lost(env):
    files = await populate(env, count=4)
    clock = task.Clock()
    rep = repairer(env, clock=clock, grace_seconds=60.0)
    victim = await busiest(env)
    await kill(env, victim)
    first = await rep.run_pass()
    assert first["lost_nodes"] == [] and first["copied"] == 0
    assert await env.catalog.count_under_replicated() == 0  # still counted ok
    clock.advance(59)
    assert (await rep.run_pass())["copied"] == 0
    clock.advance(1)
    second = await rep.run_pass()
    assert second["lost_nodes"] == [victim] and second["copied"] > 0
    await check_full_strength(env, files, dead=[victim])


@pytest_twisted.ensureDeferred
async def test_a_server_back_within_the_grace_period_is_never_counted_lost(env):
    await populate(env, count=3)
    clock = task.Clock()
    rep = repairer(env, clock=clock, grace_seconds=60.0)
    await kill(env, "s3")
    await rep.run_pass()
    env.endpoints["s3"] = await env.nodes["s3"].listen(int(env.endpoints["s3"].rsplit(":", 1)[1]))
    await env.transfers.pool.probe_all()
    clock.advance(120)
    result = await rep.run_pass()
    assert result["lost_nodes"] == [] and result["copied"] == 0


@pytest_twisted.ensureDeferred
async def test_a_damaged_replica_is_replaced_from_a_good_one(env):
    files = await populate(env, count=1)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    bad = extent.replicas[0].node
    rep = repairer(env)
    await rep.report_damaged(extent.blob_id, bad)
    blob = await env.catalog.get_blob(extent.blob_id)
    assert {r.node: r.state for r in blob.replicas}[bad] == REPLICA_STALE
    result = await rep.run_pass()
    assert result["copied"] == 1
    blob = await env.catalog.get_blob(extent.blob_id)
    assert len(blob.ok_replicas) == 2 and bad not in blob.ok_replicas
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_stale_leftover_on_the_only_free_target_is_replaced_not_trusted(tmp_path):
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path, nodes=3).start()
    try:
        files = await populate(env, count=1)
        entry = await env.catalog.stat(full_path(env, "/f0.bin"))
        [extent] = entry.version.extents
        holders = [r.node for r in extent.replicas]
        [spare] = set(env.nodes) - set(holders)
        # Put a wrong sealed copy of the blob on the spare server.
        store = env.nodes[spare].store
        handle = store.open_write(extent.blob_id, 1, 0, {})
        handle.write(b"not the file")
        handle.seal()
        # holders[0]'s copy is gone (fsck marks such a one lost): one intact
        # there would be counted ok again instead of copied.
        await env.transfers.pool.client(holders[0]).delete(extent.blob_id)
        await env.catalog.mark_replica(extent.blob_id, holders[0], REPLICA_LOST)
        result = await repairer(env).run_pass()
        assert result["copied"] == 1
        blob = await env.catalog.get_blob(extent.blob_id)
        assert spare in blob.ok_replicas
        assert env.nodes[spare].store.stat(extent.blob_id).size == extent.length
        await check_full_strength(env, files)
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_blob_with_no_reachable_replica_is_reported_unrecoverable(env):
    await populate(env, count=1)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    for r in extent.replicas:
        await kill(env, r.node)
    result = await repairer(env).run_pass(now=True)
    assert result["unrecoverable"] == [extent.blob_id]
    assert result["under_replicated"] == 1


def test_throttle_spaces_copies_by_their_size():
    clock = task.Clock()
    throttle = Throttle(clock, bytes_per_second=1000)
    first = throttle.reserve(1000)
    assert first.called  # the burst
    second = throttle.reserve(500)
    assert not second.called
    clock.advance(0.49)
    assert not second.called
    clock.advance(0.02)
    assert second.called
    assert Throttle(clock, None).reserve(10**12).called


class GateThrottle:
    """A throttle the test opens by hand, recording what was asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.gates: list[defer.Deferred] = []

    def reserve(self, nbytes: int) -> defer.Deferred:
        self.asked.append(nbytes)
        d: defer.Deferred = defer.Deferred()
        self.gates.append(d)
        return d


@pytest_twisted.ensureDeferred
async def test_no_copy_starts_before_the_throttle_allows_its_bytes(env):
    from twisted.internet import reactor

    await populate(env, count=3, size=100 * 1024)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    victim = entry.version.extents[0].replicas[0].node
    gate = GateThrottle()
    rep = Repairer(
        reactor,
        env.catalog,
        env.transfers.pool,
        RepairSettings(concurrency=1),
        throttle=gate,
    )
    await kill(env, victim)
    d = defer.ensureDeferred(rep.run_pass(now=True))
    while not gate.gates:
        await task.deferLater(reactor, 0, lambda: None)
    under = await env.catalog.count_under_replicated()
    assert under > 0 and not d.called
    sizes = set()
    for i in range(3):
        e = await env.catalog.stat(full_path(env, f"/f{i}.bin"))
        sizes.add(e.version.size)
    assert gate.asked[0] in sizes  # the budget is asked for the blob's bytes
    released = 0
    while not d.called:
        if released < len(gate.gates):
            gate.gates[released].callback(None)
            released += 1
        await task.deferLater(reactor, 0, lambda: None)
    result = await d
    assert result["copied"] == len(gate.asked) == under
    assert result["under_replicated"] == 0


@pytest_twisted.ensureDeferred
async def test_repair_now_counts_a_server_no_front_end_knows_as_lost(env):
    files = await populate(env, count=1)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    [extent] = entry.version.extents
    await env.catalog.add_replica(extent.blob_id, "s-retired")  # a server long gone
    # Its copy is gone too (as fsck marks one lost): an intact one would be
    # counted ok again, not copied.
    await env.transfers.pool.client(extent.replicas[0].node).delete(extent.blob_id)
    await env.catalog.mark_replica(extent.blob_id, extent.replicas[0].node, REPLICA_LOST)
    rep = repairer(env)
    assert (await rep.run_pass())["copied"] == 0  # s-retired still counts ok
    result = await rep.run_pass(now=True)
    assert result["marked_lost"] == 1 and result["copied"] == 1
    blob = await env.catalog.get_blob(extent.blob_id)
    assert "s-retired" not in blob.ok_replicas and len(blob.ok_replicas) == 2
    await check_full_strength(env, files)


class CountingCatalog:
    """The catalog, counting directory listings (the namespace walk)."""

    def __init__(self, catalog) -> None:
        self._catalog = catalog
        self.listings = 0

    def list_dir(self, *args, **kw):
        self.listings += 1
        return self._catalog.list_dir(*args, **kw)

    def __getattr__(self, name):
        return getattr(self._catalog, name)


@pytest_twisted.ensureDeferred
async def test_a_lost_server_costs_one_namespace_walk_not_one_per_pass(env):
    from twisted.internet import reactor

    await populate(env, count=3)
    counting = CountingCatalog(env.catalog)
    rep = Repairer(reactor, counting, env.transfers.pool, RepairSettings(grace_seconds=0))
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    await kill(env, entry.version.extents[0].replicas[0].node)
    first = await rep.run_pass()
    assert first["marked_lost"] > 0 and counting.listings > 0
    walked = counting.listings
    second = await rep.run_pass()
    assert second["marked_lost"] == 0 and counting.listings == walked
