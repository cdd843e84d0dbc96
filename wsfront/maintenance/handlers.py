"""The admin jobs a front end runs, by kind, as ``JobRunner`` handlers.

Job arguments are what ``wsfs`` puts in the queue: ``repair {"now": true}``,
``fsck {"fix": bool}``, ``drain {"node": NAME}``, ``rebalance
{"max_bytes": n}``, ``compact {"min_extents": n, "max_files": n}`` (both
optional).  Each handler reports progress and fires with the result
dict the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsfront.maintenance.compact import Compactor
from wsfront.maintenance.fsck import fsck
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.jobs import Handler, Report
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
    """Handlers for ``repair``, ``fsck``, ``drain``, ``rebalance`` and
    ``compact``."""

    async def repair_job(args: dict[str, Any], report: Report) -> dict[str, Any]:
        # A test kills the front end here: the job is claimed and running.
        failpoints.hit("maintenance.repair_job")
        return await repairer.run_pass(
            now=bool(args.get("now", True)), progress=report, keep_going=keep_going
        )

    async def fsck_job(args: dict[str, Any], report: Report) -> dict[str, Any]:
        return await fsck(catalog, pool, repairer, gc, fix=bool(args.get("fix")), progress=report)

    async def drain_job(args: dict[str, Any], report: Report) -> dict[str, Any]:
        return await drain(catalog, pool, repairer, str(args["node"]), progress=report)

    async def rebalance_job(args: dict[str, Any], report: Report) -> dict[str, Any]:
        limit = args.get("max_bytes")
        return await rebalance(
            catalog, pool, repairer, None if limit is None else int(limit), progress=report
        )

    async def compact_job(args: dict[str, Any], report: Report) -> dict[str, Any]:
        min_extents, max_files = args.get("min_extents"), args.get("max_files")
        return await compactor.run_pass(
            progress=report,
            keep_going=keep_going,
            min_extents=None if min_extents is None else int(min_extents),
            max_files=None if max_files is None else int(max_files),
            count=True,
        )

    return {
        "repair": repair_job,
        "fsck": fsck_job,
        "drain": drain_job,
        "rebalance": rebalance_job,
        "compact": compact_job,
    }
