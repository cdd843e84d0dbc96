"""Contract: the namespace (stat, list, mkdir, rmdir, delete, rename), on
SQLite and PostgreSQL alike."""

import pytest
import pytest_twisted

from wsfront.catalog.errors import (
    Exists,
    InvalidMove,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    PendingUploadExists,
    VersionChanged,
)
from wsfront.catalog.records import DIR, FILE, NOTHING_COMMITTED

pytest_plugins = ["tests.catalog_fixtures"]


async def write_file(cat, path, size, blob, user="alice"):
    """Create and commit a file of ``size`` bytes held by one blob."""
    up = await cat.begin_upload(
        user,
        path,
        base_length=0,
        blob_id=blob,
        replicas=["s1", "s2"],
        wanted_replicas=2,
        owner="fe1",
        expires_at=cat._clock() + 3600,
    )
    return await cat.commit_upload(up.upload_id, up.epoch, size)


@pytest_twisted.ensureDeferred
async def test_root_is_an_empty_directory(catalog):
    root = await catalog.stat("/")
    assert root.kind == DIR and root.path == "/"
    assert await catalog.list_dir("/") == []


@pytest_twisted.ensureDeferred
async def test_mkdir_then_stat_and_list(catalog):
    made = await catalog.mkdir("/docs")
    assert made.kind == DIR
    assert (await catalog.stat("/docs")).inode == made.inode
    assert [e.name for e in await catalog.list_dir("/")] == ["docs"]


@pytest_twisted.ensureDeferred
async def test_mkdir_refuses_existing_missing_parent_and_file_parent(catalog):
    await catalog.mkdir("/a")
    with pytest.raises(Exists):
        await catalog.mkdir("/a")
    with pytest.raises(NotFound):
        await catalog.mkdir("/nope/b")
    await write_file(catalog, "/a/f", 3, "blob-f")
    with pytest.raises(NotADirectory):
        await catalog.mkdir("/a/f/g")


@pytest_twisted.ensureDeferred
async def test_stat_of_missing_path_is_not_found(catalog):
    with pytest.raises(NotFound):
        await catalog.stat("/missing")
    with pytest.raises(NotFound):
        await catalog.stat("/missing/deeper")


@pytest_twisted.ensureDeferred
async def test_invalid_names_are_refused_by_every_operation(catalog):
    with pytest.raises(InvalidName):
        await catalog.mkdir("/-")
    with pytest.raises(InvalidName):
        await catalog.mkdir("/a\nb")
    with pytest.raises(InvalidName):
        await catalog.stat("relative")


@pytest_twisted.ensureDeferred
async def test_names_are_case_sensitive_and_stored_as_given(catalog):
    await catalog.mkdir("/Name")
    await catalog.mkdir("/name")
    await catalog.mkdir("/naïve ✓")
    names = [e.name for e in await catalog.list_dir("/")]
    assert names == ["Name", "name", "naïve ✓"]


@pytest_twisted.ensureDeferred
async def test_list_dir_orders_by_utf8_bytes_and_pages_without_gaps(catalog):
    await catalog.mkdir("/big")
    names = [f"f{i:05d}" for i in range(2500)] + ["Z", "a", "é", "\u4e2d"]
    for name in names:
        await catalog.mkdir(f"/big/{name}")
    seen, after = [], None
    while True:
        page = await catalog.list_dir("/big", after=after, limit=700)
        if not page:
            break
        seen += [e.name for e in page]
        after = page[-1].name
    assert seen == sorted(names, key=lambda n: n.encode("utf-8"))


@pytest_twisted.ensureDeferred
async def test_list_dir_gives_size_mtime_and_etag_of_files(catalog, clock):
    version = await write_file(catalog, "/f", 42, "blob-1")
    [entry] = await catalog.list_dir("/")
    assert (entry.kind, entry.size, entry.etag, entry.mtime) == (
        FILE,
        42,
        version.etag,
        clock.now,
    )
    assert entry.path == "/f" and not entry.pending


@pytest_twisted.ensureDeferred
async def test_list_dir_of_a_file_is_not_a_directory(catalog):
    await write_file(catalog, "/f", 1, "blob-1")
    with pytest.raises(NotADirectory):
        await catalog.list_dir("/f")


@pytest_twisted.ensureDeferred
async def test_rmdir_removes_only_empty_directories(catalog):
    await catalog.mkdir("/d")
    await catalog.mkdir("/d/e")
    with pytest.raises(NotEmpty):
        await catalog.rmdir("/d")
    await catalog.rmdir("/d/e")
    await catalog.rmdir("/d")
    with pytest.raises(NotFound):
        await catalog.stat("/d")
    await write_file(catalog, "/f", 1, "blob-1")
    with pytest.raises(NotADirectory):
        await catalog.rmdir("/f")
    with pytest.raises(InvalidMove):
        await catalog.rmdir("/")


@pytest_twisted.ensureDeferred
async def test_a_pending_only_file_keeps_its_directory_non_empty(catalog, clock):
    await catalog.mkdir("/d")
    await catalog.begin_upload(
        "alice",
        "/d/f",
        base_length=0,
        blob_id="b1",
        replicas=["s1"],
        wanted_replicas=1,
        owner="fe1",
        expires_at=clock.now + 60,
    )
    with pytest.raises(NotEmpty):
        await catalog.rmdir("/d")


@pytest_twisted.ensureDeferred
async def test_delete_removes_a_file_and_makes_its_blob_collectable(catalog):
    await write_file(catalog, "/f", 10, "blob-1")
    assert await catalog.collectable_blobs() == []
    await catalog.delete("/f")
    with pytest.raises(NotFound):
        await catalog.stat("/f")
    assert [b.blob_id for b in await catalog.collectable_blobs()] == ["blob-1"]


@pytest_twisted.ensureDeferred
async def test_delete_refuses_directories_and_missing_files(catalog):
    await catalog.mkdir("/d")
    with pytest.raises(IsADirectory):
        await catalog.delete("/d")
    with pytest.raises(NotFound):
        await catalog.delete("/nothing")


@pytest_twisted.ensureDeferred
async def test_delete_with_a_live_upload_is_refused_unless_aborting_it(catalog, clock):
    await write_file(catalog, "/f", 10, "blob-1")
    up = await catalog.begin_upload(
        "alice",
        "/f",
        base_length=10,
        blob_id="blob-2",
        replicas=["s1"],
        wanted_replicas=1,
        owner="fe1",
        expires_at=clock.now + 60,
    )
    with pytest.raises(PendingUploadExists):
        await catalog.delete("/f")
    assert (await catalog.stat("/f")).size == 10
    await catalog.delete("/f", abort_pending=True)
    assert (await catalog.get_upload(up.upload_id)).state == "aborted"
    assert {b.blob_id for b in await catalog.collectable_blobs()} == {"blob-1", "blob-2"}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("op", ["delete", "rename"])
async def test_nothing_committed_holds_only_while_no_version_is(catalog, clock, op):
    """``expected_etag=NOTHING_COMMITTED`` (an HTTP DELETE or MOVE judged a
    file with only a pending upload): VersionChanged once a version is
    committed there, nothing changed; it acts while none is."""

    def act(path):
        if op == "delete":
            return catalog.delete(path, abort_pending=True, expected_etag=NOTHING_COMMITTED)
        return catalog.rename(path, path + ".moved", expected_etag=NOTHING_COMMITTED)

    await write_file(catalog, "/f", 10, "blob-1")
    with pytest.raises(VersionChanged):
        await act("/f")
    assert (await catalog.stat("/f")).size == 10
    up = await catalog.begin_upload(
        "alice",
        "/p",
        base_length=0,
        blob_id="blob-2",
        replicas=["s1"],
        wanted_replicas=1,
        owner="fe1",
        expires_at=clock.now + 60,
    )
    await act("/p")
    with pytest.raises(NotFound):
        await catalog.stat("/p")
    if op == "rename":
        assert (await catalog.get_upload(up.upload_id)).state == "active"
        assert (await catalog.stat("/p.moved")).version is None


@pytest_twisted.ensureDeferred
async def test_rename_moves_a_file_without_touching_its_version(catalog):
    version = await write_file(catalog, "/f", 7, "blob-1")
    await catalog.mkdir("/d")
    moved = await catalog.rename("/f", "/d/g")
    assert moved.path == "/d/g" and moved.version == version
    with pytest.raises(NotFound):
        await catalog.stat("/f")


@pytest_twisted.ensureDeferred
async def test_rename_moves_a_directory_with_its_subtree(catalog):
    await catalog.mkdir("/a")
    await catalog.mkdir("/a/b")
    await write_file(catalog, "/a/b/f", 3, "blob-1")
    await catalog.rename("/a", "/c")
    assert (await catalog.stat("/c/b/f")).size == 3


@pytest_twisted.ensureDeferred
async def test_rename_refuses_moving_into_its_own_subtree(catalog):
    await catalog.mkdir("/a")
    await catalog.mkdir("/a/b")
    with pytest.raises(InvalidMove):
        await catalog.rename("/a", "/a/b/c")
    with pytest.raises(InvalidMove):
        await catalog.rename("/", "/x")
    # A file has no subtree: under it, the destination's parent is a file.
    await write_file(catalog, "/a/f", 1, "blob-1")
    for dst in ("/a/f/x", "/a/f/x/y"):
        with pytest.raises(NotADirectory):
            await catalog.rename("/a/f", dst)
    assert (await catalog.stat("/a/f")).size == 1


@pytest_twisted.ensureDeferred
async def test_rename_onto_an_existing_name_needs_replace(catalog):
    await write_file(catalog, "/f", 1, "blob-1")
    await write_file(catalog, "/g", 2, "blob-2")
    with pytest.raises(Exists):
        await catalog.rename("/f", "/g")
    await catalog.rename("/f", "/g", replace=True)
    assert (await catalog.stat("/g")).size == 1
    assert [b.blob_id for b in await catalog.collectable_blobs()] == ["blob-2"]
    await catalog.mkdir("/d")
    with pytest.raises(Exists):
        await catalog.rename("/g", "/d", replace=True)


@pytest_twisted.ensureDeferred
async def test_rename_never_replaces_a_file_with_a_directory(catalog):
    await catalog.mkdir("/d")
    await write_file(catalog, "/d/inside", 1, "blob-1")
    version = await write_file(catalog, "/f", 2, "blob-2")
    with pytest.raises(NotADirectory):
        await catalog.rename("/d", "/f", replace=True)
    with pytest.raises(Exists):
        await catalog.rename("/d", "/f")
    kept = await catalog.stat("/f")
    assert (kept.kind, kept.version) == (FILE, version)
    assert (await catalog.stat("/d/inside")).size == 1
    assert await catalog.collectable_blobs() == []


@pytest_twisted.ensureDeferred
async def test_rename_of_missing_source_or_into_missing_dir_is_not_found(catalog):
    await catalog.mkdir("/a")
    with pytest.raises(NotFound):
        await catalog.rename("/nothing", "/b")
    with pytest.raises(NotFound):
        await catalog.rename("/a", "/nowhere/a")


@pytest_twisted.ensureDeferred
async def test_uploads_follow_their_inode_through_a_parent_rename(catalog, clock):
    await catalog.mkdir("/d")
    up = await catalog.begin_upload(
        "alice",
        "/d/f",
        base_length=0,
        blob_id="b1",
        replicas=["s1"],
        wanted_replicas=1,
        owner="fe1",
        expires_at=clock.now + 60,
    )
    await catalog.rename("/d", "/e")
    assert (await catalog.get_upload(up.upload_id)).path == "/e/f"
    await catalog.commit_upload(up.upload_id, up.epoch, 5)
    assert (await catalog.stat("/e/f")).size == 5


@pytest_twisted.ensureDeferred
async def test_an_expired_upload_does_not_block_delete(catalog, clock):
    await write_file(catalog, "/f", 4, "blob-1")
    up = await catalog.begin_upload(
        "alice", "/f", base_length=4, blob_id="blob-2", replicas=["s1"],
        wanted_replicas=1, owner="fe1", expires_at=clock.now + 10,
    )  # fmt: skip
    clock.advance(11)
    await catalog.delete("/f")
    assert (await catalog.get_upload(up.upload_id)).state == "expired"
    with pytest.raises(NotFound):
        await catalog.stat("/f")


@pytest_twisted.ensureDeferred
async def test_rename_never_replaces_a_file_with_a_live_upload(catalog, clock):
    await write_file(catalog, "/src", 1, "blob-1")
    await write_file(catalog, "/dst", 2, "blob-2")
    await catalog.begin_upload(
        "alice", "/dst", base_length=2, blob_id="blob-3", replicas=["s1"],
        wanted_replicas=1, owner="fe1", expires_at=clock.now + 60,
    )  # fmt: skip
    with pytest.raises(PendingUploadExists):
        await catalog.rename("/src", "/dst", replace=True)
    assert (await catalog.stat("/src")).size == 1
    assert (await catalog.stat("/dst")).size == 2


@pytest_twisted.ensureDeferred
async def test_set_mtime_changes_only_the_time_of_a_file_or_directory(catalog, clock):
    made = await write_file(catalog, "/f", 7, "blob-1")
    before = await catalog.stat("/f")
    entry = await catalog.set_mtime("/f", 1_000_000_000.25)
    assert entry.mtime == 1_000_000_000.25
    after = await catalog.stat("/f")
    assert after.mtime == 1_000_000_000.25
    assert (after.size, after.etag, after.inode) == (before.size, before.etag, before.inode)
    assert after.version.version_id == made.version_id
    assert [e.mtime for e in await catalog.list_dir("/")] == [1_000_000_000.25]
    await catalog.mkdir("/d")
    await catalog.set_mtime("/d", 86400.0)
    assert (await catalog.stat("/d")).mtime == 86400.0


@pytest_twisted.ensureDeferred
async def test_set_mtime_of_a_missing_or_pending_only_file_is_not_found(catalog, clock):
    with pytest.raises(NotFound):
        await catalog.set_mtime("/nope", 1.0)
    await catalog.begin_upload(
        "alice", "/p", base_length=0, blob_id="blob-p", replicas=["s1"],
        wanted_replicas=1, owner="fe1", expires_at=clock.now + 60,
    )  # fmt: skip
    with pytest.raises(NotFound):
        await catalog.set_mtime("/p", 1.0)
