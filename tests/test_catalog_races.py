"""Races between two catalog instances (two connections) on one database,
with real threads: exactly one of two racers wins, on both backends."""

import threading

import pytest
from twisted.internet import reactor

from tests.catalog_race import (
    TIMEOUT,
    Outcome,
    behind_or_beside,
    blocked_behind,
    in_tx,
    race,
    wait_until,
    waiting_for_a_lock,
)
from wsfront.catalog import _accounts, _blobs, _cluster, _namespace, _uploads, open_catalog
from wsfront.catalog.errors import (
    EpochConflict,
    Exists,
    LeaseHeld,
    NotEmpty,
    NotFound,
    PendingUploadExists,
    VersionChanged,
)
from wsfront.catalog.records import DIR, JOB_RUNNING

pytest_plugins = ["tests.catalog_fixtures"]
NOW = 1_000_000.0
ROUNDS = 15


@pytest.fixture
def two(catalog_url, clock):
    a = open_catalog(reactor, catalog_url, clock=clock)
    b = open_catalog(reactor, catalog_url, clock=clock)
    yield a, b, catalog_url
    a.close()
    b.close()


def begin_call(cat, path, blob, owner):
    return in_tx(
        cat, _uploads.begin_upload, NOW, "alice", path, 0, blob, ["s1"], 1, owner,
        NOW + 60, None, None,
    )  # fmt: skip


def one_winner(outcomes, error):
    winners = [o for o in outcomes if o.error is None]
    losers = [o for o in outcomes if o.error is not None]
    assert len(winners) == 1, [o.error for o in losers]
    for o in losers:
        assert isinstance(o.error, error), repr(o.error)
    return winners[0].result


def test_two_front_ends_taking_over_one_session_exactly_one_wins(two):
    a, b, _ = two
    for i in range(ROUNDS):
        up = in_tx(a, _uploads.begin_upload, NOW, "alice", f"/f{i}", 0, f"b{i}", ["s1"], 1,
                   "fe0", NOW + 60, None, None)()  # fmt: skip
        outcomes = race(
            [
                in_tx(a, _uploads.take_over, NOW, up.upload_id, 1, "feA", None),
                in_tx(b, _uploads.take_over, NOW, up.upload_id, 1, "feB", None),
            ]
        )
        won = one_winner(outcomes, EpochConflict)
        final = in_tx(a, _uploads.get_upload, up.upload_id)()
        assert (final.epoch, final.owner) == (2, won.owner)


def test_two_writers_starting_an_upload_on_one_path_exactly_one_wins(two):
    a, b, _ = two
    for i in range(ROUNDS):
        outcomes = race(
            [begin_call(a, f"/p{i}", f"x{i}", "feA"), begin_call(b, f"/p{i}", f"y{i}", "feB")]
        )
        won = one_winner(outcomes, PendingUploadExists)
        live = in_tx(a, _uploads.find_upload, f"/p{i}")()
        assert live.upload_id == won.upload_id


def test_two_mkdirs_of_one_name_exactly_one_wins(two):
    a, b, _ = two
    for i in range(ROUNDS):
        outcomes = race(
            [in_tx(a, _namespace.mkdir, f"/d{i}", NOW), in_tx(b, _namespace.mkdir, f"/d{i}", NOW)]
        )
        one_winner(outcomes, Exists)


def test_claimers_racing_for_jobs_each_job_runs_once(two):
    a, b, _ = two
    for _ in range(6):
        in_tx(a, _cluster.enqueue_job, NOW, "repair", {})()
    claimed = {"A": [], "B": []}

    def claim_all(cat, name):
        def run():
            while True:
                job = in_tx(cat, _cluster.claim_job, NOW, name, ["repair"])()
                if job is None:
                    return
                claimed[name].append(job.job_id)

        return run

    race([claim_all(a, "A"), claim_all(b, "B")])
    ids = claimed["A"] + claimed["B"]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6


def test_one_job_two_claimers_exactly_one_gets_it(two):
    a, b, _ = two
    for _ in range(ROUNDS):
        in_tx(a, _cluster.enqueue_job, NOW, "repair", {})()
        outcomes = race(
            [
                in_tx(a, _cluster.claim_job, NOW, "A", ["repair"]),
                in_tx(b, _cluster.claim_job, NOW, "B", ["repair"]),
            ]
        )
        assert all(o.error is None for o in outcomes)
        assert sum(o.result is not None for o in outcomes) == 1


def test_a_take_over_blocked_behind_an_open_one_loses_when_it_commits(two):
    """Interleaved: A has bumped the epoch but not committed; B starts its
    take-over meanwhile (on PostgreSQL it is seen waiting on the row lock);
    A commits; B must then see epoch 2 and lose."""
    a, b, url = two
    up = in_tx(a, _uploads.begin_upload, NOW, "alice", "/f", 0, "b0", ["s1"], 1, "fe0",
               NOW + 60, None, None)()  # fmt: skip
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.take_over(tx, NOW, up.upload_id, 1, "feA", None),
        lambda tx: _uploads.take_over(tx, NOW, up.upload_id, 1, "feB", None),
    )
    assert outcomes[0].error is None and outcomes[0].result.owner == "feA"
    assert isinstance(outcomes[1].error, EpochConflict)


def test_a_delete_blocked_behind_a_take_over_refuses_when_it_commits(two):
    """Interleaved: alice's interrupted upload on /f; A takes it over (its
    client resumes) and has not committed; B, alice's DELETE of /f, starts
    meanwhile (on PostgreSQL it is seen waiting on the upload's row lock).
    A commits; B must then see the upload active at epoch 2 and refuse,
    not abandon the resumed session (it read the row before A's update)."""
    a, b, url = two
    up = in_tx(a, _uploads.begin_upload, NOW, "alice", "/f", 0, "b0", ["s1"], 1, "fe0",
               NOW + 60, None, None)()  # fmt: skip
    in_tx(a, _uploads.interrupt_upload, NOW, up.upload_id, 1)()
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.take_over(tx, NOW, up.upload_id, 1, "feA", None),
        lambda tx: _namespace.delete(tx, "/f", False, NOW, "alice"),
    )
    assert outcomes[0].error is None and outcomes[0].result.owner == "feA"
    assert isinstance(outcomes[1].error, PendingUploadExists), outcomes[1].result
    final = in_tx(a, _uploads.get_upload, up.upload_id)()
    assert (final.state, final.epoch, final.owner) == ("active", 2, "feA")


def _alice_overwriting_her_file(cat):
    """Alice's committed /alice/f of 5 bytes and her live upload replacing
    it with 5 bytes: its commit charges no usage, so it leaves her user row
    unlocked and a purge can list the upload while it commits."""
    in_tx(cat, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    first = begin_call(cat, "/alice/f", "b0", "fe0")()
    in_tx(cat, _uploads.commit_upload, NOW, first.upload_id, first.epoch, 5, None, None)()
    return begin_call(cat, "/alice/f", "b1", "fe0")()


def test_a_purge_blocked_behind_a_commit_does_not_abort_the_committed_upload(two):
    """Interleaved: A commits alice's upload and has not committed its
    transaction; B, ``wsfs user del alice --purge``, lists her live uploads
    meanwhile (the upload is still active to it) and waits on the upload's
    row lock (PostgreSQL).  A commits; B must read the row again under the
    lock and leave it committed, not mark it aborted from what it listed."""
    a, b, url = two
    up = _alice_overwriting_her_file(a)
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.commit_upload(tx, NOW, up.upload_id, up.epoch, 5, None, None),
        lambda tx: _accounts.delete_user(tx, NOW, "alice", _accounts.PURGE),
    )
    assert outcomes[0].error is None and outcomes[0].result.size == 5
    assert outcomes[1].error is None, outcomes[1].error
    assert (outcomes[1].result["files_deleted"], outcomes[1].result["uploads_aborted"]) == (1, 0)
    assert in_tx(a, _uploads.get_upload, up.upload_id)().state == "committed"


def test_a_checked_start_blocked_behind_a_commit_finds_the_version_changed(two):
    """Interleaved: alice's file /alice/f at version v1, her upload replacing
    it; A commits that upload (v2) and has not committed its transaction;
    B starts an upload checked against v1 (an If-Match PUT, an APPE after
    SIZE, judged in an earlier transaction) and waits on the inode's row
    lock (PostgreSQL).  A commits; B must read the version again under the
    lock and refuse (VersionChanged), not start on v2 from what it read
    before waiting."""
    a, b, url = two
    up = _alice_overwriting_her_file(a)
    v1 = in_tx(a, _namespace.stat, "/alice/f")().version.version_id
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.commit_upload(tx, NOW, up.upload_id, up.epoch, 5, None, None),
        lambda tx: _uploads.begin_upload(
            tx, NOW, "alice", "/alice/f", 5, "b2", ["s1"], 1, "feB", NOW + 60, None, None,
            True, v1,
        ),
    )  # fmt: skip
    assert outcomes[0].error is None
    assert isinstance(outcomes[1].error, VersionChanged), outcomes[1].error
    assert in_tx(a, _uploads.find_upload, "/alice/f")() is None


def test_a_checked_start_on_the_version_it_expects_begins(two):
    """The check passes for the version expected, and for "no file" on a
    path with none; it refuses a file that appeared meanwhile."""
    a, _, _ = two
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()

    def checked(path, blob, expected):
        return in_tx(
            a, _uploads.begin_upload, NOW, "alice", path, 0, blob, ["s1"], 1, "fe0",
            NOW + 60, None, None, True, expected,
        )  # fmt: skip

    new = checked("/alice/new", "b0", None)()
    assert new.path == "/alice/new"
    in_tx(a, _uploads.commit_upload, NOW, new.upload_id, new.epoch, 3, None, None)()
    with pytest.raises(VersionChanged):
        checked("/alice/new", "b1", None)()
    v = in_tx(a, _namespace.stat, "/alice/new")().version.version_id
    assert checked("/alice/new", "b2", v)().upload_id


def test_delete_and_rename_of_a_version_judged_earlier_refuse_a_newer_one(two):
    """DELETE and MOVE with If-Match name the version they judged: a newer
    one (a commit since) is VersionChanged and stays; the one named goes."""
    a, _, _ = two
    up = _alice_overwriting_her_file(a)
    v1 = in_tx(a, _namespace.stat, "/alice/f")().version.etag
    in_tx(a, _uploads.commit_upload, NOW, up.upload_id, up.epoch, 5, None, None)()
    v2 = in_tx(a, _namespace.stat, "/alice/f")().version.etag
    assert v1 != v2
    with pytest.raises(VersionChanged):
        in_tx(a, _namespace.delete, "/alice/f", False, NOW, "alice", (), v1)()
    with pytest.raises(VersionChanged):
        in_tx(a, _namespace.rename, "/alice/f", "/alice/g", False, NOW, "alice", (), v1)()
    moved = in_tx(a, _namespace.rename, "/alice/f", "/alice/g", False, NOW, "alice", (), v2)()
    assert moved.path == "/alice/g"
    in_tx(a, _namespace.delete, "/alice/g", False, NOW, "alice", (), v2)()
    with pytest.raises(NotFound):
        in_tx(a, _namespace.stat, "/alice/g")()


def _committed(cat, path, blob, length):
    up = begin_call(cat, path, blob, "fe0")()
    return in_tx(cat, _uploads.commit_upload, NOW, up.upload_id, up.epoch, length, None, None)()


@pytest.mark.parametrize("judged", [False, True])
def test_a_delete_blocked_behind_a_rename_leaves_the_moved_file(two, judged):
    """Interleaved: A renames /alice/a to /alice/b and has not committed; B
    deletes /alice/a (with or without an If-Match etag) and waits on the
    directory's lock (PostgreSQL).  A commits: B must find /alice/a gone
    (NotFound), not remove the inode it read before waiting, now /alice/b."""
    a, b, url = two
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    etag = _committed(a, "/alice/a", "b0", 5).etag if judged else None
    if not judged:
        _committed(a, "/alice/a", "b0", 5)
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _namespace.rename(tx, "/alice/a", "/alice/b", False, NOW, "alice", ()),
        lambda tx: _namespace.delete(tx, "/alice/a", False, NOW, "alice", (), etag),
    )
    assert outcomes[0].error is None
    assert isinstance(outcomes[1].error, NotFound), outcomes[1].error
    assert in_tx(a, _namespace.stat, "/alice/b")().size == 5


@pytest.mark.parametrize("offset", [None, 0])
def test_an_unchecked_start_blocked_behind_a_commit_sees_the_new_version(two, offset):
    """Interleaved: A commits alice's append to /alice/log (5 -> 8 bytes)
    and has not committed; B starts a plain STOR (offset 0) or APPE (None)
    on it and waits on the inode's lock (PostgreSQL).  A commits: B must
    start on the version A made (APPE at 8), not on the row it read before
    waiting (whose version A dropped: a TypeError, or a start at 5)."""
    a, b, url = two
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    _committed(a, "/alice/log", "b0", 5)
    up = in_tx(
        a, _uploads.begin_upload, NOW, "alice", "/alice/log", 5, "b1", ["s1"], 1, "fe0",
        NOW + 60, None, None,
    )()  # fmt: skip
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.commit_upload(tx, NOW, up.upload_id, up.epoch, 8, None, None),
        lambda tx: _uploads.start_upload(
            tx, NOW, "alice", "/alice/log", offset, "b2", ["s1"], 1, "feB", NOW + 60, None,
            None,
        ),
    )  # fmt: skip
    assert outcomes[0].error is None
    assert outcomes[1].error is None, outcomes[1].error
    started = outcomes[1].result
    assert started.committed_size == 8
    assert started.upload.blob_start == (8 if offset is None else 0)


@pytest.mark.parametrize("refilled", [False, True])
def test_an_rmdir_blocked_behind_a_rename_leaves_the_moved_directory(two, refilled):
    """Interleaved: A renames the directory /alice/d to /alice/e (and, if
    ``refilled``, the directory /alice/x holding a file to /alice/d) and
    has not committed; B removes /alice/d and waits on /alice's lock
    (PostgreSQL).  A commits: B must judge what the name holds now (gone:
    NotFound; x: NotEmpty), not remove the inode it read before waiting,
    which is /alice/e now."""
    a, b, url = two
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    in_tx(a, _namespace.mkdir, "/alice/d", NOW)()
    in_tx(a, _namespace.mkdir, "/alice/x", NOW)()
    in_tx(a, _namespace.mkdir, "/alice/x/inner", NOW)()

    def move(tx):
        _namespace.rename(tx, "/alice/d", "/alice/e", False, NOW, "alice", ())
        if refilled:
            _namespace.rename(tx, "/alice/x", "/alice/d", False, NOW, "alice", ())

    outcomes = blocked_behind(a, b, url, move, lambda tx: _namespace.rmdir(tx, "/alice/d", NOW))
    assert outcomes[0].error is None
    wanted = NotEmpty if refilled else NotFound
    assert isinstance(outcomes[1].error, wanted), outcomes[1].error
    assert in_tx(a, _namespace.stat, "/alice/e")().kind == DIR
    if refilled:
        assert in_tx(a, _namespace.stat, "/alice/d/inner")().kind == DIR


def test_an_mfmt_blocked_behind_a_commit_sets_the_time_of_the_new_version(two):
    """Interleaved: A commits alice's upload replacing /alice/f and has not
    committed; B sets /alice/f's mtime (MFMT) and waits on A's rows
    (PostgreSQL).  A commits: B must set the time of the version A made,
    which the file shows, not of the one it read before waiting (gone, so
    the time set nowhere while B answered as if it had)."""
    a, b, url = two
    up = _alice_overwriting_her_file(a)
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.commit_upload(tx, NOW, up.upload_id, up.epoch, 5, None, None),
        lambda tx: _namespace.set_mtime(tx, "/alice/f", 12345.0),
    )
    assert outcomes[0].error is None
    assert outcomes[1].error is None, outcomes[1].error
    assert outcomes[1].result.mtime == 12345.0
    assert in_tx(a, _namespace.stat, "/alice/f")().mtime == 12345.0


def test_an_add_user_blocked_behind_a_mkdir_of_its_root_s_parent_uses_it(two):
    """Interleaved: A makes /home and has not committed; B adds bob with
    the root /home/bob, which makes the missing /home too, and waits on
    /'s lock (PostgreSQL).  A commits: B must make bob's root in A's /home,
    not insert a second /home (a unique violation: the account not made)."""
    a, b, url = two
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _namespace.mkdir(tx, "/home", NOW),
        lambda tx: _accounts.add_user(tx, NOW, "bob", "x", False, "/home/bob", None, None, None),
    )
    assert outcomes[0].error is None
    assert outcomes[1].error is None, outcomes[1].error
    assert in_tx(a, _namespace.stat, "/home/bob")().kind == DIR


def test_a_purge_blocked_behind_another_user_s_commit_keeps_their_file(two):
    """Interleaved: /alice/f is a file no account owns (carol's, disowned
    when her name was given to a new account); bob's upload replaces it. A
    commits bob's upload (the file is bob's now) and has not committed; B,
    ``wsfs user del alice --purge``, lists /alice and waits on the file's
    lock (PostgreSQL).  A commits: B must judge the file by its owner under
    the lock and refuse (bob's file is not alice's to lose), not delete it
    as the unowned file it listed."""
    a, b, url = two

    def add(name, root=None):
        in_tx(a, _accounts.add_user, NOW, name, "x", False, root, None, None, None)()

    add("carol")
    up = in_tx(a, _uploads.begin_upload, NOW, "carol", "/carol/f", 0, "b0", ["s1"], 1, "fe0",
               NOW + 60, None, None)()  # fmt: skip
    in_tx(a, _uploads.commit_upload, NOW, up.upload_id, up.epoch, 5, None, None)()
    in_tx(a, _accounts.delete_user, NOW, "carol", _accounts.KEEP)()
    add("carol", "/c2")  # disowns /carol/f
    add("alice")
    add("bob")
    in_tx(a, _namespace.rename, "/carol/f", "/alice/f", False, NOW, None, ())()
    up = in_tx(a, _uploads.begin_upload, NOW, "bob", "/alice/f", 0, "b1", ["s1"], 1, "fe0",
               NOW + 60, None, None)()  # fmt: skip
    outcomes = blocked_behind(
        a,
        b,
        url,
        lambda tx: _uploads.commit_upload(tx, NOW, up.upload_id, up.epoch, 7, None, None),
        lambda tx: _accounts.delete_user(tx, NOW, "alice", _accounts.PURGE),
    )
    assert outcomes[0].error is None
    assert isinstance(outcomes[1].error, NotEmpty), outcomes[1].error
    assert in_tx(a, _namespace.stat, "/alice/f")().size == 7


def test_a_rename_of_a_name_that_became_a_directory_serialises_with_add_user(two, clock):
    """Interleaved: /alice/x is a file; A deletes it and renames the
    directory /alice/d to /alice/x, and has not committed; B renames
    /alice/x to /alice/y, reads a file there before waiting on /alice's
    lock (PostgreSQL), and after A commits moves the directory.  Bob's
    account, rooted at /alice/x/bob, is added while B is open: a directory
    move holds the directory-move lock against that (add_user takes it),
    so bob's add_user must wait for B and make its root where it says,
    not make it in the directory B moves away (an account whose root is
    not there)."""
    a, b, url = two
    postgres = url.startswith("postgresql")
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    _committed(a, "/alice/x", "b0", 5)
    in_tx(a, _namespace.mkdir, "/alice/d", NOW)()
    c = open_catalog(reactor, url, clock=clock)
    bob, pids, done = Outcome(), [], threading.Event()

    def add_bob() -> None:
        def run(tx):
            if postgres:
                pids.append(tx.value("SELECT pg_backend_pid() AS pid"))
            return _accounts.add_user(tx, NOW, "bob", "x", False, "/alice/x/bob", None, None, None)

        try:
            bob.result = c._runner.run_sync(run)
        except BaseException as e:
            bob.error = e
        done.set()

    adder = threading.Thread(target=add_bob)

    def flip(tx):
        _namespace.delete(tx, "/alice/x", False, NOW, "alice")
        return _namespace.rename(tx, "/alice/d", "/alice/x", False, NOW, "alice", ())

    def move(tx):
        moved = _namespace.rename(tx, "/alice/x", "/alice/y", False, NOW, "alice", ())
        if postgres:  # SQLite: bob's BEGIN IMMEDIATE would wait for this one's
            adder.start()
            locked = waiting_for_a_lock(url, pids)
            wait_until(lambda: done.is_set() or locked(), "bob's add_user to end or wait")
        return moved

    try:
        outcomes = blocked_behind(a, b, url, flip, move)
        if not postgres:
            adder.start()
        adder.join(TIMEOUT)
        assert not adder.is_alive()
    finally:
        c.close()
    assert outcomes[0].error is None
    assert outcomes[1].error is None, outcomes[1].error
    assert outcomes[1].result.kind == DIR
    assert bob.error is None, bob.error
    assert in_tx(a, _namespace.stat, "/alice/x/bob")().kind == DIR


def _replicas_without_blob(cat) -> list:
    return in_tx(
        cat,
        lambda tx: tx.all(
            "SELECT r.blob_id, r.node FROM replicas r"
            " WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.blob_id = r.blob_id)"
        ),
    )()


def test_a_repair_copy_recorded_while_gc_forgets_its_blob_is_refused(two):
    """Interleaved: A (GC) forgets an unreferenced blob and has not
    committed; B (repair, its copy to s2 done) records the copy.  B must
    wait for A on the blob's row and then find the blob gone (NotFound:
    repair deletes its copy), not insert a replica row A's delete missed,
    which outlives the blob (PostgreSQL)."""
    a, b, url = two
    in_tx(a, _blobs.add_blob, NOW, "bx", ["s1"], 1)()
    outcomes = behind_or_beside(
        a,
        b,
        url,
        lambda tx: _blobs.forget_blob(tx, "bx"),
        lambda tx: _blobs.add_replica(tx, "bx", "s2"),
    )
    assert _replicas_without_blob(a) == []
    assert outcomes[0].error is None and outcomes[0].result == ["s1"]
    assert isinstance(outcomes[1].error, NotFound), outcomes[1].error
    assert "forgotten" in str(outcomes[1].error)


def test_gc_forgetting_a_blob_while_a_repair_copy_is_recorded_names_that_copy(two):
    """Interleaved the other way: A records repair's copy on s2 and has not
    committed; B (GC) forgets the blob.  B must wait for A on the blob's
    row and remove, and name to GC for deletion, the new replica too."""
    a, b, url = two
    in_tx(a, _blobs.add_blob, NOW, "bx", ["s1"], 1)()
    outcomes = behind_or_beside(
        a,
        b,
        url,
        lambda tx: _blobs.add_replica(tx, "bx", "s2"),
        lambda tx: _blobs.forget_blob(tx, "bx"),
    )
    assert _replicas_without_blob(a) == []
    assert outcomes[0].error is None, outcomes[0].error
    assert outcomes[1].error is None, outcomes[1].error
    assert outcomes[1].result == ["s1", "s2"]


def _requeued_to(tx, job_id, owner):
    _cluster.requeue_job(tx, NOW, job_id, "A", 1, "A lost the lease; re-queued")
    return _cluster.claim_job(tx, NOW, owner, ["repair"])


@pytest.mark.parametrize("change", ["update", "finish", "fail", "requeue"])
@pytest.mark.parametrize(
    ("new_owner", "refusal"), [("B", "owned by B"), ("A", "claimed again by A")]
)
def test_an_old_runner_s_change_behind_a_requeue_and_a_new_claim_is_refused(
    two, change, new_owner, refusal
):
    """Interleaved: A's job was re-queued and claimed by B, or by A again
    (a restarted front end of the same name), not yet committed; the old
    runner A then reports progress, finishes, fails or re-queues the job
    under its claim, and waits on its row (PostgreSQL).  Once the new
    claim commits, A's change must be refused (LeaseHeld), not reported
    done while it changed nothing, and the new claim must stand."""
    a, b, url = two
    job = in_tx(a, _cluster.enqueue_job, NOW, "repair", {})()
    assert in_tx(a, _cluster.claim_job, NOW, "A", ["repair"])().job_id == job.job_id
    old_runner = {
        "update": lambda tx: _cluster.update_job(tx, NOW, job.job_id, "A", 1, {"n": 1}),
        "finish": lambda tx: _cluster.finish_job(tx, NOW, job.job_id, "A", 1, {"n": 1}, None),
        "fail": lambda tx: _cluster.finish_job(tx, NOW, job.job_id, "A", 1, None, "boom"),
        "requeue": lambda tx: _cluster.requeue_job(tx, NOW, job.job_id, "A", 1, "again"),
    }[change]
    outcomes = behind_or_beside(
        a, b, url, lambda tx: _requeued_to(tx, job.job_id, new_owner), old_runner
    )
    assert outcomes[0].error is None and outcomes[0].result.owner == new_owner
    assert isinstance(outcomes[1].error, LeaseHeld), outcomes[1].error or outcomes[1].result
    assert refusal in str(outcomes[1].error)
    final = in_tx(a, _cluster.get_job, job.job_id)()
    assert (final.state, final.owner, final.claim, final.progress, final.result) == (
        JOB_RUNNING, new_owner, 2, {}, None,
    )  # fmt: skip


def test_an_old_runner_s_finish_behind_another_front_end_failing_its_job_is_refused(two):
    """Interleaved: the new lease holder fails A's job as a dead front
    end's (``end_job``: same owner, state failed), not yet committed; A,
    alive after all, finishes it done and waits on its row (PostgreSQL).
    A's finish must be refused, not overwrite the failure with done."""
    a, b, url = two
    job = in_tx(a, _cluster.enqueue_job, NOW, "fsck", {})()
    in_tx(a, _cluster.claim_job, NOW, "A", ["fsck"])()
    outcomes = behind_or_beside(
        a,
        b,
        url,
        lambda tx: _cluster.finish_job(tx, NOW, job.job_id, "A", 1, None, "A stopped"),
        lambda tx: _cluster.finish_job(tx, NOW, job.job_id, "A", 1, {"n": 1}, None),
    )
    assert outcomes[0].error is None
    assert isinstance(outcomes[1].error, LeaseHeld), outcomes[1].error or outcomes[1].result
    final = in_tx(a, _cluster.get_job, job.job_id)()
    assert (final.state, final.error, final.result) == ("failed", "A stopped", None)
