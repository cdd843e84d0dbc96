"""The catalog's Runner: reads in the reactor thread, and commits that need
not wait for the disk, on SQLite (PostgreSQL runs every read in the pool)."""

from __future__ import annotations

import sqlite3
import threading

import pytest_twisted
from twisted.internet import reactor

from wsfront.catalog.opening import open_catalog


@pytest_twisted.ensureDeferred
async def test_a_sqlite_read_runs_at_once_in_the_reactor_thread(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    try:
        await cat.mkdir("/d")
        d = cat.stat("/d")
        assert d.called  # no thread hop: answered before stat returned
        assert (await d).is_dir
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_busy_database_sends_the_read_to_the_pool(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    threads = []

    def read(tx):
        threads.append(threading.current_thread())
        if len(threads) == 1:
            raise sqlite3.OperationalError("database is locked")
        return tx.value("SELECT 42")

    try:
        assert await cat._runner.read_now(read) == 42
        assert threads[0] is threading.current_thread()
        assert threads[1] is not threading.current_thread()
    finally:
        cat.close()


def test_a_commit_that_need_not_wait_leaves_the_connection_synchronous(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        seen = runner.run_sync(lambda tx: tx.value("PRAGMA synchronous"), write=True, durable=False)
        assert seen == 1  # NORMAL: this commit is not fsync'd
        assert runner.run_sync(lambda tx: tx.value("PRAGMA synchronous")) == 2  # FULL again
        try:
            runner.run_sync(lambda tx: 1 / 0, write=True, durable=False)
        except ZeroDivisionError:
            pass
        assert runner.run_sync(lambda tx: tx.value("PRAGMA synchronous")) == 2
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_database_locked_when_the_inline_connection_opens_sends_the_read_to_the_pool(
    tmp_path,
):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        await cat.mkdir("/d")
        opening = runner.backend.connect_inline

        def locked():
            # What opening the connection (its PRAGMAs) raises while another
            # process holds the database exclusively.
            raise sqlite3.OperationalError("database is locked")

        runner.backend.connect_inline = locked
        d = cat.stat("/d")  # nothing raised here: the read went to the pool
        assert runner._inline is None
        assert (await d).is_dir
        runner.backend.connect_inline = opening
        d = cat.stat("/d")
        assert d.called and runner._inline is not None  # inline again
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_writes_share_one_thread_and_reads_do_not_wait_for_it(tmp_path):
    """SQLite lets one writer in at a time, and a connection drops its page
    cache whenever another wrote: every write runs on one writer thread."""
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    writers, readers = set(), set()

    def write(tx):
        writers.add(threading.current_thread())
        return tx.value("SELECT 1")

    def read(tx):
        readers.add(threading.current_thread())
        return tx.value("SELECT 2")

    try:
        for _ in range(8):
            assert await runner.run(write) == 1
            assert await runner.run(read, write=False) == 2
        assert len(writers) == 1 and not (writers & readers)
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_write_queued_longer_than_the_busy_timeout_fails_at_once(tmp_path, monkeypatch):
    """Behind a write that waits out a lock held elsewhere, a queued write
    is refused as unavailable once it has waited queue_timeout, instead of
    waiting a whole busy timeout more of its own."""
    from wsfront.catalog import _db
    from wsfront.catalog.errors import CatalogUnavailable

    now = [1000.0]
    monkeypatch.setattr(_db, "monotonic", lambda: now[0])
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    started, release = threading.Event(), threading.Event()

    def held(tx):
        started.set()
        release.wait(10)
        return "held"

    try:
        first = runner.run(held)
        assert started.wait(10)
        queued = runner.run(lambda tx: "queued")
        now[0] += runner.backend.queue_timeout + 1
        release.set()
        assert await first == "held"
        try:
            await queued
        except CatalogUnavailable as e:
            assert "waited" in str(e)
        else:
            raise AssertionError("a write queued past queue_timeout ran")
        assert await runner.run(lambda tx: "later") == "later"
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_accounts_hash_in_the_pool_and_write_on_the_writer_thread(tmp_path, monkeypatch):
    """Adding a user and setting a password hash with scrypt off the reactor,
    then store the hash on SQLite's one writer thread like every write."""
    from wsfront.catalog import _accounts

    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    seen = []
    for name in ("add_user", "set_password_hash"):
        original = getattr(_accounts, name)

        def recording(tx, *args, _original=original, _name=name):
            seen.append((_name, threading.current_thread()))
            return _original(tx, *args)

        monkeypatch.setattr(_accounts, name, recording)
    try:
        writer = await cat._runner.run(lambda tx: threading.current_thread())
        await cat.add_user("alice", "pw1")
        await cat.set_password("alice", "pw2")
        assert seen == [("add_user", writer), ("set_password_hash", writer)]
        assert writer is not threading.current_thread()
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_the_writer_thread_runs_writes_in_order_and_close_waits_for_queued_ones(tmp_path):
    """The single writer is a thread fed by a queue (``WriterThread``):
    writes run in the order given, a failing one fails only its own
    Deferred, and close() lets the writes queued before it finish."""
    from wsfront.catalog._db import WriterThread

    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    assert isinstance(runner._writer, WriterThread)
    started, release = threading.Event(), threading.Event()
    order: list[int] = []

    def held(tx):
        started.set()
        release.wait(10)
        order.append(0)

    def numbered(n: int):
        def write(tx):
            order.append(n)
            if n == 2:
                raise ValueError("write 2 fails")
            return n

        return write

    first = runner.run(held)
    assert started.wait(10)
    queued = [runner.run(numbered(n)) for n in (1, 2, 3)]
    release.set()
    await first
    assert await queued[0] == 1
    try:
        await queued[1]
    except ValueError as e:
        assert "write 2" in str(e)
    else:
        raise AssertionError("a failing write succeeded")
    assert await queued[2] == 3
    assert order == [0, 1, 2, 3]
    # Queued behind a held write, then the catalog closed: it still runs.
    started.clear()
    release.clear()
    blocker = runner.run(held)
    assert started.wait(10)
    last = runner.run(numbered(4))
    reactor.callLater(0, release.set)
    closing = threading.Thread(target=cat.close)
    closing.start()
    assert await blocker is None and await last == 4
    closing.join(10)
    assert not closing.is_alive()


def test_the_writer_thread_outlives_a_reactor_that_refuses_a_result():
    """``callFromThread`` raising (a reactor shutting down) used to end the
    writer thread silently: every later write's Deferred never fired."""
    from wsfront.catalog._db import WriterThread

    class Refusing:
        """Refuses the first result handed back, takes the rest."""

        def __init__(self) -> None:
            self.refused = 0
            self.taken: list[tuple] = []

        def callFromThread(self, f, *args) -> None:
            if not self.refused:
                self.refused += 1
                raise RuntimeError("the reactor is gone")
            self.taken.append((f, args))

    fake = Refusing()
    writer = WriterThread(fake, "catalog-test-w")
    writer.run(lambda: "first")
    writer.run(lambda: "second")
    writer.stop()  # joins: both writes ran
    assert fake.refused == 1
    assert [args for _, args in fake.taken] == [("second",)]


@pytest_twisted.ensureDeferred
async def test_a_full_sqlite_database_is_catalog_full_and_the_next_write_works(tmp_path):
    """SQLITE_FULL ("database or disk is full", here from max_page_count)
    is CatalogFull, which the front ends answer 507/452, not the driver's
    OperationalError (a 500 and a traceback)."""
    from wsfront.catalog.errors import CatalogFull

    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        pages = await runner.run(lambda tx: tx.value("PRAGMA page_count"))
        await runner.run(lambda tx: tx.value(f"PRAGMA max_page_count = {pages}"))

        def grow(tx):
            tx.execute("CREATE TABLE filler (x BLOB)")
            tx.execute("INSERT INTO filler VALUES (zeroblob(1000000))")

        try:
            await runner.run(grow)
        except CatalogFull as e:
            assert "full" in str(e)
        else:
            raise AssertionError("a write past max_page_count succeeded")
        await runner.run(lambda tx: tx.value(f"PRAGMA max_page_count = {pages + 1000}"))
        await cat.mkdir("/d")
    finally:
        cat.close()
