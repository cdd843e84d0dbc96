"""The PostgreSQL backend: one catalog for front ends on many hosts.

Transactions run at READ COMMITTED with explicit row locks
(``SELECT ... FOR UPDATE``) on the rows a compare-and-set decides on: the
session row for epoch changes, the parent directories for namespace changes.
A statement that waits for such a lock re-reads the row once it is free, so
the loser of a race sees the winner's result.  Directory moves also take one
advisory lock so two moves cannot build a cycle.  Deadlocks and
serialisation failures retry the whole transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from wsfront.catalog._db import Backend, Tx


class PostgresBackend(Backend):
    name = "postgresql"
    dialect = {
        "pk": "BIGSERIAL PRIMARY KEY",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "name": 'TEXT COLLATE "C"',
    }

    def __init__(self, url: str) -> None:
        self.url = url
        self._sql_cache: dict[str, str] = {}

    def sql(self, text: str) -> str:
        converted = self._sql_cache.get(text)
        if converted is None:
            converted = text.replace("%", "%%").replace("?", "%s")
            self._sql_cache[text] = converted
        return converted

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, row_factory=dict_row, autocommit=False)

    def begin(self, conn: psycopg.Connection, write: bool, durable: bool = True) -> Any:
        cursor = conn.cursor()
        if not durable:
            # Commit without waiting for the WAL flush; WAL is flushed in
            # order, so the next synchronous commit makes this one durable.
            cursor.execute("SET LOCAL synchronous_commit = off")
        return cursor

    def commit(self, conn: psycopg.Connection, cursor: Any) -> None:
        conn.commit()
        cursor.close()

    def rollback(self, conn: psycopg.Connection, cursor: Any) -> None:
        if not conn.closed:
            conn.rollback()
        if cursor is not None:
            cursor.close()

    def is_unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, pg_errors.UniqueViolation)

    def is_retryable(self, error: BaseException) -> bool:
        return isinstance(error, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)

    def is_full(self, error: BaseException) -> bool:
        return isinstance(error, pg_errors.DiskFull)

    def connection_lost(self, conn: psycopg.Connection) -> bool:
        return conn.closed or conn.broken

    def lock_rows(self, tx: Tx, table: str, key: str, values: list[Any]) -> None:
        if values:
            marks = ", ".join("?" for _ in values)
            tx.all(
                f"SELECT {key} FROM {table} WHERE {key} IN ({marks}) ORDER BY {key} FOR UPDATE",
                *values,
            )

    def lock_global(self, tx: Tx, key: int) -> None:
        tx.all("SELECT pg_advisory_xact_lock(?)", key)

    def prepare(self, tx: Tx) -> None:
        # Serialise concurrent migrations of one database.
        tx.all("SELECT pg_advisory_xact_lock(?)", 0x77736673)
