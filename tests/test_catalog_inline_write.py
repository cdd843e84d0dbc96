"""SQLite: a write whose commit waits for no disk (a small STOR's start)
runs at once in the reactor thread, on the writer thread's connection,
when the writer is idle; else it goes to the writer thread as any write
(``wsfront.catalog._db.Runner._write_now``)."""

from __future__ import annotations

import sqlite3
import threading

import pytest_twisted
from twisted.internet import reactor

from wsfront.catalog.opening import open_catalog


def _where(tx):
    return threading.current_thread(), tx.value("PRAGMA synchronous")


@pytest_twisted.ensureDeferred
async def test_an_unsynced_write_runs_at_once_on_the_writer_connection(tmp_path):
    cat = open_catalog(reactor, f"sqlite:///{tmp_path}/c.sqlite")
    runner = cat._runner
    try:
        writer, _ = await runner.run(_where)  # the writer thread opens its connection

        def create(tx):
            tx.execute("CREATE TABLE t (x)")
            return _where(tx)

        d = runner.run(create, durable=False)
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
        writer, _ = await runner.run(_where)
        first = runner.run(held)
        assert started.wait(10)
        second = runner.run(unsynced, durable=False)
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
        writer, _ = await runner.run(_where)
        other.execute("BEGIN IMMEDIATE")  # another process's write lock
        d = runner.run(lambda tx: threading.current_thread(), durable=False)
        assert not d.called  # the reactor did not wait for the lock
        reactor.callLater(0, other.execute, "COMMIT")
        assert await d is writer
        assert runner._writer_conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    finally:
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()
        cat.close()
