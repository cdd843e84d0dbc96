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
    other address for long; and it does not apply at all to an address the
    user logged in from successfully before (so guessers elsewhere cannot
    lock out the user's usual machines).  A successful login clears only its
    own pair.  Attempts still being checked count as failures until they
    are decided (``begin``), so a burst of concurrent guesses cannot slip
    past the limit while the password checks run.

``ConnectionLimits``
    Open connections per client address (``AddressCounts``) and in total,
    for one listener.

``RateFloor``
    The least average rate at which a client must send what the server is
    waiting for (an HTTP request body), counted only over the time the
    server was reading: a client the server paused is never blamed.

Addresses are grouped as attackers get them: an IPv6 client counts by its
/64 (one subscriber's allocation), an IPv4-mapped IPv6 address as the IPv4
address.  Memory is bounded: at most ``max_tracked`` keys are remembered, the
least recently touched forgotten first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from wsfront.netaddr import canonical_ip


def address_key(host: str | None) -> str | None:
    """The key limits count a client address under (see the module doc)."""
    if host is None:
        return None
    try:
        address = canonical_ip(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Window:
    """Timestamps of recent events per key, within ``window`` seconds; a
    key keeps at most ``keep`` of them (the most any limit asks about)."""

    def __init__(
        self, clock: IReactorTime, window: float, max_tracked: int, keep: int = 1024
    ) -> None:
        self._clock = clock
        self._window = window
        self._max = max_tracked
        self._keep = keep
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
        while len(events) > self._keep:
            events.popleft()

    def remove_one(self, key: Hashable) -> None:
        """Forget the oldest event of ``key`` (an attempt that was decided)."""
        events = self._recent(key)
        if events:
            events.popleft()
            if not events:
                del self._events[key]

    def clear(self, key: Hashable) -> None:
        self._events.pop(key, None)


class LoginThrottle:
    """Before checking a password, ``admit(user, address)``: it fires with
    None to let the check run (then exactly one of ``failed``, ``succeeded``
    or ``abandoned``), or with the seconds the client should wait.  While
    attempts being checked fill what a key has left, a new attempt waits
    for them to be decided instead of being refused, so many parallel
    *correct* logins (a client opening several connections) all get in,
    while parallel guesses get no more checks than the limit.
    ``retry_after`` is the failures' answer alone, counting nothing.
    Addresses are host strings (the real client's, also behind a
    PROXY-protocol balancer)."""

    #: An attempt still undecided after this long stops counting (a caller
    #: that lost track of it must not throttle the address for good).
    INFLIGHT_SECONDS = 60.0
    #: Waiting attempts look again at least this often (undecided ones expire).
    RECHECK_SECONDS = 1.0

    def __init__(
        self,
        clock: IReactorTime,
        per_address: int = 10,
        per_user: int = 50,
        per_pair: int | None = None,
        window: float = 300.0,
        max_tracked: int = 100_000,
        trust_seconds: float = 30 * 86400.0,
    ) -> None:
        self.per_address = per_address
        self.per_user = per_user
        self.per_pair = per_pair if per_pair is not None else per_address
        keep = max(self.per_address, self.per_user, self.per_pair) + 1
        self._clock = clock
        self._failures = _Window(clock, window, max_tracked, keep)
        self._inflight = _Window(clock, self.INFLIGHT_SECONDS, max_tracked, keep)
        self._trusted = _Window(clock, trust_seconds, max_tracked, 1)
        self._waiting: list[Callable[[], None]] = []
        self._wake_call = None
        self.refused = 0
        """Attempts refused by the throttle (for metrics and tests)."""

    def _keys(self, user: str, address: str | None) -> list[tuple[Hashable, int]]:
        address = address_key(address)
        keys: list[tuple[Hashable, int]] = []
        if address is None or not self._trusted.count(("pair", user, address)):
            keys.append((("user", user), self.per_user))
        if address is not None:
            keys.append((("address", address), self.per_address))
            keys.append((("pair", user, address), self.per_pair))
        return keys

    def _state(self, user: str, address: str | None) -> tuple[float | None, bool]:
        """(seconds to wait for failures to age out, or None; whether
        attempts being checked fill what some key has left)."""
        longest: float | None = None
        busy = False
        for key, limit in self._keys(user, address):
            failures = self._failures.count(key)
            if failures >= limit:
                wait = self._failures.wait(key, limit)
                longest = wait if longest is None else max(longest, wait)
            elif failures + self._inflight.count(key) >= limit:
                busy = True
        return longest, busy

    def retry_after(self, user: str, address: str | None) -> float | None:
        """Seconds the client should wait, or None when it may try now."""
        wait, _busy = self._state(user, address)
        if wait is not None:
            self.refused += 1
        return wait

    def admit(self, user: str, address: str | None) -> Deferred:
        """Fires with None (go on: the attempt now counts as undecided) or
        with the seconds to wait; waits while undecided attempts fill what is
        left."""
        d: Deferred = Deferred()

        def attempt() -> None:
            wait, busy = self._state(user, address)
            if wait is not None:
                self.refused += 1
                d.callback(wait)
            elif busy:
                self._waiting.append(attempt)
                self._wake_later(self.RECHECK_SECONDS)
            else:
                for key, _limit in self._keys(user, address):
                    self._inflight.add(key)
                d.callback(None)

        attempt()
        return d

    def _wake_later(self, delay: float) -> None:
        call = self._wake_call
        if call is not None and call.active():
            if call.getTime() <= self._clock.seconds() + delay:
                return
            call.cancel()
        self._wake_call = self._clock.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._wake_call = None
        waiting, self._waiting = self._waiting, []
        for attempt in waiting:
            attempt()

    def _decided(self, user: str, address: str | None) -> list[tuple[Hashable, int]]:
        keys = self._keys(user, address)
        for key, _limit in keys:
            self._inflight.remove_one(key)
        if self._waiting:
            self._wake_later(0)  # next turn: not inside the caller's decision
        return keys

    def abandoned(self, user: str, address: str | None) -> None:
        """The check could not be made (e.g. the catalog failed): the attempt
        counts neither way."""
        self._decided(user, address)

    def failed(self, user: str, address: str | None) -> None:
        for key, _limit in self._decided(user, address):
            self._failures.add(key)

    def succeeded(self, user: str, address: str | None) -> None:
        self._decided(user, address)
        address = address_key(address)
        if address is not None:
            self._failures.clear(("pair", user, address))
            self._trusted.add(("pair", user, address))


class AddressCounts:
    """How many of something each client address holds now, its addresses
    grouped by ``address_key``: a listener's connections
    (``ConnectionLimits``), the ports of an FTP passive range
    (``wsfront.ftp.passive_share``).  Only addresses holding some are kept."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def count(self, host: str) -> int:
        return self._counts.get(address_key(host) or host, 0)

    def add(self, host: str) -> None:
        key = address_key(host) or host
        self._counts[key] = self._counts.get(key, 0) + 1

    def remove(self, host: str) -> int:
        """One fewer for ``host``'s address (never below none); returns how
        many it holds still."""
        key = address_key(host) or host
        left = self._counts.get(key, 0) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)
        return max(left, 0)


class ConnectionLimits:
    """Admission of connections to one listener: ``admit(host)`` returns None
    (admitted; call ``release(host)`` when the connection ends) or the reason
    it was refused, ready for a reply ("from your address", "in total")."""

    def __init__(self, per_address: int | None = 256, total: int | None = 4096) -> None:
        self.per_address = per_address
        self.total = total
        self.open = 0
        self._by_address = AddressCounts()
        self.refused = 0

    def admit(self, host: str | None) -> str | None:
        if self.total is not None and self.open >= self.total:
            self.refused += 1
            return "in total"
        if host is not None and self.per_address is not None:
            if self._by_address.count(host) >= self.per_address:
                self.refused += 1
                return "from your address"
            self._by_address.add(host)
        self.open += 1
        return None

    def release(self, host: str | None) -> None:
        self.open = max(self.open - 1, 0)
        if host is not None:
            self._by_address.remove(host)

    def count(self, host: str) -> int:
        return self._by_address.count(host)


class RateFloor:
    """Calls ``too_slow()`` once if the bytes ``received`` average less than
    ``min_rate`` a second over ``window`` seconds of *reading* time.

    The owner says when it reads and when it does not (``reading(flag)``):
    only reading time counts, so a sender paused by the receiver's own
    backpressure (a slow disk, an unclaimed body, unsent answers) is never
    judged on the paused time.  The judgement is made each time ``window``
    seconds of reading time have passed (the rate Apache's mod_reqtimeout
    ``MinRate`` asks of a body, over a window instead of since the start,
    so that a fast beginning cannot pay for a trickle later); one timer
    per meter, rescheduled, no per-byte work beyond a sum.
    """

    def __init__(
        self, clock: IReactorTime, min_rate: float, window: float, too_slow: Callable[[], object]
    ) -> None:
        self._clock = clock
        self._min_rate = min_rate
        self._window = window
        self._too_slow = too_slow
        self._active = 0.0
        self._since: float | None = None
        self._bytes = 0
        self._call = None

    def start(self, reading: bool) -> None:
        """Begin the first window (reading from now, or once ``reading(True)``)."""
        self.reading(reading)
        self._call = self._clock.callLater(self._window, self._judge)

    def reading(self, flag: bool) -> None:
        if flag == (self._since is not None):
            return  # no change: no clock read
        now = self._clock.seconds()
        if flag and self._since is None:
            self._since = now
        elif not flag and self._since is not None:
            self._active += now - self._since
            self._since = None

    def received(self, count: int) -> None:
        self._bytes += count

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _judge(self) -> None:
        self._call = None
        now = self._clock.seconds()
        active = self._active + (now - self._since if self._since is not None else 0.0)
        if active >= self._window:
            if self._bytes < self._min_rate * active:
                self._too_slow()
                return
            self._active, self._bytes = 0.0, 0
            if self._since is not None:
                self._since = now
            active = 0.0
        self._call = self._clock.callLater(self._window - active, self._judge)
