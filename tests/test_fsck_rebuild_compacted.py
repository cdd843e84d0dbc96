"""fsck --rebuild-catalog and compaction copies that were never swapped in.

A compaction that loses its compare-and-set (the file was overwritten
meanwhile) abandons its copy; if the storage servers could not delete it,
the copy survives beside the newer version.  A rebuild must not let that
copy (whose ``created_at`` comes from the compacting front end's clock)
outrank the newer version, whatever the clocks say.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import payload
from tests.test_fsck_rebuild import lose_and_rebuild
from tests.test_fsck_rebuild_replay import NODES, History, snapshot
from tests.transfer_env import Collector, TransferEnv, sha256
from wsfront.catalog import open_catalog
from wsfront.maintenance.compact import CHANGED, Compactor, CompactSettings
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.rebuild import LOST_FOUND, rebuild_from_listings
from wsfront.transfer.reader import ReadStream
from wsfront.transfer.service import _read_extent
from wsstorage.records import OPEN, SEALED, BlobInfo


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


class SkewedClock:
    """The reactor's clock, ``ahead`` seconds fast (another host's clock)."""

    def __init__(self, reactor, ahead: float) -> None:
        self._reactor = reactor
        self._ahead = ahead

    def seconds(self) -> float:
        return self._reactor.seconds() + self._ahead

    def __getattr__(self, name):
        return getattr(self._reactor, name)


class DeletesFail(Compactor):
    """A compactor whose abandoned copies cannot be deleted (the storage
    servers were unreachable then): the copy survives on every server."""

    async def _abandon(self, blob_id, targets):
        await self._catalog.forget_blob(blob_id)


async def build_in_pieces(env, vpath: str, count: int = 4) -> bytes:
    content = b""
    for i in range(count):
        piece = payload(20_000 + 1000 * i)
        await env.upload(vpath, piece, offset=len(content))
        content += piece
    return content


async def lose_the_race(env, compactor, vpath: str, racer):
    """Compact ``vpath`` while ``racer()`` changes it just before the swap."""
    catalog = env.catalog
    swap = catalog.replace_extents

    async def replace_extents(*args, **kw):
        await racer()
        return await swap(*args, **kw)

    catalog.replace_extents = replace_extents
    try:
        [candidate] = await catalog.compaction_candidates(3, 10, None)
        assert candidate.path.endswith(vpath)
        assert await compactor.compact(candidate) == CHANGED
    finally:
        del catalog.replace_extents


async def read_path(env, path: str) -> bytes:
    """The committed bytes at a catalog path (outside the user's home too)."""
    from twisted.internet import reactor

    entry = await env.catalog.stat(path)
    sink = Collector()
    stream = ReadStream(
        reactor, env.transfers.pool, [_read_extent(e) for e in entry.version.extents]
    )
    await stream.start(sink)
    return sink.data


async def collect_garbage(env) -> None:
    from twisted.internet import task

    clock = task.Clock()
    gc = GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(grace_seconds=1))
    await gc.collect()
    clock.advance(1)
    await gc.collect()


@pytest.mark.parametrize("ahead", [600.0, 0.0], ids=["compactor-clock-fast", "same-clock"])
@pytest.mark.parametrize("collected", [False, True], ids=["old-blobs-kept", "old-blobs-collected"])
@pytest_twisted.ensureDeferred
async def test_an_abandoned_compaction_copy_never_outranks_a_newer_overwrite(env, ahead, collected):
    from twisted.internet import reactor

    old = await build_in_pieces(env, "/f.bin")
    new = payload(33_000)
    fe_b = await env.front_end("fe-b")
    compactor = DeletesFail(
        SkewedClock(reactor, ahead),
        env.catalog,
        env.transfers.pool,
        CompactSettings(min_extents=3, bytes_per_second=None),
    )

    async def overwrite_through_b():
        await env.upload("/f.bin", new, transfers=fe_b)

    await lose_the_race(env, compactor, "/f.bin", overwrite_through_b)
    if collected:
        await collect_garbage(env)  # the old version's blobs are gone

    report = await lose_and_rebuild(env)
    got, _ = await env.download("/f.bin")
    assert sha256(got) == sha256(new), report
    # The old content is not lost: the old version (or, once its blobs were
    # collected, the surviving copy of it) is in /lost+found.
    [moved] = [p["moved_to"] for p in report["problems"] if p.get("why") == "ambiguous"]
    assert moved.startswith(LOST_FOUND)
    assert sha256(await read_path(env, moved)) == sha256(old)


# Scripted histories (as in test_fsck_rebuild_replay), with compaction copies
# written as ``Compactor._meta`` writes them, swapped in or abandoned.


class CompactingHistory(History):
    """``History`` plus compaction, GC taking blobs, and per-blob stamps."""

    def __init__(self, catalog) -> None:
        super().__init__(catalog)
        self.now = 1000.0
        self.origin: dict[str, list[tuple[str, int, int]]] = {}

    def _meta(self, upload) -> None:
        super()._meta(upload)
        self.blobs[upload.blob_id]["meta"]["created_at"] = self.now
        self.now += 1.0

    async def compact(self, path, swap=True, nodes=NODES, clock=None) -> str:
        """A compaction copy of ``path``'s version, swapped in or not."""
        entry = await self.catalog.stat(path)
        version = entry.version
        blob_id = f"c{next(self.ids):06d}"
        self.blobs[blob_id] = {
            "size": version.size, "sealed": True, "epoch": 1, "start": 0, "nodes": nodes,
            "meta": {
                "inode": entry.inode, "path": path, "owner": "alice",
                "upload": f"compact-{blob_id}", "file_offset": 0, "epoch": 1,
                "created_at": self.now if clock is None else clock, "compacted": True,
                "etag": version.etag, "sources": sorted({e.blob_id for e in version.extents}),
            },
        }  # fmt: skip
        self.now += 1.0
        self.origin[blob_id] = expand(version.extents, self.origin)
        if swap:
            await self.catalog.add_blob(blob_id, list(nodes), 2)
            await self.catalog.replace_extents(
                entry.inode, version.etag, [(blob_id, 0, version.size)]
            )
        return blob_id

    def collect(self, *blob_ids: str) -> None:
        """GC deleted these blobs everywhere."""
        for blob_id in blob_ids:
            self.blobs[blob_id]["gone"] = True

    def blobs_of(self, *paths: str, compacted: bool = False) -> list[str]:
        return [
            b for b, v in self.blobs.items()
            if v["meta"]["path"] in paths and bool(v["meta"].get("compacted")) == compacted
        ]  # fmt: skip

    def listings(self) -> dict[str, list[BlobInfo]]:
        out = {}
        for node in NODES:
            out[node] = [
                BlobInfo(blob_id=b, size=v["size"], durable=v["size"],
                         state=SEALED if v["sealed"] else OPEN, epoch=v["epoch"], meta=v["meta"])
                for b, v in self.blobs.items()
                if not v.get("gone") and node in v.get("nodes", NODES)
            ]  # fmt: skip
        return out


def expand(extents, origin) -> list[tuple[str, int, int]]:
    """A version's bytes as (original blob, offset, length) runs: a
    compaction copy's bytes are those of the version it copied."""
    runs: list[tuple[str, int, int]] = []
    for e in extents:
        if e.blob_id in origin:
            at = 0
            for blob, off, n in origin[e.blob_id]:
                lo, hi = max(at, e.blob_offset), min(at + n, e.blob_offset + e.length)
                if lo < hi:
                    runs.append((blob, off + lo - at, hi - lo))
                at += n
        else:
            runs.append((e.blob_id, e.blob_offset, e.length))
    merged: list[tuple[str, int, int]] = []
    for blob, off, n in runs:
        if merged and merged[-1][0] == blob and merged[-1][1] + merged[-1][2] == off:
            merged[-1] = (blob, merged[-1][1], merged[-1][2] + n)
        else:
            merged.append((blob, off, n))
    return merged


async def build(h, path="/a/f", pieces=(100, 50, 30), at: int = 0) -> None:
    for n in pieces:
        await h.start(path, at=at)
        await h.write(n)
        await h.commit()
        at += n


@pytest.fixture
def catalogs(tmp_path):
    from twisted.internet import reactor

    original = open_catalog(reactor, f"sqlite:///{tmp_path / 'a.sqlite'}")
    rebuilt = open_catalog(reactor, f"sqlite:///{tmp_path / 'b.sqlite'}")
    pytest_twisted.blockon(defer.ensureDeferred(original.mkdir("/a")))
    yield original, rebuilt
    pytest_twisted.blockon(defer.ensureDeferred(original.close()))
    pytest_twisted.blockon(defer.ensureDeferred(rebuilt.close()))


async def rebuild(h, rebuilt) -> dict:
    endpoints = {n: f"tcp:127.0.0.1:{7000 + i}" for i, n in enumerate(NODES)}
    return await rebuild_from_listings(rebuilt, h.listings(), endpoints, 2, 0.0)


def whys(report) -> list[str]:
    return sorted(p["why"] for p in report["problems"])


@pytest_twisted.ensureDeferred
async def test_a_file_of_many_stamped_uploads_comes_back_whole(catalogs):
    """Appends and a resume below the size, stamped as front ends stamp
    them: each builds on the one before, none on a later one."""
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h, pieces=(100, 20, 10, 5))
    await build(h, pieces=(30,), at=110)
    want = await snapshot(original, ["/a/f"])
    report = await rebuild(h, rebuilt)
    assert report["problems"] == [] and report["files"] == 1
    assert await snapshot(rebuilt, ["/a/f"]) == want


@pytest.mark.parametrize("collected", [False, True], ids=["old-blobs-kept", "old-blobs-collected"])
@pytest.mark.parametrize("append", [False, True], ids=["as-compacted", "appended-after"])
@pytest_twisted.ensureDeferred
async def test_a_swapped_compaction_copy_is_the_file(catalogs, collected, append):
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h)
    old = h.blobs_of("/a/f")
    await h.compact("/a/f")
    if append:
        await h.start("/a/f", at=180)
        await h.write(20)
        await h.commit()
    if collected:
        h.collect(*old)
    want = await snapshot(original, ["/a/f"])
    report = await rebuild(h, rebuilt)
    assert report["problems"] == [] and report["files"] == 1
    assert report["replaced_by_compaction"] == (0 if collected else 3)
    assert await snapshot(rebuilt, ["/a/f"]) == want


@pytest.mark.parametrize(
    "collected",
    ["nothing", "first-sources", "all-but-the-last-copy"],
)
@pytest.mark.parametrize("first_swapped", [True, False], ids=["swapped", "abandoned"])
@pytest_twisted.ensureDeferred
async def test_compacting_a_compacted_file_again(catalogs, collected, first_swapped):
    """Compacted, appended to, compacted again: the last copy is the file
    whichever older blobs GC took; a first copy that was abandoned (the
    appends built on the old blobs) is reported and left for GC."""
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h)
    first_sources = h.blobs_of("/a/f")
    first = await h.compact("/a/f", swap=first_swapped)
    await build(h, pieces=(10, 10, 10), at=180)  # three appends
    appended = [b for b in h.blobs_of("/a/f") if b not in first_sources]
    await h.compact("/a/f")
    if collected != "nothing":
        h.collect(*first_sources)
    if collected == "all-but-the-last-copy":
        h.collect(first, *appended)
    want = await snapshot(original, ["/a/f"])
    report = await rebuild(h, rebuilt)
    assert report["files"] == 1
    assert await snapshot(rebuilt, ["/a/f"]) == want
    if first_swapped or collected == "all-but-the-last-copy":
        assert report["problems"] == []
    else:
        assert whys(report) == ["unused compaction copy"]


@pytest.mark.parametrize("clock", [1e9, None], ids=["compactor-clock-fast", "same-clock"])
@pytest.mark.parametrize("collected", [False, True], ids=["old-blobs-kept", "old-blobs-collected"])
@pytest.mark.parametrize("swapped", [False, True], ids=["abandoned", "swapped-then-overwritten"])
@pytest_twisted.ensureDeferred
async def test_a_later_overwrite_keeps_the_path_whatever_the_clocks(
    catalogs, clock, collected, swapped
):
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h)
    old = h.blobs_of("/a/f")
    copy = await h.compact("/a/f", swap=swapped, clock=clock)
    before = expand((await original.stat("/a/f")).version.extents, h.origin)
    await h.start("/a/f")  # the overwrite, through another front end
    await h.write(70)
    await h.commit()
    if collected:
        h.collect(*old)
    want = await snapshot(original, ["/a/f"])
    report = await rebuild(h, rebuilt)
    assert await snapshot(rebuilt, ["/a/f"]) == want
    # The old content is in /lost+found, from its blobs or from the copy.
    [moved] = [p["moved_to"] for p in report["problems"] if p["why"] == "ambiguous"]
    assert expand((await rebuilt.stat(moved)).version.extents, h.origin) == before
    if collected:
        assert whys(report) == ["ambiguous"]
        assert (await rebuilt.stat(moved)).version.extents[0].blob_id == copy
    else:
        assert whys(report) == ["ambiguous", "unused compaction copy"]
        assert report["unused_compaction_copies"] == 1
        assert len(await rebuilt.collectable_blobs(100)) == 1  # the copy, GC's to delete


@pytest_twisted.ensureDeferred
async def test_a_copy_abandoned_to_an_append_gives_the_same_bytes(catalogs):
    """The append began while the copy was written (the swap was refused):
    the appended file reads the same, on the old blobs or on the copy."""
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h)
    await h.start("/a/f", at=180)
    await h.compact("/a/f", swap=False, clock=1e9)
    await h.write(20)
    await h.commit()
    want = expand((await original.stat("/a/f")).version.extents, h.origin)
    report = await rebuild(h, rebuilt)
    assert report["files"] == 1 and report["problems"] == []
    assert expand((await rebuilt.stat("/a/f")).version.extents, h.origin) == want


@pytest_twisted.ensureDeferred
async def test_a_copy_short_of_replicas_does_not_replace_the_old_blobs(catalogs):
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h)
    want = await snapshot(original, ["/a/f"])
    await h.compact("/a/f", swap=False, nodes=NODES[:1])  # one writer failed
    report = await rebuild(h, rebuilt)
    assert whys(report) == ["unused compaction copy"]
    assert await snapshot(rebuilt, ["/a/f"]) == want


@pytest_twisted.ensureDeferred
async def test_two_copies_of_one_version_use_one(catalogs):
    """A lease holder lost the lease mid-compaction and another compacted
    the same version: one copy is the file, the other is left for GC."""
    original, rebuilt = catalogs
    h = CompactingHistory(original)
    await build(h)
    want = expand((await original.stat("/a/f")).version.extents, {})
    await h.compact("/a/f", swap=False, clock=1e9)
    await h.compact("/a/f")
    report = await rebuild(h, rebuilt)
    assert report["files"] == 1 and whys(report) == ["unused compaction copy"]
    [extent] = (await rebuilt.stat("/a/f")).version.extents
    assert expand([extent], h.origin) == want
