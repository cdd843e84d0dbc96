"""Whether a storage server's disk still takes writes, for its health answers.

Free space and a blob count, all a health answer used to carry, say nothing
of a disk remounted read-only or a data directory removed under the running
server: front ends kept placing every new write on such a server and each
upload committed on one replica fewer.  ``DiskCheck`` runs the store's
``disk_problem`` (a small file created, written, fsync'd and removed; in a
thread) at most every ``ttl`` seconds, whatever the number of front ends
probing, and answers from its last verdict meanwhile, so a health probe
never waits on a slow fsync; only the very first one waits for a verdict.
A probe that has not come back for ``stuck`` seconds is itself the problem
(a disk that hangs writes takes none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Seconds a verdict is reused before the disk is probed again.
DISK_CHECK_TTL = 5.0
#: Seconds after which a probe still running is reported as the problem.
DISK_CHECK_STUCK = 30.0


class DiskCheck:
    """The cached verdict of ``probe`` (``None``: writable; else why not)."""

    def __init__(
        self,
        clock: Any,
        probe: Callable[[], str | None] | None,
        run_blocking: Callable[..., defer.Deferred],
        ttl: float = DISK_CHECK_TTL,
        stuck: float = DISK_CHECK_STUCK,
    ) -> None:
        self._clock = clock
        self._probe = probe
        self._run_blocking = run_blocking
        #: Seconds a verdict is reused (a test may set 0: probe every time).
        self.ttl = ttl
        self._stuck = stuck
        self._verdict: str | None = None
        self._checked_at: float | None = None
        self._running_since: float | None = None
        self._waiting: list[defer.Deferred] = []

    def problem(self) -> defer.Deferred:
        """Fire with why the disk takes no writes now, or None."""
        if self._probe is None:
            return defer.succeed(None)
        now = self._clock.seconds()
        due = self._checked_at is None or now - self._checked_at >= self.ttl
        if self._running_since is None and due:
            self._start(now)
        since = self._running_since
        if since is not None and now - since >= self._stuck:
            return defer.succeed(f"a write probe of the data directory hangs ({now - since:.0f} s)")
        if self._checked_at is None:
            d: defer.Deferred = defer.Deferred()
            self._waiting.append(d)
            return d
        return defer.succeed(self._verdict)

    def _start(self, now: float) -> None:
        self._running_since = now
        d = self._run_blocking(self._probe)
        d.addErrback(self._probe_failed)
        d.addCallback(self._done)

    def _probe_failed(self, f: Failure) -> str:
        log.failure("the write probe of the data directory failed", f)
        return f"the write probe of the data directory failed: {f.type.__name__}"

    def _done(self, verdict: str | None) -> None:
        if verdict != self._verdict:
            if verdict is not None:
                log.warn("the data directory takes no writes: {why}", why=verdict)
            elif self._checked_at is not None:
                log.info("the data directory takes writes again")
        self._verdict = verdict
        self._checked_at = self._clock.seconds()
        self._running_since = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(verdict)
