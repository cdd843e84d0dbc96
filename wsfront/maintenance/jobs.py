"""Running the admin jobs the CLI queues (``repair``, ``fsck``, ``drain``, ``gc``...).

The CLI cannot reach the storage tier; it enqueues a job in the catalog and
polls it.  A front end holding the maintenance lease claims queued jobs of
the kinds it has handlers for (the claim is a compare-and-set, so one front
end runs each job), records progress as the handler reports it, and
finishes the job with the handler's result or its error.

A runner that loses the maintenance lease mid-job (the catalog was out of
reach, a long pause) must not go on: the new holder may already be running
the same job again.  Every handler checks the lease between its units of
work (a file, a blob) through one ``LeaseCheck`` and raises
``JobInterrupted`` when it is gone; the runner then ends the job the way the
new holder ends a dead front end's (``end_job``): re-queued once if its kind
can simply run again (``RERUNNABLE_JOBS``), else failed.

A runner that learns only from the catalog that its job moved on (its
progress or its end refused with ``LeaseHeld``: the new holder re-queued
it, another front end claimed it) stops it at once with one log line and
changes nothing more (``JobTaken``).  A runner names its job's claim (the
number ``claim_job`` gave this run) with every change, not only its front
end's name: a restarted front end has the old one's name, and once it
re-queued the old run's job and claimed it again, the old run (a process
frozen past its lease, then woken) must be refused like any other.  The
runner also remembers every claim it took (``JobRunner.claimed``): the
sweep ends as its own only those, not another life's of the same name.

Two limits.  The claim protects only once every front end runs this code
(schema 9): one of the code before, still running, claims without
bumping the number and changes a job by its name alone.  And the
maintenance lease is still granted by name: two lives of one name (the
old one woken beside the restarted one) both believe they hold it and
both run jobs and the periodic passes, overlapping, until one is stopped;
the claim keeps their job rows apart, not their work on the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront.catalog.errors import LeaseHeld, NotFound
from wsfront.catalog.records import Job

log = Logger()

Report = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Report], Awaitable[dict[str, Any]]]

#: Job kinds that converge on a state (full replica count, an empty node,
#: merged files, a checked catalog, garbage gone: a GC pass keeps its grace
#: periods however often it runs): running one again just finishes what
#: the interrupted run began, so an interrupted job of these kinds is
#: re-queued (once) and its CLI goes on waiting.  Other kinds are failed:
#: ``rebalance`` moves up to ``max_bytes`` per run, so a second run would
#: move more than the operator asked for.
RERUNNABLE_JOBS = frozenset({"repair", "drain", "compact", "fsck", "gc"})


class JobInterrupted(Exception):
    """The runner lost the maintenance lease: the job stopped between two
    units of work and is ended as interrupted, not done."""


class JobTaken(Exception):
    """The catalog refused the runner's change of its job (``LeaseHeld``):
    the job is no longer running under it (another front end re-queued or
    ended it as a dead one's, and may run it now).  The runner stops it
    and changes nothing more."""


class LeaseCheck:
    """``keep_going`` for one job run, remembering whether it ever said no.

    Passes shared with the periodic work (repair, compact, GC) stop quietly
    when ``keep_going()`` turns false and return what they did; the job
    handler then calls ``raise_if_lost`` so a pass cut short is not reported
    as done.  Job-only code calls ``check`` between units instead."""

    def __init__(self, keep_going: Callable[[], bool]) -> None:
        self._keep_going = keep_going
        self.lost = False

    def __call__(self) -> bool:
        """True while the lease is held; once false, false for good (a
        lease renewed later does not make a half-run job whole)."""
        if not self.lost and not self._keep_going():
            self.lost = True
        return not self.lost

    def check(self) -> None:
        """Raise ``JobInterrupted`` unless the lease is still held."""
        if not self():
            raise JobInterrupted("the maintenance lease was lost")

    def raise_if_lost(self) -> None:
        """Raise ``JobInterrupted`` if a pass saw the lease lost (it then
        stopped early; its summary is partial)."""
        if self.lost:
            raise JobInterrupted("the maintenance lease was lost")


async def end_job(catalog, job: Job, why: str, rerun: bool, strict: bool = False) -> bool:
    """End a running ``job`` that will not finish under its owner: re-queue
    it (``rerun``, its kind may run again and it was not re-queued before:
    a job that kills its front end must not go round them all) or fail it
    with ``why``.  False if it changed meanwhile (another front end ended
    or took it) or the catalog refused; ``strict``: a refusal other than
    "changed meanwhile" (an outage) is raised instead, for a caller that
    must try again."""
    try:
        if rerun and job.kind in RERUNNABLE_JOBS and job.error is None:
            await catalog.requeue_job(job.job_id, job.owner, job.claim, f"{why}; re-queued")
            log.warn("job {id} ({kind}) {why}; re-queued", id=job.job_id, kind=job.kind, why=why)
            return True
        if job.error is not None:
            why = f"{why} (earlier: {job.error})"
        await catalog.finish_job(job.job_id, job.owner, job.claim, error=why)
        log.warn("job {id} ({kind}) {why}", id=job.job_id, kind=job.kind, why=why)
        return True
    except (LeaseHeld, NotFound) as e:
        log.warn("job {id}: cannot end it: {err}", id=job.job_id, err=e)
        return False
    except Exception as e:
        if strict:
            raise
        log.warn("job {id}: cannot end it: {err}", id=job.job_id, err=e)
        return False


def restart_of(job: Job) -> dict[str, Any] | None:
    """For a job claimed again after ``end_job`` re-queued it: why
    (``end_job``'s note, kept in its error until it finishes) and the
    progress its first run recorded last (at most ``progress_interval``
    old: a lower bound of what it did).  None for a first run.

    A handler runs again from the start (jobs converge on a state, so what
    the first run did is not redone), and its counts start at 0: the
    progress and the result carry this as ``restarted`` so the CLI can say
    so rather than show the counts fall back without a word."""
    if job.error is None:
        return None
    return {"why": job.error, "before": dict(job.progress or {})}


class JobRunner:
    """Claims and runs one job at a time for front end ``owner``."""

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        owner: str,
        handlers: Mapping[str, Handler],
        progress_interval: float = 0.5,
    ) -> None:
        self._clock = clock
        self._catalog = catalog
        self.owner = owner
        self.handlers = dict(handlers)
        self._interval = progress_interval
        #: The job ``run_one`` runs now, as (job id, claim) (None between
        #: jobs): any other claim of ``claimed`` the catalog shows running
        #: is an orphan of this life.
        self.current: tuple[int, int] | None = None
        #: Every claim this runner took, as (job id, claim): the jobs of
        #: this life.  A job running under ``owner`` with a claim not in
        #: here is another life's of the same name (a restarted front end,
        #: or the one before it woken from a pause), which this life's
        #: sweep must not end.  One pair per job run: admin jobs are few.
        self.claimed: set[tuple[int, int]] = set()

    async def run_one(self) -> Job | None:
        """Claim the oldest queued job we can run and run it to the end;
        fires with the finished Job, or None if there was none."""
        if not self.handlers:
            return None
        job = await self._catalog.claim_job(self.owner, sorted(self.handlers))
        if job is None:
            return None
        self.claimed.add((job.job_id, job.claim))
        restarted = restart_of(job)
        if restarted is None:
            log.info("job {id} ({kind}) started by {owner}", id=job.job_id, kind=job.kind,
                     owner=self.owner)  # fmt: skip
        else:
            log.warn(
                "job {id} ({kind}) started again by {owner} ({why}): its progress counts "
                "from 0, what the first run did stays done (it recorded {before})",
                id=job.job_id, kind=job.kind, owner=self.owner, why=restarted["why"],
                before=restarted["before"],
            )  # fmt: skip
        last = [float("-inf")]
        latest: list[dict[str, Any] | None] = [None]

        async def report(progress: dict[str, Any]) -> None:
            # Rate-limited: a pass over many blobs must not flood the catalog.
            if restarted is not None:
                progress = {**progress, "restarted": restarted}
            latest[0] = progress
            now = self._clock.seconds()
            if now - last[0] >= self._interval:
                last[0] = now
                await self._change(
                    self._catalog.update_job, job.job_id, self.owner, job.claim, progress
                )

        self.current = (job.job_id, job.claim)
        try:
            try:
                result = await self.handlers[job.kind](dict(job.args), report)
            finally:
                self.current = None
        except JobTaken as e:
            return await self._taken(job, e)
        except JobInterrupted as e:
            # The new lease holder may run it now: leave it to them (or
            # to the queue), as they would end it had we died.
            why = f"interrupted: front end {self.owner} lost the maintenance lease"
            log.warn("job {id} ({kind}) stopped: {err}", id=job.job_id, kind=job.kind, err=e)
            await end_job(self._catalog, job, why, rerun=True)
            return await self._catalog.get_job(job.job_id)
        except Exception as e:
            log.failure("job {id} ({kind}) failed", id=job.job_id, kind=job.kind)
            try:
                return await self._change(
                    self._catalog.finish_job,
                    job.job_id,
                    self.owner,
                    job.claim,
                    error=f"{e.__class__.__name__}: {e}",
                )
            except JobTaken as taken:
                return await self._taken(job, taken)
        if restarted is not None:
            result = {**result, "restarted": restarted}
        try:
            if latest[0] is not None:
                await self._change(
                    self._catalog.update_job, job.job_id, self.owner, job.claim, latest[0]
                )
            finished = await self._change(
                self._catalog.finish_job, job.job_id, self.owner, job.claim, result=result
            )
        except JobTaken as e:
            return await self._taken(job, e)
        log.info("job {id} ({kind}) done: {result}", id=job.job_id, kind=job.kind, result=result)
        return finished

    @staticmethod
    async def _change(change: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``change`` (``update_job``, ``finish_job``) of the running job;
        JobTaken if the catalog says it is no longer ours."""
        try:
            return await change(*args, **kwargs)
        except LeaseHeld as e:
            raise JobTaken(str(e)) from e

    async def _taken(self, job: Job, why: JobTaken) -> Job:
        """Stop ``job``, taken from us: one line, and the job as it is now
        (another front end's, or another run's of this name, to end or run)."""
        log.warn(
            "job {id} ({kind}) stopped: it is no longer this run's ({owner}, claim {claim}): {why}",
            id=job.job_id,
            kind=job.kind,
            owner=self.owner,
            claim=job.claim,
            why=why,
        )
        return await self._catalog.get_job(job.job_id)
