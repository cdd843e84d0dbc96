"""A blob whose every replica was marked stale (each failed a checksum
once) is repaired from one that reads clean now, never given up on while
a reader could still serve it; and when none reads clean, the copies are
kept and the blob is reported with its files.  Real in-process storage
servers; SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import postgres_schema_url
from tests.maintenance_env import blobs_on, check_full_strength, full_path, populate
from tests.test_maintenance_postgres import PostgresTransferEnv
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_LOST, REPLICA_STALE
from wsfront.maintenance.repair import Repairer, RepairSettings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path):
    from twisted.internet import reactor

    def run(e):
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        return e

    if request.param == "sqlite":
        e = run(TransferEnv(reactor, tmp_path, nodes=3))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))
        return
    for url in postgres_schema_url():
        e = run(PostgresTransferEnv(reactor, tmp_path, url, nodes=3))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def all_stale(env, path: str, state: str = REPLICA_STALE):
    """Mark every replica of ``path``'s one blob stale (or ``state``);
    return the blob."""
    entry = await env.catalog.stat(full_path(env, path))
    [extent] = entry.version.extents
    blob = await env.catalog.get_blob(extent.blob_id)
    for node in blob.ok_replicas:
        await env.catalog.mark_replica(blob.blob_id, node, state)
    return blob


def repairer(env) -> Repairer:
    return Repairer(
        task.Clock(), env.catalog, env.transfers.pool, RepairSettings(bytes_per_second=None)
    )


@pytest_twisted.ensureDeferred
async def test_a_blob_with_only_stale_replicas_is_repaired_from_one_that_reads_clean(env):
    files = await populate(env, count=2, size=200 * 1024)
    blob = await all_stale(env, "/f0.bin")
    damaged = sorted(blob.ok_replicas)[0]  # the first one tried
    env.corrupt(damaged, blob.blob_id, 100_000)  # still bad; the other was restored
    [spare] = {"s1", "s2", "s3"} - set(blob.ok_replicas)
    stats = await repairer(env).run_pass(now=True)
    assert stats["unrecoverable"] == [] and stats["no_verified_replica"] == [], stats
    assert stats["from_stale"] == [blob.blob_id]
    assert stats["failed"] == 1  # the copy from the damaged one
    assert stats["under_replicated"] == 0
    after = await env.catalog.get_blob(blob.blob_id)
    assert len(after.ok_replicas) == 2 and spare in after.ok_replicas
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_blob_whose_replicas_were_marked_lost_is_repaired_once_their_servers_are_back(
    env,
):
    """Both servers holding a file were down past the grace period (or
    ``wsfs repair`` ran while they were), so both replicas were marked
    lost; they came back with their disks intact.  The file reads, so it is
    no "unrecoverable" blob, and the two copies, read back whole (every
    block checked) and equal, vouch for each other: both count ok again,
    and no copy is made on the third server."""
    files = await populate(env, count=2, size=200 * 1024)
    blob = await all_stale(env, "/f0.bin", REPLICA_LOST)
    [spare] = {"s1", "s2", "s3"} - set(blob.ok_replicas)
    stats = await repairer(env).run_pass(now=True)
    assert stats["unrecoverable"] == [] and stats["no_verified_replica"] == [], stats
    assert stats["reclaimed"] == 2 and stats["copied"] == 0 and stats["from_stale"] == []
    assert stats["under_replicated"] == 0
    after = await env.catalog.get_blob(blob.blob_id)
    assert sorted(after.ok_replicas) == sorted(blob.ok_replicas)
    assert blob.blob_id not in await blobs_on(env, spare)
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_lone_lost_copy_back_with_no_ok_replica_is_copied_never_counted_ok(env):
    """Only one of the two lost copies is back (the other server's store
    was wiped): with nothing to compare it with, it is not counted ok where
    it lies.  A copy from it to the third server, checked block by block,
    is (as before); the lone copy is not then compared with that copy (made
    from it, it would prove nothing): the blob's second replica is a copy
    too."""
    files = await populate(env, count=2, size=200 * 1024)
    blob = await all_stale(env, "/f0.bin", REPLICA_LOST)
    wiped = sorted(blob.ok_replicas)[0]
    [spare] = {"s1", "s2", "s3"} - set(blob.ok_replicas)
    await env.transfers.pool.client(wiped).delete(blob.blob_id)
    stats = await repairer(env).run_pass(now=True)
    assert stats["from_stale"] == [blob.blob_id] and stats["copied"] == 2, stats
    assert stats["reclaimed"] == 0 and stats["bytes"] == 2 * blob.length
    after = await env.catalog.get_blob(blob.blob_id)
    assert len(after.ok_replicas) == 2 and spare in after.ok_replicas
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_blob_whose_lost_replicas_are_gone_too_costs_no_copy_and_says_why(env):
    """Both servers came back on wiped stores: their replicas were marked
    lost, and the blob is on neither.  Repair tries no copy (nor spends its
    throttle on one) and reports the blob as having no copy, not as copies
    that fail their checks."""
    files = await populate(env, count=2, size=200 * 1024)
    blob = await all_stale(env, "/f0.bin", REPLICA_LOST)
    for node in blob.ok_replicas:
        await env.transfers.pool.client(node).delete(blob.blob_id)
    stats = await repairer(env).run_pass(now=True)
    assert stats["failed"] == 0 and stats["copied"] == 0, stats
    [report] = stats["no_verified_replica"]
    assert report["blob"] == blob.blob_id
    assert report["why"] == "no server that is up holds a whole sealed copy"
    del files["/f0.bin"]
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_blob_no_stale_replica_of_which_reads_clean_is_reported_and_kept(env):
    files = await populate(env, count=2, size=200 * 1024)
    blob = await all_stale(env, "/f1.bin")
    for node in blob.ok_replicas:
        env.corrupt(node, blob.blob_id, 100_000)
    stats = await repairer(env).run_pass(now=True)
    assert stats["no_verified_replica"] == [
        {
            "blob": blob.blob_id,
            "stale_or_lost": 2,
            "stale": 2,  # its old name, for an older wsfs reading the result
            "why": "none of them copies clean",
            "paths": [full_path(env, "/f1.bin")],
        }
    ]
    assert stats["from_stale"] == [] and stats["under_replicated"] == 1
    after = await env.catalog.get_blob(blob.blob_id)
    assert after.ok_replicas == ()
    for node in blob.ok_replicas:  # the damaged copies are a human's to judge
        assert blob.blob_id in await blobs_on(env, node)
    [spare] = {"s1", "s2", "s3"} - set(blob.ok_replicas)
    assert blob.blob_id not in await blobs_on(env, spare)
    del files["/f1.bin"]
    await check_full_strength(env, files)


@pytest.mark.parametrize("count_key", ["stale_or_lost", "stale"])  # "stale": older front ends
@pytest_twisted.ensureDeferred
async def test_wsfs_repair_prints_each_blob_without_a_verified_replica_with_its_files(count_key):
    import argparse
    import io
    from types import SimpleNamespace

    from wsfront.cli import EXIT_UNFINISHED, Commands

    out = io.StringIO()
    commands = Commands(None, argparse.Namespace(json=False), out)
    result = {
        "copied": 0, "bytes": 0, "examined": 1, "failed": 0, "unrecoverable": [],
        "under_replicated": 1, "lost_nodes": [], "marked_lost": 0,
        "no_verified_replica": [
            {"blob": "b1", count_key: 2, "why": "none of them copies clean",
             "paths": ["/a/x", "/b/y"]}
        ],
    }  # fmt: skip

    async def job(kind, args):
        return SimpleNamespace(result=result)

    commands._job = job
    with pytest.raises(SystemExit) as ended:  # still under-replicated: not done
        await commands.repair()
    assert ended.value.code == EXIT_UNFINISHED
    assert out.getvalue().splitlines()[1] == (
        "no verified replica: 2 stale or lost, none of them copies clean: blob b1 (/a/x, /b/y); "
        "see Repair in docs/maintenance.md"
    )


@pytest_twisted.ensureDeferred
async def test_a_holder_whose_stat_never_answers_holds_up_nothing_and_is_named(env):
    """Both copies were marked lost; one server's copy is gone, the other
    server answers keepalives but never its ``stat`` (a hung disk): after
    ``STAT_TIMEOUT`` on repair's clock the pass goes on, copies nothing and
    names the server that did not answer rather than calling the data
    gone."""
    from twisted.internet import reactor

    from wsfront.maintenance.repair import STAT_TIMEOUT

    files = await populate(env, count=2, size=200 * 1024)
    blob = await all_stale(env, "/f0.bin", REPLICA_LOST)
    gone, hung = sorted(blob.ok_replicas)
    await env.transfers.pool.client(gone).delete(blob.blob_id)
    clock = task.Clock()
    hung_client, gone_client = (env.transfers.pool.client(n) for n in (hung, gone))
    real_stat = gone_client.stat

    def answered_then_time_passes(blob_id):
        # The other server's stat is asked beside it: once that one has
        # answered (not found), repair's clock passes the timeout.
        d = real_stat(blob_id)
        d.addBoth(lambda result: (reactor.callLater(0, clock.advance, STAT_TIMEOUT), result)[1])
        return d

    hung_client.stat = lambda blob_id: defer.Deferred()
    gone_client.stat = answered_then_time_passes
    try:
        stats = await Repairer(
            clock, env.catalog, env.transfers.pool, RepairSettings(bytes_per_second=None)
        ).run_pass(now=True)
    finally:
        del hung_client.stat, gone_client.stat
    assert stats["copied"] == 0 and stats["failed"] == 0, stats
    [report] = stats["no_verified_replica"]
    assert report["why"] == f"{hung} did not answer whether it holds a copy (asked again next pass)"
    del files["/f0.bin"]
    await check_full_strength(env, files)
