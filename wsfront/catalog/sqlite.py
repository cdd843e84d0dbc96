"""The SQLite backend: one file shared by the front ends of one host.

WAL mode lets readers run beside one writer and several processes open the
file; every write transaction is ``BEGIN IMMEDIATE``, so the write lock is
taken before anything is read and a compare-and-set can never be decided on
a stale read.  ``synchronous=FULL``: a commit is on disk when it returns,
because front ends acknowledge clients right after it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from wsfront.catalog._db import Backend

BUSY_TIMEOUT_SECONDS = 30.0


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
    locks_at_begin = True  # every write transaction is BEGIN IMMEDIATE
    queue_timeout = BUSY_TIMEOUT_SECONDS

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite3.Connection:
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

    def commit(self, conn: sqlite3.Connection, cursor: Any) -> None:
        cursor.execute("COMMIT")
        cursor.close()

    def rollback(self, conn: sqlite3.Connection, cursor: Any) -> None:
        if conn.in_transaction:
            conn.rollback()
        if cursor is not None:
            cursor.close()

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
