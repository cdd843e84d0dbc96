"""One live process per front-end name.

Leases go by owner name, and a front end's name is the owner of its
liveness lease ``front-end:NAME``, of the maintenance lease when it holds
it, of its uploads and jobs.  Two processes started with the same --name
renewed each other's leases as their own: both ran maintenance side by
side, and one marked the other's streaming uploads interrupted as its own
"previous life".  So each process life has a random token, recorded with
its leases (the catalog renews a lease for the same token only), and a
start first claims the name (``claim_name``):

* the liveness lease is free: taken at once (a clean stop releases it,
  so a normal restart does not wait);
* it is held under another life whose process is provably dead on this
  host (same host, boot and pid namespace, and its pid gone or another
  process's: ``host_life.holder_verdict``): taken over at once, by the
  same compare-and-set as after a watch (a crash or kill followed by a
  restart on the same host, as systemd does, need not wait);
* it is held under another token otherwise (another host, a live or
  frozen process, an older wsfs's holder, /proc unreadable), lapsed or
  not by this host's clock (which may run ahead of the holder's): the
  start watches it for a full ttl of its holder (``watch_seconds``).
  Renewed meanwhile, another live process has the name: the start is
  refused (``NameInUse``, naming that process's host, pid and start).
  Not renewed, its life is dead (a crash, a kill): the lease is taken
  over from it (a compare-and-set on the row as watched, so a renewal
  landing at the last moment wins), and the start goes on as after any
  crash (its uploads marked interrupted).

A life that was only frozen past that watch (SIGSTOP, a long pause) finds
on waking that its renewals are refused: it lost the name
(``FrontendService._name_lost``).
"""

from __future__ import annotations

import datetime
import os
import secrets

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wsfront.catalog.records import LeaseRow
from wsfront.maintenance.host_life import holder_text, holder_verdict, this_process
from wsfront.maintenance.lease import liveness_lease

log = Logger()

#: How often a watching start reads the lease, at most (a read each time).
POLL_SECONDS = 1.0


@attrs.frozen
class Life:
    """One process's life under a front-end name: ``token`` tells it from
    any other life of that name, ``holder`` tells an operator who it is."""

    token: str
    holder: str


def this_life() -> Life:
    """A new life for this process: a random token, and its host, pid and
    start time for the message of a start it refuses, with the marks that
    let a later start on this host tell it is dead (``host_life``)."""
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Life(secrets.token_hex(16), holder_text(os.getpid(), started, this_process()))


class NameInUse(Exception):
    """Another live process runs under this front end's name."""


#: A row of older code records no ttl: it is watched until its expiry as
#: seen plus this much (a renewal late by one catalog lock wait,
#: ``lease.MIN_MAINTENANCE_TTL_SECONDS``), and never less than the
#: starter's own ttl (the expiry was written by another host's clock).
OLD_ROW_MARGIN_SECONDS = 10.0


def watch_seconds(seen: LeaseRow, ttl: float, now: float) -> float:
    """How long a start watches the lease ``seen`` for a renewal: a full
    ttl of its holder.  The holder renews every third of its ttl and must
    land a renewal within its ttl or lose the lease anyway (to another
    front end's expiry rule, its uploads to the orphan sweep), so a live
    one, even late by catalog lock waits, is seen renewing; a shorter
    watch took over a loaded but live process's name, which then exits
    (``FrontendService._name_lost``).  A row of older code (no ttl
    recorded): ``max(ttl, its expiry as seen - now + margin)``, ``ttl``
    being the starter's own.  The watch is timed by this host's clock
    alone and never ends on the expiry the row says (another host's
    clock): a skew between the two hosts does not shorten it."""
    if seen.ttl_seconds is not None:
        return seen.ttl_seconds
    return max(ttl, seen.expires_at - now + OLD_ROW_MARGIN_SECONDS)


def _in_use(name: str, row: LeaseRow) -> NameInUse:
    who = row.holder or "host, pid and start not recorded (an older wsfs)"
    return NameInUse(
        f"front end name {name!r} is in use by another live process ({who}): it renewed "
        f"the lease {row.name} while this start watched it; stop that process or give "
        "this one another --name"
    )


async def _watch(clock: IReactorTime, catalog, seen: LeaseRow, seconds: float) -> LeaseRow | None:
    """Watch the lease ``seen`` for ``seconds``: fires with its row as soon
    as that changes (None: released), else with ``seen`` at the end.  Its
    expiry as seen is not looked at: that is another host's clock."""
    end = clock.seconds() + seconds
    while True:
        now = clock.seconds()
        if now >= end:
            return seen
        await deferLater(clock, min(POLL_SECONDS, end - now), lambda: None)
        row = await catalog.get_lease_row(seen.name)
        if row != seen:
            return row


async def claim_name(
    clock: IReactorTime, catalog, name: str, ttl: float, life: Life, *, watch: bool = True
) -> LeaseRow | None:
    """Take the liveness lease of front end ``name`` for ``life`` (its life
    ``ttl``).  Fires with the row of the dead life it took it over from,
    or None if the lease was free; fails with NameInUse if another life
    renewed it meanwhile.  A lease another life holds is never taken by
    its expiry (``lapsed=False``: this host's clock may run ahead of the
    holder's), only by a compare-and-set on the row as watched, or as
    seen if its holder is provably dead on this host (no watch: a restart
    after a crash takes its name at once).  Without ``watch`` the caller
    knows no other process can have the name (wslocal: its data
    directory's locks), and a lease held by another life is taken over at
    once."""
    lease = liveness_lease(name)
    while True:
        if await catalog.acquire_lease(lease, name, ttl, life.token, life.holder, lapsed=False):
            return None
        seen = await catalog.get_lease_row(lease)
        if seen is None:
            continue  # released since: take it
        verdict = holder_verdict(seen.holder) if watch else None
        if verdict is not None and verdict.dead:
            log.info(
                "front end name {name} is held by another life ({who}) that is dead on this "
                "host ({why}): taking its lease over at once, without watching it",
                name=name,
                who=seen.holder,
                why=verdict.why,
            )
        elif verdict is not None:
            seconds = watch_seconds(seen, ttl, clock.seconds())
            log.info(
                "front end name {name} is held by another life ({who}): watching its lease "
                "for a renewal for {watch:.1f}s (not provably dead: {why})",
                name=name,
                who=seen.holder or "not recorded",
                watch=seconds,
                why=verdict.why,
            )
            row = await _watch(clock, catalog, seen, seconds)
            if row is None:
                continue  # released: take it like a free one
            if row != seen:
                raise _in_use(name, row)
        if await catalog.take_over_lease(lease, name, ttl, life.token, life.holder, seen):
            return seen
        # Changed at the last moment: renewed (a live process), else
        # released or taken; the next round tells which.
