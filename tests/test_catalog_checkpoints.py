"""SQLite's checkpoints run in a thread of their own (``_db.Checkpointer``),
beside the writes, not in the commit of whichever write fills the log."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from tests.catalog_fixtures import postgres_schema_url
from wsfront.catalog import sqlite as sqlite_backend
from wsfront.catalog.opening import open_catalog

WAIT = 30.0  # seconds a test waits for the checkpoint thread at most


def open_sqlite(tmp_path, monkeypatch, every: int = 4):
    monkeypatch.setattr(sqlite_backend.SQLiteBackend, "checkpoint_every", every)
    return open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")


async def writes(cat, first: int, count: int) -> None:
    for n in range(first, first + count):
        await cat.mkdir(f"/d{n}")


def in_database_file(tmp_path) -> set[str]:
    """The directory names the main database file holds, its log ignored
    (what a checkpoint copied there)."""
    uri = f"file:{tmp_path}/c.sqlite?immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dirents'").fetchone() is None:
            return set()  # not even the schema was copied yet
        return {row[0] for row in conn.execute("SELECT name FROM dirents")}
    finally:
        conn.close()


def test_a_connection_checkpoints_itself_only_past_the_backstop(tmp_path):
    conn = sqlite_backend.SQLiteBackend(f"{tmp_path}/c.sqlite").connect()
    try:
        pages = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    finally:
        conn.close()
    assert pages == sqlite_backend.BACKSTOP_PAGES > 1000


@pytest_twisted.ensureDeferred
async def test_every_nth_write_wakes_a_checkpoint_that_copies_the_log(tmp_path, monkeypatch):
    cat = open_sqlite(tmp_path, monkeypatch)
    try:
        checkpointer = cat._runner._checkpointer
        await writes(cat, 0, 3)
        assert checkpointer.cycles == 0
        assert in_database_file(tmp_path) == set()
        await writes(cat, 3, 1)
        assert checkpointer.wait_cycles(1, WAIT)
        assert in_database_file(tmp_path) == {"d0", "d1", "d2", "d3"}
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_the_log_begins_again_after_a_pass_copied_all_of_it(tmp_path, monkeypatch):
    cat = open_sqlite(tmp_path, monkeypatch)
    try:
        checkpointer = cat._runner._checkpointer
        await writes(cat, 0, 4)
        assert checkpointer.wait_cycles(1, WAIT)
        assert checkpointer.restarts == 0
        # The pass copied everything before this write began: the write
        # starts the log over, and the pass it wakes sees a shorter log.
        await writes(cat, 4, 1)
        assert checkpointer.wait_cycles(2, WAIT)
        assert checkpointer.restarts == 1
        # Seen once, the next pass waits for the Nth write again.
        await writes(cat, 5, 3)
        assert checkpointer.cycles == 2
        await writes(cat, 8, 1)
        assert checkpointer.wait_cycles(3, WAIT)
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_writes_do_not_wait_for_a_running_checkpoint(tmp_path, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = sqlite_backend.SQLiteBackend.checkpoint

    def slow_checkpoint(self, conn, last):
        entered.set()
        assert release.wait(WAIT)
        return real(self, conn, last)

    monkeypatch.setattr(sqlite_backend.SQLiteBackend, "checkpoint", slow_checkpoint)
    cat = open_sqlite(tmp_path, monkeypatch)
    try:
        await writes(cat, 0, 4)
        assert entered.wait(WAIT)
        await writes(cat, 4, 20)  # all committed while the pass is held
        assert not release.is_set()
        release.set()
        assert cat._runner._checkpointer.wait_cycles(1, WAIT)
        names = {e.name for e in await cat.list_dir("/")}
        assert names == {f"d{n}" for n in range(24)}
    finally:
        release.set()
        cat.close()


@pytest.fixture
def warnings():
    events = []

    def observe(event):
        if event.get("log_namespace") == "wsfront.catalog._db":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_failing_checkpoint_is_logged_once_and_the_writes_go_on(
    tmp_path, monkeypatch, warnings
):
    failing = [True]
    real = sqlite_backend.SQLiteBackend.checkpoint

    def checkpoint(self, conn, last):
        if failing[0]:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, conn, last)

    monkeypatch.setattr(sqlite_backend.SQLiteBackend, "checkpoint", checkpoint)
    cat = open_sqlite(tmp_path, monkeypatch)
    try:
        checkpointer = cat._runner._checkpointer
        await writes(cat, 0, 8)
        assert checkpointer.wait_cycles(2, WAIT)
        texts = [e["log_format"].format(**e) for e in warnings]
        assert texts == ["catalog checkpoint failed: OperationalError: disk I/O error"]
        failing[0] = False
        await writes(cat, 8, 4)
        assert checkpointer.wait_cycles(3, WAIT)
        assert in_database_file(tmp_path) == {f"d{n}" for n in range(12)}
        assert [e["log_format"] for e in warnings[1:]] == ["catalog checkpoints work again"]
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_close_ends_the_checkpoint_thread(tmp_path, monkeypatch):
    cat = open_sqlite(tmp_path, monkeypatch)
    await writes(cat, 0, 4)
    thread = cat._runner._checkpointer._thread
    cat.close()
    assert not thread.is_alive()


@pytest.mark.postgres
def test_postgresql_checkpoints_itself():
    for url in postgres_schema_url():
        cat = open_catalog(reactor, url)
        try:
            assert cat._runner._checkpointer is None
        finally:
            cat.close()
