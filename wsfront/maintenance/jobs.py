"""Running the admin jobs the CLI queues (``repair``, ``fsck``, ``drain``...).

The CLI cannot reach the storage tier; it enqueues a job in the catalog and
polls it.  A front end holding the maintenance lease claims queued jobs of
the kinds it has handlers for (the claim is a compare-and-set, so one front
end runs each job), records progress as the handler reports it, and
finishes the job with the handler's result or its error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront.catalog.records import Job

log = Logger()

Report = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Report], Awaitable[dict[str, Any]]]


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

    async def run_one(self) -> Job | None:
        """Claim the oldest queued job we can run and run it to the end;
        fires with the finished Job, or None if there was none."""
        if not self.handlers:
            return None
        job = await self._catalog.claim_job(self.owner, sorted(self.handlers))
        if job is None:
            return None
        log.info("job {id} ({kind}) started by {owner}", id=job.job_id, kind=job.kind,
                 owner=self.owner)  # fmt: skip
        last = [float("-inf")]
        latest: list[dict[str, Any] | None] = [None]

        async def report(progress: dict[str, Any]) -> None:
            # Rate-limited: a pass over many blobs must not flood the catalog.
            latest[0] = progress
            now = self._clock.seconds()
            if now - last[0] >= self._interval:
                last[0] = now
                await self._catalog.update_job(job.job_id, self.owner, progress)

        try:
            result = await self.handlers[job.kind](dict(job.args), report)
        except Exception as e:
            log.failure("job {id} ({kind}) failed", id=job.job_id, kind=job.kind)
            return await self._catalog.finish_job(
                job.job_id, self.owner, error=f"{e.__class__.__name__}: {e}"
            )
        if latest[0] is not None:
            await self._catalog.update_job(job.job_id, self.owner, latest[0])
        log.info("job {id} ({kind}) done: {result}", id=job.job_id, kind=job.kind, result=result)
        return await self._catalog.finish_job(job.job_id, self.owner, result=result)
