"""The PostgreSQL backend: one catalog for front ends on many hosts.

Read transactions run at REPEATABLE READ, READ ONLY: every statement of a
lookup (an inode, its version, the version's extents) sees one snapshot,
whatever other front ends commit meanwhile.  Write transactions run at
READ COMMITTED with explicit row locks (``SELECT ... FOR UPDATE``) on the
rows a compare-and-set decides on: the session row for epoch changes, the
parent directories for namespace changes.  A statement that waits for
such a lock re-reads the row once it is free, so the loser of a race sees
the winner's result.  Directory moves also take one advisory lock so two
moves cannot build a cycle.  Deadlocks and serialisation failures retry
the whole transaction.

Every connection is bounded in time (``SESSION_DEFAULTS``, ``LIBPQ_DEFAULTS``),
so a front end frozen inside a transaction (SIGSTOP, a VM pause) or a dead
network cannot make the others wait forever: the server aborts a transaction
left idle, a statement waiting on a lock gives up (CatalogUnavailable: HTTP
503, FTP 451), and libpq stops waiting for a server that does not answer.
The catalog URL overrides any of them (``?connect_timeout=5``,
``?options=-c%20lock_timeout%3D30s``), as do libpq's PG* variables and
settings made on the server for the role or the database.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from wsfront.catalog._db import Backend, Tx

#: Server settings of every catalog connection.  A wsfs transaction is one
#: synchronous function in a pool thread: it never waits on a client or a
#: storage server between its statements, so a transaction idle for seconds
#: belongs to a frozen or wedged process and is aborted, freeing its row
#: locks.  A statement waiting longer than ``lock_timeout`` for a lock fails
#: (twice the idle limit: a frozen holder is aborted first); one running
#: longer than ``statement_timeout`` is cancelled.  Each applies only where
#: nobody set the setting (PostgreSQL's default, 0: wait forever): one set
#: for the role or database (``ALTER ROLE ... SET``), in the server's
#: configuration or in the URL (``options=-c lock_timeout=30s``) is kept,
#: 0 included.
SESSION_DEFAULTS = {
    "idle_in_transaction_session_timeout": "5s",
    "lock_timeout": "10s",
    "statement_timeout": "60s",
}

#: libpq connection parameters, unless the URL sets them: give up connecting
#: after 10 s; probe an idle connection after 30 s, every 10 s, dead after 3
#: unanswered probes; drop a connection whose sent data stays unacknowledged
#: for 60 s (a server or network gone while a statement was sent).
LIBPQ_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}

#: The PG* environment variable libpq reads for a parameter above.
_LIBPQ_ENVIRONMENT = {"connect_timeout": "PGCONNECT_TIMEOUT"}

_APPLY_SESSION_DEFAULTS = (
    "SELECT set_config(s.name, s.value, false) FROM (VALUES "
    + ", ".join(f"('{name}', '{value}')" for name, value in SESSION_DEFAULTS.items())
    + ") AS s(name, value) JOIN pg_settings AS p ON p.name = s.name"
    # Only where nobody chose a value: one set in the URL, PGOPTIONS, the
    # server's configuration or ALTER ROLE/DATABASE is kept, 0 (no limit,
    # for a catalog whose maintenance scans outlast a minute) included.
    + " WHERE p.source = 'default'"
)


def libpq_settings(url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parameters of ``LIBPQ_DEFAULTS`` that neither catalog ``url`` nor
    the environment sets: what ``connect`` adds to the URL."""
    environ = os.environ if environ is None else environ
    given = conninfo_to_dict(url)
    return {
        key: value
        for key, value in LIBPQ_DEFAULTS.items()
        if key not in given and _LIBPQ_ENVIRONMENT.get(key, "") not in environ
    }


#: The isolation level of read transactions (``PostgresBackend.begin``).
_READ_LEVEL = psycopg.IsolationLevel.REPEATABLE_READ

#: SQLSTATEs of a server ending the connection: admin_shutdown,
#: crash_shutdown, cannot_connect_now.
_SERVER_ENDED = frozenset({"57P01", "57P02", "57P03"})


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
        self._settings: tuple[str, dict[str, str]] | None = None
        self._sql_cache: dict[str, str] = {}

    def sql(self, text: str) -> str:
        converted = self._sql_cache.get(text)
        if converted is None:
            converted = text.replace("%", "%%").replace("?", "%s")
            self._sql_cache[text] = converted
        return converted

    def connect(self) -> psycopg.Connection:
        url = self.url
        if self._settings is None or self._settings[0] != url:
            self._settings = (url, libpq_settings(url))
        conn = psycopg.connect(url, row_factory=dict_row, autocommit=False, **self._settings[1])
        try:
            conn.execute(_APPLY_SESSION_DEFAULTS)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: psycopg.Connection, write: bool, durable: bool = True) -> Any:
        # A read is one snapshot (REPEATABLE READ): its statements (an
        # inode, then its version, then the version's extents) all see the
        # database as it was at its first one.  At READ COMMITTED each saw
        # the newest commit, and an overwrite committed between two of them
        # had deleted the rows the next one read: a missing version (a
        # TypeError) or the old size with no extents (an empty file served
        # as a success).  READ ONLY: such a transaction is never refused
        # for a serialisation failure, and it cannot write by mistake.
        # Both only change the BEGIN psycopg sends with the first statement
        # (no round trip); writes keep the server's default level.
        level, read_only = (None, None) if write else (_READ_LEVEL, True)
        if conn.isolation_level != level:
            conn.isolation_level = level
        if conn.read_only != read_only:
            conn.read_only = read_only
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

    def is_busy(self, error: BaseException) -> bool:
        # lock_timeout or statement_timeout ran out (SESSION_DEFAULTS).
        return isinstance(error, pg_errors.LockNotAvailable | pg_errors.QueryCanceled)

    def is_full(self, error: BaseException) -> bool:
        return isinstance(error, pg_errors.DiskFull)

    def connection_lost(self, conn: psycopg.Connection, error: BaseException | None = None) -> bool:
        # libpq may report a send to a server that has just ended the
        # connection ("sending query failed: terminating connection due to
        # administrator command") before it marks the connection bad: the
        # error says so first.  Such errors come from the client library
        # (no SQLSTATE), or are connection exceptions (class 08) or the
        # server going away (57P01-57P03).
        if conn.closed or conn.broken:
            return True
        if not isinstance(error, psycopg.OperationalError):
            return False
        state = error.sqlstate
        return state is None or state.startswith("08") or state in _SERVER_ENDED

    def lock_rows(self, tx: Tx, table: str, key: str, values: list[Any]) -> None:
        if values:
            marks = ", ".join("?" for _ in values)
            tx.all(
                f"SELECT {key} FROM {table} WHERE {key} IN ({marks}) ORDER BY {key} FOR UPDATE",
                *values,
            )

    def lock_global(self, tx: Tx, key: int) -> None:
        tx.all("SELECT pg_advisory_xact_lock(?)", key)

    def lift_statement_timeout(self, tx: Tx) -> None:
        # SET LOCAL: back to the connection's limit at the end of the
        # transaction, so the next request on this pooled connection is
        # bounded again.  lock_timeout stays.  Only for read transactions
        # (Catalog._scan), which take no row locks: a write transaction
        # running long holds its locks as long, and every request waiting
        # on them fails after lock_timeout (why add_user keeps the limit).
        tx.execute("SET LOCAL statement_timeout = 0")

    def prepare(self, tx: Tx) -> None:
        # A migration may rewrite big tables, and another front end's may
        # hold the lock below while it does: neither is a stuck client.
        tx.execute("SET LOCAL lock_timeout = 0")
        tx.execute("SET LOCAL statement_timeout = 0")
        # Serialise concurrent migrations of one database.
        tx.all("SELECT pg_advisory_xact_lock(?)", 0x77736673)
