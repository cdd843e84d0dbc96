"""A queue-fed thread runner: calls run in threads of our own, each result
handed back to the reactor.

The reactor's ThreadPool (``deferToThread``) does, for each call, Python
work on both sides under the GIL (its team's coordinator, a log context,
the hand-off to a worker and back).  Where a call is on the path of every
small file (the catalog's single writer, a storage server's in-process
puts: ``wsfront.catalog._db.WriterThread``, ``wsstorage.inprocess``), a
queue and ``callFromThread`` do the same for about half the cost: a round
trip through an idle pool took about 90 us, through a queue 40.

``QueueRunner`` holds the queue; whoever owns it starts the threads that
run ``work`` (how many, and for how long, is theirs to say) and ends them
with ``end_one``.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

T = TypeVar("T")


class QueueRunner:
    """Calls queued for the threads running ``work``, in the order given.

    ``what`` names the calls in the log ("catalog writer"): a result the
    reactor refuses (it is shutting down) is logged, and the thread goes
    on with the next call.
    """

    def __init__(self, reactor: Any, what: str) -> None:
        self._reactor = reactor
        self._what = what
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Fire (in the reactor thread) with ``fn(*args)``, run by one of
        the threads after the calls queued before it."""
        d: Deferred[T] = Deferred()
        self._queue.put((d, fn, args))
        return d

    def end_one(self) -> None:
        """End one thread, once it has taken the calls queued before this."""
        self._queue.put(None)

    def work(self, idle: float | None = None, on_idle: Callable[[], None] | None = None) -> None:
        """A thread's loop: run calls until told to end (``end_one``).
        After ``idle`` seconds without a call (None: never), ``on_idle`` is
        called in the reactor thread, and the thread goes on waiting: the
        reactor decides whether it ends."""
        call = self._reactor.callFromThread
        get = self._queue.get
        while True:
            try:
                item = get(timeout=idle)
            except queue.Empty:
                call(on_idle)
                continue
            if item is None:
                return
            d, fn, args = item
            try:
                result = fn(*args)
            except BaseException:
                outcome = (d.errback, Failure())
            else:
                outcome = (d.callback, result)
            try:
                call(*outcome)
            except BaseException:
                # The reactor is gone (shutting down): this call's caller
                # will never hear, but the later ones still run, and
                # whoever ends the thread still finds it to join.
                log.failure("{what} could not hand back a result", what=self._what)
