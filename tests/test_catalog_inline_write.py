"""SQLite: a write whose commit waits for no disk (a small STOR's start)
runs at once in the reactor thread, on the writer thread's connection,
when the writer is idle; else it goes to the writer thread as any write
(``wsfront.catalog._db.Runner._write_now``)."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError

from wsfront.catalog.opening import open_catalog


def _where(tx):
    return threading.current_thread(), tx.value("PRAGMA synchronous")


def _wrote(tx):
    """A write of the writer thread that writes to the log: until one
    did, the log may begin again at the next write."""
    tx.execute("CREATE TABLE IF NOT EXISTS w (x)")
    tx.execute("INSERT INTO w VALUES (1)")
    return _where(tx)


def _unsynced(runner, fn):
    return runner.run(fn, durable=False, small=True)


@pytest_twisted.ensureDeferred
async def test_an_unsynced_write_runs_at_once_on_the_writer_connection(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        writer, _ = await runner.run(_wrote)  # the writer thread opens its connection

        def create(tx):
            tx.execute("CREATE TABLE t (x)")
            return _where(tx)

        d = _unsynced(runner, create)
        assert d.called  # no thread hop: answered before run() returned
        thread, synchronous = await d
        assert thread is threading.current_thread() and thread is not writer
        assert synchronous == 1  # NORMAL: not fsync'd, as in the writer thread
        # The writer's connection waits for locks, checkpoints a long log
        # and syncs its commits again.
        conn = runner._writer_conn
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 4000
        thread, synchronous = await runner.run(_where)
        assert (thread, synchronous) == (writer, 2)
        assert await runner.run(lambda tx: tx.execute("INSERT INTO t VALUES (1)")) == 1
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_an_unsynced_write_waits_behind_the_writes_handed_to_the_writer(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    started, release = threading.Event(), threading.Event()
    order = []

    def held(tx):
        started.set()
        release.wait(10)
        order.append("held")

    def unsynced(tx):
        order.append("unsynced")
        return threading.current_thread()

    try:
        writer, _ = await runner.run(_wrote)
        first = runner.run(held)
        assert started.wait(10)
        second = _unsynced(runner, unsynced)
        assert not second.called
        release.set()
        await first
        assert await second is writer
        assert order == ["held", "unsynced"]
    finally:
        release.set()
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_database_locked_elsewhere_sends_the_unsynced_write_to_the_writer(tmp_path):
    path = f"{tmp_path}/c.sqlite"
    cat = open_catalog(reactor, f"sqlite:///{path}")
    runner = cat._runner
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        writer, _ = await runner.run(_wrote)
        other.execute("BEGIN IMMEDIATE")  # another process's write lock
        d = _unsynced(runner, lambda tx: threading.current_thread())
        assert not d.called  # the reactor did not wait for the lock
        reactor.callLater(0, other.execute, "COMMIT")
        assert await d is writer
        assert runner._writer_conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    finally:
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()
        cat.close()


def _here(tx):
    tx.execute("INSERT INTO w VALUES (2)")
    return threading.current_thread()


@pytest_twisted.ensureDeferred
async def test_the_write_after_a_whole_checkpoint_begins_the_log_again_in_the_writer(tmp_path):
    """The write that begins the log again syncs the log's new header, even
    unsynced: never in the reactor thread."""
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    backend, ckpt = runner.backend, runner._checkpointer
    try:
        writer, _ = await runner.run(_wrote)
        assert _unsynced(runner, _here).called  # at once, as usual
        cycles = ckpt.cycles
        ckpt._wake.set()  # a pass now, as after CHECKPOINT_EVERY writes
        assert ckpt.wait_cycles(cycles + 1, 30)
        assert ckpt.may_restart  # it copied the whole log
        generation = backend.log_generation()
        d = _unsynced(runner, _here)
        assert not d.called
        assert await d is writer
        assert backend.log_generation() != generation  # begun again, there
        # The write woke the checkpointer to see the log began again.
        assert ckpt.wait_cycles(cycles + 2, 30)
        assert not ckpt.may_restart
        assert _unsynced(runner, _here).called
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_no_write_runs_in_the_reactor_during_a_checkpoint_pass(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        writer, _ = await runner.run(_wrote)
        with runner._checkpointer.inline:  # as a pass holds it
            d = _unsynced(runner, _here)
            assert not d.called
        assert await d is writer
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_write_the_caller_did_not_call_small_goes_to_the_writer(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    calls = []
    run = runner.run

    def recording(fn, *args, **kwargs):
        calls.append(kwargs.get("small", False))
        return run(fn, *args, **kwargs)

    try:
        writer, _ = await runner.run(_wrote)
        d = runner.run(_here, durable=False)
        assert not d.called
        assert await d is writer
        # The catalog calls small only a fresh upload's start, not an
        # APPE's (offset None) or a REST's, which copy every extent.
        runner.run = recording
        for offset in (0, None, 5):
            d = cat.start_upload(
                "alice", "/f", offset=offset, blob_id=f"b{offset}", replicas=["s1"],
                wanted_replicas=1, owner="fe1", expires_at=1e12,
            )  # fmt: skip
            d.addErrback(lambda f: None)
            await d
        assert calls == [True, False, False]
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_queued_write_counts_until_the_writer_ran_it(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    release = threading.Event()
    order = []

    def queued(tx):
        order.append("queued")

    try:
        await runner.run(_wrote)
        # The writer thread busy with something else (not a write: it holds
        # no lock), the write queued behind it is cancelled by its caller.
        busy = runner._writer.run(release.wait, 10)
        second = runner.run(queued)
        second.cancel()
        with pytest.raises(CancelledError):
            await second
        # Still queued: no write may run before it.
        d = _unsynced(runner, lambda tx: order.append("unsynced"))
        assert not d.called
        release.set()
        await busy
        await d
        assert order == ["queued", "unsynced"]
        assert runner._writes_out == 0
    finally:
        release.set()
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_write_in_the_reactor_never_reconnects(tmp_path):
    """A connection found lost in the reactor thread sends the write to the
    writer thread, which reconnects; the reactor never opens one."""
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    lost = [False]
    connected = []
    connect = runner._connect

    def recording_connect():
        connected.append(threading.current_thread())
        return connect()

    def losing(tx):
        if not lost[0] and threading.current_thread() is threading.main_thread():
            lost[0] = True
            raise sqlite3.OperationalError("disk I/O error")
        lost[0] = False
        return threading.current_thread()

    try:
        writer, _ = await runner.run(_wrote)
        runner.backend.connection_lost = lambda conn, error=None: lost[0]
        runner._connect = recording_connect
        d = _unsynced(runner, losing)
        assert not d.called
        assert await d is writer
        assert threading.main_thread() not in connected
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_an_inline_write_gives_the_writer_back_the_busy_timeout_it_had(tmp_path):
    """Not the default: what the connection had (tests shorten it to reach
    a locked catalog's 451 quickly; an operator could have set it)."""
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        await runner.run(_wrote)
        await runner.run(lambda tx: tx.execute("PRAGMA busy_timeout = 50"))
        await runner.run(lambda tx: tx.execute("PRAGMA wal_autocheckpoint = 123"))
        await runner.run(_wrote)  # the log has frames again: the next may go inline
        d = _unsynced(runner, _where)
        assert d.called  # it did run inline
        thread, _ = await d
        assert thread is threading.current_thread()
        conn = runner._writer_conn
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 50
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 123
    finally:
        cat.close()
