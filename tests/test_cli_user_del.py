"""``wsfs user del`` and a reused name: files go, stay, or are adopted only
when the operator says so (a black-box probe found a re-added name got the
deleted user's files and could resume their pending upload)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.test_cli import wsfs
from wsfront.catalog import open_catalog


@pytest.fixture
def catalog(tmp_path):
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


async def plant(url: str, user: str) -> str:
    """A committed file and a pending upload of ``user``; the upload's id."""
    cat = open_catalog(reactor, url)
    try:
        done = await cat.begin_upload(
            user, f"/{user}/a.txt", base_length=0, blob_id="blob-a", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=cat._clock() + 3600,
        )  # fmt: skip
        await cat.commit_upload(done.upload_id, done.epoch, 5)
        left = await cat.begin_upload(
            user, f"/{user}/part.bin", base_length=0, blob_id="blob-p", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=cat._clock() + 3600,
        )  # fmt: skip
        return left.upload_id
    finally:
        await cat.close()


async def run(url: str, *args: str, stdin: str = ""):
    return await threads.deferToThread(wsfs, url, *args, stdin=stdin)


def one_error_line(proc) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("wsfs: ")
    return line


@pytest_twisted.ensureDeferred
async def test_user_del_refuses_while_files_remain_and_a_reused_name_must_adopt(catalog):
    assert (await run(catalog, "user", "add", "alice", stdin="pw-123456\n")).returncode == 0
    await plant(catalog, "alice")

    refused = one_error_line(await run(catalog, "user", "del", "alice"))
    assert "still has files under /alice and 1 pending upload(s)" in refused
    assert "--purge" in refused and "--keep-files" in refused
    users = json.loads((await run(catalog, "--json", "user", "list")).stdout)
    assert [u["name"] for u in users] == ["alice"]

    kept = await run(catalog, "user", "del", "alice", "--keep-files")
    assert kept.returncode == 0, kept.stderr
    assert "files under /alice are kept" in kept.stdout

    # The next person given the name does not silently get alice's files.
    reused = one_error_line(await run(catalog, "user", "add", "alice", stdin="other-person\n"))
    assert "/alice" in reused and "--adopt-files" in reused
    assert json.loads((await run(catalog, "--json", "user", "list")).stdout) == []

    adopted = await run(catalog, "user", "add", "alice", "--adopt-files", stdin="pw-123456\n")
    assert adopted.returncode == 0, adopted.stderr
    assert "a.txt" in (await run(catalog, "ls", "/alice")).stdout
    # The adopted file counts against the quota (the pending upload does
    # not: usage is charged at commit).
    assert "usage 5 B in 1 files, adopted included" in adopted.stdout
    [user] = json.loads((await run(catalog, "--json", "user", "list")).stdout)
    assert (user["used_bytes"], user["used_files"]) == (5, 1)


@pytest_twisted.ensureDeferred
async def test_user_del_purge_deletes_files_and_aborts_pending_uploads(catalog):
    assert (await run(catalog, "user", "add", "alice", stdin="pw-123456\n")).returncode == 0
    upload_id = await plant(catalog, "alice")

    both = await run(catalog, "user", "del", "alice", "--purge", "--keep-files")
    assert both.returncode == 2  # argparse: not allowed together

    purged = await run(catalog, "--json", "user", "del", "alice", "--purge")
    assert purged.returncode == 0, purged.stderr
    result = json.loads(purged.stdout)
    assert (result["deleted"], result["files_deleted"], result["uploads_aborted"]) == (
        "alice",
        1,
        1,
    )
    assert "alice" not in (await run(catalog, "ls", "/")).stdout

    fresh = await run(catalog, "user", "add", "alice", stdin="new-person\n")
    assert fresh.returncode == 0, fresh.stderr
    cat = open_catalog(reactor, catalog)
    try:
        assert await cat.list_dir("/alice", None, 10) == []
        assert (await cat.get_upload(upload_id)).state == "aborted"
        blobs = {b.blob_id for b in await cat.collectable_blobs(10)}
        assert blobs == {"blob-a", "blob-p"}  # the garbage collector's to delete
    finally:
        await cat.close()


def test_user_del_of_a_user_without_files_needs_no_option(catalog):
    assert wsfs(catalog, "user", "add", "bob", stdin="pw-123456\n").returncode == 0
    gone = wsfs(catalog, "user", "del", "bob")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.strip() == "user bob deleted"


@pytest_twisted.ensureDeferred
async def test_user_del_is_not_refused_for_another_users_upload_under_the_root(catalog):
    """A team whose root encloses bob's left an upload pending in bob's
    directory: bob has nothing to lose, so no option is needed, and the
    team's upload is left as it was.  bob's own pending upload refuses,
    counted once and not called files."""
    for name, root in (("team", "/team"), ("bob", "/team/bob")):
        added = await run(catalog, "user", "add", name, "--root", root, stdin="pw-123456\n")
        assert added.returncode == 0, added.stderr
    cat = open_catalog(reactor, catalog)
    try:
        for user, path in (("bob", "/team/bob/mine.bin"), ("team", "/team/bob/teams.bin")):
            up = await cat.begin_upload(
                user, path, base_length=0, blob_id=f"blob-{user}", replicas=["s1"],
                wanted_replicas=1, owner="fe1", expires_at=cat._clock() + 3600,
            )  # fmt: skip
        refused = one_error_line(await run(catalog, "user", "del", "bob"))
        assert refused.startswith("wsfs: user 'bob' still has 1 pending upload(s);"), refused
        mine = await cat.find_upload("/team/bob/mine.bin")
        assert (await cat.abort_upload(mine.upload_id)).state == "aborted"
        gone = await run(catalog, "user", "del", "bob")
        assert gone.returncode == 0, gone.stderr
        assert (await cat.get_upload(up.upload_id)).live
    finally:
        await cat.close()


@pytest_twisted.ensureDeferred
async def test_user_del_purge_says_which_uploads_a_rename_had_moved_out_of_the_root(catalog):
    """The purge deletes what is under the root and aborts the user's
    uploads moved out of it too (nobody could resume them), saying so."""
    assert (await run(catalog, "user", "add", "alice", stdin="pw-123456\n")).returncode == 0
    upload_id = await plant(catalog, "alice")
    cat = open_catalog(reactor, catalog)
    try:
        await cat.mkdir("/out")
        await cat.rename("/alice/part.bin", "/out/part.bin")
        purged = await run(catalog, "user", "del", "alice", "--purge")
        assert purged.returncode == 0, purged.stderr
        assert purged.stdout.strip() == (
            "user alice deleted; 1 files deleted and 1 pending uploads aborted, 1 of them "
            "moved out of /alice (their storage is freed by the garbage collector)"
        )
        assert (await cat.get_upload(upload_id)).state == "aborted"
        assert await cat.list_dir("/out", None, 10, include_pending=True) == []
    finally:
        await cat.close()
