"""Compaction over real storage servers (in-process, real TCP and disks) and
a real SQLite catalog: many-extent files become one blob with the same
bytes, the same ETag and a recorded sha256, without racing writers."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import (
    blobs_on,
    check_full_strength,
    full_path,
    payload,
    until,
)
from tests.transfer_env import Collector, Feeder, PausingCollector, TransferEnv
from wsfront.catalog import errors as catalog_errors
from wsfront.maintenance.compact import (
    CHANGED,
    COMPACTED,
    FAILED,
    MISMATCH,
    Compactor,
    CompactSettings,
)
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.throttle import Throttle

KiB = 1024


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def compactor(env, throttle=None, **settings) -> Compactor:
    from twisted.internet import reactor

    settings.setdefault("bytes_per_second", None)
    settings.setdefault("min_extents", 3)
    return Compactor(
        reactor, env.catalog, env.transfers.pool, CompactSettings(**settings), throttle
    )


async def resumed_file(env, vpath: str, pieces: list[tuple[int, int]]) -> bytes:
    """Build ``vpath`` the way a client with a bad line does: one upload per
    ``(offset, length)``, each resuming at ``offset`` (REST n + STOR, which
    truncates to n first).  Returns the file's content."""
    content = b""
    for offset, length in pieces:
        data = payload(length)
        await env.upload(vpath, data, offset=offset)
        content = content[:offset] + data
    return content


async def stored_blobs(env) -> set[str]:
    found = set()
    for name in env.nodes:
        found |= await blobs_on(env, name)
    return found


async def version_of(env, vpath):
    return (await env.catalog.stat(full_path(env, vpath))).version


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HeldThrottle(Throttle):
    """A throttle on its own clock with an empty bucket: the first chunk of
    a compaction waits until the test calls ``release()``, so the test can
    act while the relay is paused mid-file."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        super().__init__(self.clock, 1 << 40)
        self.reserve(1 << 40)

    def holding(self) -> bool:
        return bool(self.clock.getDelayedCalls())

    def release(self) -> None:
        self.clock.advance(10.0)  # refills the bucket far beyond any test file


@pytest_twisted.ensureDeferred
async def test_a_file_built_from_many_resumes_becomes_one_blob_with_its_sha256(env):
    pieces = [(0, 150 * KiB), (150 * KiB, 90 * KiB), (200 * KiB, 120 * KiB),
              (320 * KiB, 64 * KiB), (384 * KiB, 33 * KiB), (417 * KiB, 70 * KiB)]  # fmt: skip
    content = await resumed_file(env, "/log.bin", pieces)
    before = await version_of(env, "/log.bin")
    assert len(before.extents) == 6 and before.sha256 is None
    old_blobs = {e.blob_id for e in before.extents}
    progress = []
    stats = await compactor(env).run_pass(progress=progress.append)
    assert (stats[COMPACTED], stats["examined"], stats["bytes"]) == (1, 1, len(content))
    assert stats["extents_before"] == 6
    assert progress[-1]["phase"] == "done"
    after = await version_of(env, "/log.bin")
    [extent] = after.extents
    assert (extent.blob_offset, extent.length, extent.file_offset) == (0, len(content), 0)
    assert extent.blob_id not in old_blobs
    assert after.etag == before.etag and after.size == before.size
    assert after.mtime == before.mtime and after.version_id == before.version_id
    assert after.sha256 == sha256(content)
    await check_full_strength(env, {"/log.bin": content})
    # The old blobs are collectable now, and GC takes them after its grace.
    collectable = {b.blob_id for b in await env.catalog.collectable_blobs(1000)}
    assert old_blobs <= collectable
    clock = task.Clock()
    gc = GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(grace_seconds=60))
    await gc.collect()
    assert old_blobs <= await stored_blobs(env)
    clock.advance(60)
    assert (await gc.collect())["forgotten"] >= len(old_blobs)
    assert not old_blobs & await stored_blobs(env)
    got, _ = await env.download("/log.bin")
    assert sha256(got) == sha256(content)
    # Nothing left to do: the file has one extent now.
    assert (await compactor(env).run_pass())["examined"] == 0


@pytest_twisted.ensureDeferred
async def test_a_resume_after_compaction_builds_on_the_new_blob(env):
    content = await resumed_file(env, "/f", [(0, 40 * KiB), (40 * KiB, 40 * KiB), (80 * KiB, 1)])
    assert (await compactor(env).run_pass())[COMPACTED] == 1
    tail = payload(50 * KiB)
    await env.upload("/f", tail, append=True)
    content += tail
    version = await version_of(env, "/f")
    assert len(version.extents) == 2 and version.sha256 is None
    got, _ = await env.download("/f")
    assert got == content


@pytest_twisted.ensureDeferred
async def test_small_files_and_files_of_few_extents_are_left_alone(env):
    await env.upload("/one", payload(10 * KiB))
    await resumed_file(env, "/two", [(0, 10 * KiB), (10 * KiB, 10 * KiB)])
    await resumed_file(env, "/big", [(0, 30 * KiB), (30 * KiB, 30 * KiB), (60 * KiB, 30 * KiB)])
    stats = await compactor(env, max_file_bytes=80 * KiB).run_pass()
    assert (stats["examined"], stats["skipped"], stats[COMPACTED]) == (1, 1, 0)
    assert len((await version_of(env, "/big")).extents) == 3


@pytest_twisted.ensureDeferred
async def test_a_budgeted_pass_starts_no_file_it_could_not_finish_within_its_budget(env):
    """Periodic passes have a byte budget (repair and GC wait behind them):
    a file that would take the pass past it is skipped, however big, and is
    left to the next pass or to ``wsfs compact`` (no budget)."""
    size = 40 * KiB + 5
    budget = size + 10 * KiB
    for name in ("/a", "/b"):
        await resumed_file(env, name, [(0, 20 * KiB), (20 * KiB, 20 * KiB), (40 * KiB, 5)])
    first = await compactor(env).run_pass(max_bytes=budget)
    assert (first[COMPACTED], first["skipped"], first["relayed"]) == (1, 1, size)
    second = await compactor(env).run_pass(max_bytes=budget)
    assert (second[COMPACTED], second["relayed"]) == (1, size)
    await resumed_file(env, "/huge", [(0, 30 * KiB), (30 * KiB, 30 * KiB), (60 * KiB, 30 * KiB)])
    third = await compactor(env).run_pass(max_bytes=budget)
    assert (third[COMPACTED], third["skipped"], third["relayed"]) == (0, 1, 0)
    assert len((await version_of(env, "/huge")).extents) == 3
    unbudgeted = await compactor(env).run_pass()
    assert (unbudgeted["examined"], unbudgeted[COMPACTED]) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_download_running_across_compaction_reads_the_old_blobs_to_the_end(env):
    content = await resumed_file(
        env, "/movie", [(0, 200 * KiB), (200 * KiB, 200 * KiB), (400 * KiB, 200 * KiB)]
    )
    handle = await env.transfers.open_read(env.user, "/movie")
    sink = PausingCollector(pause_at=64 * KiB)
    reading = handle.stream.start(sink)
    await sink.paused
    assert (await compactor(env).run_pass())[COMPACTED] == 1
    clock = task.Clock()
    gc = GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(grace_seconds=3600))
    assert (await gc.collect())["forgotten"] == 0  # within the grace: nothing deleted
    sink.producer.resumeProducing()
    await reading
    assert sha256(sink.data) == sha256(content)
    # A client resuming with Range + the ETag it saw keeps its ETag.
    again = await env.transfers.open_read(env.user, "/movie", offset=len(sink.data) // 2)
    assert again.info.etag == handle.info.etag
    rest = Collector()
    await again.stream.start(rest)
    assert rest.data == content[len(sink.data) // 2 :]


@pytest_twisted.ensureDeferred
async def test_an_overwrite_during_compaction_wins_and_the_new_blob_is_dropped(env):
    await resumed_file(env, "/f", [(0, 100 * KiB), (100 * KiB, 100 * KiB), (200 * KiB, 5)])
    old = await version_of(env, "/f")
    throttle = HeldThrottle()
    comp = compactor(env, throttle=throttle)
    [candidate] = await env.catalog.compaction_candidates(3)
    running = defer.ensureDeferred(comp.compact(candidate))
    await until(throttle.holding, "compaction paused mid-file")
    [new_blob] = {b.blob_id for b in await env.catalog.collectable_blobs(100)}
    newer = payload(30 * KiB)
    await env.upload("/f", newer)
    throttle.release()
    assert await running == CHANGED
    got, _ = await env.download("/f")
    assert got == newer
    with pytest.raises(catalog_errors.NotFound):
        await env.catalog.get_blob(new_blob)
    assert new_blob not in await stored_blobs(env)
    collectable = {b.blob_id for b in await env.catalog.collectable_blobs(100)}
    assert {e.blob_id for e in old.extents} <= collectable


@pytest_twisted.ensureDeferred
async def test_an_upload_begun_during_compaction_makes_it_back_off(env):
    content = await resumed_file(
        env, "/f", [(0, 100 * KiB), (100 * KiB, 100 * KiB), (200 * KiB, 5)]
    )
    throttle = HeldThrottle()
    comp = compactor(env, throttle=throttle)
    [candidate] = await env.catalog.compaction_candidates(3)
    running = defer.ensureDeferred(comp.compact(candidate))
    await until(throttle.holding, "compaction paused mid-file")
    tail = payload(20 * KiB)
    session = await env.transfers.open_write(env.user, "/f", append=True)
    throttle.release()
    assert await running == CHANGED
    await Feeder(env.reactor, session, tail).start()
    version = await session.finish()
    assert len(version.extents) == 4
    got, _ = await env.download("/f")
    assert got == content + tail
    # No compacted copy left behind on any server.
    assert await stored_blobs(env) == {e.blob_id for e in version.extents}


@pytest_twisted.ensureDeferred
async def test_losing_the_lease_mid_file_abandons_the_new_blob(env):
    content = await resumed_file(
        env, "/f", [(0, 100 * KiB), (100 * KiB, 100 * KiB), (200 * KiB, 5)]
    )
    before = await stored_blobs(env)
    throttle = HeldThrottle()
    lease = [True]
    comp = compactor(env, throttle=throttle)
    running = defer.ensureDeferred(comp.run_pass(keep_going=lambda: lease[0]))
    await until(throttle.holding, "compaction paused mid-file")
    lease[0] = False
    throttle.release()
    stats = await running
    assert (stats[FAILED], stats[COMPACTED]) == (1, 0)
    assert await stored_blobs(env) == before
    assert await env.catalog.collectable_blobs() == []
    got, _ = await env.download("/f")
    assert got == content


@pytest_twisted.ensureDeferred
async def test_bytes_that_do_not_match_the_recorded_sha256_are_never_swapped_in(env):
    await resumed_file(env, "/f", [(0, 10 * KiB), (10 * KiB, 10 * KiB), (20 * KiB, 10 * KiB)])
    old = await version_of(env, "/f")
    old = await env.catalog.set_sha256(old.inode, old.etag, "00" * 32)
    stats = await compactor(env).run_pass()
    assert stats[MISMATCH] == 1
    assert await version_of(env, "/f") == old
    assert await env.catalog.collectable_blobs() == []


@pytest_twisted.ensureDeferred
async def test_the_throttle_paces_the_relay(env):
    """A 300 KiB file at 100 KiB/s (burst 100 KiB) needs about 2 s of the
    throttle's clock; the test drives that clock, so no real time passes."""
    await resumed_file(env, "/f", [(0, 100 * KiB), (100 * KiB, 100 * KiB), (200 * KiB, 100 * KiB)])
    clock = task.Clock()
    comp = compactor(env, throttle=Throttle(clock, 100 * KiB))
    running = defer.ensureDeferred(comp.run_pass())
    waited = 0.0
    while not running.called:
        await until(lambda: running.called or clock.getDelayedCalls(), "the relay waits")
        if clock.getDelayedCalls():
            clock.advance(0.25)
            waited += 0.25
    assert (await running)[COMPACTED] == 1
    assert 1.5 <= waited <= 2.5, waited


def service(env, clock, name="fe-a", **kw):
    from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

    settings = MaintenanceSettings(compact=CompactSettings(min_extents=3), **kw)
    return MaintenanceService(clock, env.catalog, env.transfers.pool, name, settings)


@pytest_twisted.ensureDeferred
async def test_the_lease_holder_compacts_periodically_and_nobody_else_does(env):
    content = await resumed_file(env, "/f", [(0, 20 * KiB), (20 * KiB, 20 * KiB), (40 * KiB, 7)])
    clock = task.Clock()
    holder = service(env, clock, "fe-a", compact_every=50.0)
    other = service(env, clock, "fe-b", compact_every=50.0)
    clock.advance(50)
    assert await holder.lease.renew()
    assert not await other.lease.renew()
    assert await other.tick() == []
    assert len((await version_of(env, "/f")).extents) == 3
    assert await holder.tick() == ["compact"]
    version = await version_of(env, "/f")
    assert len(version.extents) == 1 and version.sha256 == sha256(content)
    never = service(env, clock, "fe-a", compact_every=None)
    clock.advance(10**6)
    await never.lease.renew()
    assert "compact" not in await never.tick()


@pytest_twisted.ensureDeferred
async def test_the_compact_job_reports_progress_with_a_total(env):
    files = {}
    for name in ("/a", "/b", "/c"):
        files[name] = await resumed_file(
            env, name, [(0, 9 * KiB), (9 * KiB, 9 * KiB), (18 * KiB, 9)]
        )
    await resumed_file(env, "/short", [(0, 9 * KiB), (9 * KiB, 9 * KiB)])
    clock = task.Clock()
    svc = service(env, clock)
    await svc.lease.renew()
    job = await env.catalog.enqueue_job("compact", {"min_extents": 3, "max_files": 2})
    assert await svc.tick() == ["job"]
    done = await env.catalog.get_job(job.job_id)
    assert done.state == "done", done.error
    assert (done.result["compacted"], done.result["total"]) == (2, 2)
    assert (done.progress["done"], done.progress["phase"]) == (2, "done")
    job = await env.catalog.enqueue_job("compact", {})  # min_extents from the settings: 3
    await svc.tick()
    assert (await env.catalog.get_job(job.job_id)).result["compacted"] == 1
    for name, content in files.items():
        got, _ = await env.download(name)
        assert got == content
    assert len((await version_of(env, "/short")).extents) == 2


@pytest_twisted.ensureDeferred
async def test_a_storage_server_dying_mid_compaction_abandons_it_and_loses_nothing(env):
    content = await resumed_file(
        env, "/f", [(0, 100 * KiB), (100 * KiB, 100 * KiB), (200 * KiB, 5)]
    )
    old = await version_of(env, "/f")
    throttle = HeldThrottle()
    comp = compactor(env, throttle=throttle)
    [candidate] = await env.catalog.compaction_candidates(3)
    running = defer.ensureDeferred(comp.compact(candidate))
    await until(throttle.holding, "compaction paused mid-file")
    [new_blob] = await env.catalog.collectable_blobs(100)
    victim = new_blob.ok_replicas[0]
    await env.kill(victim)
    throttle.release()
    assert await running == FAILED
    assert await version_of(env, "/f") == old
    with pytest.raises(catalog_errors.NotFound):
        await env.catalog.get_blob(new_blob.blob_id)
    for node in set(new_blob.ok_replicas) - {victim}:
        assert new_blob.blob_id not in await blobs_on(env, node)
    await env.transfers.pool.probe_all()
    got, _ = await env.download("/f")
    assert got == content


async def held_pool(env):
    """The pool with its probe loop stopped (after a last probe), so the
    free space a test sets on its servers stands until ``pool.start()``;
    the servers by name."""
    pool = env.transfers.pool
    pool.stop()
    await pool.probe_all()
    return pool, {n.name: n for n in pool.nodes()}


def room_for(node, size: int) -> None:
    """Leave ``node`` exactly ``size`` bytes above its reserve."""
    node.reserve_bytes = node.free_bytes - node.placed_bytes - size


@pytest_twisted.ensureDeferred
async def test_compaction_places_its_blob_only_where_the_file_fits(env):
    """s1 is by far the most free, but its reserve leaves it a byte short
    of the file: the new blob goes to the two others, which hold its
    bytes as taken until their next health answer."""
    content = await resumed_file(env, "/f", [(0, 40 * KiB), (40 * KiB, 40 * KiB), (80 * KiB, 1)])
    pool, nodes = await held_pool(env)
    try:
        nodes["s1"].free_bytes += 1 << 40
        room_for(nodes["s1"], len(content) - 1)
        stats = await compactor(env).run_pass()
        assert stats[COMPACTED] == 1
        [extent] = (await version_of(env, "/f")).extents
        blob = await env.catalog.get_blob(extent.blob_id)
        assert sorted(r.node for r in blob.replicas) == ["s2", "s3"]
        assert extent.blob_id not in await blobs_on(env, "s1")
        assert {name: n.placed_bytes for name, n in nodes.items()} == {
            "s1": 0, "s2": len(content), "s3": len(content),
        }  # fmt: skip
        # Written: nothing more to come, so no server holds room for it.
        assert [n.holds for n in nodes.values()] == [{}, {}, {}]
    finally:
        await pool.start()
    await check_full_strength(env, {"/f": content})


@pytest_twisted.ensureDeferred
async def test_compaction_without_room_for_its_blob_gives_back_what_it_counted(env):
    """Only s3 has room for the file, two replicas are wanted: the file is
    skipped, and s3 is not left charged for a blob never made.  Likewise
    when the catalog cannot record the new blob."""
    await resumed_file(env, "/f", [(0, 40 * KiB), (40 * KiB, 40 * KiB), (80 * KiB, 1)])
    before = await version_of(env, "/f")
    pool, nodes = await held_pool(env)
    try:
        room_for(nodes["s1"], 0)
        room_for(nodes["s2"], 0)
        stats = await compactor(env).run_pass()
        assert (stats["skipped"], stats[COMPACTED]) == (1, 0)
        assert [n.placed_bytes for n in nodes.values()] == [0, 0, 0]
        room_for(nodes["s2"], 1 << 30)

        async def refused(*args):
            raise catalog_errors.CatalogUnavailable("catalog down")

        env.catalog.add_blob = refused
        try:
            stats = await compactor(env).run_pass()
        finally:
            del env.catalog.add_blob
        assert (stats[FAILED], stats[COMPACTED]) == (1, 0)
        assert [n.placed_bytes for n in nodes.values()] == [0, 0, 0]
        assert [n.holds for n in nodes.values()] == [{}, {}, {}]
    finally:
        await pool.start()
    assert (await version_of(env, "/f")).extents == before.extents
