"""Contract: users, passwords, permissions and quota accounting."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from wsfront.catalog import _accounts, open_catalog
from wsfront.catalog.errors import (
    AuthFailed,
    CatalogUnavailable,
    Exists,
    InvalidName,
    NotEmpty,
    NotFound,
    QuotaExceeded,
)
from wsfront.catalog.passwords import hash_password, verify_password
from wsfront.catalog.records import DIR, PERMISSIONS

pytest_plugins = ["tests.catalog_fixtures"]


async def upload(cat, user, path, size, blob, base=0):
    up = await cat.begin_upload(
        user,
        path,
        base_length=base,
        blob_id=blob,
        replicas=["s1"],
        wanted_replicas=1,
        owner="fe1",
        expires_at=cat._clock() + 60,
    )
    return await cat.commit_upload(up.upload_id, up.epoch, size)


def test_password_hashes_are_salted_and_verified_in_constant_time():
    a, b = hash_password("secret"), hash_password("secret")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("secret", a) and not verify_password("Secret", a)
    assert not verify_password("secret", "garbage")


@pytest_twisted.ensureDeferred
async def test_add_user_creates_their_root_and_authenticates(catalog):
    user = await catalog.add_user("alice", "pw")
    assert (user.name, user.root, user.admin, user.permissions) == (
        "alice",
        "/alice",
        False,
        PERMISSIONS,
    )
    assert (await catalog.stat("/alice")).kind == DIR
    assert (await catalog.authenticate("alice", "pw")).name == "alice"
    with pytest.raises(AuthFailed):
        await catalog.authenticate("alice", "wrong")
    with pytest.raises(AuthFailed):
        await catalog.authenticate("nobody", "pw")


@pytest_twisted.ensureDeferred
async def test_admins_may_have_the_root_and_nested_roots_are_created(catalog):
    admin = await catalog.add_user("root", "pw", admin=True, root="/")
    await catalog.mkdir("/somewhere")
    await catalog.mkdir("/somewhere/deep")
    assert admin.admin and admin.root == "/"
    deep = await catalog.add_user("carol", "pw", root="/home/carol")
    assert deep.root == "/home/carol"
    assert (await catalog.stat("/home/carol")).kind == DIR


@pytest_twisted.ensureDeferred
async def test_user_management_errors(catalog):
    await catalog.add_user("alice", "pw")
    with pytest.raises(Exists):
        await catalog.add_user("alice", "pw")
    with pytest.raises(InvalidName):
        await catalog.add_user("a/b", "pw")
    with pytest.raises(InvalidName):
        await catalog.add_user("-", "pw")
    for reserved in ("anonymous", "FTP"):  # the names anonymous clients get
        with pytest.raises(InvalidName, match="reserved"):
            await catalog.add_user(reserved, "pw")
    with pytest.raises(NotFound):
        await catalog.get_user("bob")
    with pytest.raises(NotFound):
        await catalog.delete_user("bob")
    with pytest.raises(ValueError):
        await catalog.set_permissions("alice", ["fly"])


@pytest_twisted.ensureDeferred
async def test_password_permission_and_quota_changes_stick(catalog):
    await catalog.add_user("alice", "pw")
    await catalog.add_user("bob", "pw")
    await catalog.set_password("alice", "new")
    with pytest.raises(AuthFailed):
        await catalog.authenticate("alice", "pw")
    assert (await catalog.authenticate("alice", "new")).name == "alice"
    assert (await catalog.set_permissions("alice", ["read"])).permissions == {"read"}
    user = await catalog.set_quota("alice", 1000, 5)
    assert (user.quota_bytes, user.quota_files) == (1000, 5)
    assert [u.name for u in await catalog.list_users()] == ["alice", "bob"]
    await catalog.delete_user("bob")
    assert [u.name for u in await catalog.list_users()] == ["alice"]
    assert (await catalog.stat("/bob")).kind == DIR  # files stay


@pytest_twisted.ensureDeferred
async def test_a_login_carries_the_stored_hash_the_password_was_checked_against(catalog):
    await catalog.add_user("alice", "pw")
    checked = await catalog.check_login("alice", "pw")
    read = await catalog.get_login("alice")
    assert checked.user == read.user and checked.user.name == "alice"
    assert checked.password_hash == read.password_hash
    assert verify_password("pw", read.password_hash)
    assert "scrypt$" not in repr(read)  # the hash stays out of log lines
    with pytest.raises(AuthFailed):
        await catalog.check_login("alice", "wrong")
    with pytest.raises(AuthFailed):
        await catalog.check_login("nobody", "pw")
    with pytest.raises(NotFound):
        await catalog.get_login("nobody")


@pytest_twisted.ensureDeferred
async def test_a_login_read_follows_password_quota_and_account_changes(catalog):
    await catalog.add_user("alice", "pw")
    before = await catalog.get_login("alice")
    await catalog.set_password("alice", "pw")  # the same password, a new salt
    await catalog.set_quota("alice", 1000, None)
    after = await catalog.get_login("alice")
    assert after.password_hash != before.password_hash
    assert after.user.quota_bytes == 1000
    await catalog.delete_user("alice")
    with pytest.raises(NotFound):
        await catalog.get_login("alice")


@pytest_twisted.ensureDeferred
async def test_usage_follows_commits_overwrites_resumes_and_deletes(catalog):
    await catalog.add_user("alice", "pw")
    await upload(catalog, "alice", "/alice/a", 100, "b1")
    await upload(catalog, "alice", "/alice/b", 50, "b2")
    user = await catalog.get_user("alice")
    assert (user.used_bytes, user.used_files) == (150, 2)
    await upload(catalog, "alice", "/alice/a", 30, "b3")  # overwrite shrinks
    await upload(catalog, "alice", "/alice/b", 80, "b4", base=50)  # resume grows
    user = await catalog.get_user("alice")
    assert (user.used_bytes, user.used_files) == (110, 2)
    await catalog.delete("/alice/a")
    user = await catalog.get_user("alice")
    assert (user.used_bytes, user.used_files) == (80, 1)
    await catalog.rename("/alice/b", "/alice/c")
    assert (await catalog.get_user("alice")).used_bytes == 80


@pytest_twisted.ensureDeferred
async def test_overwriting_another_users_file_moves_the_usage(catalog):
    await catalog.add_user("alice", "pw", root="/shared")
    await catalog.add_user("bob", "pw", root="/shared")
    await upload(catalog, "alice", "/shared/f", 100, "b1")
    await upload(catalog, "bob", "/shared/f", 40, "b2")
    alice, bob = await catalog.get_user("alice"), await catalog.get_user("bob")
    assert (alice.used_bytes, alice.used_files, bob.used_bytes, bob.used_files) == (0, 0, 40, 1)


@pytest_twisted.ensureDeferred
async def test_byte_quota_refuses_the_commit_and_leaves_everything_as_it_was(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    await upload(catalog, "alice", "/alice/a", 60, "b1")
    up = await catalog.begin_upload(
        "alice", "/alice/b", base_length=0, blob_id="b2", replicas=["s1"],
        wanted_replicas=1, owner="fe1", expires_at=catalog._clock() + 60,
    )  # fmt: skip
    with pytest.raises(QuotaExceeded):
        await catalog.commit_upload(up.upload_id, 1, 41)
    assert (await catalog.get_upload(up.upload_id)).state == "active"
    assert (await catalog.get_user("alice")).used_bytes == 60
    await catalog.commit_upload(up.upload_id, 1, 40)
    assert (await catalog.get_user("alice")).used_bytes == 100
    await upload(catalog, "alice", "/alice/a", 10, "b3")  # shrinking is always allowed


@pytest_twisted.ensureDeferred
async def test_declared_length_over_quota_is_refused_before_any_byte(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    with pytest.raises(QuotaExceeded):
        await catalog.begin_upload(
            "alice", "/alice/big", base_length=0, blob_id="b1", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=catalog._clock() + 60,
            declared_length=101,
        )  # fmt: skip
    with pytest.raises(NotFound):
        await catalog.stat("/alice/big")


@pytest_twisted.ensureDeferred
async def test_file_quota_counts_new_files_only(catalog):
    await catalog.add_user("alice", "pw", quota_files=1)
    await upload(catalog, "alice", "/alice/a", 1, "b1")
    await upload(catalog, "alice", "/alice/a", 2, "b2")
    with pytest.raises(QuotaExceeded):
        await upload(catalog, "alice", "/alice/b", 1, "b3")
    assert (await catalog.get_user("alice")).used_files == 1


async def pending(cat, user, path, blob):
    """An upload left pending (as a cut connection leaves it)."""
    return await cat.begin_upload(
        user,
        path,
        base_length=0,
        blob_id=blob,
        replicas=["s1"],
        wanted_replicas=1,
        owner="fe1",
        expires_at=cat._clock() + 3600,
    )


@pytest_twisted.ensureDeferred
async def test_deleting_a_user_with_files_or_pending_uploads_is_refused(catalog):
    await catalog.add_user("alice", "pw")
    await upload(catalog, "alice", "/alice/a.txt", 5, "blob-a")
    with pytest.raises(NotEmpty, match=r"still has files under /alice$"):
        await catalog.delete_user("alice")
    assert (await catalog.get_user("alice")).name == "alice"
    # A pending upload alone (its file is not listed) refuses too.
    await catalog.add_user("bob", "pw")
    await pending(catalog, "bob", "/bob/part.bin", "blob-b")
    with pytest.raises(NotEmpty, match=r"still has 1 pending upload\(s\)$"):
        await catalog.delete_user("bob")
    # A user with nothing stored goes without being asked.
    await catalog.add_user("carol", "pw")
    await catalog.delete_user("carol")
    with pytest.raises(NotFound):
        await catalog.get_user("carol")


@pytest_twisted.ensureDeferred
async def test_user_del_counts_the_uploads_the_user_would_lose_not_others_under_the_root(catalog):
    """The refusal names what the deletion loses: the user's files and the
    uploads they could resume.  Another user's upload under the root is
    not theirs; theirs moved out of the root is out of their reach."""
    await catalog.add_user("team", "pw", root="/team")
    await catalog.add_user("bob", "pw", root="/team/bob")
    await pending(catalog, "team", "/team/bob/teams-part.bin", "blob-t")
    await catalog.mkdir("/team/bob/d")
    await catalog.mkdir("/team/bob/d/e")
    await pending(catalog, "bob", "/team/bob/d/part.bin", "blob-b")
    await pending(catalog, "bob", "/team/bob/d/e/deeper.bin", "blob-c")
    # bob's two uploads (team's is not his); the files are the directory d.
    with pytest.raises(NotEmpty, match=r"still has files under /team/bob and 2 pending"):
        await catalog.delete_user("bob")
    # team moves bob's directory out of bob's root: bob can no longer reach
    # those uploads, and has nothing else left there but team's upload.
    await catalog.rename("/team/bob/d", "/team/moved")
    done = await catalog.delete_user("bob")
    assert done["files"] == "refuse"
    with pytest.raises(NotFound):
        await catalog.get_user("bob")
    # Nothing was touched: team's upload and bob's moved ones stay pending.
    uploads = await catalog.list_uploads()
    assert sorted(u.user for u in uploads) == ["bob", "bob", "team"]


@pytest_twisted.ensureDeferred
async def test_user_del_of_a_root_at_slash_counts_every_upload_of_the_user(catalog):
    admin = await catalog.add_user("root", "pw", admin=True, root="/")
    await catalog.mkdir("/somewhere")
    await catalog.mkdir("/somewhere/deep")
    await pending(catalog, "root", "/somewhere/deep/part.bin", "blob-r")
    with pytest.raises(NotEmpty, match=r"still has files under / and 1 pending upload\(s\)$"):
        await catalog.delete_user(admin.name)


@pytest_twisted.ensureDeferred
async def test_a_reused_name_does_not_inherit_kept_files_unless_adopting(catalog):
    await catalog.add_user("alice", "pw")
    await upload(catalog, "alice", "/alice/a.txt", 5, "blob-a")
    up = await pending(catalog, "alice", "/alice/part.bin", "blob-p")
    done = await catalog.delete_user("alice", "keep")
    assert done["files"] == "keep"
    with pytest.raises(NotFound):
        await catalog.get_user("alice")
    with pytest.raises(Exists, match="already holds files"):
        await catalog.add_user("alice", "other-person")
    with pytest.raises(NotFound):
        await catalog.get_user("alice")
    assert (await catalog.stat("/alice/a.txt")).size == 5  # kept
    assert (await catalog.get_upload(up.upload_id)).state == "active"
    # Another account's root (or /) that holds files is refused the same way.
    with pytest.raises(Exists):
        await catalog.add_user("admin", "pw", admin=True, root="/")
    adopted = await catalog.add_user("alice", "pw", adopt_files=True)
    assert adopted.root == "/alice"
    assert (await catalog.stat("/alice/a.txt")).size == 5


@pytest_twisted.ensureDeferred
async def test_purge_deletes_the_tree_and_aborts_pending_uploads(catalog):
    await catalog.add_user("alice", "pw")
    await catalog.mkdir("/alice/d")
    await upload(catalog, "alice", "/alice/d/a.txt", 5, "blob-a")
    await upload(catalog, "alice", "/alice/b.txt", 3, "blob-b")
    up = await pending(catalog, "alice", "/alice/d/part.bin", "blob-p")
    await catalog.add_user("bob", "pw")
    await upload(catalog, "bob", "/bob/keep.txt", 4, "blob-k")
    assert await catalog.collectable_blobs(10) == []
    done = await catalog.delete_user("alice", "purge")
    assert (done["files_deleted"], done["uploads_aborted"]) == (2, 1)
    with pytest.raises(NotFound):
        await catalog.stat("/alice")
    assert (await catalog.get_upload(up.upload_id)).state == "aborted"
    # The garbage collector now finds the blobs (and only those).
    collectable = {b.blob_id for b in await catalog.collectable_blobs(10)}
    assert collectable == {"blob-a", "blob-b", "blob-p"}
    assert (await catalog.stat("/bob/keep.txt")).size == 4
    fresh = await catalog.add_user("alice", "new-person")
    assert fresh.root == "/alice"
    assert [e.name for e in await catalog.list_dir("/alice", None, 10)] == []


@pytest_twisted.ensureDeferred
async def test_a_purge_sets_the_mtime_of_the_roots_parent(catalog, clock):
    await catalog.add_user("alice", "pw", root="/shared/alice")
    await upload(catalog, "alice", "/shared/alice/a.txt", 3, "blob-a")
    clock.advance(100)
    done = await catalog.delete_user("alice", "purge")
    assert done == {
        "name": "alice", "root": "/shared/alice", "files": "purge", "files_deleted": 1,
        "uploads_aborted": 0, "uploads_aborted_outside_root": 0,
    }  # fmt: skip
    assert (await catalog.stat("/shared")).mtime == clock.now
    assert await catalog.list_dir("/shared") == []


@pytest_twisted.ensureDeferred
async def test_a_purge_never_moves_the_mtime_of_the_roots_parent_back(catalog, catalog_url, clock):
    """A write in the parent while the purge ran, or from a front end whose
    clock is ahead, set a later mtime than the purge's: it stays."""
    await catalog.add_user("alice", "pw", root="/shared/alice")
    await upload(catalog, "alice", "/shared/alice/a.txt", 3, "blob-a")
    ahead = open_catalog(reactor, catalog_url, clock=lambda: clock.now + 1000)
    try:
        await ahead.mkdir("/shared/new")
    finally:
        ahead.close()
    clock.advance(100)
    await catalog.delete_user("alice", "purge")
    assert (await catalog.stat("/shared")).mtime == clock.now - 100 + 1000
    assert [e.name for e in await catalog.list_dir("/shared")] == ["new"]


@pytest_twisted.ensureDeferred
async def test_a_purge_that_committed_is_reported_though_its_parents_mtime_failed(
    catalog, clock, monkeypatch
):
    await catalog.add_user("alice", "pw", root="/shared/alice")
    before = (await catalog.stat("/shared")).mtime
    clock.advance(100)

    def unavailable(tx, inode, now):
        raise CatalogUnavailable("the catalog went away after the purge")

    monkeypatch.setattr(_accounts, "touch_dir", unavailable)
    done = await catalog.delete_user("alice", "purge")
    assert done["files"] == "purge"
    with pytest.raises(NotFound):
        await catalog.get_user("alice")
    assert (await catalog.stat("/shared")).mtime == before


@pytest_twisted.ensureDeferred
async def test_purge_refuses_a_root_another_user_shares(catalog):
    await catalog.add_user("alice", "pw", root="/team")
    await catalog.add_user("bob", "pw", root="/team/bob")
    await upload(catalog, "bob", "/team/bob/b.txt", 2, "blob-b")
    with pytest.raises(NotEmpty, match="shared with bob"):
        await catalog.delete_user("alice", "purge")
    assert (await catalog.stat("/team/bob/b.txt")).size == 2
    assert (await catalog.get_user("alice")).root == "/team"
    # A root of / is the whole namespace, even for the only user.
    admin = await catalog.add_user("root", "pw", admin=True, root="/", adopt_files=True)
    await upload(catalog, admin.name, "/top.txt", 1, "blob-t")
    with pytest.raises(NotEmpty, match="never purged"):
        await catalog.delete_user("root", "purge")
    assert (await catalog.stat("/top.txt")).size == 1


@pytest_twisted.ensureDeferred
async def test_purge_refuses_files_of_a_user_whose_root_encloses_this_one(catalog):
    """A team (or an admin at /) whose root holds bob's keeps files of its
    own under /team/bob: bob's purge must not take them, nor abort the
    team's upload there; it deletes nothing at all."""
    await catalog.add_user("team", "pw", root="/team")
    await catalog.add_user("bob", "pw", root="/team/bob")
    await upload(catalog, "bob", "/team/bob/mine.txt", 3, "blob-m")
    await upload(catalog, "team", "/team/bob/teams.txt", 2, "blob-t")
    with pytest.raises(NotEmpty, match="stored by 'team'"):
        await catalog.delete_user("bob", "purge")
    assert (await catalog.stat("/team/bob/teams.txt")).size == 2
    assert (await catalog.stat("/team/bob/mine.txt")).size == 3
    assert (await catalog.get_user("bob")).root == "/team/bob"
    await catalog.delete("/team/bob/teams.txt")
    up = await pending(catalog, "team", "/team/bob/teampart.bin", "blob-p")
    with pytest.raises(NotEmpty, match="upload of 'team' pending"):
        await catalog.delete_user("bob", "purge")
    assert (await catalog.get_upload(up.upload_id)).live
    assert (await catalog.stat("/team/bob/mine.txt")).size == 3


@pytest_twisted.ensureDeferred
async def test_purge_of_a_deep_tree(catalog):
    before = await catalog.status()
    await catalog.add_user("alice", "pw")
    path = "/alice"
    for depth in range(40):
        path += f"/d{depth}"
        await catalog.mkdir(path)
        await upload(catalog, "alice", f"{path}/f.txt", 1, f"blob-{depth}")
    assert (await catalog.get_user("alice")).used_files == 40
    done = await catalog.delete_user("alice", "purge")
    assert done["files_deleted"] == 40
    with pytest.raises(NotFound):
        await catalog.stat("/alice")
    assert len(await catalog.collectable_blobs(100)) == 40
    after = await catalog.status()  # no inode left behind
    assert (after["files"], after["dirs"]) == (before["files"], before["dirs"])


@pytest_twisted.ensureDeferred
async def test_adopted_files_count_against_the_quota(catalog):
    """Usage is what the account's committed files weigh: adopting a root
    takes over the files no account owns there (a deleted user's) and
    counts them, so the quota holds; a pending upload is not counted
    (usage is charged at commit), nor a file another account owns."""
    await catalog.add_user("alice", "pw")
    await catalog.add_user("gone", "pw", root="/alice/from-gone", adopt_files=True)
    await upload(catalog, "alice", "/alice/a.txt", 5, "blob-a")
    await catalog.mkdir("/alice/d")
    await upload(catalog, "alice", "/alice/d/b.txt", 3, "blob-b")
    await pending(catalog, "alice", "/alice/part.bin", "blob-p")
    await upload(catalog, "gone", "/alice/from-gone/g.txt", 4, "blob-g")
    await catalog.delete_user("gone", "keep")
    await catalog.delete_user("alice", "keep")
    await catalog.add_user("bob", "pw", root="/alice/d/bob")
    await upload(catalog, "bob", "/alice/d/bob/bobs.txt", 7, "blob-bob")

    alice = await catalog.add_user("alice", "pw", quota_bytes=14, adopt_files=True)
    assert (alice.used_bytes, alice.used_files) == (12, 3)  # not bob's 7
    assert (await catalog.get_user("bob")).used_bytes == 7
    with pytest.raises(QuotaExceeded):
        await upload(catalog, "alice", "/alice/c.txt", 3, "blob-c")
    await upload(catalog, "alice", "/alice/e.txt", 2, "blob-e")
    # The adopted files are hers: deleting one refunds her, and her purge
    # does not stop at the deleted user's file as another account's.
    await catalog.delete("/alice/from-gone/g.txt")
    assert (await catalog.get_user("alice")).used_bytes == 10
    await catalog.delete("/alice/d/bob/bobs.txt")
    assert (await catalog.get_user("alice")).used_bytes == 10
    assert (await catalog.get_user("bob")).used_bytes == 0


@pytest_twisted.ensureDeferred
async def test_a_reused_name_is_not_refunded_for_a_former_accounts_files(catalog):
    """A former alice's file moved out of her root is not the new alice's:
    she is neither charged for it nor refunded when it goes."""
    await catalog.add_user("root", "pw", admin=True, root="/")
    await catalog.add_user("alice", "pw")
    await upload(catalog, "alice", "/alice/a.txt", 5, "blob-a")
    await catalog.rename("/alice/a.txt", "/a.txt")
    await catalog.delete_user("alice")  # nothing left under /alice
    fresh = await catalog.add_user("alice", "other-person", root="/alice2")
    assert (fresh.used_bytes, fresh.used_files) == (0, 0)
    await catalog.delete("/a.txt")
    fresh = await catalog.get_user("alice")
    assert (fresh.used_bytes, fresh.used_files) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_purge_deletes_what_is_under_the_root_and_aborts_the_users_uploads_moved_out(
    catalog,
):
    """The purge takes what ``user del`` counts (the tree under the root,
    the user's uploads there) and also aborts the user's uploads a rename
    moved out of the root, reported apart: nobody can resume them once
    the account is gone.  Nothing else outside the root is touched."""
    await catalog.add_user("team", "pw", root="/team")
    await catalog.add_user("bob", "pw", root="/team/bob")
    await upload(catalog, "bob", "/team/bob/mine.txt", 3, "blob-m")
    here = await pending(catalog, "bob", "/team/bob/here.bin", "blob-h")
    await catalog.mkdir("/team/bob/d")
    moved = await pending(catalog, "bob", "/team/bob/d/part.bin", "blob-p")
    await upload(catalog, "bob", "/team/bob/x.txt", 4, "blob-x")
    resumed = await catalog.begin_upload(
        "bob", "/team/bob/x.txt", base_length=4, blob_id="blob-x2", replicas=["s1"],
        wanted_replicas=1, owner="fe1", expires_at=catalog._clock() + 3600,
    )  # fmt: skip
    await upload(catalog, "team", "/team/t.txt", 2, "blob-t")
    await catalog.rename("/team/bob/d", "/team/moved")
    await catalog.rename("/team/bob/x.txt", "/team/x.txt")
    with pytest.raises(NotEmpty, match=r"files under /team/bob and 1 pending upload\(s\)$"):
        await catalog.delete_user("bob")

    done = await catalog.delete_user("bob", "purge")
    assert (
        done["files_deleted"],
        done["uploads_aborted"],
        done["uploads_aborted_outside_root"],
    ) == (1, 3, 2)
    for up in (here, moved, resumed):
        assert (await catalog.get_upload(up.upload_id)).state == "aborted"
    with pytest.raises(NotFound):
        await catalog.stat("/team/bob")
    with pytest.raises(NotFound):  # it held only the aborted upload
        await catalog.stat("/team/moved/part.bin")
    assert (await catalog.stat("/team/moved")).kind == DIR
    x = await catalog.stat("/team/x.txt")  # the committed version stays
    assert (x.size, x.pending, x.upload) == (4, False, None)
    assert (await catalog.stat("/team/t.txt")).size == 2


@pytest_twisted.ensureDeferred
async def test_purge_leaves_an_upload_committed_after_its_listing_committed(catalog, monkeypatch):
    """An upload of the user's that commits after the purge listed it as
    live and before the purge locked it is no longer the purge's to abort:
    it is read again under its lock.  On PostgreSQL another front end's
    commit can land there (tests/test_catalog_races.py shows it); SQLite's
    write lock makes that impossible, so here the commit runs in the
    purge's own transaction, right after the listing."""
    from wsfront.catalog import _uploads

    await catalog.add_user("alice", "pw")
    await upload(catalog, "alice", "/alice/f", 5, "blob-1")
    up = await pending(catalog, "alice", "/alice/f", "blob-2")
    listed = _accounts._live_uploads

    def listing_then_commit(tx, name):
        rows = listed(tx, name)
        assert [r["upload_id"] for r in rows] == [up.upload_id]
        _uploads.commit_upload(tx, catalog._clock(), up.upload_id, up.epoch, 7, None, None)
        return rows

    monkeypatch.setattr(_accounts, "_live_uploads", listing_then_commit)
    done = await catalog.delete_user("alice", "purge")
    assert (done["files_deleted"], done["uploads_aborted"]) == (1, 0)
    assert (await catalog.get_upload(up.upload_id)).state == "committed"
