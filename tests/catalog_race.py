"""Helpers for race tests: run catalog transactions in real threads, on
separate connections, released together by a barrier or interleaved by
events.  Nothing is mocked: the database decides who wins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

TIMEOUT = 30.0


class Outcome:
    """What one racer got: a result or an exception."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None


def race(calls: list[Callable[[], Any]]) -> list[Outcome]:
    """Start every call in its own thread, all released at once."""
    barrier = threading.Barrier(len(calls))
    outcomes = [Outcome() for _ in calls]

    def run(call: Callable[[], Any], outcome: Outcome) -> None:
        barrier.wait(TIMEOUT)
        try:
            outcome.result = call()
        except BaseException as e:
            outcome.error = e

    threads = [threading.Thread(target=run, args=pair) for pair in zip(calls, outcomes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a racer hung"
    return outcomes


def in_tx(catalog: Any, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """A call running ``fn(tx, *args)`` as one transaction on ``catalog``'s
    own connection in the calling thread."""
    return lambda: catalog._runner.run_sync(lambda tx: fn(tx, *args), write=True)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition with a deadline (for states only a database can
    report, such as "this backend is waiting for a row lock")."""
    done = threading.Event()
    for _ in range(3000):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def waiting_for_a_lock(url: str, pids: list[int]) -> Callable[[], bool]:
    """A check that the PostgreSQL backend ``pids[0]`` (once known) waits
    for a lock."""

    def check() -> bool:
        import psycopg

        if not pids:
            return False
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pids[0],)
            ).fetchone()
            return row is not None and row[0] == "Lock"

    return check


def blocked_behind(
    a: Any, b: Any, url: str, first: Callable[[Any], Any], then: Callable[[Any], Any]
) -> list[Outcome]:
    """Run ``first(tx)`` in a transaction on catalog ``a``; once it has
    returned, that transaction still open, run ``then(tx)`` in one on
    ``b``; A's commits only once B waits behind it: on PostgreSQL once B's
    backend is seen waiting for a lock (a row of A's), on SQLite at once
    (B's BEGIN IMMEDIATE itself waits for A's write lock).  The outcomes
    of A and B."""
    return _a_then_b(a, b, url, first, then, b_may_finish=False)


def behind_or_beside(
    a: Any, b: Any, url: str, first: Callable[[Any], Any], then: Callable[[Any], Any]
) -> list[Outcome]:
    """Like ``blocked_behind``, for a pair of transactions that should
    serialise but might not: A commits once B waits for a lock of A's or
    has committed beside it (on SQLite, once B started: its BEGIN IMMEDIATE
    waits).  A test then judges the database, not a timeout, whichever way
    they ran.  The outcomes of A and B."""
    return _a_then_b(a, b, url, first, then, b_may_finish=True)


def _a_then_b(
    a: Any,
    b: Any,
    url: str,
    first: Callable[[Any], Any],
    then: Callable[[Any], Any],
    b_may_finish: bool,
) -> list[Outcome]:
    """``blocked_behind`` and ``behind_or_beside``: with ``b_may_finish``,
    B committing beside A also lets A commit."""
    a_done, b_started, b_finished = threading.Event(), threading.Event(), threading.Event()
    postgres = url.startswith("postgresql")
    b_pids: list[int] = []

    def in_a(tx: Any) -> Any:
        result = first(tx)
        a_done.set()
        assert b_started.wait(TIMEOUT)
        if postgres:
            waiting = waiting_for_a_lock(url, b_pids)
            if b_may_finish:
                wait_until(lambda: b_finished.is_set() or waiting(), "B to wait for A or finish")
            else:
                wait_until(waiting, "B to wait for A's lock")
        return result

    def in_b() -> Any:
        assert a_done.wait(TIMEOUT)

        def run(tx: Any) -> Any:
            if postgres:
                b_pids.append(tx.value("SELECT pg_backend_pid() AS pid"))
                b_started.set()
            return then(tx)

        if not postgres:
            b_started.set()
        try:
            return b._runner.run_sync(run)
        finally:
            b_finished.set()

    return race([lambda: a._runner.run_sync(in_a), in_b])
