"""The SQLite backend: one file shared by the front ends of one host.

WAL mode lets readers run beside one writer and several processes open the
file; every write transaction is ``BEGIN IMMEDIATE``, so the write lock is
taken before anything is read and a compare-and-set can never be decided on
a stale read.  ``synchronous=FULL``: a commit is on disk when it returns,
because front ends acknowledge clients right after it.

Checkpoints (copying the log's pages into the database file) run in a
thread of their own every ``CHECKPOINT_EVERY`` writes (``_db.Checkpointer``),
not in the commit that happens to fill the log; ``wal_autocheckpoint`` is
raised to ``BACKSTOP_PAGES`` so that SQLite's own checkpoint from a commit
only runs for a log that the thread could not keep short.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from wsfront.catalog._db import Backend

BUSY_TIMEOUT_SECONDS = 30.0
#: How long ``open_catalog`` waits for a catalog that another process is
#: upgrading (locked, its schema older than this code's) before it gives
#: up: a migration that copies tables holds the write lock throughout,
#: about 16 s per million files (docs/catalog.md), far past the busy
#: timeout.
UPGRADE_WAIT_SECONDS = 3600.0
#: Write transactions between two checkpoints of the checkpoint thread: a
#: small STOR writes two, about 25 pages in all, so about 800 pages a
#: pass, about as often as SQLite's own default (``wal_autocheckpoint``
#: 1000).
CHECKPOINT_EVERY = 64
#: Pages in the log past which a commit checkpoints itself (SQLite's
#: default: 1000), only when the thread's passes fall behind.
BACKSTOP_PAGES = 4000


class SQLiteBackend(Backend):
    name = "sqlite"
    dialect = {
        "pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "int": "INTEGER",
        "real": "REAL",
        "name": "TEXT",
    }

    inline_reads = True
    single_writer = True
    inline_writes = True
    locks_at_begin = True  # every write transaction is BEGIN IMMEDIATE
    queue_timeout = BUSY_TIMEOUT_SECONDS
    busy_timeout = BUSY_TIMEOUT_SECONDS
    upgrade_wait = UPGRADE_WAIT_SECONDS
    checkpoint_every = CHECKPOINT_EVERY

    def __init__(self, path: str) -> None:
        self.path = path
        #: What ``no_wait`` turned off, per connection, to give back.
        self._waits: dict[int, tuple[int, int]] = {}

    def connect(self, busy_timeout: float | None = None) -> sqlite3.Connection:
        if busy_timeout is None:
            busy_timeout = self.busy_timeout
        conn = sqlite3.connect(
            self.path,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        return conn

    def connect_inline(self) -> sqlite3.Connection:
        return self.connect(busy_timeout=0.0)

    def begin(self, conn: sqlite3.Connection, write: bool, durable: bool = True) -> Any:
        if not durable:
            # WAL mode, synchronous=NORMAL: this commit is not fsync'd, but
            # it is in the WAL before any later commit, whose fsync (FULL)
            # covers it.  A crash of the process loses nothing; one of the
            # machine loses only what no durable commit followed.
            conn.execute("PRAGMA synchronous = NORMAL")
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        return cursor

    def end(self, conn: sqlite3.Connection, durable: bool) -> None:
        if not durable:
            conn.execute("PRAGMA synchronous = FULL")

    def no_wait(self, conn: sqlite3.Connection, on: bool) -> None:
        # Nor does its commit checkpoint the log past BACKSTOP_PAGES (a
        # copy and fsync of the database file): the writer's next commit
        # does, in its thread.  Off gives the connection back the busy
        # timeout and backstop it had when on was asked (an operator's or a
        # test's, not necessarily the defaults), kept here per connection.
        if on:
            kept = (
                conn.execute("PRAGMA busy_timeout").fetchone()[0],
                conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
            )
            self._waits[id(conn)] = kept
            timeout, backstop = 0, 0
        else:
            default = (int(self.busy_timeout * 1000), BACKSTOP_PAGES)
            timeout, backstop = self._waits.pop(id(conn), default)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(backstop)}")

    def commit(self, conn: sqlite3.Connection, cursor: Any) -> None:
        cursor.execute("COMMIT")
        cursor.close()

    def rollback(self, conn: sqlite3.Connection, cursor: Any) -> None:
        if conn.in_transaction:
            conn.rollback()
        if cursor is not None:
            cursor.close()

    def checkpoint(self, conn: sqlite3.Connection, last: bool) -> tuple[int, int]:
        # PASSIVE: copies the frames no reader still needs, never waits
        # and never blocks the writer; it syncs the log before it copies
        # and, once it copied all of it, the database file after.
        ((busy, pages, copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if last and 0 < copied < pages:
            # Overtaken by a commit, SQLite leaves what it copied unsynced
            # (the log still holds it): sync it here, or the checkpoint
            # that completes this one (a commit's own, past the backstop)
            # would wait for all of it.
            self._sync_file()
        return (pages, -1 if busy else copied)

    def migrated(self) -> None:
        # A migration that copies tables (schema 6) writes them whole to
        # the log, which keeps that size on disk once checkpointed: copy
        # it into the database and truncate it now.  Best effort: another
        # process reading the catalog already leaves the log as it is.
        conn = self.connect(busy_timeout=1.0)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass  # locked: the checkpoints that follow copy it in time
        finally:
            conn.close()

    def changes(self, conn: sqlite3.Connection) -> int:
        return conn.total_changes

    def log_generation(self) -> bytes | None:
        # The WAL header's checkpoint sequence number and salts
        # (https://www.sqlite.org/fileformat2.html#walformat), rewritten
        # by the first commit after the log began again.
        try:
            with open(self.path + "-wal", "rb") as wal:
                return wal.read(24)[12:]
        except FileNotFoundError:
            return None

    def _sync_file(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def is_unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError)

    def is_retryable(self, error: BaseException) -> bool:
        return False

    def is_busy(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)

    def is_full(self, error: BaseException) -> bool:
        # SQLITE_FULL: the disk (or max_page_count) allows no more pages.
        code = getattr(error, "sqlite_errorcode", None)
        return (
            isinstance(error, sqlite3.Error)
            and code is not None
            and code & 0xFF == sqlite3.SQLITE_FULL
        )
