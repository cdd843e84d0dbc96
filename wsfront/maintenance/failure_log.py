"""Log a periodic task's failures once per change, not once per run.

The maintenance tick runs every 2 seconds: while the catalog is down or
its disk full, each tick fails the same way, and a critical traceback each
time buries everything else in the log.  ``FailureLog`` logs the first
failure of a kind (one warn line for an outage the operator fixes outside
wsfs, a traceback for anything unexpected), then stays quiet while the same
kind repeats, with a reminder every ``remind_every`` seconds, and says
once when the task works again.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfront.catalog.errors import CatalogFull, CatalogUnavailable

log = Logger()

OUTAGES = (CatalogUnavailable, CatalogFull)
"""Failures that are a state of the service around us, not a bug here: one
line each, no traceback."""


class FailureLog:
    """The log of one periodic task's failures (``what``: "maintenance tick")."""

    def __init__(self, clock: IReactorTime, what: str, remind_every: float = 600.0) -> None:
        self._clock = clock
        self.what = what
        self.remind_every = remind_every
        self._kind: type[BaseException] | None = None
        self._count = 0
        self._since = 0.0
        self._reminded = 0.0

    def failed(self, failure: Failure) -> None:
        """One run failed: logged if its kind of failure is new (or a
        reminder is due), counted otherwise."""
        kind = type(failure.value)
        now = self._clock.seconds()
        if kind is not self._kind:
            self._kind, self._count, self._since, self._reminded = kind, 1, now, now
            if isinstance(failure.value, OUTAGES):
                log.warn(
                    "{what} failed: {kind}: {err} (logged again when this changes)",
                    what=self.what,
                    kind=kind.__name__,
                    err=failure.value,
                )
            else:
                log.failure(
                    "{what} failed (logged again when this changes)", failure, what=self.what
                )
            return
        self._count += 1
        if now - self._reminded >= self.remind_every:
            self._reminded = now
            log.warn(
                "{what} still failing: {kind}: {err} ({count} times in {seconds:.0f}s)",
                what=self.what,
                kind=kind.__name__,
                err=failure.value,
                count=self._count,
                seconds=now - self._since,
            )

    def succeeded(self) -> None:
        """One run worked: said once after failures."""
        if self._kind is None:
            return
        log.info(
            "{what} works again after {count} failures ({kind})",
            what=self.what,
            count=self._count,
            kind=self._kind.__name__,
        )
        self._kind, self._count = None, 0
