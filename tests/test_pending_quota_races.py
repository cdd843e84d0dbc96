"""Races between transactions that move a user's pending charge, on
PostgreSQL (where writers run side by side; SQLite lets one in at a time):
two connections, each transaction held open at a chosen point in its own
thread, the other one's progress read from ``pg_stat_activity``."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.catalog_fixtures import FakeClock, postgres_schema_url
from tests.support import postgres_url
from wsfront.catalog import _accounts, _uploads, open_catalog
from wsfront.catalog.schema import PENDING_OF_USER_SQL

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url():
    yield from postgres_schema_url()


def _wait_until(done: threading.Event, blocked, deadline: float = 30.0) -> None:
    """Return once ``done`` is set or ``blocked()`` says the other
    transaction waits on a lock (a condition polled, not a delay)."""
    end = time.monotonic() + deadline
    while not done.is_set() and not blocked():
        if time.monotonic() > end:
            raise AssertionError("the second transaction neither ended nor waited on a lock")
        done.wait(0.01)


@pytest_twisted.ensureDeferred
async def test_a_kept_upload_ending_while_its_name_is_added_again_is_not_charged_for_ever(pg_url):
    """A kept upload (``files=keep``) that expires while ``add_user`` brings
    its name back: the expiry charges no users row (none yet), so the new
    account's count must come after it (it waits on the upload's lock), or
    stored pending_bytes keeps 60 for an upload that no longer exists."""
    clock = FakeClock()
    a = open_catalog(reactor, pg_url, clock=clock)
    b = open_catalog(reactor, pg_url, clock=clock)
    try:
        await a.add_user("alice", "pw", root="/share", quota_bytes=1000)
        await a.mkdir("/share/sub")
        up = await a.begin_upload(
            "alice", "/share/sub/f", base_length=0, blob_id="b1", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=clock() + 10,
        )  # fmt: skip
        await a.checkpoint(up.upload_id, 1, 60)
        await a.delete_user("alice", "keep")
        clock.advance(20)

        expired_in_tx, let_expiry_commit = threading.Event(), threading.Event()
        added = threading.Event()
        pids: dict[str, int] = {}
        outcome: dict[str, object] = {}

        def expire(tx):
            pids["expire"] = tx.value("SELECT pg_backend_pid()")
            ended = _uploads.expire_uploads(tx, clock())
            expired_in_tx.set()
            assert let_expiry_commit.wait(30)
            return ended

        def readd(tx):
            pids["add"] = tx.value("SELECT pg_backend_pid()")
            return _accounts.add_user(
                tx, clock(), "alice", "x", False, "/share", None, 1000, None, True
            )

        def run_expire():
            try:
                outcome["expired"] = a._runner.run_sync(expire)
            finally:
                expired_in_tx.set()

        def run_add():
            try:
                outcome["added"] = b._runner.run_sync(readd)
            finally:
                added.set()

        watcher = psycopg.connect(postgres_url(), autocommit=True)

        def add_waits_on_a_lock() -> bool:
            pid = pids.get("add")
            if pid is None:
                return False
            row = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            return row is not None and row[0] == "Lock"

        t_expire = threading.Thread(target=run_expire)
        t_expire.start()
        assert expired_in_tx.wait(30)
        t_add = threading.Thread(target=run_add)
        t_add.start()
        # The expiry's transaction holds the upload's row: add_user ends
        # (unfixed) or waits for it (fixed); then the expiry commits.
        _wait_until(added, add_waits_on_a_lock)
        let_expiry_commit.set()
        t_expire.join(30)
        t_add.join(30)
        watcher.close()
        assert len(outcome["expired"]) == 1
        assert outcome["added"].pending_bytes == 0

        def stored_and_counted(tx):
            return (
                tx.value("SELECT pending_bytes FROM users WHERE name = 'alice'"),
                tx.value("SELECT " + PENDING_OF_USER_SQL.format(user="'alice'")),
            )

        assert a._runner.run_sync(stored_and_counted) == (0, 0)
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_recount_beside_a_growing_checkpoint_keeps_its_charge(pg_url):
    """``recount_pending`` while a checkpoint that charged 60 has not yet
    committed: the recount locks the users row first, so it waits for the
    checkpoint and counts the 60 after (unlocked, its UPDATE waited for
    the row, then wrote the count its statement's snapshot saw from before
    the checkpoint: 0, the 60 lost while the upload holds it)."""
    clock = FakeClock()
    a = open_catalog(reactor, pg_url, clock=clock)
    b = open_catalog(reactor, pg_url, clock=clock)
    try:
        await a.add_user("alice", "pw", quota_bytes=1000)
        up = await a.begin_upload(
            "alice", "/alice/f", base_length=0, blob_id="b1", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=clock() + 600,
        )  # fmt: skip
        charged, let_commit, recounted = threading.Event(), threading.Event(), threading.Event()
        pids: dict[str, int] = {}
        outcome: dict[str, object] = {}

        def grow(tx):
            _uploads.checkpoint(tx, clock(), up.upload_id, 1, 60, None, None)
            charged.set()
            assert let_commit.wait(30)

        def recount(tx):
            pids["recount"] = tx.value("SELECT pg_backend_pid()")
            return _accounts.recount_pending(tx, "alice")

        def run_grow():
            try:
                a._runner.run_sync(grow)
            finally:
                charged.set()

        def run_recount():
            try:
                outcome["recount"] = b._runner.run_sync(recount)
            finally:
                recounted.set()

        watcher = psycopg.connect(postgres_url(), autocommit=True)

        def recount_waits_on_a_lock() -> bool:
            pid = pids.get("recount")
            if pid is None:
                return False
            row = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            return row is not None and row[0] == "Lock"

        t_grow = threading.Thread(target=run_grow)
        t_grow.start()
        assert charged.wait(30)
        t_recount = threading.Thread(target=run_recount)
        t_recount.start()
        _wait_until(recounted, recount_waits_on_a_lock)
        let_commit.set()
        t_grow.join(30)
        t_recount.join(30)
        watcher.close()
        user, before = outcome["recount"]
        assert (user.pending_bytes, before) == (60, 60)
        assert (await a.get_user("alice")).pending_bytes == 60
    finally:
        await a.close()
        await b.close()
