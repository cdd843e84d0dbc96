"""Node lifecycle: drain a storage server, rebalance toward an even fill.

Both move replicas the same safe way: copy first (``Repairer.copy``, storage
to storage, throttled, checked against the catalog), record the new replica,
and only then mark the old one stale.  A blob therefore never has fewer ok
replicas than before; the stale copy's bytes are removed later by GC's
storage sweep (a *stray*).  Only sealed blobs move; a live upload's current
blob stays with its session (drain reports it as ``busy``).

Both stop between blobs once ``keep_going()`` is false (the runner lost the
maintenance lease, and another front end may be moving the same replicas):
a move begun is finished first (copy, record, mark the source stale), so
the next runner finds each blob either not moved or moved, never a copy
recorded with the source still counted.  The job then ends interrupted
(``handlers``), not done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_OK, REPLICA_STALE
from wsfront.maintenance.inventory import referenced_blob_ids
from wsfront.maintenance.repair import (
    Progress,
    Repairer,
    delete_unrecorded,
    draining_nodes,
    unvouched_replicas,
)
from wsfront.transfer.pool import StoragePool
from wsstorage import failpoints

log = Logger()


async def _tell(progress: Progress | None, stats: dict[str, Any]) -> None:
    if progress is not None:
        result = progress(dict(stats))
        if result is not None:
            await result


async def _retire(
    catalog, pool: StoragePool, blob_id: str, source: str, copy: str, job: str
) -> bool:
    """Mark ``source``'s replica of ``blob_id`` stale once its copy on
    ``copy`` is recorded: the move is done (True).  False if GC forgot the
    blob between the copy's record and this mark (nothing references it
    any more: there is nothing left to move, and the job goes on): its
    forget removed the copy's row with the others and named ``copy`` to GC,
    which deletes that copy; it is deleted here too, so one GC could not
    reach is not left for the storage sweep (a blob's id is never used
    again: any copy of a forgotten blob is garbage, and a second delete
    finds nothing)."""
    try:
        await catalog.mark_replica(blob_id, source, REPLICA_STALE)
        return True
    except catalog_errors.NotFound:
        try:
            await catalog.get_blob(blob_id)
        except catalog_errors.NotFound:
            pass
        else:
            raise  # the blob is there but the replica row is not: not a collection
    log.info(
        "{job}: {blob} was collected once copied to {dst}; nothing to move, the copy is deleted",
        job=job,
        blob=blob_id,
        dst=copy,
    )
    await delete_unrecorded(pool, blob_id, copy, job)
    return False


async def drain(
    catalog,
    pool: StoragePool,
    repairer: Repairer,
    node: str,
    progress: Progress | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """Re-home every replica on ``node`` to other servers; afterwards the
    catalog counts no ok replica there and the server can go.

    ``node`` must be marked ``draining`` in the catalog (queueing a drain
    job marks it).  Once it is not (``wsfs undrain``), the drain stops
    before its next move and reports ``cancelled``: the mark, not the job,
    says whether the server is leaving, so a drain job queued again after
    its runner died does not bring a drain the operator ended back."""
    looked_up = pool.lookup([node])
    if looked_up is not None:
        await looked_up  # registered since this front end last read the registry
    if node not in pool.names():
        raise ValueError(f"unknown storage server {node!r}")
    stats: dict[str, Any] = {"node": node, "moved": 0, "copied": 0, "bytes": 0, "failed": 0,
                             "busy": 0, "stuck": [], "cancelled": False,
                             # Blobs with no ok replica, only stale or lost ones,
                             # one here (``copy_from_unvouched``).
                             "from_stale": [], "no_verified_replica": []}  # fmt: skip
    if node not in await draining_nodes(catalog):
        stats["cancelled"] = True
        return stats
    for blob_id in sorted(await referenced_blob_ids(catalog)):
        if not keep_going():
            break
        try:
            blob = await catalog.get_blob(blob_id)
        except catalog_errors.NotFound:
            continue
        unvouched = unvouched_replicas(blob)
        if node not in blob.ok_replicas and (blob.ok_replicas or node not in unvouched):
            continue
        if not blob.sealed:
            stats["busy"] += 1
            continue
        # Asked before each move: a drain of another server may have begun
        # (no home either), this one may have been ended.
        leaving = await draining_nodes(catalog)
        if node not in leaving:
            stats["cancelled"] = True
            break
        if not blob.ok_replicas:
            # Its only copies are stale or lost ones (their servers back
            # after being marked lost, say), one of them here: the server
            # may not go before a verified copy of it is made elsewhere,
            # or this may be the last copy of the file.
            try:
                verified = await repairer.copy_from_unvouched(
                    blob, unvouched, set(), leaving, stats
                )
            except catalog_errors.NotFound:
                continue  # GC collected it meanwhile (the copy is deleted): nothing to move
            if verified:
                stats["moved"] += 1
            else:
                stats["stuck"].append(blob_id)
            await _tell(progress, stats)
            continue
        ok = set(blob.ok_replicas)
        sources = [n for n in pool.order_for_read(sorted(ok)) if pool.is_up(n)]
        sources.sort(key=lambda n: n == node)  # spare the draining server
        targets = repairer.targets(blob, exclude=ok | leaving)
        moved = False
        try:
            for target in targets:
                if await repairer.copy(blob, target, sources, stats):
                    moved = True
                    break
        except catalog_errors.NotFound:
            continue  # GC collected it meanwhile (the copy is deleted): nothing to move
        if moved:
            if not await _retire(catalog, pool, blob_id, node, target, "drain"):
                continue  # collected between its copy and the mark: nothing to move
            stats["moved"] += 1
        else:
            stats["stuck"].append(blob_id)
        await _tell(progress, stats)
        # A test kills the front end here, mid-drain (count: replicas moved).
        failpoints.hit("maintenance.drain_move", stats["moved"])
    return stats


async def rebalance(
    catalog,
    pool: StoragePool,
    repairer: Repairer,
    max_bytes: int | None = None,
    progress: Progress | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """Move replicas from the server holding the most bytes to the one
    holding the least while that narrows the gap (at most ``max_bytes``).
    The fill is measured as the bytes of ok replicas each server holds, so
    servers sharing a disk (or of different sizes) compare fairly.  A
    server being drained takes no part: it is emptying, so its fill says
    nothing, and a replica moved onto it would be left there with it."""
    await pool.probe_all()
    draining = await draining_nodes(catalog)
    live = [n for n in pool.names() if pool.is_up(n) and n not in draining]
    stats: dict[str, Any] = {"moved": 0, "copied": 0, "bytes": 0, "failed": 0}
    if len(live) < 2:
        return stats
    held: dict[str, dict[str, int]] = {}
    for node in live:
        held[node] = {i.blob_id: i.size for i in await pool.client(node).list_blobs() if i.sealed}
    load = {n: 0 for n in live}
    movable: dict[str, list[tuple[int, str]]] = {n: [] for n in live}
    for node, blobs in held.items():
        for blob_id, size in blobs.items():
            try:
                blob = await catalog.get_blob(blob_id)
            except catalog_errors.NotFound:
                continue
            if node in blob.ok_replicas:
                load[node] += size
                if blob.sealed:
                    movable[node].append((size, blob_id))
    stats["before"] = dict(load)
    # The room each server last reported (just probed) above its reserve,
    # less what is placed there: a blob that would not fit on the emptiest
    # server is not sent there (a rebalance is no reason to eat a reserve).
    free = {
        n.name: n.free_bytes - n.reserve_bytes - n.placed_bytes
        for n in pool.nodes()
        if n.last_seen is not None
    }
    tried: set[str] = set()
    while max_bytes is None or stats["bytes"] < max_bytes:
        if not keep_going():
            break
        src = max(live, key=lambda n: (load[n], n))
        dst = min(live, key=lambda n: (load[n], n))
        gap = load[src] - load[dst]
        room = free.get(dst)
        candidates = sorted(
            (
                c
                for c in movable[src]
                if c[0] * 2 <= gap and c[1] not in tried and (room is None or c[0] <= room)
            ),
            reverse=True,
        )
        chosen = None
        for size, blob_id in candidates:
            tried.add(blob_id)
            try:
                blob = await catalog.get_blob(blob_id)
            except catalog_errors.NotFound:
                continue  # collected since the listing
            states = {r.node: r.state for r in blob.replicas}
            if states.get(src) != REPLICA_OK or states.get(dst) == REPLICA_OK:
                continue
            chosen = (size, blob)
            break
        if chosen is None:
            break
        size, blob = chosen
        try:
            copied = await repairer.copy(blob, dst, [src], stats)
        except catalog_errors.NotFound:
            # GC collected it meanwhile (the copy is deleted): src holds it no more.
            movable[src] = [c for c in movable[src] if c[1] != blob.blob_id]
            load[src] -= size
            continue
        if not copied:
            break
        retired = await _retire(catalog, pool, blob.blob_id, src, dst, "rebalance")
        movable[src] = [c for c in movable[src] if c[1] != blob.blob_id]
        load[src] -= size
        if not retired:
            continue  # collected between its copy and the mark: dst holds it no more
        load[dst] += size
        if room is not None:
            free[dst] = room - size
        stats["moved"] += 1
        await _tell(progress, stats)
    stats["after"] = dict(load)
    return stats
