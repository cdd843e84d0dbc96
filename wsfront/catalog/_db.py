"""Database plumbing shared by both backends: a transaction wrapper with one
placeholder style, per-thread connections and a private thread pool.

The catalog's logic is written once against ``Tx``; a backend (SQLite or
PostgreSQL) only says how to connect, how to begin a write transaction
(``BEGIN IMMEDIATE`` on SQLite, row locks on PostgreSQL), which errors mean
"retry the transaction" and which mean "a unique constraint fired".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import monotonic
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.threadpool import ThreadPool

from wsfront.catalog.errors import CatalogClosed, CatalogFull, CatalogUnavailable
from wsstorage.threadwork import QueueRunner


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


log = Logger()

T = TypeVar("T")

MAX_ATTEMPTS = 8
#: New connections one transaction may try after losing its connection
#: before its commit (a server restart ends every pooled connection).
MAX_RECONNECTS = 2


class Tx:
    """One transaction on one connection.  SQL uses ``?`` placeholders; rows
    come back as mappings indexed by column name."""

    def __init__(self, backend: Backend, cursor: Any) -> None:
        self.backend = backend
        self._cursor = cursor

    def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; return the number of rows it changed."""
        self._cursor.execute(self.backend.sql(sql), params)
        return self._cursor.rowcount

    def all(self, sql: str, *params: Any) -> list[Any]:
        self._cursor.execute(self.backend.sql(sql), params)
        return list(self._cursor.fetchall())

    def one(self, sql: str, *params: Any) -> Any | None:
        self._cursor.execute(self.backend.sql(sql), params)
        return self._cursor.fetchone()

    def value(self, sql: str, *params: Any) -> Any:
        row = self.one(sql, *params)
        if row is None:
            return None
        return next(iter(row.values())) if isinstance(row, dict) else row[0]

    def lock_rows(self, table: str, key: str, values: list[Any]) -> None:
        """Hold write locks on these rows until the transaction ends (a
        no-op on SQLite, whose BEGIN IMMEDIATE already serialises writers).
        Rows are locked in key order so two transactions cannot deadlock."""
        self.backend.lock_rows(self, table, key, sorted(set(values)))

    def lock_global(self, key: int) -> None:
        """Serialise this transaction with every other one taking ``key``."""
        self.backend.lock_global(self, key)

    def lift_statement_timeout(self) -> None:
        """Let the rest of this transaction's statements run as long as they
        need: for the whole-table scans of maintenance and admin commands
        only, in read transactions, which hold no row locks anybody could
        wait on (see ``Backend.lift_statement_timeout``)."""
        self.backend.lift_statement_timeout(self)


class Backend:
    """What differs between SQLite and PostgreSQL."""

    #: Substitutions for ``schema.MIGRATIONS``.
    dialect: dict[str, str] = {}
    name = "sql"
    #: Whether a short read may run in the reactor thread (``Runner.read_now``):
    #: only for a database that answers from local memory and never makes a
    #: reader wait (SQLite in WAL mode), never over a network.
    inline_reads = False
    #: Whether write transactions all run on one thread and its connection
    #: (``Runner.run``): for a database that lets one writer in at a time
    #: anyway (SQLite), where a connection's page cache is dropped whenever
    #: another connection wrote, so writes spread over the pool re-read
    #: every page they touch (about 30 reads of the WAL per small upload).
    single_writer = False
    #: Whether a small write whose commit waits for no disk may run in the
    #: reactor thread on the single writer's connection while the writer
    #: is idle (``Runner._write_now``): only where ``inline_reads`` holds
    #: too, the connection can be told not to wait (``no_wait``), and the
    #: log's restarts are known (``checkpoint_every``, ``changes``).
    inline_writes = False
    #: Whether a write transaction holds the database's write lock from its
    #: BEGIN (SQLite's BEGIN IMMEDIATE), so nothing it read can change
    #: under it: ``lock_dirs`` need not look its directories up again.
    locks_at_begin = False
    #: Seconds a write may wait in the single writer's queue before it is
    #: refused as unavailable instead of run (``single_writer`` only): the
    #: database's busy timeout counts only once a write reaches the thread,
    #: so behind a lock held by another process the Nth queued write would
    #: otherwise fail after N busy timeouts, not one.
    queue_timeout = 30.0
    #: Write transactions between two checkpoints run by a thread of their
    #: own (``Checkpointer``, ``single_writer`` only), off every write's
    #: path; None: the database sees to its checkpoints itself.
    checkpoint_every: int | None = None
    #: Seconds ``open_catalog`` keeps trying to lock a database it found
    #: locked past the busy timeout while its schema is older than the
    #: code's (another process upgrading it, one transaction that may copy
    #: tables for minutes); 0: it does not (PostgreSQL's migrations wait
    #: for each other on a lock without a time limit).
    upgrade_wait = 0.0

    def sql(self, text: str) -> str:
        return text

    def connect(self) -> Any:
        raise NotImplementedError

    def connect_inline(self) -> Any:
        """A connection for reads in the reactor thread: one that reports a
        busy database at once instead of waiting (``inline_reads`` only)."""
        raise NotImplementedError

    def begin(self, conn: Any, write: bool, durable: bool = True) -> Any:
        """Start a transaction; return a cursor.  ``durable=False`` (a write
        nobody is acknowledged for) may skip the wait for the disk at its
        commit; a later durable commit makes it durable too."""
        raise NotImplementedError

    def end(self, conn: Any, durable: bool) -> None:
        """After a transaction ended (committed or not): undo what ``begin``
        changed on the connection for ``durable=False``."""

    def no_wait(self, conn: Any, on: bool) -> None:
        """Make ``conn`` never wait (``on``): report a locked database at
        once, and do no maintenance in a commit that can wait for the
        disk; or be as it was (``inline_writes`` only)."""
        raise NotImplementedError

    def commit(self, conn: Any, cursor: Any) -> None:
        raise NotImplementedError

    def rollback(self, conn: Any, cursor: Any) -> None:
        raise NotImplementedError

    def is_unique_violation(self, error: BaseException) -> bool:
        raise NotImplementedError

    def is_retryable(self, error: BaseException) -> bool:
        raise NotImplementedError

    def is_busy(self, error: BaseException) -> bool:
        """Whether ``error`` means the database stayed locked too long."""
        return False

    def is_full(self, error: BaseException) -> bool:
        """Whether ``error`` means the database's disk is full."""
        return False

    def connection_lost(self, conn: Any, error: BaseException | None = None) -> bool:
        """Whether ``conn`` is unusable (server restarted, network cut), as
        the connection shows it or as ``error``, raised on it, says."""
        return False

    def lock_rows(self, tx: Tx, table: str, key: str, values: list[Any]) -> None:
        pass

    def lock_global(self, tx: Tx, key: int) -> None:
        pass

    def lift_statement_timeout(self, tx: Tx) -> None:
        """Lift the database's limit on one statement's run time for the
        rest of ``tx`` (a no-op where there is none, as on SQLite)."""

    def prepare(self, tx: Tx) -> None:
        """Per-database start-up work inside the migration transaction."""

    def migrated(self) -> None:
        """After a migration changed the schema, in its own connection:
        give back what the migration's transaction alone needed."""

    def checkpoint(self, conn: Any, last: bool) -> tuple[int, int]:
        """Copy what the database's log holds into its main file, waiting
        for no reader or writer (``checkpoint_every`` only); return the
        pages in the log and how many of them are copied now.  ``last``:
        no pass follows this one before more writes."""
        raise NotImplementedError

    def changes(self, conn: Any) -> int:
        """A count that grows with every row ``conn`` changed: a
        transaction that left it as it was may have written nothing to
        the log (``inline_writes`` only)."""
        raise NotImplementedError

    def log_generation(self) -> Any:
        """A value that changes whenever the log begins again from its
        start (``checkpoint_every`` only)."""
        raise NotImplementedError


class WriterThread(QueueRunner):
    """One thread running the writes of a ``single_writer`` backend, in the
    order they come (``run``).

    A queue-fed thread (``wsstorage.threadwork``), not a ThreadPool of
    one: a small FTP STOR waits for two writes (its start and its
    commit), and a round trip through an idle pool cost about 90 us here,
    through the queue 40.  A result the reactor refuses (shutting down)
    is logged; the writes after it still run.
    """

    def __init__(self, reactor: Any, name: str) -> None:
        super().__init__(reactor, "catalog writer")
        self._thread = _daemon_thread(target=self.work, name=name)
        self._thread.start()

    def stop(self) -> None:
        """Let the writes queued so far run, then end the thread."""
        self.end_one()
        if self._thread is not threading.current_thread():
            self._thread.join()


class Checkpointer:
    """Runs the database's checkpoints in a thread of its own, on a
    connection of its own, once every ``backend.checkpoint_every`` write
    transactions (``wrote``, called by the single writer thread).

    SQLite checkpoints itself from the commit that finds its log past
    ``wal_autocheckpoint`` pages: that commit (a small STOR's start or its
    commit, one in about 33) then copies the log's pages into the database
    file and fsyncs it before it returns, 0.8 ms on a catalog of a few
    thousand files and 7 ms on one of 200,000 here, while every write
    queued behind it waits.  Here a commit only wakes this thread; the
    checkpoint runs beside the writes (SQLite lets a checkpoint and a
    writer work at once).  Nothing about durability changes: a commit is
    durable in the log, a checkpoint only copies pages already durable
    there, and the log is reused only once the database file holding
    them is synced.

    The log begins again from its start only at a write transaction that
    begins after a pass copied all of it.  A pass that a commit overtook
    is run again at once (up to ``PASSES`` passes); and after a pass, the
    next write wakes the thread again to see whether the log began again
    (``Backend.log_generation``), copying what that write added if not (up
    to ``RETRIES`` times).  The backend's own automatic checkpoint stays as
    a backstop for a log that still grows: writes back to back, a reader
    that holds an old snapshot.

    The write that begins the log again syncs its new header, even one
    whose commit does not sync: such a write must not run in the reactor
    thread (``Runner._write_now``).  So from the start of each pass until
    a write of the writer thread that began after the pass ended wrote to
    the log (``wrote``), the log "may begin again" (``may_restart``)
    unless the pass left some of it uncopied; and a write in the reactor
    thread holds ``inline`` (never waited for: taken, the write goes to
    the writer) which a pass holds throughout, so no pass can copy the
    whole log under it.
    Not covered: the backend's own checkpoint in a writer-thread commit
    (the backstop, past thousands of pages) may copy the whole log too;
    the next write, if in the reactor thread, then syncs the new header.
    """

    PASSES = 2
    RETRIES = 3

    def __init__(self, backend: Backend, name: str) -> None:
        self._backend = backend
        self._every = backend.checkpoint_every or 1
        self._writes = 0
        self._again = False  # wake at the next write, not the Nth
        self._wake = threading.Event()
        self._stopping = False
        self._conn: Any = None
        self._watching: Any = None  # the log's generation after a pass
        self._retries = 0
        self._failing: str | None = None
        #: Passes run, how often the log was seen to begin again, and how
        #: many wakes were seen to (``wait_cycles``).
        self.passes = 0
        self.restarts = 0
        self.cycles = 0
        self._cycled = threading.Condition()
        #: Held by a pass, and by a write in the reactor thread.
        self.inline = threading.Lock()
        #: Under ``_state``: passes begun and ended (``epoch``), and whether
        #: the next write may begin the log again (not known at first).
        self._state = threading.Lock()
        self._epoch = 0
        self.may_restart = True
        self._thread = _daemon_thread(target=self._work, name=name)
        self._thread.start()

    def epoch(self) -> int:
        """Taken by the writer thread before a write, for ``wrote``."""
        return self._epoch

    def wrote(self, since: int | None = None) -> None:
        """One more write transaction committed (by the writer thread, or
        in the reactor thread holding its lock: ``Runner._write_now``).
        ``since``: the writer thread's write wrote to the log, and began
        at this ``epoch``: if no pass ran meanwhile, the log has frames no
        pass copied (its own), so it cannot begin again before a pass."""
        if since is not None:
            with self._state:
                if since == self._epoch:
                    self.may_restart = False
        self._writes += 1
        if self._again or self._writes >= self._every:
            self._again = False
            self._writes = 0
            self._wake.set()

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            self._checkpoint()
            with self._cycled:
                self.cycles += 1
                self._cycled.notify_all()
        self._close()

    def wait_cycles(self, cycles: int, timeout: float) -> bool:
        """Wait until ``cycles`` wakes were seen to (for tests and
        benchmarks); False if ``timeout`` seconds passed first."""
        with self._cycled:
            return self._cycled.wait_for(lambda: self.cycles >= cycles, timeout)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = self._backend.connect()
            # Woken by the write after a pass: if it began the log again,
            # nothing is left to copy for now.
            watching = self._watching
            if watching is not None and self._backend.log_generation() != watching:
                self.restarts += 1
                self._watching, self._retries = None, 0
                return
            with self.inline:
                self._passes()
            # Watch the next write (and a few more, as long as writes
            # overtake the passes) begin the log again.
            if self._retries < self.RETRIES:
                self._retries += 1
                self._watching = self._backend.log_generation()
                self._again = True
            else:
                self._watching, self._retries = None, 0
        except Exception as e:
            # The writes go on: the next wake tries again (on a new
            # connection), and the backend's own checkpoint still bounds
            # the log meanwhile.  Logged once per kind of failure.
            self._close()
            self._watching, self._retries = None, 0
            reason = f"{type(e).__name__}: {e}"
            if reason != self._failing:
                log.warn("catalog checkpoint failed: {reason}", reason=reason)
            self._failing = reason
            return
        if self._failing is not None:
            log.info("catalog checkpoints work again")
            self._failing = None

    def _passes(self) -> None:
        """Up to ``PASSES`` passes, holding ``inline``."""
        with self._state:
            self._epoch += 1
            self.may_restart = True
        whole = True  # a pass that failed may have copied it all
        try:
            for n in range(self.PASSES):
                self.passes += 1
                pages, copied = self._backend.checkpoint(self._conn, n + 1 == self.PASSES)
                whole = copied >= pages
                if whole:
                    break
        finally:
            with self._state:
                self._epoch += 1
                self.may_restart = self.may_restart and whole

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def stop(self) -> None:
        """End the thread once the pass it is running (if any) is done."""
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class Runner:
    """Runs transactions in a private thread pool, one connection per thread.

    A transaction function gets a ``Tx`` and runs entirely in one worker
    thread; it is retried from the start when the database reports a
    deadlock or serialisation failure, so it must have no side effects
    outside the database.
    """

    def __init__(self, reactor: Any, backend: Backend, threads: int = 4) -> None:
        self.reactor = reactor
        self.backend = backend
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name=f"catalog-{backend.name}")
        # Daemon threads: a process whose catalog was never closed (a crash
        # path, a shutdown step that timed out) must still exit instead of
        # waiting forever at interpreter exit; an interrupted transaction is
        # rolled back by the database, as after any crash.
        self._pool.threadFactory = _daemon_thread
        self._pool.start()
        self._writer: WriterThread | None = None
        if backend.single_writer:
            self._writer = WriterThread(reactor, f"catalog-{backend.name}-w")
        self._checkpointer: Checkpointer | None = None
        if self._writer is not None and backend.checkpoint_every:
            self._checkpointer = Checkpointer(backend, f"catalog-{backend.name}-ckpt")
        self._closed = False
        self._inline: Any = None  # the reactor thread's connection (read_now)
        #: The writer thread's connection once it made one, and the lock
        #: it holds while it uses it: an unsynced write may borrow both in
        #: the reactor thread while the writer is idle (``_write_now``).
        self._writer_conn: Any = None
        self._writer_lock = threading.Lock()
        #: Writes handed to the writer thread whose results the reactor
        #: has not yet seen (under ``_lock``: any thread may queue one).
        self._writes_out = 0

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.backend.connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _forget(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except Exception:
            pass

    def run_sync(self, fn: Callable[[Tx], T], write: bool = True, durable: bool = True) -> T:
        """Run ``fn`` in a transaction in the calling thread."""
        conn = self._connect()
        try:
            return self._attempts(conn, fn, write, durable)
        finally:
            conn = getattr(self._local, "conn", None)
            if not durable and conn is not None and not self.backend.connection_lost(conn):
                self.backend.end(conn, durable)

    def _connect(self) -> Any:
        try:
            return self._connection()
        except Exception as e:
            # The server is down or the file cannot be opened: no
            # transaction began, and the next call tries to connect again.
            raise self._unusable(e) from e

    def _attempts(self, conn: Any, fn: Callable[[Tx], T], write: bool, durable: bool) -> T:
        retries = reconnects = 0
        while True:
            cursor = None
            committing = False
            try:
                # begin() talks to the database too (BEGIN, SET LOCAL): a
                # connection found dead there is forgotten like any other.
                cursor = self.backend.begin(conn, write, durable)
                result = fn(Tx(self.backend, cursor))
                committing = True
                self.backend.commit(conn, cursor)
                return result
            except BaseException as e:
                lost = self.backend.connection_lost(conn, e)
                if lost:
                    self._forget(conn)
                # Lost before the commit was sent, or by the ROLLBACK of a
                # failed transaction (the server ended it meanwhile):
                # nothing took effect, so the transaction runs again on a
                # new connection (a pooled connection outlived a server
                # restart, or the server ended it), and its own answer (a
                # 404, a retried deadlock) is given, not an outage's.  Lost
                # in the commit: it may have reached the server, so it is
                # never run again.
                if lost or not self._rolled_back(conn, cursor):
                    if (lost and committing) or reconnects >= MAX_RECONNECTS:
                        raise CatalogUnavailable(f"{self.backend.name}: {e}") from e
                    reconnects += 1
                    conn = self._connect()
                    continue
                if retries + 1 < MAX_ATTEMPTS and self.backend.is_retryable(e):
                    retries += 1
                    continue
                if self.backend.is_busy(e) or self.backend.is_full(e):
                    raise self._unusable(e) from e
                raise

    def _rolled_back(self, conn: Any, cursor: Any) -> bool:
        """Roll back the failed transaction on ``conn``; False if the
        server ended the connection meanwhile (a restart,
        ``pg_terminate_backend``): the ROLLBACK then fails ("consuming
        input failed: server closed the connection"), which was raised as
        it was (HTTP 500).  Nothing of the transaction took effect, but its
        connection is dead: it is dropped, and the caller runs the
        transaction again on a new one."""
        try:
            self.backend.rollback(conn, cursor)
        except Exception as e:
            if not self.backend.connection_lost(conn, e):
                raise
            self._forget(conn)
            return False
        return True

    def _unusable(self, error: BaseException) -> CatalogFull | CatalogUnavailable:
        """The catalog error a client is answered for a database that could
        not run a transaction: full, or (locked, unreachable) unavailable."""
        cls = CatalogFull if self.backend.is_full(error) else CatalogUnavailable
        # The driver's reason is its first line; psycopg adds hints below it.
        lines = str(error).strip().splitlines()
        return cls(f"{self.backend.name}: {lines[0] if lines else type(error).__name__}")

    def run(
        self,
        fn: Callable[[Tx], T],
        write: bool = True,
        durable: bool = True,
        small: bool = False,
    ) -> Deferred[T]:
        """Run ``fn`` in a transaction in the pool (a write: in the writer
        thread, for a ``single_writer`` backend); fire with its result.
        ``durable=False``: see ``Backend.begin``.  ``small``: the caller
        vouches that ``fn`` writes a few rows, whatever the database holds
        (a fresh upload's start, not an APPE's that copies every extent of
        the file), so that unsynced it may run in the reactor thread
        (``_write_now``)."""
        if self._closed:
            return fail(CatalogClosed())
        if write and self._writer is not None:
            if small and not durable and self.backend.inline_writes and threadable.isInIOThread():
                done = self._write_now(fn)
                if done is not None:
                    return done
            with self._lock:
                self._writes_out += 1
            queued = self._writer.run(self._run_queued, monotonic(), fn, durable)
            # The count drops once the writer's result reached the reactor,
            # not when the caller cancels its Deferred (still queued, or
            # running): a write in the reactor thread meanwhile would run
            # before it.  A cancelled caller's result is dropped here.
            d: Deferred[T] = Deferred()
            queued.addBoth(self._write_returned).addCallbacks(d.callback, d.errback)
            return d
        return deferToThreadPool(self.reactor, self._pool, self.run_sync, fn, write, durable)

    def _write_returned(self, result: Any) -> Any:
        with self._lock:
            self._writes_out -= 1
        return result

    def _run_queued(self, queued: float, fn: Callable[[Tx], T], durable: bool) -> T:
        """A write in the single writer thread, unless it waited for it
        longer than ``queue_timeout`` (behind writes each waiting out a
        lock another process holds): then it fails at once, as the write
        ahead of it did."""
        waited = monotonic() - queued
        if waited > self.backend.queue_timeout:
            raise CatalogUnavailable(
                f"{self.backend.name}: a write waited {waited:.1f}s for the writer thread"
            )
        ckpt = self._checkpointer
        with self._writer_lock:
            conn = self._connect()  # the connection run_sync uses
            since = ckpt.epoch() if ckpt is not None else None
            before = self.backend.changes(conn) if ckpt is not None else None
            try:
                result = self.run_sync(fn, True, durable)
            finally:
                self._writer_conn = getattr(self._local, "conn", None)
            if ckpt is not None:
                # On the same connection, a grown count of changes means
                # this write wrote to the log (the log's restart, if any,
                # was its own, here).
                wrote = (
                    self._writer_conn is conn
                    and before is not None
                    and self.backend.changes(conn) > before
                )
                ckpt.wrote(since if wrote else None)
        return result

    def _write_now(self, fn: Callable[[Tx], T]) -> Deferred[T] | None:
        """Run the small unsynced write ``fn`` at once in the reactor
        thread, on the writer thread's connection, when the backend allows
        it (``inline_writes``: SQLite) and the writer is idle; None when it
        cannot (no writer connection yet, the writer busy, a checkpoint
        pass running or the log possibly beginning again, the database
        locked elsewhere, the connection lost): the caller queues it as
        usual.

        A small STOR's start (``start_upload``, whose commit waits for no
        disk) is such a write: a few hundred microseconds of SQLite, where
        the round trip through the writer thread (its wake-up, the GIL
        passed back and forth, the reactor's wake-up for the result) cost
        about as much again before the 150 reply could go.  Nothing is
        reordered: it runs only when every write handed to the writer has
        returned (its result seen here), and on the writer's connection,
        so neither connection's page cache is dropped for the other's
        writes.  It never waits for the disk nor a lock: the connection
        reports a locked database at once meanwhile and checkpoints
        nothing itself (``Backend.no_wait``); a locked database sends the
        write to the writer thread, which waits as usual; and a write that
        would begin the log again (whose new header SQLite syncs, even
        unsynced) goes there too (``Checkpointer.may_restart``).  It never
        reconnects either: the writer thread does, for the queued write.
        """
        conn, ckpt = self._writer_conn, self._checkpointer
        if conn is None or ckpt is None:
            return None
        with self._lock:
            if self._writes_out:
                return None
        if not self._writer_lock.acquire(blocking=False):
            return None
        try:
            if not ckpt.inline.acquire(blocking=False):
                return None  # a pass is running: it may copy the whole log
            try:
                if ckpt.may_restart:
                    return None
                return self._write_once(conn, fn)
            finally:
                ckpt.inline.release()
        finally:
            self._writer_lock.release()

    def _write_once(self, conn: Any, fn: Callable[[Tx], T]) -> Deferred[T] | None:
        """One attempt of ``_write_now``, holding the writer's lock."""
        cursor = None
        committing = False
        try:
            self.backend.no_wait(conn, True)
            cursor = self.backend.begin(conn, True, False)
            result = fn(Tx(self.backend, cursor))
            committing = True
            self.backend.commit(conn, cursor)
        except Exception as e:
            if self.backend.connection_lost(conn, e):
                # The writer thread finds it lost and reconnects, for the
                # queued write; one whose commit may have reached the
                # database is never run again.
                if committing:
                    return fail(CatalogUnavailable(f"{self.backend.name}: {e}"))
                return None
            self.backend.rollback(conn, cursor)
            if self.backend.is_busy(e):
                return None
            return fail(self._unusable(e) if self.backend.is_full(e) else e)
        finally:
            # The writer thread finds its connection as it left it.
            if not self.backend.connection_lost(conn):
                try:
                    self.backend.end(conn, False)
                finally:
                    self.backend.no_wait(conn, False)
        # It wrote after what the writer wrote last, so the log cannot
        # begin again because of it; it only counts towards the next pass.
        assert self._checkpointer is not None
        self._checkpointer.wrote()
        return succeed(result)

    def read_now(self, fn: Callable[[Tx], T]) -> Deferred[T]:
        """Run the read-only ``fn`` at once in the reactor thread when the
        backend allows it (``inline_reads``), else in the pool like ``run``.

        A lookup of a few rows takes SQLite about 40 us; handing it to a
        pool thread and its result back costs 100 us idle and 300 us and
        more on a busy front end, paid by every RETR, SIZE and CWD.  A
        database that is busy (a reader never waits in WAL mode, but a
        recovery can make it) is not waited for here: the read goes to the
        pool, which waits as usual.
        """
        if self._closed:
            return fail(CatalogClosed())
        if not self.backend.inline_reads or not threadable.isInIOThread():
            return self.run(fn, write=False)
        conn, cursor = self._inline, None
        try:
            # Opening the connection and BEGIN can find the database busy
            # too: that read goes to the pool like any other.
            if conn is None:
                conn = self._inline = self.backend.connect_inline()
                with self._lock:
                    self._connections.append(conn)
            cursor = self.backend.begin(conn, False)
            result = fn(Tx(self.backend, cursor))
            self.backend.commit(conn, cursor)
        except Exception as e:
            if conn is not None:
                self.backend.rollback(conn, cursor)
            if self.backend.is_busy(e):
                return self.run(fn, write=False)
            return fail(e)
        return succeed(result)

    def call(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn`` in the pool: for work such as password hashing that
        must not run on the reactor thread.  Writes go through ``run``."""
        if self._closed:
            return fail(CatalogClosed())
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the pool (waiting for running transactions) and close every
        connection."""
        if self._closed:
            return
        self._closed = True
        self._pool.stop()
        if self._writer is not None:
            self._writer.stop()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except Exception:
                    pass
            self._connections.clear()
        self._inline = None
