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
