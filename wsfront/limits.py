"""Limits that keep one client from taking the service away from others.

Shared by FTP and HTTP, so both protocols count the same way:

``LoginThrottle``
    Failed logins counted in a sliding window per client address, per user
    (from any address) and per (user, address) pair.  Once a count reaches
    its limit, further attempts are refused *before* the password is checked
    (no scrypt is paid, and the answer does not depend on whether the user
    exists, so it leaks nothing), until the oldest counted failure ages out.
    The per-user limit is higher than the per-address one: a distributed
    guesser is slowed down, but one address cannot lock a user out of every
    other address for long.  A successful login clears only its own pair.

``ConnectionLimits``
    Open connections per client address and in total, for one listener.

Memory is bounded: at most ``max_tracked`` keys are remembered, the least
recently touched forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime


class _Window:
    """Timestamps of recent events per key, within ``window`` seconds."""

    def __init__(self, clock: IReactorTime, window: float, max_tracked: int) -> None:
        self._clock = clock
        self._window = window
        self._max = max_tracked
        self._events: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def _recent(self, key: Hashable) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = self._clock.seconds() - self._window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def count(self, key: Hashable) -> int:
        events = self._recent(key)
        return len(events) if events else 0

    def wait(self, key: Hashable, limit: int) -> float | None:
        """Seconds until ``key`` is under ``limit`` again; None when it is."""
        events = self._recent(key)
        if events is None or len(events) < limit:
            return None
        # The (len - limit + 1)-th oldest event must age out first.
        expires = events[len(events) - limit] + self._window
        return max(expires - self._clock.seconds(), 0.001)

    def add(self, key: Hashable) -> None:
        events = self._recent(key)
        if events is None:
            events = self._events[key] = deque()
            while len(self._events) > self._max:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        events.append(self._clock.seconds())
        # A key never needs more timestamps than the largest limit asks about.
        while len(events) > 1024:
            events.popleft()

    def clear(self, key: Hashable) -> None:
        self._events.pop(key, None)


class LoginThrottle:
    """``retry_after(user, address)`` before checking a password; then
    ``failed`` or ``succeeded``.  Addresses are host strings (the real
    client's, also behind a PROXY-protocol balancer)."""

    def __init__(
        self,
        clock: IReactorTime,
        per_address: int = 10,
        per_user: int = 50,
        per_pair: int | None = None,
        window: float = 300.0,
        max_tracked: int = 100_000,
    ) -> None:
        self.per_address = per_address
        self.per_user = per_user
        self.per_pair = per_pair if per_pair is not None else per_address
        self._failures = _Window(clock, window, max_tracked)
        self.refused = 0
        """Attempts refused by the throttle (for metrics and tests)."""

    def retry_after(self, user: str, address: str | None) -> float | None:
        """Seconds the client should wait, or None when it may try now."""
        waits = [self._failures.wait(("user", user), self.per_user)]
        if address is not None:
            waits.append(self._failures.wait(("address", address), self.per_address))
            waits.append(self._failures.wait(("pair", user, address), self.per_pair))
        longest = max((w for w in waits if w is not None), default=None)
        if longest is not None:
            self.refused += 1
        return longest

    def failed(self, user: str, address: str | None) -> None:
        self._failures.add(("user", user))
        if address is not None:
            self._failures.add(("address", address))
            self._failures.add(("pair", user, address))

    def succeeded(self, user: str, address: str | None) -> None:
        if address is not None:
            self._failures.clear(("pair", user, address))


class ConnectionLimits:
    """Admission of connections to one listener: ``admit(host)`` returns None
    (admitted; call ``release(host)`` when the connection ends) or the reason
    it was refused, ready for a reply ("from your address", "in total")."""

    def __init__(self, per_address: int | None = 256, total: int | None = 4096) -> None:
        self.per_address = per_address
        self.total = total
        self.open = 0
        self._by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, host: str | None) -> str | None:
        if self.total is not None and self.open >= self.total:
            self.refused += 1
            return "in total"
        if host is not None and self.per_address is not None:
            if self._by_address.get(host, 0) >= self.per_address:
                self.refused += 1
                return "from your address"
            self._by_address[host] = self._by_address.get(host, 0) + 1
        self.open += 1
        return None

    def release(self, host: str | None) -> None:
        self.open = max(self.open - 1, 0)
        if host is not None and host in self._by_address:
            left = self._by_address[host] - 1
            if left > 0:
                self._by_address[host] = left
            else:
                del self._by_address[host]

    def count(self, host: str) -> int:
        return self._by_address.get(host, 0)
