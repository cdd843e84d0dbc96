"""fsck and the periodic audit against uploads, copies and GC that land
while they run: a server's listing is a snapshot taken before the catalog
is read, so a blob committed in between is referenced, counted ok and
absent (or open) in that listing.  Such a copy must be neither reported
missing or wrong nor marked; a copy that is really gone or short still is.

Each check is hooked between its steps (the servers' listing, the
catalog's record of a blob) the way the other fsck tests hook the pool;
on SQLite and on PostgreSQL."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import BACKENDS, postgres_schema_url
from tests.maintenance_env import MiB, check_full_strength, full_path, payload, populate
from tests.test_maintenance_postgres import PostgresTransferEnv
from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog.records import REPLICA_OK
from wsfront.maintenance import fsck as fsck_module
from wsfront.maintenance.fsck import audit, fsck
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.repair import Repairer, RepairSettings


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


async def run(env, fix=False, gc=None):
    pool = env.transfers.pool
    repairer = Repairer(task.Clock(), env.catalog, pool, RepairSettings(bytes_per_second=None))
    return await fsck(env.catalog, pool, repairer, gc or collector(env), fix=fix)


async def blob_ids(env, vpath: str) -> list[str]:
    entry = await env.catalog.stat(full_path(env, vpath))
    return [extent.blob_id for extent in entry.version.extents]


async def replica_states(env, blob_id: str) -> dict[str, str]:
    blob = await env.catalog.get_blob(blob_id)
    return {r.node: r.state for r in blob.replicas}


def after_each_listing(monkeypatch, step):
    """Run ``step()`` (awaited) after every check's listing of the servers,
    before it reads the catalog.  The listings taken, in order."""
    real = fsck_module._listing
    listings = []

    async def listing_then_step(pool):
        listed = await real(pool)
        listings.append(listed)
        await step()
        return listed

    monkeypatch.setattr(fsck_module, "_listing", listing_then_step)
    return listings


def commit_after_each_listing(env, monkeypatch) -> tuple[dict[str, bytes], list]:
    """Each check lists the servers, then a new file is uploaded and
    committed before it reads the catalog.  The files committed so (path
    -> bytes) and the listings."""
    committed: dict[str, bytes] = {}

    async def commit():
        vpath = f"/late{len(committed)}.bin"
        data = payload(40 * 1024 + len(committed))
        await env.upload(vpath, data)
        committed[vpath] = data

    return committed, after_each_listing(monkeypatch, commit)


async def unlisted(env, listing, vpath: str) -> list[tuple[str, str]]:
    """The (blob, server) replicas of ``vpath`` ``listing`` did not see
    sealed: the race the test means to set up did happen."""
    found = []
    for blob_id in await blob_ids(env, vpath):
        for node in await replica_states(env, blob_id):
            info = listing.held[node].get(blob_id)
            if info is None or not info.sealed:
                found.append((blob_id, node))
    return found


async def all_ok(env, vpaths) -> None:
    for vpath in vpaths:
        for blob_id in await blob_ids(env, vpath):
            states = await replica_states(env, blob_id)
            assert set(states.values()) == {REPLICA_OK}, (vpath, states)


@pytest_twisted.ensureDeferred
async def test_a_file_committed_after_the_listing_is_neither_reported_nor_marked(env, monkeypatch):
    files = await populate(env, count=2)
    committed, listings = commit_after_each_listing(env, monkeypatch)

    report = await run(env)
    assert await unlisted(env, listings[0], "/late0.bin")
    assert (report["missing"], report["wrong"]) == ([], []), report
    assert report["problems"] == 0, report
    assert report["blobs_checked"] == 3

    fixed = await run(env, fix=True)
    assert await unlisted(env, listings[1], "/late1.bin")
    assert (fixed["missing"], fixed["wrong"], fixed["marked"]) == ([], [], 0), fixed
    await all_ok(env, committed)
    await check_full_strength(env, files | committed)


@pytest_twisted.ensureDeferred
async def test_an_upload_open_at_the_listing_and_committed_after_is_not_wrong(env, monkeypatch):
    """The listing saw the blob open (its upload under way); the upload
    commits before the catalog is read, which then counts it sealed."""
    from twisted.internet import reactor

    await populate(env, count=1)
    data = payload(MiB)  # past the put limit: streamed, so open on the servers
    half = 600 * 1024
    session = await env.transfers.open_write(env.user, "/slow.bin", 0)
    await Feeder(reactor, session, data, stop_at=half).start()

    async def finish():
        await Feeder(reactor, session, data[half:]).start()
        await session.finish()

    listings = after_each_listing(monkeypatch, finish)
    report = await run(env, fix=True)
    assert (report["missing"], report["wrong"], report["marked"]) == ([], [], 0), report
    [blob_id] = await blob_ids(env, "/slow.bin")
    seen = [listings[0].held[n].get(blob_id) for n in await replica_states(env, blob_id)]
    assert seen and all(info is not None and not info.sealed for info in seen), seen
    await all_ok(env, ["/slow.bin"])
    got, _ = await env.download("/slow.bin")
    assert got == data


@pytest_twisted.ensureDeferred
async def test_the_audit_marks_no_copy_committed_after_its_listing(env, monkeypatch):
    files = await populate(env, count=2)
    committed, listings = commit_after_each_listing(env, monkeypatch)
    assert await audit(env.catalog, env.transfers.pool, collector(env)) == 0
    assert await unlisted(env, listings[0], "/late0.bin")
    await all_ok(env, files | committed)


@pytest_twisted.ensureDeferred
async def test_copies_really_gone_or_short_are_still_found_beside_late_commits(env, monkeypatch):
    """The confirmation asks the server: a copy deleted behind the
    catalog's back is missing and a short one wrong, as before, while the
    file committed after the listing is neither; the fix marks exactly
    those two, and repair heals them."""
    files = await populate(env, count=2)
    [gone_blob] = await blob_ids(env, "/f0.bin")
    gone_node = sorted(await replica_states(env, gone_blob))[0]
    env.nodes[gone_node].store.delete(gone_blob)
    [short_blob] = await blob_ids(env, "/f1.bin")
    short_node = sorted(await replica_states(env, short_blob))[1]
    store = env.nodes[short_node].store
    store.delete(short_blob)
    handle = store.open_write(short_blob, 1, 0, {})
    handle.write(b"short")
    handle.seal()
    committed, listings = commit_after_each_listing(env, monkeypatch)

    report = await run(env)
    assert await unlisted(env, listings[0], "/late0.bin")
    assert report["missing"] == [{"blob": gone_blob, "node": gone_node}], report
    assert [(w["blob"], w["node"], w["size"]) for w in report["wrong"]] == [
        (short_blob, short_node, 5)
    ], report

    audited = await audit(env.catalog, env.transfers.pool, collector(env))
    assert audited == 2
    assert (await replica_states(env, gone_blob))[gone_node] == "lost"
    assert (await replica_states(env, short_blob))[short_node] == "stale"
    await all_ok(env, committed)

    fixed = await run(env, fix=True)
    assert fixed["repair"]["copied"] == 2, fixed
    await check_full_strength(env, files | committed)


@pytest_twisted.ensureDeferred
async def test_a_blob_gc_forgets_while_it_is_checked_is_not_missing(env, monkeypatch):
    """The check read a blob's record, then the file was deleted and GC
    deleted its copies and forgot it: its copies are gone, but nothing is
    missing (the record is read again before judging)."""
    await populate(env, count=1)
    committed, _ = commit_after_each_listing(env, monkeypatch)
    gc = collector(env)
    real_get = env.catalog.get_blob
    collected: list[str] = []

    async def get_then_collect(blob_id):
        blob = await real_get(blob_id)
        if committed and not collected and blob_id in await blob_ids(env, "/late0.bin"):
            collected.append(blob_id)
            await env.transfers.delete(env.user, "/late0.bin")
            assert (await gc.collect(grace=0.0))["forgotten"] == 1
        return blob

    monkeypatch.setattr(
        env.catalog, "get_blob", lambda b: defer.ensureDeferred(get_then_collect(b))
    )
    report = await run(env, gc=gc)
    assert collected, "the hook never ran"
    assert (report["missing"], report["wrong"]) == ([], []), report
    assert report["problems"] == 0, report


@pytest_twisted.ensureDeferred
async def test_a_server_that_dies_after_its_listing_is_reported_unreachable_not_judged(
    env, monkeypatch
):
    """A copy committed after the listing cannot be confirmed on a server
    that died since: the server is reported unreachable, and none of its
    copies is judged (it may come back with every blob), nor is it asked
    for its garbage (that listing would fail the check).  (Not with
    ``--fix``: its repair pass judges a dead server by its own rules.)"""
    await populate(env, count=2)
    died: list[str] = []

    async def commit_then_kill():
        await env.upload("/late.bin", payload(40 * 1024))
        [blob_id] = await blob_ids(env, "/late.bin")
        victim = sorted(await replica_states(env, blob_id))[0]
        await env.kill(victim)
        died.append(victim)

    after_each_listing(monkeypatch, commit_then_kill)
    report = await run(env)
    assert report["unreachable_nodes"] == died, report
    assert (report["missing"], report["wrong"]) == ([], []), report
    await all_ok(env, ["/f0.bin", "/f1.bin", "/late.bin"])


@pytest_twisted.ensureDeferred
async def test_a_copy_whose_record_is_damaged_is_missing_and_its_server_still_judged(env):
    """A record that no longer decodes leaves its blob out of the server's
    listing and makes its ``stat`` fail with the server's own error (not a
    lost connection): that copy is missing, and the server's other copies
    are still judged; taking such an answer for a server away hid every
    problem of that server behind "unreachable" (fsck passed)."""
    await populate(env, count=4)
    ids = [(await blob_ids(env, f"/f{i}.bin"))[0] for i in range(4)]
    pairs = [(a, b) for a in ids for b in ids if a < b]
    for damaged, gone in pairs:
        common = set(await replica_states(env, damaged)) & set(await replica_states(env, gone))
        if common:
            node = sorted(common)[0]
            break
    else:
        raise AssertionError("4 blobs on 2 of 3 servers each: two must share one")
    store = env.nodes[node].store
    [record] = [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(env.nodes[node].path)
        for name in names
        if name == damaged + ".meta"
    ]
    with open(record, "wb") as f:
        f.write(b"not a record\n")
    store.delete(gone)

    report = await run(env)
    assert report["unreachable_nodes"] == [], report
    missing = {(m["blob"], m["node"]) for m in report["missing"]}
    assert missing == {(damaged, node), (gone, node)}, report
    assert report["problems"] >= 2


@pytest_twisted.ensureDeferred
async def test_an_audit_whose_lease_is_lost_after_its_check_marks_nothing(env, monkeypatch):
    """The audit's marks are the lease holder's to make: one that lost the
    lease during its check leaves a really missing copy to the new
    holder's audit (whose repair may be copying it already)."""
    await populate(env, count=2)
    [blob] = await blob_ids(env, "/f0.bin")
    node = sorted(await replica_states(env, blob))[0]
    env.nodes[node].store.delete(blob)
    lease = [True]
    real_check = fsck_module.check

    async def check_then_lose(*args, **kwargs):
        found = await real_check(*args, **kwargs)
        lease[0] = False
        return found

    monkeypatch.setattr(fsck_module, "check", check_then_lose)
    pool = env.transfers.pool
    assert await audit(env.catalog, pool, collector(env), lambda: lease[0]) == 0
    assert (await replica_states(env, blob))[node] == REPLICA_OK
    monkeypatch.undo()
    lease[0] = True  # the same audit with the lease held marks it
    assert await audit(env.catalog, pool, collector(env), lambda: lease[0]) == 1
    assert (await replica_states(env, blob))[node] == "lost"
