"""A byte-rate budget for background copies, so client transfers keep their speed.

Repair and rebalance copy whole blobs storage-to-storage; the front end
cannot pace bytes it never sees, so it paces *when each copy starts*: a copy
of ``n`` bytes may start once the budget allows ``n`` more bytes at
``bytes_per_second`` (a token bucket with a burst of one second).  Time comes
from an injected clock, so tests drive it with ``task.Clock``.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class Throttle:
    """Token bucket over bytes; ``None`` means unlimited."""

    def __init__(self, clock: IReactorTime, bytes_per_second: float | None) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive or None")
        self._clock = clock
        self._rate = bytes_per_second
        self._available = float(bytes_per_second or 0)
        self._stamp = clock.seconds()

    def _refill(self) -> None:
        assert self._rate is not None
        now = self._clock.seconds()
        self._available = min(self._rate, self._available + (now - self._stamp) * self._rate)
        self._stamp = now

    def reserve(self, nbytes: int) -> Deferred:
        """Fire when ``nbytes`` may be spent.  A request larger than the
        burst is allowed once the bucket is full and leaves it in debt, so a
        big blob waits in proportion to its size instead of forever."""
        if self._rate is None or nbytes <= 0:
            return succeed(None)
        self._refill()
        want = min(float(nbytes), self._rate)
        if self._available >= want:
            self._available -= nbytes
            return succeed(None)
        delay = (want - self._available) / self._rate
        self._available -= nbytes
        return task.deferLater(self._clock, delay, lambda: None)
