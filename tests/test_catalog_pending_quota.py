"""Contract: a user's pending uploads count toward their byte quota.

What a live upload holds (its checkpoint past the committed size it will
replace) is charged to its user's ``pending_bytes`` by the transaction
that records it, and refused past the quota beside ``used_bytes``; the
charge goes when the upload commits (then it is the file's size), is
aborted or expires, and a resume is never charged twice for its own
bytes.  On both backends."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.catalog_fixtures import with_current_columns, without_current_columns
from tests.test_catalog_indexes import RecordingTx
from wsfront.catalog import _uploads, open_catalog
from wsfront.catalog.errors import NotFound, QuotaExceeded

pytest_plugins = ["tests.catalog_fixtures"]


async def begin(cat, path, blob, base=0, user="alice", declared=None):
    return await cat.begin_upload(
        user, path, base_length=base, blob_id=blob, replicas=["s1"], wanted_replicas=1,
        owner="fe1", expires_at=cat._clock() + 60, declared_length=declared,
    )  # fmt: skip


async def usage(cat, user="alice"):
    found = await cat.get_user(user)
    return found.used_bytes, found.pending_bytes


@pytest_twisted.ensureDeferred
async def test_a_pending_upload_holds_its_checkpoint_against_the_quota(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    held = await begin(catalog, "/alice/held", "b1")
    await catalog.checkpoint(held.upload_id, 1, 60)
    await catalog.interrupt_upload(held.upload_id, 1)
    assert await usage(catalog) == (0, 60)
    other = await begin(catalog, "/alice/other", "b2")
    # Past the quota with the pending 60: refused, nothing recorded.
    with pytest.raises(QuotaExceeded, match=r"would use 101 \(101 of them pending\) of 100"):
        await catalog.checkpoint(other.upload_id, 1, 41)
    assert (await catalog.get_upload(other.upload_id)).checkpoint == 0
    with pytest.raises(QuotaExceeded):
        await catalog.commit_upload(other.upload_id, 1, 41)
    assert await usage(catalog) == (0, 60)
    await catalog.commit_upload(other.upload_id, 1, 40)
    assert await usage(catalog) == (40, 60)
    # A length declared ahead is refused too.
    with pytest.raises(QuotaExceeded):
        await begin(catalog, "/alice/declared", "b3", declared=1)


@pytest_twisted.ensureDeferred
async def test_the_charge_becomes_the_files_size_at_commit(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    up = await begin(catalog, "/alice/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 60)
    # The commit's bytes past the checkpoint grow it: within the quota.
    await catalog.commit_upload(up.upload_id, 1, 100)
    assert await usage(catalog) == (100, 0)


@pytest_twisted.ensureDeferred
async def test_the_charge_goes_when_the_upload_is_aborted_deleted_or_expires(catalog, clock):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    aborted = await begin(catalog, "/alice/a", "b1")
    await catalog.checkpoint(aborted.upload_id, 1, 30)
    deleted = await begin(catalog, "/alice/d", "b2")
    await catalog.checkpoint(deleted.upload_id, 1, 20)
    expired = await begin(catalog, "/alice/e", "b3")
    await catalog.checkpoint(expired.upload_id, 1, 10)
    assert await usage(catalog) == (0, 60)
    await catalog.abort_upload(aborted.upload_id)
    assert await usage(catalog) == (0, 30)
    await catalog.delete("/alice/d", abort_pending=True)
    assert await usage(catalog) == (0, 10)
    clock.advance(61)
    assert [u.upload_id for u in await catalog.expire_uploads()] == [expired.upload_id]
    assert await usage(catalog) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_resume_is_not_charged_twice_for_its_own_bytes(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    up = await begin(catalog, "/alice/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 60)
    await catalog.interrupt_upload(up.upload_id, 1)
    taken = await catalog.take_over(up.upload_id, 1, "fe2")
    resumed = await catalog.restart_at(up.upload_id, taken.epoch, 60, "b2", ["s1"], 1)
    assert await usage(catalog) == (0, 60)
    await catalog.checkpoint(up.upload_id, resumed.epoch, 100)  # 100 in all, not 160
    assert await usage(catalog) == (0, 100)
    # A resume below the checkpoint gives back what it cuts off.
    taken = await catalog.take_over(up.upload_id, resumed.epoch, "fe1")
    await catalog.restart_at(up.upload_id, taken.epoch, 50, "b3", ["s1"], 1)
    assert await usage(catalog) == (0, 50)
    await catalog.commit_upload(up.upload_id, taken.epoch, 70)
    assert await usage(catalog) == (70, 0)


@pytest_twisted.ensureDeferred
async def test_an_overwrite_is_charged_only_past_the_size_it_replaces(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    first = await begin(catalog, "/alice/f", "b1")
    await catalog.commit_upload(first.upload_id, 1, 80)
    again = await begin(catalog, "/alice/f", "b2")  # STOR from 0 over 80 bytes
    await catalog.checkpoint(again.upload_id, 1, 80)
    assert await usage(catalog) == (80, 0)
    await catalog.checkpoint(again.upload_id, 1, 100)
    assert await usage(catalog) == (80, 20)
    with pytest.raises(QuotaExceeded):
        await catalog.checkpoint(again.upload_id, 1, 101)
    await catalog.commit_upload(again.upload_id, 1, 100)
    assert await usage(catalog) == (100, 0)
    # Resumed at 50 (REST 50): the 50 kept are the committed file's.
    resumed = await begin(catalog, "/alice/f", "b3", base=50)
    await catalog.checkpoint(resumed.upload_id, 1, 90)
    assert await usage(catalog) == (100, 0)
    await catalog.abort_upload(resumed.upload_id)
    assert await usage(catalog) == (100, 0)


@pytest_twisted.ensureDeferred
async def test_a_name_added_again_is_charged_its_kept_uploads(catalog):
    await catalog.add_user("alice", "pw", quota_bytes=100)
    up = await begin(catalog, "/alice/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 60)
    await catalog.delete_user("alice", files="keep")
    await catalog.add_user("alice", "pw", quota_bytes=100, adopt_files=True)
    assert await usage(catalog) == (0, 60)
    await catalog.abort_upload(up.upload_id)
    assert await usage(catalog) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_schema_12_counts_the_uploads_pending_before_it(catalog_url, clock):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=11)
    with_current_columns(old)
    try:
        await old.add_user("alice", "pw")
        await old.add_user("bob", "pw")
        fresh = await begin(old, "/alice/new", "b1")
        await old.checkpoint(fresh.upload_id, 1, 60)
        first = await begin(old, "/alice/over", "b2")
        await old.commit_upload(first.upload_id, 1, 80)
        over = await begin(old, "/alice/over", "b3")
        await old.checkpoint(over.upload_id, 1, 90)
        done = await begin(old, "/alice/done", "b4")
        await old.checkpoint(done.upload_id, 1, 5)
        await old.commit_upload(done.upload_id, 1, 5)
    finally:
        without_current_columns(old)
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        assert await usage(new) == (85, 60 + 10)
        assert await usage(new, "bob") == (0, 0)
        await new.abort_upload(fresh.upload_id)
        await new.commit_upload(over.upload_id, 1, 90)
        assert await usage(new) == (95, 0)
    finally:
        await new.close()


def _statements(cat, fn):
    def run(tx):
        recording = RecordingTx(tx)
        result = fn(recording)
        return result, [sql for sql, _ in recording.statements]

    return cat._runner.run_sync(run)


@pytest_twisted.ensureDeferred
async def test_a_small_stor_asks_nothing_more_of_the_catalog(catalog, clock):
    """The pending charge costs a small STOR (one start, one commit, no
    checkpoint) no statement: a start charges nothing (its file is what it
    builds on), and the commit gives the charge back in the one UPDATE of
    users that charged the file before."""
    await catalog.add_user("alice", "pw", quota_bytes=10**9)
    counts = []
    for path, size in (("/alice/f", 20), ("/alice/f", 30)):  # new, then overwritten
        started, start = _statements(
            catalog,
            lambda tx, path=path: _uploads.start_upload(
                tx, clock(), "alice", path, 0, f"b{len(path)}{clock()}", ["s1"], 1, "fe1",
                clock() + 60, None, None,
            ),
        )  # fmt: skip
        clock.advance(1)
        _, commit = _statements(
            catalog,
            lambda tx, up=started.upload, size=size: _uploads.commit_upload(
                tx, clock(), up.upload_id, up.epoch, size, None, None
            ),
        )
        assert [s for s in start if "users" in s] == []
        assert [s.split(" SET ")[0] for s in commit if "users" in s] == ["UPDATE users"]
        assert not [s for s in start + commit if "SUM(" in s]
        counts.append((len(start), len(commit)))
    assert await usage(catalog) == (30, 0)
    # Every statement of the start and of the commit, counted (a new file,
    # then its overwrite), pinned as they are with the pending charge: one
    # more is a cost each small upload pays, to be weighed, not slipped in.
    assert counts == SMALL_STOR_STATEMENTS[catalog.backend_name]


#: (start, commit) statements of a small STOR of a new file, then of its
#: overwrite, per backend (PostgreSQL locks rows SQLite does not need to).
SMALL_STOR_STATEMENTS = {
    "sqlite": [(8, 10), (7, 15)],
    "postgresql": [(10, 12), (11, 17)],
}


@pytest_twisted.ensureDeferred
async def test_a_growing_checkpoint_locks_its_users_row_last(catalog, clock):
    """The users row a growing checkpoint charges serialises the user's
    checkpoints and commits until its transaction ends: it is the last row
    the checkpoint writes (after the upload's, its blob's, its replicas'),
    so it is held no longer than the rest of the transaction needs."""
    await catalog.add_user("alice", "pw", quota_bytes=100)
    up = await begin(catalog, "/alice/f", "b1")
    _, statements = _statements(
        catalog,
        lambda tx: _uploads.checkpoint(tx, clock(), up.upload_id, 1, 60, ["s1"], None),
    )
    writes = [s for s in statements if s.split()[0] in ("UPDATE", "INSERT", "DELETE")]
    assert writes[-1].startswith("UPDATE users SET")
    assert len([s for s in writes if "users" in s]) == 1
    assert await usage(catalog) == (0, 60)


@pytest_twisted.ensureDeferred
async def test_a_recount_sets_the_pending_bytes_to_what_the_live_uploads_hold(catalog):
    """``recount_pending``: a count left wrong (a front end of the code
    before schema 12 beside a newer one) is counted again from the live
    uploads, as migration 12 started it; the count it replaced is told."""
    await catalog.add_user("alice", "pw", quota_bytes=100)
    up = await begin(catalog, "/alice/f", "b1")
    await catalog.checkpoint(up.upload_id, 1, 60)
    catalog._runner.run_sync(
        lambda tx: tx.execute("UPDATE users SET pending_bytes = 999 WHERE name = 'alice'")
    )
    user, before = await catalog.recount_pending("alice")
    assert (user.pending_bytes, before) == (60, 999)
    assert await usage(catalog) == (0, 60)
    await catalog.abort_upload(up.upload_id)
    assert await usage(catalog) == (0, 0)
    with pytest.raises(NotFound):
        await catalog.recount_pending("nobody")
