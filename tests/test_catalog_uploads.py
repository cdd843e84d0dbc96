"""Contract: upload sessions and blob bookkeeping, on SQLite and PostgreSQL."""

import pytest
import pytest_twisted

from wsfront.catalog.errors import (
    EpochConflict,
    Exists,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    NotFound,
    PendingUploadExists,
    UploadFinished,
)
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK, Replica

pytest_plugins = ["tests.catalog_fixtures"]


def begin(cat, path, blob, base=0, user="alice", owner="fe1", ttl=3600, **kw):
    return cat.begin_upload(
        user,
        path,
        base_length=base,
        blob_id=blob,
        replicas=kw.pop("replicas", ["s1", "s2"]),
        wanted_replicas=kw.pop("wanted", 2),
        owner=owner,
        expires_at=cat._clock() + ttl,
        **kw,
    )


def spans(extents):
    return [(e.blob_id, e.blob_offset, e.length, e.file_offset) for e in extents]


@pytest_twisted.ensureDeferred
async def test_begin_creates_a_pending_only_file_seen_by_stat_not_by_list(catalog):
    up = await begin(catalog, "/f", "b1", declared_length=100, meta={"protocol": "tus"})
    assert (up.epoch, up.checkpoint, up.blob_start, up.state) == (1, 0, 0, "active")
    assert (up.path, up.user, up.owner, up.declared_length) == ("/f", "alice", "fe1", 100)
    assert up.meta == {"protocol": "tus"} and up.base_extents == ()
    assert up.replicas == (Replica("s1"), Replica("s2")) and up.wanted_replicas == 2
    entry = await catalog.stat("/f")
    assert entry.pending and entry.version is None and entry.upload == up
    assert await catalog.list_dir("/") == []
    [shown] = await catalog.list_dir("/", include_pending=True)
    assert shown.name == "f" and shown.pending
    assert await catalog.find_upload("/f") == up
    assert await catalog.get_upload(up.upload_id) == up


@pytest_twisted.ensureDeferred
async def test_begin_refuses_directories_and_missing_or_file_parents(catalog):
    await catalog.mkdir("/d")
    with pytest.raises(IsADirectory):
        await begin(catalog, "/d", "b1")
    with pytest.raises(NotFound):
        await begin(catalog, "/nope/f", "b2")
    up = await begin(catalog, "/f", "b3")
    await catalog.commit_upload(up.upload_id, 1, 1)
    with pytest.raises(NotADirectory):
        await begin(catalog, "/f/g", "b4")


@pytest_twisted.ensureDeferred
async def test_a_second_writer_on_a_path_is_refused_while_the_first_is_live(catalog):
    first = await begin(catalog, "/f", "b1")
    with pytest.raises(PendingUploadExists):
        await begin(catalog, "/f", "b2", user="bob", owner="fe2")
    await catalog.interrupt_upload(first.upload_id, first.epoch)
    with pytest.raises(PendingUploadExists):
        await begin(catalog, "/f", "b2", user="bob", owner="fe2")


@pytest_twisted.ensureDeferred
async def test_an_expired_upload_no_longer_blocks_a_new_writer(catalog, clock):
    first = await begin(catalog, "/f", "b1", ttl=10)
    clock.advance(11)
    second = await begin(catalog, "/f", "b2", user="bob")
    assert (await catalog.get_upload(first.upload_id)).state == "expired"
    assert (await catalog.find_upload("/f")).upload_id == second.upload_id


@pytest_twisted.ensureDeferred
async def test_base_length_above_committed_size_is_an_invalid_offset(catalog):
    with pytest.raises(InvalidOffset):
        await begin(catalog, "/new", "b0", base=5)
    up = await begin(catalog, "/f", "b1")
    await catalog.commit_upload(up.upload_id, 1, 10)
    with pytest.raises(InvalidOffset):
        await begin(catalog, "/f", "b2", base=11)


@pytest_twisted.ensureDeferred
async def test_resume_keeps_committed_extents_shortened_by_reference(catalog):
    up = await begin(catalog, "/f", "A")
    await catalog.commit_upload(up.upload_id, 1, 10)
    up = await begin(catalog, "/f", "B", base=6)
    assert spans(up.base_extents) == [("A", 0, 6, 0)]
    assert (up.blob_start, up.checkpoint) == (6, 6)
    assert (await catalog.stat("/f")).size == 10  # others still see the committed one
    version = await catalog.commit_upload(up.upload_id, 1, 15)
    assert spans(version.extents) == [("A", 0, 6, 0), ("B", 0, 9, 6)]
    assert version.size == 15
    assert await catalog.collectable_blobs() == []


@pytest_twisted.ensureDeferred
async def test_checkpoint_is_a_cas_on_the_epoch_and_never_goes_back(catalog):
    up = await begin(catalog, "/f", "b1")
    after = await catalog.checkpoint(up.upload_id, 1, 4096)
    assert after.checkpoint == 4096 and after.updated_at >= up.updated_at
    with pytest.raises(EpochConflict):
        await catalog.checkpoint(up.upload_id, 2, 8192)
    with pytest.raises(InvalidOffset):
        await catalog.checkpoint(up.upload_id, 1, 100)
    assert (await catalog.get_blob("b1")).length == 4096


@pytest_twisted.ensureDeferred
async def test_checkpoint_past_the_declared_length_is_refused(catalog):
    up = await begin(catalog, "/f", "b1", declared_length=10)
    with pytest.raises(InvalidOffset):
        await catalog.checkpoint(up.upload_id, 1, 11)


@pytest_twisted.ensureDeferred
async def test_a_dropped_replica_makes_the_committed_blob_under_replicated(catalog):
    up = await begin(catalog, "/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 100, replicas=["s2"])
    assert (await catalog.get_upload(up.upload_id)).replicas == (
        Replica("s2", REPLICA_OK),
        Replica("s1", REPLICA_LOST),
    )
    assert await catalog.count_under_replicated() == 0  # not sealed yet
    await catalog.commit_upload(up.upload_id, 1, 100)
    [blob] = await catalog.under_replicated()
    assert blob.blob_id == "b1" and blob.ok_replicas == ("s2",) and blob.sealed
    assert await catalog.count_under_replicated() == 1
    await catalog.add_replica("b1", "s3")
    assert await catalog.count_under_replicated() == 0
    await catalog.mark_replica("b1", "s3", "stale")
    assert await catalog.count_under_replicated() == 1


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_leaves_a_stale_replica_it_drops_stale(catalog):
    """A replica marked stale (it missed a fence: its bytes are not the
    session's) and then left out of the session's set stays stale: lost,
    repair could count it ok again once it reads back intact."""
    up = await begin(catalog, "/f", "b1", replicas=["s1", "s2", "s3"], wanted=3)
    await catalog.mark_replica("b1", "s3", "stale")
    await catalog.checkpoint(up.upload_id, 1, 100, replicas=["s2"])
    replicas = (await catalog.get_upload(up.upload_id)).replicas
    assert {r.node: r.state for r in replicas} == {
        "s1": REPLICA_LOST,
        "s2": REPLICA_OK,
        "s3": "stale",
    }


@pytest_twisted.ensureDeferred
async def test_take_over_bumps_the_epoch_and_fences_the_old_owner_out(catalog):
    up = await begin(catalog, "/f", "b1")
    await catalog.interrupt_upload(up.upload_id, 1)
    taken = await catalog.take_over(up.upload_id, 1, "fe2")
    assert (taken.epoch, taken.owner, taken.state) == (2, "fe2", "active")
    with pytest.raises(EpochConflict):
        await catalog.checkpoint(up.upload_id, 1, 10)
    with pytest.raises(EpochConflict):
        await catalog.take_over(up.upload_id, 1, "fe3")
    with pytest.raises(EpochConflict):
        await catalog.commit_upload(up.upload_id, 1, 0)
    assert (await catalog.checkpoint(up.upload_id, 2, 10)).checkpoint == 10


@pytest_twisted.ensureDeferred
async def test_restart_within_the_current_blob_keeps_its_prefix(catalog):
    up = await begin(catalog, "/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 100)
    with pytest.raises(InvalidOffset):
        await catalog.restart_at(up.upload_id, 1, 101, "b2", ["s1", "s2"], 2)
    up = await catalog.restart_at(up.upload_id, 1, 60, "b2", ["s1", "s3"], 2)
    assert spans(up.base_extents) == [("b1", 0, 60, 0)]
    assert (up.blob_id, up.blob_start, up.checkpoint, up.epoch) == ("b2", 60, 60, 1)
    assert (await catalog.get_blob("b1")).sealed
    version = await catalog.commit_upload(up.upload_id, 1, 80)
    assert spans(version.extents) == [("b1", 0, 60, 0), ("b2", 0, 20, 60)]


@pytest_twisted.ensureDeferred
async def test_restart_keeps_the_declared_length_unless_given_another(catalog):
    up = await begin(catalog, "/f", "b1", declared_length=10)
    await catalog.checkpoint(up.upload_id, 1, 2)
    up = await catalog.restart_at(up.upload_id, 1, 2, "b2", ["s1"], 2)
    assert up.declared_length == 10
    with pytest.raises(InvalidOffset):
        await catalog.restart_at(up.upload_id, 1, 2, "b3", ["s1"], 2, declared_length=1)
    up = await catalog.restart_at(up.upload_id, 1, 0, "b3", ["s1"], 2, declared_length=None)
    assert (up.declared_length, up.checkpoint) == (None, 0)
    version = await catalog.commit_upload(up.upload_id, 1, 0)
    assert version.size == 0


@pytest_twisted.ensureDeferred
async def test_restart_below_the_current_blob_trims_base_extents(catalog):
    up = await begin(catalog, "/f", "A")
    await catalog.commit_upload(up.upload_id, 1, 50)
    up = await begin(catalog, "/f", "B", base=50)
    await catalog.checkpoint(up.upload_id, 1, 70)
    up = await catalog.restart_at(up.upload_id, 1, 30, "C", ["s1"], 2)
    assert spans(up.base_extents) == [("A", 0, 30, 0)]
    assert [b.blob_id for b in await catalog.collectable_blobs()] == ["B"]
    version = await catalog.commit_upload(up.upload_id, 1, 30)
    assert spans(version.extents) == [("A", 0, 30, 0)]
    assert {b.blob_id for b in await catalog.collectable_blobs()} == {"B", "C"}


@pytest_twisted.ensureDeferred
async def test_commit_replaces_the_version_and_frees_the_old_blobs(catalog, clock):
    up = await begin(catalog, "/f", "old")
    first = await catalog.commit_upload(up.upload_id, 1, 10, sha256="aa" * 32)
    assert first.sha256 == "aa" * 32 and first.mtime == clock.now
    up = await begin(catalog, "/f", "new")
    second = await catalog.commit_upload(up.upload_id, 1, 20, mtime=1234.0)
    assert second.etag != first.etag and second.mtime == 1234.0 and second.sha256 is None
    entry = await catalog.stat("/f")
    assert entry.version == second and entry.upload is None and not entry.pending
    assert [b.blob_id for b in await catalog.collectable_blobs()] == ["old"]
    assert (await catalog.get_upload(up.upload_id)).state == "committed"
    with pytest.raises(UploadFinished):
        await catalog.checkpoint(up.upload_id, 1, 30)
    with pytest.raises(UploadFinished):
        await catalog.commit_upload(up.upload_id, 1, 20)


@pytest_twisted.ensureDeferred
async def test_version_extents_carry_their_blob_replicas(catalog):
    up = await begin(catalog, "/f", "b1", replicas=["s2", "s1"])
    await catalog.commit_upload(up.upload_id, 1, 5)
    [extent] = (await catalog.stat("/f")).version.extents
    assert extent.replicas == (Replica("s1"), Replica("s2"))


@pytest_twisted.ensureDeferred
async def test_an_empty_file_has_no_extents_and_frees_its_blob(catalog):
    up = await begin(catalog, "/empty", "b1")
    version = await catalog.commit_upload(up.upload_id, 1, 0)
    assert version.size == 0 and version.extents == ()
    assert [b.blob_id for b in await catalog.collectable_blobs()] == ["b1"]


@pytest_twisted.ensureDeferred
async def test_commit_must_match_a_declared_length_and_not_undercut_the_blob(catalog):
    up = await begin(catalog, "/f", "b1", declared_length=10)
    with pytest.raises(InvalidOffset):
        await catalog.commit_upload(up.upload_id, 1, 9)
    await catalog.commit_upload(up.upload_id, 1, 10)
    up = await begin(catalog, "/f", "b2", base=10)
    with pytest.raises(InvalidOffset):
        await catalog.commit_upload(up.upload_id, 1, 5)


@pytest_twisted.ensureDeferred
async def test_abort_removes_a_pending_only_file_and_frees_its_blobs(catalog):
    up = await begin(catalog, "/f", "b1")
    up = await catalog.restart_at(up.upload_id, 1, 0, "b2", ["s1"], 2)
    with pytest.raises(EpochConflict):
        await catalog.abort_upload(up.upload_id, epoch=5)
    aborted = await catalog.abort_upload(up.upload_id, epoch=1)
    assert aborted.state == "aborted"
    with pytest.raises(NotFound):
        await catalog.stat("/f")
    assert {b.blob_id for b in await catalog.collectable_blobs()} == {"b1", "b2"}
    with pytest.raises(UploadFinished):
        await catalog.abort_upload(up.upload_id)


@pytest_twisted.ensureDeferred
async def test_abort_of_a_resume_keeps_the_committed_version(catalog):
    up = await begin(catalog, "/f", "A")
    await catalog.commit_upload(up.upload_id, 1, 10)
    up = await begin(catalog, "/f", "B", base=10)
    await catalog.abort_upload(up.upload_id)
    entry = await catalog.stat("/f")
    assert entry.size == 10 and entry.upload is None
    assert [b.blob_id for b in await catalog.collectable_blobs()] == ["B"]


@pytest_twisted.ensureDeferred
async def test_expire_uploads_ends_only_those_past_their_expiry(catalog, clock):
    short = await begin(catalog, "/short", "b1", ttl=10)
    long = await begin(catalog, "/long", "b2", ttl=100)
    clock.advance(50)
    expired = await catalog.expire_uploads()
    assert [u.upload_id for u in expired] == [short.upload_id]
    assert expired[0].state == "expired"
    with pytest.raises(NotFound):
        await catalog.stat("/short")
    assert (await catalog.get_upload(long.upload_id)).state == "active"
    assert await catalog.expire_uploads(now=clock.now + 100) != []


@pytest_twisted.ensureDeferred
async def test_expire_uploads_takes_at_most_its_limit_oldest_id_first(catalog, clock):
    ups = [await begin(catalog, f"/f{i}", f"b{i}", ttl=10) for i in range(3)]
    clock.advance(50)
    ids = sorted(u.upload_id for u in ups)
    first = await catalog.expire_uploads(limit=2)
    assert [u.upload_id for u in first] == ids[:2]
    assert (await catalog.get_upload(ids[2])).state == "active"
    second = await catalog.expire_uploads(limit=2)
    assert [u.upload_id for u in second] == ids[2:]
    assert await catalog.expire_uploads(limit=2) == []


@pytest_twisted.ensureDeferred
async def test_activity_can_extend_an_upload_expiry(catalog, clock):
    up = await begin(catalog, "/f", "b1", ttl=10)
    await catalog.checkpoint(up.upload_id, 1, 5, expires_at=clock.now + 100)
    clock.advance(50)
    assert await catalog.expire_uploads() == []


@pytest_twisted.ensureDeferred
async def test_a_restarted_front_end_interrupts_its_sessions(catalog):
    a = await begin(catalog, "/a", "b1", owner="fe1")
    b = await begin(catalog, "/b", "b2", owner="fe2")
    changed = await catalog.interrupt_sessions_of("fe1")
    assert [u.upload_id for u in changed] == [a.upload_id]
    assert changed[0].state == "interrupted" and changed[0].epoch == 1
    live = await catalog.list_uploads()
    assert {u.upload_id for u in live} == {a.upload_id, b.upload_id}
    assert [u.upload_id for u in await catalog.list_uploads(states=["interrupted"])] == [
        a.upload_id
    ]
    assert [u.upload_id for u in await catalog.list_uploads(owner="fe2")] == [b.upload_id]


@pytest_twisted.ensureDeferred
async def test_unknown_uploads_and_blobs_are_not_found(catalog):
    with pytest.raises(NotFound):
        await catalog.get_upload("nope")
    with pytest.raises(NotFound):
        await catalog.take_over("nope", 1, "fe2")
    with pytest.raises(NotFound):
        await catalog.get_blob("nope")
    with pytest.raises(NotFound):
        await catalog.mark_replica("nope", "s1", "lost")
    assert await catalog.find_upload("/missing/f") is None


@pytest_twisted.ensureDeferred
async def test_forget_blob_only_forgets_unreferenced_blobs(catalog):
    up = await begin(catalog, "/f", "b1")
    with pytest.raises(Exists):
        await catalog.forget_blob("b1")
    await catalog.commit_upload(up.upload_id, 1, 10)
    with pytest.raises(Exists):
        await catalog.forget_blob("b1")
    await catalog.delete("/f")
    assert await catalog.forget_blob("b1") == ["s1", "s2"]  # its replicas' nodes
    assert await catalog.collectable_blobs() == []
    with pytest.raises(NotFound):
        await catalog.get_blob("b1")


@pytest_twisted.ensureDeferred
async def test_a_reused_blob_id_is_refused(catalog):
    await begin(catalog, "/f", "b1")
    with pytest.raises(Exists):
        await begin(catalog, "/g", "b1")


# -- start_upload: a STOR's lookup and begin in one transaction ---------------------


def start(cat, path, blob, offset=0, user="alice"):
    return cat.start_upload(
        user,
        path,
        offset=offset,
        blob_id=blob,
        replicas=["s1", "s2"],
        wanted_replicas=2,
        owner="fe1",
        expires_at=cat._clock() + 3600,
    )


@pytest_twisted.ensureDeferred
async def test_start_upload_begins_a_new_file_or_resumes_at_the_committed_size(catalog):
    started = await start(catalog, "/f", "b1")
    assert started.committed_size == 0 and started.upload.blob_start == 0
    await catalog.commit_upload(started.upload.upload_id, 1, 10)
    appended = await start(catalog, "/f", "b2", offset=None)  # APPE
    assert appended.committed_size == 10 and appended.upload.blob_start == 10
    assert spans(appended.upload.base_extents) == [("b1", 0, 10, 0)]
    await catalog.commit_upload(appended.upload.upload_id, 1, 15)
    rolled_back = await start(catalog, "/f", "b3", offset=4)  # REST 4 + STOR
    assert (rolled_back.committed_size, rolled_back.upload.blob_start) == (15, 4)


@pytest_twisted.ensureDeferred
async def test_start_upload_returns_the_session_as_the_catalog_reads_it_back(catalog):
    """start_upload builds its UploadSession from what it wrote instead of
    reading the rows back: it must be exactly what get_upload finds."""
    await catalog.mkdir("/d")
    fresh = await catalog.start_upload(
        "alice",
        "/d/n.bin",
        offset=0,
        blob_id="b1",
        replicas=["s2", "s1", "s2"],
        wanted_replicas=3,
        owner="fe1",
        expires_at=catalog._clock() + 60,
        declared_length=99,
        meta={"protocol": "tus", "n": [1, 2]},
    )
    assert fresh.upload == await catalog.get_upload(fresh.upload.upload_id)
    assert fresh.upload.path == "/d/n.bin"
    # commit_upload, too, returns the version it wrote without reading it back.
    version = await catalog.commit_upload(fresh.upload.upload_id, 1, 99, sha256="ab" * 32)
    assert version == (await catalog.stat("/d/n.bin")).version
    resumed = await start(catalog, "/d/n.bin", "b2", offset=40)
    assert resumed.upload == await catalog.get_upload(resumed.upload.upload_id)
    assert spans(resumed.upload.base_extents) == [("b1", 0, 40, 0)]
    assert [r.node for r in resumed.upload.base_extents[0].replicas] == ["s1", "s2"]
    version = await catalog.commit_upload(resumed.upload.upload_id, 1, 70, mtime=5.0)
    assert version == (await catalog.stat("/d/n.bin")).version
    assert spans(version.extents) == [("b1", 0, 40, 0), ("b2", 0, 30, 40)]


@pytest_twisted.ensureDeferred
async def test_start_upload_hands_back_a_live_upload_and_changes_nothing(catalog):
    first = (await start(catalog, "/f", "b1")).upload
    with pytest.raises(PendingUploadExists) as caught:
        await start(catalog, "/f", "b2", user="bob")
    assert caught.value.upload == first
    with pytest.raises(NotFound):
        await catalog.get_blob("b2")  # no blob recorded for the refused start
    assert (await catalog.stat("/f")).upload == first


@pytest_twisted.ensureDeferred
async def test_start_upload_refuses_offsets_past_the_end_and_directories(catalog):
    with pytest.raises(InvalidOffset):
        await start(catalog, "/new", "b1", offset=5)
    started = await start(catalog, "/f", "b2")
    await catalog.commit_upload(started.upload.upload_id, 1, 3)
    with pytest.raises(InvalidOffset):
        await start(catalog, "/f", "b3", offset=4)
    await catalog.mkdir("/d")
    with pytest.raises(IsADirectory):
        await start(catalog, "/d", "b4")
    with pytest.raises(NotFound):
        await start(catalog, "/missing/f", "b5")
    assert (await catalog.stat("/f")).upload is None


@pytest_twisted.ensureDeferred
async def test_progress_at_its_epoch_makes_a_row_marked_interrupted_active_again(catalog):
    """Another front end marks a paused front end's uploads interrupted
    (its liveness lease lapsed); the writer was only paused, and its next
    checkpoint says a client is sending: the row is active again, so its
    owner's DELETE refuses instead of abandoning it under the writer.  A
    takeover (epoch + 1) still fences the old writer."""
    up = await begin(catalog, "/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 4)
    [marked] = await catalog.interrupt_sessions_of("fe1")
    assert marked.state == "interrupted"
    after = await catalog.checkpoint(up.upload_id, 1, 6)
    assert (after.state, after.checkpoint, after.epoch) == ("active", 6, 1)
    with pytest.raises(PendingUploadExists):
        await catalog.delete("/f", user="alice")
    await catalog.interrupt_sessions_of("fe1")
    taken = await catalog.take_over(up.upload_id, 1, "fe2")
    with pytest.raises(EpochConflict):
        await catalog.checkpoint(up.upload_id, 1, 8)
    assert (await catalog.get_upload(up.upload_id)).state == "active"
    await catalog.interrupt_sessions_of("fe2")
    resumed = await catalog.restart_at(taken.upload_id, 2, 6, "b2", ["s1"], 1)
    assert resumed.state == "active"


@pytest_twisted.ensureDeferred
async def test_delete_spares_an_interrupted_upload_held_by_the_callers_session(catalog):
    up = await begin(catalog, "/f", "b1")
    await catalog.interrupt_sessions_of("fe1")
    with pytest.raises(PendingUploadExists):
        await catalog.delete("/f", user="alice", spare={up.upload_id})
    assert (await catalog.get_upload(up.upload_id)).state == "interrupted"
    assert await catalog.delete("/f", user="alice", spare={"another"}) == up.upload_id


@pytest_twisted.ensureDeferred
async def test_a_replacing_rename_abandons_the_users_own_interrupted_upload_only(catalog):
    """As delete does: the replaced file's owner's interrupted upload goes
    with it; another user's, a live one or a spared one refuses."""
    ups = {}
    for name, user in (("mine", "alice"), ("bobs", "bob"), ("spared", "alice"), ("live", "alice")):
        ups[name] = await begin(catalog, f"/{name}", f"b-{name}", user=user)
        if name != "live":
            await catalog.interrupt_upload(ups[name].upload_id, 1)
        src = await begin(catalog, f"/{name}.tmp", f"t-{name}")
        await catalog.commit_upload(src.upload_id, 1, 0)
    for name, spare in (("bobs", ()), ("spared", {ups["spared"].upload_id}), ("live", ())):
        with pytest.raises(PendingUploadExists):
            await catalog.rename(
                f"/{name}.tmp", f"/{name}", replace=True, user="alice", spare=spare
            )
        assert (await catalog.find_upload(f"/{name}")).upload_id == ups[name].upload_id
    with pytest.raises(PendingUploadExists):  # no user named: as before
        await catalog.rename("/mine.tmp", "/mine", replace=True)
    entry = await catalog.rename("/mine.tmp", "/mine", replace=True, user="alice")
    assert entry.path == "/mine" and entry.version is not None
    assert (await catalog.get_upload(ups["mine"].upload_id)).state == "aborted"
    assert await catalog.find_upload("/mine") is None
