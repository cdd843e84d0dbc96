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
