"""The maintenance lease: one front end at a time runs repair, GC and jobs.

Two front ends repairing at once would copy the same blob twice, and GC on
one could delete a copy the other's repair just made but has not recorded
yet.  So all maintenance runs on the holder of one named catalog lease,
renewed every ``ttl / 3``; if the holder dies, another front end takes it
over once it expires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfront.maintenance.failure_log import FailureLog

if TYPE_CHECKING:
    from wsfront.maintenance.name_claim import Life

log = Logger()

LEASE_NAME = "maintenance"
#: Every front end holds ``front-end:NAME`` while it runs: the catalog's record
#: of which front ends are alive (their jobs and uploads are not orphans).
LIVENESS_PREFIX = "front-end:"
#: A lease's life unless told otherwise (``--liveness-lease-seconds`` for the
#: liveness lease): a front end that stops renewing is dead after this long.
DEFAULT_TTL_SECONDS = 30.0
#: The shortest life a front end's options may give its liveness lease: it is
#: renewed every third of it, so catalog writes stay a second apart or more.
MIN_TTL_SECONDS = 3.0
#: The shortest life of the maintenance lease, whatever the liveness lease's.
#: A renewal is one catalog write, and a catalog write may wait for a row
#: lock up to PostgreSQL's ``lock_timeout`` (10 s, ``wsfront.catalog.postgres``;
#: the lock of a frozen front end, which the server frees after 5 s idle),
#: or sit in the pool or SQLite's writer queue behind a job step that does.
#: The renewal sent a third into the life must still land before its end
#: after such a wait: 20 / 3 + 10 = 16.7 s, 3.3 s to spare for the round trip
#: and the clocks of two hosts.  Shorter, a live holder loses the lease
#: during one lock wait, and another front end starts repair and GC while
#: the first one's step is still under way.  A frozen holder's uploads need
#: not wait for it: any front end marks them interrupted once the holder's
#: liveness lease lapsed (``MaintenanceService.interrupt_a_dead_holders_uploads``).
MIN_MAINTENANCE_TTL_SECONDS = 20.0


def liveness_lease(front_end: str) -> str:
    """The name of the lease that says ``front_end`` is alive."""
    return LIVENESS_PREFIX + front_end


class LeaseKeeper:
    """Takes and renews a named lease; ``held`` says whether we have it."""

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        owner: str,
        name: str = LEASE_NAME,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        life: Life | None = None,
        on_refused: Callable[[], object] | None = None,
        lapsed: bool = True,
        on_acquired: Callable[[], object] | None = None,
    ) -> None:
        self._clock = clock
        self._catalog = catalog
        self.owner = owner
        self.name = name
        self.ttl = ttl_seconds
        #: This process's life (``name_claim.Life``): the lease is renewed
        #: under its token only, so another process with the same owner
        #: name (a second one given the same --name, or the one that took
        #: this one's name over while it was frozen) is not renewed for.
        self._life = {} if life is None else {"token": life.token, "holder": life.holder}
        if not lapsed:
            # Never take another holder's lease because it looks expired
            # by this host's clock (the liveness lease of a front end's
            # name: a life frozen on a host whose clock runs ahead would
            # take its successor's lease back on waking, and the successor
            # exit at its next renewal); only renew this life's own, or
            # take a free one (``name_claim``).
            self._life["lapsed"] = False
        #: Called each time the catalog answers a renewal with no (not a
        #: failure to answer): for the liveness lease, another life has
        #: this front end's name (``FrontendService._name_lost``).
        self._on_refused = on_refused
        #: Called each time this keeper takes the lease: first taken, taken
        #: back after losing it, or renewed after it lapsed (others may
        #: have held it meanwhile).  What the holder remembered of the
        #: cluster from before may be out of date (GC's first sightings:
        #: ``GarbageCollector.forget_sightings``).
        self._on_acquired = on_acquired
        self.held = False
        self._expires = 0.0
        self._loop: LoopingCall | None = None
        #: A catalog outage fails every renewal (three times a TTL): said
        #: once, with a reminder now and then, and once when it works again.
        self._failures = FailureLog(clock, f"{name} lease renewal")
        #: Catalog calls taking the lease that have not answered yet, and
        #: whether stop() ran: a renewal still in flight when the service
        #: stops must not take the lease back after stop released it.
        self._asking: set[Deferred] = set()
        self._stopped = False

    @property
    def valid(self) -> bool:
        """Held and not past the expiry we were granted (a slow catalog
        must not let us act on a lease another front end may now hold)."""
        return self.held and self._clock.seconds() < self._expires

    async def renew(self) -> bool:
        """Take or renew the lease now; True if we hold it."""
        if self._stopped:
            return False
        asked = self._clock.seconds()
        d = self._catalog.acquire_lease(self.name, self.owner, self.ttl, **self._life)
        self._asking.add(d)
        refused = False
        try:
            held = await d
        except Exception:
            self._failures.failed(Failure())
            held = False
        else:
            self._failures.succeeded()
            refused = not held
        finally:
            self._asking.discard(d)
        if self._stopped:
            # stop() is waiting for this answer and releases what it took.
            self.held = self.held or bool(held)
            return False
        if held and not self.held:
            log.info("{owner} holds the {name} lease", owner=self.owner, name=self.name)
        elif self.held and not held:
            # Said, as taking it is: from here on another front end may run
            # what this one ran (repair, GC, jobs; or, for a liveness lease,
            # mark this one's uploads interrupted).
            log.warn("{owner} no longer holds the {name} lease", owner=self.owner, name=self.name)
        elif held and asked >= self._expires:
            # Renewed, but after it had lapsed (a frozen process, a catalog
            # that did not answer): others took this front end for dead
            # meanwhile, and the log of a pause should say so.
            log.warn(
                "{owner} renewed the {name} lease {late:.1f}s after it lapsed",
                owner=self.owner,
                name=self.name,
                late=asked - self._expires,
            )
        acquired = bool(held) and (not self.held or asked >= self._expires)
        self.held = bool(held)
        self._expires = asked + self.ttl if held else 0.0
        if acquired and self._on_acquired is not None:
            self._on_acquired()
        if refused and self._on_refused is not None:
            self._on_refused()
        return self.held

    def start(self) -> Deferred:
        self._stopped = False
        self._loop = LoopingCall(lambda: ensureDeferred(self.renew()))
        self._loop.clock = self._clock
        return self._loop.start(self.ttl / 3, now=True)

    def stop(self) -> Deferred:
        """Stop renewing and give the lease back, after any renewal still
        in flight has answered (else it could take the lease again after
        the release, and hold it until it expires)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._stopped = True
        return ensureDeferred(self._release())

    async def _release(self) -> None:
        in_flight = list(self._asking)
        if in_flight:
            # Each renewal notes what it got (above) before this wakes up.
            await DeferredList(in_flight, consumeErrors=True)
        if not self.held:
            return
        self.held = False
        token = self._life.get("token")
        if token is None:
            await self._catalog.release_lease(self.name, self.owner)
        else:
            await self._catalog.release_lease(self.name, self.owner, token)
