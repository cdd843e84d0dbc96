"""Contract: compaction's compare-and-set (``replace_extents``), late
hashes (``set_sha256``) and ``compaction_candidates``, on SQLite and
PostgreSQL."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.catalog_race import in_tx, race
from wsfront.catalog import _blobs, _compaction, _uploads, open_catalog
from wsfront.catalog.errors import (
    Exists,
    HashMismatch,
    NotFound,
    PendingUploadExists,
    VersionChanged,
)

pytest_plugins = ["tests.catalog_fixtures"]

SHA = "ab" * 32


def begin(cat, path, blob, base=0, user="alice"):
    return cat.begin_upload(
        user,
        path,
        base_length=base,
        blob_id=blob,
        replicas=["s1", "s2"],
        wanted_replicas=2,
        owner="fe1",
        expires_at=cat._clock() + 3600,
    )


async def build(cat, path, pieces):
    """A file made of one upload per ``(blob, length)``, each appended to
    the last (APPE / REST + STOR at the committed size)."""
    size = 0
    version = None
    for blob, length in pieces:
        up = await begin(cat, path, blob, base=size)
        size += length
        version = await cat.commit_upload(up.upload_id, 1, size)
    return version


def spans(extents):
    return [(e.blob_id, e.blob_offset, e.length, e.file_offset) for e in extents]


async def collectable(cat):
    return {b.blob_id for b in await cat.collectable_blobs()}


@pytest_twisted.ensureDeferred
async def test_replace_extents_swaps_in_one_blob_keeping_etag_size_and_mtime(catalog, clock):
    old = await build(catalog, "/f", [("A", 10), ("B", 20), ("C", 5)])
    assert await collectable(catalog) == set()
    clock.advance(60)
    blob = await catalog.add_blob("N", ["s1", "s3"], 2)
    assert (blob.sealed, blob.length, blob.ok_replicas) == (False, 0, ("s1", "s3"))
    assert await collectable(catalog) == {"N"}  # abandoned, it would be collected
    new = await catalog.replace_extents(
        old.inode, old.etag, [{"blob_id": "N", "blob_offset": 0, "length": 35}], SHA
    )
    assert spans(new.extents) == [("N", 0, 35, 0)]
    assert (new.version_id, new.size, new.mtime, new.etag) == (
        old.version_id,
        old.size,
        old.mtime,
        old.etag,
    )
    assert new.sha256 == SHA
    entry = await catalog.stat("/f")
    assert entry.version == new and entry.etag == old.etag and entry.size == 35
    [listed] = await catalog.list_dir("/")
    assert listed.etag == old.etag
    blob = await catalog.get_blob("N")
    assert blob.sealed and blob.length == 35
    assert await collectable(catalog) == {"A", "B", "C"}
    with pytest.raises(Exists):
        await catalog.forget_blob("N")
    with pytest.raises(Exists):
        await catalog.add_blob("N", ["s2"], 2)
    await catalog.forget_blob("A")


@pytest_twisted.ensureDeferred
async def test_an_append_after_compaction_builds_on_the_new_blob(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    await catalog.replace_extents(old.inode, old.etag, [("N", 0, 30)], None)
    up = await begin(catalog, "/f", "D", base=30)
    assert spans(up.base_extents) == [("N", 0, 30, 0)]
    version = await catalog.commit_upload(up.upload_id, 1, 40)
    assert spans(version.extents) == [("N", 0, 30, 0), ("D", 0, 10, 30)]
    assert version.etag != old.etag and version.sha256 is None


@pytest_twisted.ensureDeferred
async def test_extents_may_be_given_as_extent_records_and_keep_unmerged_blobs(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20), ("C", 5)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    kept, *_ = old.extents
    new = await catalog.replace_extents(
        old.inode, old.etag, [kept, {"blob_id": "N", "blob_offset": 0, "length": 25}]
    )
    assert spans(new.extents) == [("A", 0, 10, 0), ("N", 0, 25, 10)]
    assert new.sha256 is None
    # A is still referenced by the version: only the merged blobs go.
    assert await collectable(catalog) == {"B", "C"}


@pytest_twisted.ensureDeferred
async def test_a_commit_that_overwrote_the_file_wins_against_a_late_swap(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    up = await begin(catalog, "/f", "W")
    overwritten = await catalog.commit_upload(up.upload_id, 1, 7)
    with pytest.raises(VersionChanged):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 30)], None)
    entry = await catalog.stat("/f")
    assert spans(entry.version.extents) == [("W", 0, 7, 0)]
    assert entry.version == overwritten
    assert (await catalog.get_blob("N")).sealed is False
    assert await collectable(catalog) == {"A", "B", "N"}


@pytest_twisted.ensureDeferred
async def test_an_append_or_a_truncation_meanwhile_makes_the_swap_lose(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    up = await begin(catalog, "/f", "T", base=15)  # REST 15 + STOR: truncates
    await catalog.commit_upload(up.upload_id, 1, 15)
    with pytest.raises(VersionChanged):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 30)], None)
    assert spans((await catalog.stat("/f")).version.extents) == [("A", 0, 10, 0), ("B", 0, 5, 10)]


@pytest_twisted.ensureDeferred
async def test_a_deleted_file_makes_the_swap_lose(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    await catalog.delete("/f")
    with pytest.raises(VersionChanged):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 30)], None)
    assert await collectable(catalog) == {"A", "B", "N"}


@pytest_twisted.ensureDeferred
async def test_a_live_upload_refuses_the_swap_and_keeps_its_base_blobs(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    up = await begin(catalog, "/f", "D", base=30)
    assert spans(up.base_extents) == [("A", 0, 10, 0), ("B", 0, 20, 10)]
    await catalog.interrupt_upload(up.upload_id, 1)  # interrupted is still live
    with pytest.raises(PendingUploadExists):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 30)], None)
    assert spans((await catalog.stat("/f")).version.extents) == spans(old.extents)
    assert await collectable(catalog) == {"N"}
    await catalog.abort_upload(up.upload_id)
    new = await catalog.replace_extents(old.inode, old.etag, [("N", 0, 30)], None)
    assert spans(new.extents) == [("N", 0, 30, 0)]
    assert await collectable(catalog) == {"A", "B", "D"}


@pytest_twisted.ensureDeferred
async def test_the_new_extents_must_cover_the_file_and_their_blobs_exist(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    await catalog.add_blob("N", ["s1", "s2"], 2)
    with pytest.raises(ValueError):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 29)], None)
    with pytest.raises(ValueError):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 0), ("N", 0, 30)], None)
    with pytest.raises(ValueError):  # A is sealed at 10 bytes
        await catalog.replace_extents(old.inode, old.etag, [("A", 0, 30)], None)
    with pytest.raises(NotFound):  # forgotten by GC meanwhile
        await catalog.replace_extents(old.inode, old.etag, [("gone", 0, 30)], None)
    assert spans((await catalog.stat("/f")).version.extents) == spans(old.extents)
    assert (await catalog.get_blob("N")).sealed is False


@pytest_twisted.ensureDeferred
async def test_a_swap_never_overwrites_a_different_recorded_hash(catalog):
    up = await begin(catalog, "/f", "A")
    await catalog.commit_upload(up.upload_id, 1, 10, sha256=SHA)
    up = await begin(catalog, "/f", "B", base=10)
    old = await catalog.commit_upload(up.upload_id, 1, 15)  # appended: no hash any more
    assert old.sha256 is None
    await catalog.set_sha256(old.inode, old.etag, SHA)
    await catalog.add_blob("N", ["s1", "s2"], 2)
    with pytest.raises(HashMismatch):
        await catalog.replace_extents(old.inode, old.etag, [("N", 0, 15)], "cd" * 32)
    same = await catalog.replace_extents(old.inode, old.etag, [("N", 0, 15)], SHA)
    assert same.sha256 == SHA and spans(same.extents) == [("N", 0, 15, 0)]


@pytest_twisted.ensureDeferred
async def test_set_sha256_records_a_late_hash_once_and_only_for_that_version(catalog):
    old = await build(catalog, "/f", [("A", 10), ("B", 20)])
    version = await catalog.set_sha256(old.inode, old.etag, SHA)
    assert version.sha256 == SHA and version.etag == old.etag
    assert (await catalog.stat("/f")).version.sha256 == SHA
    assert (await catalog.set_sha256(old.inode, old.etag, SHA)).sha256 == SHA
    with pytest.raises(HashMismatch):
        await catalog.set_sha256(old.inode, old.etag, "cd" * 32)
    up = await begin(catalog, "/f", "W")
    await catalog.commit_upload(up.upload_id, 1, 3)
    with pytest.raises(VersionChanged):
        await catalog.set_sha256(old.inode, old.etag, SHA)
    with pytest.raises(VersionChanged):
        await catalog.set_sha256(9999, old.etag, SHA)


@pytest_twisted.ensureDeferred
async def test_candidates_are_files_of_many_extents_without_a_live_upload(catalog):
    await catalog.mkdir("/d")
    one = await build(catalog, "/d/one", [("a1", 5)])
    three = await build(catalog, "/d/three", [("b1", 5), ("b2", 5), ("b3", 5)])
    four = await build(catalog, "/four", [("c1", 1), ("c2", 1), ("c3", 1), ("c4", 1)])
    busy = await build(catalog, "/busy", [("d1", 1), ("d2", 1), ("d3", 1)])
    await begin(catalog, "/busy", "d4", base=3)
    found = await catalog.compaction_candidates(3)
    assert [(c.path, c.extents) for c in found] == [("/d/three", 3), ("/four", 4)]
    first = found[0]
    assert (first.inode, first.size, first.etag, first.owner, first.sha256) == (
        three.inode,
        15,
        three.etag,
        "alice",
        None,
    )
    assert [c.path for c in await catalog.compaction_candidates(4)] == ["/four"]
    page = await catalog.compaction_candidates(2, limit=1)
    assert [c.path for c in page] == ["/d/three"]
    page = await catalog.compaction_candidates(2, limit=1, after=page[-1].inode)
    assert [c.path for c in page] == ["/four"]
    assert await catalog.compaction_candidates(2, after=four.inode) == []
    assert one.inode < three.inode and busy.inode > four.inode
    with pytest.raises(ValueError):
        await catalog.compaction_candidates(1)


def test_a_swap_racing_a_resume_never_frees_the_blobs_the_upload_builds_on(catalog_url, clock):
    """Two connections, real threads: either the swap wins and the upload
    begun right after it builds on the new blob, or the upload wins and the
    swap is refused; never an upload whose base blobs are collectable."""
    a = open_catalog(reactor, catalog_url, clock=clock)
    b = open_catalog(reactor, catalog_url, clock=clock)
    now = clock()
    try:
        outcomes_seen = set()
        for i in range(12):
            path = f"/f{i}"
            size = 0
            for k in range(3):
                up = in_tx(a, _uploads.begin_upload, now, "alice", path, size, f"x{i}-{k}",
                           ["s1"], 1, "fe0", now + 60, None, None)()  # fmt: skip
                size += 10
                version = in_tx(a, _uploads.commit_upload, now, up.upload_id, 1, size, None,
                                None)()  # fmt: skip
            in_tx(a, _blobs.add_blob, now, f"n{i}", ["s1"], 1)()
            swap_call = in_tx(
                a, _compaction.replace_extents, version.inode, version.etag, [(f"n{i}", 0, 30)],
                None,
            )  # fmt: skip
            resume_call = in_tx(
                b, _uploads.begin_upload, now, "alice", path, 30, f"r{i}", ["s1"], 1, "fe1",
                now + 60, None, None,
            )  # fmt: skip
            swap, resume = race([swap_call, resume_call])
            assert resume.error is None, resume.error
            base = {e.blob_id for e in resume.result.base_extents}
            free = {blob.blob_id for blob in in_tx(a, _blobs.collectable_blobs, 1000)()}
            assert not base & free, (base, free)
            if swap.error is None:
                outcomes_seen.add("swap first")
                assert base == {f"n{i}"}
            else:
                outcomes_seen.add("resume first")
                assert isinstance(swap.error, PendingUploadExists), repr(swap.error)
                assert base == {f"x{i}-0", f"x{i}-1", f"x{i}-2"}
                assert f"n{i}" in free
        assert outcomes_seen  # which orders occur is the scheduler's business
    finally:
        a.close()
        b.close()
