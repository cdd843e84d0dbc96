"""The threads that run a storage server's small ``put``s.

A ``put`` (``wsstorage.server.seal_put``) is on the path of every small
file, once per replica.  The reactor's ThreadPool (``run_blocking``) costs
each call Python on both sides under the GIL (its team's coordinator, a
log context, the hand-off to a worker and back); queue-fed threads
(``wsstorage.threadwork``) do the same for about half of that.  The wire
server's ``put`` and the in-process one (``wsstorage.inprocess``) both
run here, one ``PutThreads`` per server, their results handed back to the
reactor through one ``HandBack`` per reactor.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from wsstorage.threadwork import HandBack, QueueRunner

#: Threads at most that run the puts of one storage server at
#: once (``PutThreads``): the reactor thread pool's default maximum, which
#: ran them before.
PUT_THREADS = 10
#: Seconds a put thread waits for work before it ends (``PutThreads``).
PUT_IDLE = 10.0


class PutThreads(QueueRunner):
    """The threads that run one storage server's puts: the wire's
    (``StorageServerProtocol._op_put``) and the in-process ones
    (``wsstorage.inprocess``).

    Queue-fed threads (``wsstorage.threadwork``), as the catalog's single
    writer, not the reactor's ThreadPool (``run_blocking``), whose work
    for each call is Python run on both sides under the GIL: a small FTP
    STOR waits for one put per replica.  Up to PUT_THREADS threads,
    started as the puts running at once outnumber them; a thread left
    idle for PUT_IDLE seconds ends (when no put is running), so a
    server's threads do not outlive its use.  Stopped when the reactor
    shuts down, as its pool is: each thread first ends the put it runs; a
    put asked for after that goes to ``run_blocking``.
    """

    def __init__(self, factory: Any) -> None:
        super().__init__(factory.reactor, "put", hand_back(factory.reactor))
        self._fallback = factory.run_blocking
        self._name = factory.name
        #: The threads started (for ``stop`` to join), pruned as they end.
        self._threads: list[threading.Thread] = []
        #: Threads that take puts: started and not yet told to end (each
        #: ``end_one`` ends whichever thread takes it).
        self._workers = 0
        #: Puts given and not yet answered.  All three counts are the
        #: reactor thread's own.
        self._running = 0
        self._stopped = False
        self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Fire with ``fn(*args)``, run in one of the threads."""
        if self._stopped:
            return self._fallback(fn, *args)
        if self._workers < min(self._running + 1, PUT_THREADS):
            thread = threading.Thread(
                target=self.work,
                args=(PUT_IDLE, self._retire_one),
                name=f"put-{self._name}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError as e:  # "can't start new thread"
                if self._workers == 0:
                    return defer.fail(e)  # as the wire client's: never a raise
                # The threads already running take it in turn.
            else:
                self._workers += 1
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
        self._running += 1
        return QueueRunner.run(self, fn, *args).addBoth(self._answered)

    def _answered(self, result: Any) -> Any:
        self._running -= 1
        return result

    def _retire_one(self) -> None:
        """A thread was idle for PUT_IDLE: one thread ends, unless a put
        runs or waits (the end goes after any put queued later, and
        ``run`` starts a thread for that put: ``_workers`` counts only
        the threads not told to end)."""
        if not self._stopped and self._running == 0 and self._workers > 0:
            self._workers -= 1
            self.end_one()

    def stop(self) -> None:
        """End every thread once the puts given to it are done."""
        self._stopped = True
        for _ in self._threads:
            self.end_one()
        for thread in self._threads:
            thread.join()


_PUTS: weakref.WeakKeyDictionary[Any, PutThreads] = weakref.WeakKeyDictionary()
#: One HandBack per reactor, shared by every server's put threads: the
#: replicas of one upload are on different servers.
_HAND_BACKS: weakref.WeakKeyDictionary[Any, HandBack] = weakref.WeakKeyDictionary()


def hand_back(reactor: Any) -> HandBack:
    """The ``HandBack`` of ``reactor``'s put threads, made at first use."""
    shared = _HAND_BACKS.get(reactor)
    if shared is None:
        shared = _HAND_BACKS[reactor] = HandBack(reactor)
    return shared


def put_threads(factory: Any) -> PutThreads:
    """``factory``'s put threads (a ``StorageServerFactory``), made at its
    first put."""
    threads = _PUTS.get(factory)
    if threads is None:
        threads = _PUTS[factory] = PutThreads(factory)
    return threads


def made_put_threads(factory: Any) -> PutThreads | None:
    """``factory``'s put threads if a put made them, else None (asked at
    stop, which must not start threads only to end them)."""
    return _PUTS.get(factory)
