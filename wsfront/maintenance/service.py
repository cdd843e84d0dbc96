"""``MaintenanceService``: the periodic work a front end runs in the background.

The lead mounts one in every front end (``service.setServiceParent(app)``);
only the holder of the maintenance lease does any work.  Each tick it runs
a queued admin job (``wsfs repair``, ``fsck``, ``drain``, ``rebalance``,
``compact``, ``gc``), then a check of the servers' store ids (one back on a
wiped data directory has its lost replicas marked: ``identity``), an audit
(``fsck.audit``), a repair pass, a GC pass and a compaction pass, each
when due, and ends what a dead front end left behind (jobs it was
running, uploads still marked active): every front end holds a liveness
lease ``front-end:NAME``, and a lapsed one means dead.
Work never overlaps: repair and GC of the same front end run one after the
other (a ``wsfs gc`` job too: it is one more step of the same tick, with
the same collector), and no step starts without the maintenance lease, held
by one front end at a time.  That is what makes GC's view of "a copy the
catalog does not count" safe against a repair copy not yet recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfront.catalog.records import JOB_DONE
from wsfront.maintenance.compact import Compactor, CompactSettings
from wsfront.maintenance.failure_log import FailureLog
from wsfront.maintenance.fsck import audit
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.handlers import job_handlers
from wsfront.maintenance.identity import StoreWatch
from wsfront.maintenance.jobs import Handler, JobRunner, LeaseCheck, end_job
from wsfront.maintenance.lease import (
    DEFAULT_TTL_SECONDS,
    LEASE_NAME,
    LIVENESS_PREFIX,
    MIN_MAINTENANCE_TTL_SECONDS,
    LeaseKeeper,
    liveness_lease,
)
from wsfront.maintenance.name_claim import Life
from wsfront.maintenance.repair import Repairer, RepairSettings
from wsfront.transfer.pool import StoragePool

log = Logger()


@attrs.frozen
class MaintenanceSettings:
    """How often each kind of work runs."""

    tick_seconds: float = 2.0
    repair_every: float = 60.0
    gc_every: float = 600.0
    #: Cross-check catalog and servers (finds replicas scrub quarantined).
    audit_every: float = 3600.0
    #: Merge files of many extents into one blob (None: never on its own;
    #: ``wsfs compact`` still works).
    compact_every: float | None = 3600.0
    #: Life of the maintenance lease: how long maintenance waits for a
    #: successor after its holder died (a front end's: its
    #: ``--liveness-lease-seconds``, see ``maintenance_settings``).
    lease_ttl: float = DEFAULT_TTL_SECONDS
    #: Life of this front end's liveness lease (``--liveness-lease-seconds``):
    #: after this long without a renewal, the lease holder takes it for dead
    #: and interrupts its uploads and re-queues its jobs.  Longer rides out a
    #: slower catalog; shorter ends a dead front end's work sooner.
    liveness_ttl: float = DEFAULT_TTL_SECONDS
    #: A job another front end has run without progress for this long is
    #: failed by the lease holder (its runner is stuck; the jobs of a front
    #: end that died are ended as soon as its liveness lease lapses).
    stale_job_seconds: float = 900.0
    #: How often the lease holder looks for uploads left ``active`` by a
    #: front end whose liveness lease has lapsed (and marks them interrupted).
    orphan_uploads_every: float = 10.0
    repair: RepairSettings = attrs.field(factory=RepairSettings)
    gc: GCSettings = attrs.field(factory=GCSettings)
    compact: CompactSettings = attrs.field(factory=CompactSettings)


def maintenance_settings(config) -> MaintenanceSettings:
    """The settings a front end's options (``wsfront.config.FrontendConfig``)
    choose (``--upload-retention-days`` GC's purge of finished uploads); the
    rest keep their defaults.

    ``--liveness-lease-seconds`` gives the maintenance lease its life too,
    down to ``MIN_MAINTENANCE_TTL_SECONDS`` (20 s): a renewal must outlast
    one catalog lock wait, or a live holder loses the lease in the middle
    of a job step.  A frozen holder's uploads still go interrupted after
    the liveness life: any front end marks them so
    (``interrupt_a_dead_holders_uploads``), not only its successor."""
    ttl = config.liveness_lease_seconds
    days = config.upload_retention_days  # 0: kept for ever, never "purged at once"
    return MaintenanceSettings(
        lease_ttl=max(ttl, MIN_MAINTENANCE_TTL_SECONDS),
        liveness_ttl=ttl,
        gc=GCSettings(upload_retention_seconds=days * 86400 if days else None),
    )


class MaintenanceService(Service):
    """Repair, GC and admin jobs for the front end ``name``."""

    name = "maintenance"

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        pool: StoragePool,
        front_end: str,
        settings: MaintenanceSettings | None = None,
        extra_handlers: Mapping[str, Handler] | None = None,
        life: Life | None = None,
        on_name_lost: Callable[[], object] | None = None,
    ) -> None:
        self._clock = clock
        self.catalog = catalog
        self.pool = pool
        self.front_end = front_end
        self.settings = settings or MaintenanceSettings()
        #: Both leases are renewed under this process's ``life`` (the one
        #: that claimed the name, ``name_claim.claim_name``): another life
        #: of the same name neither renews them nor gives them back.
        #: Each time it is taken, GC forgets its first sightings: another
        #: holder may have run meanwhile (``forget_sightings``).
        self.lease = LeaseKeeper(
            clock,
            catalog,
            front_end,
            ttl_seconds=self.settings.lease_ttl,
            life=life,
            on_acquired=lambda: self.gc.forget_sightings(),
        )
        #: Held by every front end while it runs (not only the lease
        #: holder); a renewal refused means another life took the name
        #: (``on_name_lost``).
        self.liveness = LeaseKeeper(
            clock,
            catalog,
            front_end,
            liveness_lease(front_end),
            self.settings.liveness_ttl,
            life=life,
            on_refused=on_name_lost,
            lapsed=life is None,
        )
        self.repairer = Repairer(clock, catalog, pool, self.settings.repair)
        self.gc = GarbageCollector(clock, catalog, pool, self.settings.gc)
        self.compactor = Compactor(clock, catalog, pool, self.settings.compact)
        #: Notices a storage server back on a wiped data directory.
        self.stores = StoreWatch(catalog, pool)
        handlers = job_handlers(
            self.repairer,
            self.gc,
            catalog,
            pool,
            keep_going=lambda: self.lease.valid,
            compactor=self.compactor,
        )
        handlers.update(extra_handlers or {})
        self.jobs = JobRunner(clock, catalog, front_end, handlers)
        self._loop: LoopingCall | None = None
        self._tick_failures = FailureLog(clock, "maintenance tick")
        self._cleanup_failures = FailureLog(
            clock, "ending this front end's jobs of a previous life (tried again each tick)"
        )
        self._running: Deferred | None = None
        self._cleanup: Deferred | None = None
        now = clock.seconds()
        self._next_repair = now + self.settings.repair_every
        self._next_gc = now + self.settings.gc_every
        self._next_audit = now + self.settings.audit_every
        self._next_orphans = now
        every = self.settings.compact_every
        self._next_compact = None if every is None else now + every

    def startService(self) -> Deferred:
        super().startService()
        self._cleanup = ensureDeferred(self._end_previous_life())
        self.liveness.start()
        self.lease.start()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self.settings.tick_seconds, now=False)
        return succeed(None)

    def tick(self) -> Deferred:
        """One round of work (the loop calls it; tests may call it directly)."""
        if self._running is not None:
            return self._running
        d = self._running = ensureDeferred(self._tick())

        def done(result):
            self._running = None
            return result

        def worked(result):
            self._tick_failures.succeeded()
            return result

        return d.addCallbacks(worked, self._tick_failures.failed).addBoth(done)

    async def _tick(self) -> list[str]:
        """Run what is due, one after the other; return what ran."""
        self.repairer.observe()
        if self._cleanup is not None:
            # Our jobs from a previous life are ended before this life
            # claims any (it would re-queue one claimed meanwhile), and
            # tried again until that succeeds: the periodic sweep leaves
            # another life's claims to the stale rule, so a cleanup given
            # up on would fail those jobs 15 min later instead of
            # re-queueing them now.  Meanwhile no job is claimed or swept;
            # the periodic passes go on.
            cleanup, self._cleanup = self._cleanup, None
            if not await cleanup and self.running:
                self._cleanup = ensureDeferred(self._end_previous_life())
        cleaned = self._cleanup is None
        if not self.lease.valid:
            now = self._clock.seconds()
            if now >= self._next_orphans:
                self._next_orphans = now + self.settings.orphan_uploads_every
                await self.interrupt_a_dead_holders_uploads()
            return []
        ran = []
        job = None
        if cleaned:
            await self.fail_abandoned_jobs()
            job = await self.jobs.run_one()
        if job is not None:
            ran.append("job")
            if job.kind == "gc" and job.state == JOB_DONE:
                # A ``wsfs gc`` pass is this turn's pass: a scheduled one
                # right after it would list and read every server again.
                self._next_gc = self._clock.seconds() + self.settings.gc_every
        # A job (a ``wsfs gc`` pass, a long drain) may outlast the lease: no
        # periodic pass may start without it, or this front end's GC pass
        # would run beside the new holder's (its own, or the job it
        # re-runs).  Checked again before each pass, for the same reason.
        if not self.lease.valid:
            return ran
        now = self._clock.seconds()
        if await self.stores.check():
            # A server came back on a wiped data directory: its replicas
            # were marked lost, copy them back now.
            self._next_repair = now
            ran.append("stores")
        if now >= self._next_orphans:
            self._next_orphans = now + self.settings.orphan_uploads_every
            await self.interrupt_orphaned_uploads()
        if now >= self._next_audit and self.lease.valid:
            self._next_audit = now + self.settings.audit_every
            if await audit(self.catalog, self.pool, self.gc, LeaseCheck(lambda: self.lease.valid)):
                self._next_repair = now  # heal at once
            ran.append("audit")
        if now >= self._next_repair and self.lease.valid:
            self._next_repair = now + self.settings.repair_every
            await self.repairer.run_pass(keep_going=lambda: self.lease.valid)
            ran.append("repair")
        if now >= self._next_gc and self.lease.valid:
            self._next_gc = now + self.settings.gc_every
            await self.gc.run_pass(keep_going=lambda: self.lease.valid)
            ran.append("gc")
        if self._next_compact is not None and now >= self._next_compact and self.lease.valid:
            assert self.settings.compact_every is not None
            self._next_compact = now + self.settings.compact_every
            await self.compactor.run_pass(
                keep_going=lambda: self.lease.valid,
                max_bytes=self.settings.compact.pass_bytes,
            )
            ran.append("compact")
        return ran

    async def _dead_front_ends(self, owners: dict[str, float]) -> set[str]:
        """Of ``owners`` (front end -> when it last touched the row in
        question), those not alive: their liveness lease has expired, or
        they hold none (stopped, or never took one) and the row is older
        than a lease's life (so a front end just starting is not dead)."""
        now = self._clock.seconds()
        leases = await self.catalog.list_leases(LIVENESS_PREFIX)
        dead = set()
        for owner, touched in owners.items():
            lease = leases.get(liveness_lease(owner))
            seen_until = lease[1] if lease is not None else touched + self.settings.liveness_ttl
            if seen_until <= now:
                dead.add(owner)
        return dead

    async def _end_previous_life(self) -> bool:
        """The startup cleanup (``fail_abandoned_jobs(mine=True)``): True
        once done; False if the catalog could not list or end one of them
        (logged through a ``FailureLog``: once per kind of failure, then a
        reminder, not a traceback a tick), to be tried again at the next
        tick before this life claims a job."""
        try:
            await self.fail_abandoned_jobs(mine=True)
        except Exception:
            self._cleanup_failures.failed(Failure())
            return False
        self._cleanup_failures.succeeded()
        return True

    async def fail_abandoned_jobs(self, mine: bool = False) -> int:
        """End running jobs nobody runs any more, so their CLI does not wait
        for nothing: ours from a previous life (``mine``: every job under
        our name, at startup, before this life claims any), a claim this
        life took that it is not running (its runner lost the lease and
        could not end it), another front end's once that front end's
        liveness lease has lapsed (it was killed or stopped; typically the
        lease holder that was running it), and any other front end's after
        ``stale_job_seconds`` without progress.  The first three are
        re-queued if their kind can simply run again
        (``jobs.RERUNNABLE_JOBS``), else failed; a stale one is failed (its
        runner may still be going).

        A job under our name whose claim this life never took is another
        life's: the front end restarted under this name and this process
        is the old life, woken from a pause (the maintenance lease is
        granted by name, so both may think they hold it), or it is a
        previous life's that the startup cleanup did not end.  The
        periodic sweep does not end it as ours: only the stale rule
        applies to it, as to a live front end's.  Fires with how many
        were ended."""
        jobs = await self.catalog.list_jobs(["running"])
        others = {}
        for job in jobs:
            if job.owner != self.front_end:
                others[job.owner] = max(others.get(job.owner, 0.0), job.updated_at)
        dead = await self._dead_front_ends(others) if others and not mine else set()
        limit = self._clock.seconds() - self.settings.stale_job_seconds
        ended = 0
        for job in jobs:
            if mine:
                if job.owner != self.front_end:
                    continue
                why, rerun = f"interrupted: front end {job.owner} restarted", True
            elif job.owner == self.front_end and (job.job_id, job.claim) in self.jobs.claimed:
                if (job.job_id, job.claim) == self.jobs.current:
                    continue
                # Ours, yet not running here: its runner lost the lease
                # and could not end it then (the catalog was down, say).
                why, rerun = f"interrupted: front end {job.owner} lost the maintenance lease", True
            # Under our name, but a claim this life never took: another
            # life's (the process after a restart, or the one before it
            # woken from a pause; both renew the maintenance lease, granted
            # by name).  Not ended as ours, and never in ``dead`` (its
            # liveness lease is ours too): only the stale rule applies.
            elif job.owner in dead:
                why, rerun = f"interrupted: front end {job.owner} stopped", True
            elif job.updated_at <= limit:
                why, rerun = f"abandoned: no progress from front end {job.owner}", False
            else:
                continue
            # At startup an outage is raised, not swallowed: the cleanup
            # is tried again rather than taken as done.
            if await end_job(self.catalog, job, why, rerun, strict=mine):
                ended += 1
        return ended

    async def interrupt_orphaned_uploads(self) -> int:
        """Mark interrupted the uploads still ``active`` under a front end
        whose liveness lease has lapsed: it was killed, and did not get to
        do it itself (a restarting front end does).  ``wsfs sessions`` then
        shows them as what they are, resumable elsewhere.  Fires with how
        many changed."""
        owners = await self.catalog.active_upload_owners()
        owners.pop(self.front_end, None)
        if not owners:
            return 0  # nothing to judge: no lease read (this runs every tick)
        changed = 0
        for owner in sorted(await self._dead_front_ends(owners)):
            try:
                ended = await self.catalog.interrupt_sessions_of(owner)
            except Exception as e:
                log.warn("uploads of {owner}: cannot interrupt them: {err}", owner=owner, err=e)
                continue
            if ended:
                log.warn("{n} uploads of front end {owner} interrupted: it stopped",
                         n=len(ended), owner=owner)  # fmt: skip
            changed += len(ended)
        return changed

    async def interrupt_a_dead_holders_uploads(self) -> int:
        """Not the holder: mark interrupted the uploads still ``active``
        under the maintenance lease's holder once its liveness lease has
        lapsed (frozen, killed).  The holder's own sweep
        (``interrupt_orphaned_uploads``) waits for a successor, and the
        maintenance lease may live longer than the liveness lease
        (``MIN_MAINTENANCE_TTL_SECONDS``); the holder's uploads should not
        wait for it.  The change is a compare-and-set on the owner and the
        state, so front ends doing it at once change each upload once.
        Two reads every ``orphan_uploads_every``; fires with how many
        changed."""
        lease = await self.catalog.get_lease(LEASE_NAME)
        if lease is None or lease[0] == self.front_end:
            return 0
        holder = lease[0]
        # A holder without a liveness lease is judged alive: the lapse of
        # one is what says it is dead.
        if not await self._dead_front_ends({holder: self._clock.seconds()}):
            return 0
        ended = await self.catalog.interrupt_sessions_of(holder)
        if ended:
            log.warn("{n} uploads of front end {owner} interrupted: it stopped",
                     n=len(ended), owner=holder)  # fmt: skip
        return len(ended)

    async def _stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for pending in (self._cleanup, self._running, self._cleanup):
            # The cleanup again: a tick that was waiting on one may have
            # started the next try before it saw the service stopping.
            if pending is not None:
                await pending
        await self.lease.stop()
        await self.liveness.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        return ensureDeferred(self._stop())
