"""The admin jobs a front end runs, by kind, as ``JobRunner`` handlers.

Job arguments are what ``wsfs`` puts in the queue: ``repair {"now": true}``,
``fsck {"fix": bool}``, ``drain {"node": NAME}``, ``rebalance
{"max_bytes": n}``, ``compact {"min_extents": n, "max_files": n}`` (both
optional), ``gc {}``.  Each handler reports progress and fires with the result
dict the CLI prints.  Each checks, between its units of work, that its
runner still holds the maintenance lease (``jobs.LeaseCheck``, one per run)
and stops with ``JobInterrupted`` once it does not: a second runner of the
same drain or rebalance would move replicas twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from wsfront.maintenance.compact import Compactor
from wsfront.maintenance.fsck import fsck
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.jobs import Handler, LeaseCheck, Report
from wsfront.maintenance.nodes import drain, rebalance
from wsfront.maintenance.repair import Repairer
from wsfront.transfer.pool import StoragePool
from wsstorage import failpoints


def job_handlers(
    repairer: Repairer,
    gc: GarbageCollector,
    catalog,
    pool: StoragePool,
    compactor: Compactor,
    keep_going: Callable[[], bool] = lambda: True,
) -> dict[str, Handler]:
    """Handlers for ``repair``, ``fsck``, ``drain``, ``rebalance``,
    ``compact`` and ``gc``.

    ``gc`` must be the front end's own collector (the scheduled passes'):
    its grace periods count from the first time *it* saw a blob as
    garbage, so a pass run as a job keeps every safety setting and every
    grace already under way: it runs earlier than the schedule would, never
    deletes anything sooner than a scheduled pass could, unless the
    operator asks for a shorter grace for deleted files' (sealed) blobs
    (``wsfs gc --grace``)."""

    def guarded(
        run: Callable[[dict[str, Any], Report, LeaseCheck], Awaitable[dict[str, Any]]],
    ) -> Handler:
        """``run`` with a fresh ``LeaseCheck``; a run that saw the lease
        lost ends as interrupted even if it returned a (partial) summary."""

        async def handler(args: dict[str, Any], report: Report) -> dict[str, Any]:
            lease = LeaseCheck(keep_going)
            lease.check()
            result = await run(args, report, lease)
            lease.raise_if_lost()
            return result

        return handler

    async def repair_job(args: dict[str, Any], report: Report, lease: LeaseCheck) -> dict:
        # A test kills the front end here: the job is claimed and running.
        failpoints.hit("maintenance.repair_job")
        return await repairer.run_pass(
            now=bool(args.get("now", True)), progress=report, keep_going=lease
        )

    async def fsck_job(args: dict[str, Any], report: Report, lease: LeaseCheck) -> dict:
        fix = bool(args.get("fix"))
        return await fsck(catalog, pool, repairer, gc, fix=fix, progress=report, keep_going=lease)

    async def drain_job(args: dict[str, Any], report: Report, lease: LeaseCheck) -> dict:
        node = str(args["node"])
        return await drain(catalog, pool, repairer, node, progress=report, keep_going=lease)

    async def rebalance_job(args: dict[str, Any], report: Report, lease: LeaseCheck) -> dict:
        limit = args.get("max_bytes")
        return await rebalance(
            catalog,
            pool,
            repairer,
            None if limit is None else int(limit),
            progress=report,
            keep_going=lease,
        )

    async def compact_job(args: dict[str, Any], report: Report, lease: LeaseCheck) -> dict:
        min_extents, max_files = args.get("min_extents"), args.get("max_files")
        return await compactor.run_pass(
            progress=report,
            keep_going=lease,
            min_extents=None if min_extents is None else int(min_extents),
            max_files=None if max_files is None else int(max_files),
            count=True,
        )

    async def gc_job(args: dict[str, Any], report: Report, lease: LeaseCheck) -> dict:
        # The pass reports once, at its end; say it started, so the CLI
        # shows more than a silent wait over a long sweep.
        await report({"phase": "collecting"})
        grace = args.get("grace_seconds")
        if grace is not None:
            grace = float(grace)
            if not 0 <= grace < float("inf"):
                raise ValueError(f"grace_seconds must be a finite number >= 0, not {grace!r}")
        return await gc.run_pass(progress=report, keep_going=lease, grace=grace)

    return {
        "repair": guarded(repair_job),
        "fsck": guarded(fsck_job),
        "drain": guarded(drain_job),
        "rebalance": guarded(rebalance_job),
        "compact": guarded(compact_job),
        "gc": guarded(gc_job),
    }
