"""fsck's confirmations of suspect copies run several blobs at a time
(``fsck_confirm.Confirmations``): the judgements and the report must be
those of one blob at a time, in the same order, and a check whose lease
goes while confirmations are in flight must mark nothing.  A server
whose listing failed for a disk error has its copies asked for the same
way (``check``), not all judged lost.  On SQLite and on PostgreSQL,
against real in-process storage servers."""

from __future__ import annotations

import contextlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import BACKENDS, postgres_schema_url
from tests.fsck_flight import InFlight
from tests.maintenance_env import payload, populate
from tests.test_fsck_races import after_each_listing, blob_ids, replica_states
from tests.test_maintenance_postgres import PostgresTransferEnv
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_OK
from wsfront.maintenance import fsck as fsck_module
from wsfront.maintenance.fsck import audit, check, fsck
from wsfront.maintenance.fsck_confirm import CONFIRM_CONCURRENCY, STATS_PER_SERVER
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.jobs import LeaseCheck
from wsfront.maintenance.repair import Repairer, RepairSettings

#: Files of the tests: enough blobs that more suspects than
#: ``CONFIRM_CONCURRENCY`` are confirmed at once on every server.
FILES = 48


@pytest.fixture(params=BACKENDS)
def env(request, tmp_path):
    from twisted.internet import reactor

    urls = iter([None]) if request.param == "sqlite" else postgres_schema_url()
    for url in urls:
        if url is None:
            e = TransferEnv(reactor, tmp_path, nodes=3)
        else:
            e = PostgresTransferEnv(reactor, tmp_path, url, nodes=3)
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def collector(env) -> GarbageCollector:
    return GarbageCollector(task.Clock(), env.catalog, env.transfers.pool)


async def spoil(env, count: int, short_every: int = 4) -> tuple[set, set]:
    """Of the first ``count`` files' blobs, delete one copy (each blob's
    n-th replica, going round the servers), or every ``short_every``-th
    make it short: the (blob, server) copies missing and wrong."""
    missing, wrong = set(), set()
    for i in range(count):
        [blob] = await blob_ids(env, f"/f{i}.bin")
        node = sorted(await replica_states(env, blob))[i % 2]
        store = env.nodes[node].store
        store.delete(blob)
        if i % short_every == 0:
            handle = store.open_write(blob, 1, 0, {})
            handle.write(b"short")
            handle.seal()
            wrong.add((blob, node))
        else:
            missing.add((blob, node))
    return missing, wrong


@pytest_twisted.ensureDeferred
async def test_confirmations_at_once_judge_and_report_as_one_at_a_time(env, monkeypatch):
    """Copies gone and short on every server, and a file committed after
    each listing (its copies suspects that must not be judged): the
    concurrent check reports exactly what the one-blob-at-a-time check
    does, in blob order, and marks the same copies."""
    await populate(env, count=FILES, size=8 * 1024)
    missing, wrong = await spoil(env, count=40)
    assert len({node for _, node in missing | wrong}) == 3
    late: list[str] = []

    async def commit_late():
        late.append(f"/late{len(late)}.bin")
        await env.upload(late[-1], payload(4096 + len(late)))

    after_each_listing(monkeypatch, commit_late)
    pool = env.transfers.pool
    with monkeypatch.context() as patched:
        flight = InFlight(env, patched)
        at_once = await check(env.catalog, pool, collector(env))
    # Stats went to a server several at a time, never more than its share.
    assert max(flight.peak.values()) > 1, flight.peak
    assert max(flight.peak.values()) <= STATS_PER_SERVER, flight.peak
    one_by_one = await check(env.catalog, pool, collector(env), confirm_concurrency=1)

    assert {(m["blob"], m["node"]) for m in at_once["missing"]} == missing
    assert {(w["blob"], w["node"]) for w in at_once["wrong"]} == wrong
    assert [m["blob"] for m in at_once["missing"]] == sorted(m["blob"] for m in at_once["missing"])
    # The second check saw one more file (committed after the first's listing).
    assert one_by_one.pop("blobs_checked") == at_once.pop("blobs_checked") + 1
    assert one_by_one.pop("replicas_checked") == at_once.pop("replicas_checked") + 2
    assert one_by_one == at_once
    assert len(at_once["_bad"]) == len(missing | wrong)

    assert await audit(env.catalog, pool, collector(env)) == len(missing | wrong)
    for blob, node in missing | wrong:
        assert (await replica_states(env, blob))[node] != REPLICA_OK
    for vpath in late:
        for blob in await blob_ids(env, vpath):
            assert set((await replica_states(env, blob)).values()) == {REPLICA_OK}


@pytest.mark.parametrize("how", ["fsck --fix", "audit"])
@pytest_twisted.ensureDeferred
async def test_a_lease_lost_while_confirmations_are_in_flight_marks_nothing(env, how):
    """The lease goes while the third suspect copy is asked for, others in
    flight beside it: none of the copies judged missing is marked (the new
    holder's repair may be copying them), and no confirmation starts after
    the blobs in flight."""
    await populate(env, count=FILES, size=8 * 1024)
    victim = "s1"
    gone = []
    for i in range(FILES):
        [blob] = await blob_ids(env, f"/f{i}.bin")
        if victim in await replica_states(env, blob):
            env.nodes[victim].store.delete(blob)
            gone.append(blob)
    assert len(gone) > CONFIRM_CONCURRENCY + 3
    client = env.transfers.pool.client(victim)
    real_stat = client.stat
    asked: list[str] = []
    lease = [True]

    def stat_then_lose(blob_id):
        asked.append(blob_id)
        if len(asked) == 3:
            lease[0] = False
        return real_stat(blob_id)

    client.stat = stat_then_lose
    keep_going = LeaseCheck(lambda: lease[0])
    pool = env.transfers.pool
    try:
        if how == "audit":
            assert await audit(env.catalog, pool, collector(env), keep_going) == 0
        else:
            repairer = Repairer(
                task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None)
            )
            found = await fsck(
                env.catalog, pool, repairer, collector(env), fix=True, keep_going=keep_going
            )
            assert found.get("marked", 0) == 0 and "repair" not in found, found
    finally:
        del client.stat
    assert keep_going.lost
    assert 3 <= len(asked) <= 3 + CONFIRM_CONCURRENCY, asked
    for blob in gone:
        assert (await replica_states(env, blob))[victim] == REPLICA_OK


async def failing_listing(env, monkeypatch, victim: str, then) -> None:
    """Each check's listing finds ``victim``'s blobs directory gone (a
    disk error: it answers, but cannot list), then ``then(blobs, away)``
    runs before the catalog is read."""
    assert env.nodes[victim].store.wait_fanned_out(30)  # no mkdir racing the rename
    blobs = env.nodes[victim].path / "blobs"
    away = env.nodes[victim].path / "blobs.away"
    real = fsck_module._listing

    async def listing_while_gone(pool):
        os.rename(blobs, away)
        try:
            return await real(pool)
        finally:
            then(blobs, away)

    monkeypatch.setattr(fsck_module, "_listing", listing_while_gone)


async def held_by(env, victim: str) -> list[str]:
    found = []
    for i in range(FILES):
        [blob] = await blob_ids(env, f"/f{i}.bin")
        if victim in await replica_states(env, blob):
            found.append(blob)
    return found


@pytest.mark.parametrize("how", ["fsck --fix", "audit"])
@pytest_twisted.ensureDeferred
async def test_a_server_whose_listing_failed_for_a_moment_keeps_its_good_copies(
    env, monkeypatch, how
):
    """Its listing failed with a disk error (its blobs directory away, as
    under a remount) and the disk is back before its copies are judged:
    each copy is asked for, and only the one really gone is missing and
    marked.  Judged lost unasked, every copy of the server was marked
    and re-copied, and a blob whose other copy was out of reach too had
    none left counted."""
    await populate(env, count=FILES, size=8 * 1024)
    victim = "s1"
    held = await held_by(env, victim)
    gone = held[0]
    env.nodes[victim].store.delete(gone)
    await failing_listing(env, monkeypatch, victim, lambda blobs, away: os.rename(away, blobs))
    pool = env.transfers.pool

    report = await check(env.catalog, pool, collector(env))
    assert [f["node"] for f in report["failing_nodes"]] == [victim], report
    assert [(m["blob"], m["node"]) for m in report["missing"]] == [(gone, victim)], report
    assert report["unreachable_nodes"] == [] and report["problems"] >= 2, report

    if how == "audit":
        assert await audit(env.catalog, pool, collector(env)) == 1
    else:
        repairer = Repairer(task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None))
        found = await fsck(env.catalog, pool, repairer, collector(env), fix=True)
        assert found["marked"] == 1, found
    for blob in held[1:]:
        assert (await replica_states(env, blob))[victim] == REPLICA_OK


@contextlib.contextmanager
def blobs_dir_a_file(env, victim: str):
    """``victim``'s blobs directory replaced by a file (every listing and
    stat fails with a disk error: ENOTDIR), put back after."""
    assert env.nodes[victim].store.wait_fanned_out(30)  # no mkdir racing the rename
    blobs = env.nodes[victim].path / "blobs"
    away = env.nodes[victim].path / "blobs.away"
    os.rename(blobs, away)
    blobs.write_bytes(b"not a directory\n")
    try:
        yield
    finally:
        blobs.unlink()
        os.rename(away, blobs)


@pytest_twisted.ensureDeferred
async def test_copies_on_a_server_whose_disk_fails_their_stat_too_are_unknown_not_lost(env):
    """The disk stays broken (the listing and every stat fail with a disk
    error): the server is reported failing, a problem, and none of its
    copies is judged or marked (as for a server out of reach: its disk
    may come back with them); the other servers' problems are still
    found and marked."""
    await populate(env, count=FILES, size=8 * 1024)
    victim, other = "s1", "s2"
    held = await held_by(env, victim)
    gone = next(b for b in await held_by(env, other) if b not in held)
    env.nodes[other].store.delete(gone)
    pool = env.transfers.pool
    with blobs_dir_a_file(env, victim):
        report = await check(env.catalog, pool, collector(env))
        assert [f["node"] for f in report["failing_nodes"]] == [victim], report
        assert [(m["blob"], m["node"]) for m in report["missing"]] == [(gone, other)], report
        assert report["unreachable_nodes"] == [], report
        # Its copies not judged (bar any its store answers from memory),
        # and not counted checked: the two add up to every copy counted ok.
        assert 0 < report["unknown"] <= len(held), report
        assert report["unknown"] + report["replicas_checked"] == 2 * FILES, report
        assert report["problems"] >= 2, report
        assert await audit(env.catalog, pool, collector(env)) == 1
    for blob in held:
        assert (await replica_states(env, blob))[victim] == REPLICA_OK
    assert (await replica_states(env, gone))[other] == "lost"
