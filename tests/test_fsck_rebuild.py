"""fsck --rebuild-catalog: a deleted SQLite catalog is rebuilt from blob metadata."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import payload, populate
from tests.transfer_env import PASSWORD, Feeder, TransferEnv, sha256
from wsfront.catalog import open_catalog
from wsfront.maintenance.fsck import check
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.rebuild import LOST_FOUND, rebuild_catalog
from wsfront.transfer.service import Transfers


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def lose_and_rebuild(env):
    """Close and delete the catalog file, rebuild a new one; fire with
    (report, a Transfers over the new catalog)."""
    from twisted.internet import reactor

    path = env.catalog_url[len("sqlite://") :]
    await env.catalog.close()
    env.catalogs.remove(env.catalog)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    env.catalog = open_catalog(reactor, env.catalog_url)
    env.catalogs.append(env.catalog)
    report = await rebuild_catalog(env.catalog, env.transfers.pool, 2, reactor.seconds())
    await env.catalog.add_user("alice", PASSWORD, adopt_files=True)  # rebuilt files
    env.user = await env.catalog.get_user("alice")
    env.transfers = Transfers(reactor, env.catalog, env.transfers.pool, "fe-a", env.settings)
    return report


@pytest_twisted.ensureDeferred
async def test_a_deleted_catalog_is_rebuilt_and_every_file_reads_back(env):
    from twisted.internet import reactor

    files = await populate(env, count=4)
    await env.transfers.mkdir(env.user, "/deep")
    await env.transfers.mkdir(env.user, "/deep/er")
    files["/deep/er/n.bin"] = payload(70_000)
    await env.upload("/deep/er/n.bin", files["/deep/er/n.bin"])
    # Resumed after commit (APPE): two uploads, the second based on the first.
    head, tail = payload(100_000), payload(60_000)
    await env.upload("/resumed.bin", head)
    await env.upload("/resumed.bin", tail, offset=len(head))
    files["/resumed.bin"] = head + tail
    # Rolled back on resume (REST below the committed size): truncation by reference.
    await env.upload("/rolled.bin", head)
    await env.upload("/rolled.bin", tail, offset=40_000)
    files["/rolled.bin"] = head[:40_000] + tail
    # Taken over mid-upload: one upload, two blobs at two epochs.
    data = payload(300_000)
    session = await env.transfers.open_write(env.user, "/taken.bin")
    await Feeder(reactor, session, data[:120_000]).start()
    await session.checkpoint()
    other = await env.front_end("fe-b")
    resumed = await other.open_write(env.user, "/taken.bin", 100_000)
    await Feeder(reactor, resumed, data[100_000:]).start()
    await resumed.finish()
    files["/taken.bin"] = data

    report = await lose_and_rebuild(env)
    assert report["files"] == len(files), report
    assert report["problems"] == []
    assert report["under_replicated"] == 0
    for vpath, want in files.items():
        got, _ = await env.download(vpath)
        assert sha256(got) == sha256(want), vpath
    gc = GarbageCollector(reactor, env.catalog, env.transfers.pool)
    found = await check(env.catalog, env.transfers.pool, gc)
    assert found["missing"] == [] and found["wrong"] == [] and found["orphans"] == 0


@pytest_twisted.ensureDeferred
async def test_an_uncollected_old_version_goes_to_lost_and_found(env):
    old, new = payload(50_000), payload(80_000)
    await env.upload("/v.bin", old)
    await env.upload("/v.bin", new)
    report = await lose_and_rebuild(env)
    [problem] = report["problems"]
    assert problem["why"] == "ambiguous" and problem["moved_to"].startswith(LOST_FOUND)
    got, _ = await env.download("/v.bin")
    assert got == new
    lost = await env.catalog.stat(problem["moved_to"])
    assert lost.size == len(old)


@pytest_twisted.ensureDeferred
async def test_rebuild_refuses_a_catalog_that_has_files(env):
    from twisted.internet import reactor

    await env.upload("/x", b"x" * 10)
    with pytest.raises(ValueError, match="not empty"):
        await rebuild_catalog(env.catalog, env.transfers.pool, 2, reactor.seconds())


@pytest.mark.parametrize("collected", [False, True], ids=["old-blobs-kept", "old-blobs-collected"])
@pytest_twisted.ensureDeferred
async def test_compacted_files_are_rebuilt_from_their_one_blob(env, collected):
    """Compacted files come back whole, whether GC already deleted the old
    blobs or not (then they are recognised as replaced, not as another
    version for /lost+found); so do files resumed after compaction."""
    from twisted.internet import reactor, task

    from wsfront.maintenance.compact import Compactor, CompactSettings
    from wsfront.maintenance.gc import GCSettings

    files = await populate(env, count=2)
    pieces = [payload(30_000 + 1000 * i) for i in range(4)]
    for name in ("/c1.bin", "/c2.bin", "/c3.bin"):
        content = b""
        for piece in pieces:
            await env.upload(name, piece, offset=len(content))
            content += piece
        files[name] = content
    compactor = Compactor(
        reactor, env.catalog, env.transfers.pool, CompactSettings(min_extents=4,
                                                                  bytes_per_second=None)
    )  # fmt: skip
    assert (await compactor.run_pass())["compacted"] == 3
    # After compaction: one file appended to, one rolled back and resumed.
    tail = payload(20_000)
    await env.upload("/c2.bin", tail, append=True)
    files["/c2.bin"] += tail
    await env.upload("/c3.bin", tail, offset=50_000)
    files["/c3.bin"] = files["/c3.bin"][:50_000] + tail
    if collected:
        clock = task.Clock()
        gc = GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(grace_seconds=1))
        await gc.collect()
        clock.advance(1)
        assert (await gc.collect())["forgotten"] == 4 * 3

    report = await lose_and_rebuild(env)
    assert report["problems"] == [], report
    assert report["files"] == len(files)
    replaced = 0 if collected else 4 * 3
    assert report["replaced_by_compaction"] == replaced
    assert len(await env.catalog.collectable_blobs(100)) == replaced  # GC's, not orphans
    for vpath, want in files.items():
        got, _ = await env.download(vpath)
        assert sha256(got) == sha256(want), vpath
    assert len((await env.catalog.stat("/alice/c1.bin")).version.extents) == 1
    assert len((await env.catalog.stat("/alice/c2.bin")).version.extents) == 2
    gc = GarbageCollector(reactor, env.catalog, env.transfers.pool)
    found = await check(env.catalog, env.transfers.pool, gc)
    assert found["missing"] == [] and found["wrong"] == [] and found["orphans"] == 0
