"""A queue-fed thread runner: calls run in threads of our own, each result
handed back to the reactor.

The reactor's ThreadPool (``deferToThread``) does, for each call, Python
work on both sides under the GIL (its team's coordinator, a log context,
the hand-off to a worker and back).  Where a call is on the path of every
small file (the catalog's single writer, a storage server's in-process
puts: ``wsfront.catalog._db.WriterThread``, ``wsstorage.putthreads``), a
queue and ``callFromThread`` do the same for about half the cost: a round
trip through an idle pool took about 90 us, through a queue 40.

``QueueRunner`` holds the queue; whoever owns it starts the threads that
run ``work`` (how many, and for how long, is theirs to say) and ends them
with ``end_one``.  ``HandBack`` gives the results of several runners'
threads to the reactor with one wake-up while it has not yet taken them.
"""

from __future__ import annotations

import queue
import threading
import weakref
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
    on with the next call.  Results go back through ``hand_back`` (a
    ``HandBack``; by default the reactor's ``callFromThread``).
    """

    def __init__(
        self, reactor: Any, what: str, hand_back: Callable[..., None] | None = None
    ) -> None:
        self._reactor = reactor
        self._what = what
        self._hand_back = hand_back
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
        call = self._hand_back or self._reactor.callFromThread
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
                # may never hear (a HandBack keeps it for its next call),
                # but the later ones still run, and whoever ends the
                # thread still finds it to join.
                log.failure("{what} could not hand back a result", what=self._what)


class HandBack:
    """Calls from threads to run in the reactor thread, as
    ``callFromThread`` runs them, in the order given, with one wake-up of
    the reactor for all those given before it took the first.

    Each ``callFromThread`` writes to the reactor's waker (a system call in
    the thread, and a turn of the reactor to read it).  The two replica
    puts of a small FTP STOR end about together (their journal flushes run
    at once), and the second paid both while the reactor had not yet
    taken the first's result; given here, it joins the first's.
    """

    def __init__(self, reactor: Any) -> None:
        # Weakly: a HandBack is kept per reactor in a WeakKeyDictionary
        # (``wsstorage.putthreads``), whose key a strong reference here
        # would keep alive for ever.  Its users hold the reactor anyway.
        self._reactor = weakref.ref(reactor)
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        #: Whether the reactor has been asked to run ``_run`` since it last
        #: took the calls: later calls join those.
        self._asked = False

    def __call__(self, f: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._calls.append((f, args))
            if self._asked:
                return  # the reactor is called already: it takes this one too
            self._asked = True
        try:
            reactor = self._reactor()
            if reactor is None:
                raise RuntimeError("the reactor is gone")
            reactor.callFromThread(self._run)
        except BaseException:
            # The reactor refused (shutting down): the calls stay queued,
            # this one and any given meanwhile (whose threads were told the
            # reactor was asked), and the next call asks again for all.
            with self._lock:
                self._asked = False
            raise

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._asked = False
        for f, args in calls:
            try:
                f(*args)
            except Exception:
                # As the reactor logs a call from a thread that raised; the
                # others still run.
                log.failure("a call handed back from a thread failed")
