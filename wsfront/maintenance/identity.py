"""Notice a storage server that came back on another data directory.

Every store has an identity (``wsstorage.diskformat.StoreIdentity``: a
random id given when its data directory was created) that its server
reports in each health answer; the pool keeps the last one it heard
(``NodeState.store_id``) and the catalog's registry the one the cluster
knows (``nodes.store_id``).  A server whose data directory was emptied or
replaced (a wiped disk, a new one) starts a fresh store and answers with a
new id: none of the replicas the catalog lists there exist any more.

The holder of the maintenance lease (``MaintenanceService``) checks here,
every tick, each server whose id the pool heard differs from the one it
last confirmed.  A first id (the registry has none: a new server, or one
that has just learnt to report it) is taken as it is, without a word.  A
different one is a replacement: the replicas the catalog lists there that
the server no longer holds are marked lost, fsck's rule for a missing
replica (``fsck.check``), so that the next repair pass (run at once)
copies them back from the other replicas; then the registry takes the new
id, with the old one, when and how many were lost for ``wsfs status``, and
one warning says so.  The marks come before the registry's new id, so a
holder that dies between them leaves the change to its successor, which
marks again (marks are idempotent) and records it.
"""

from __future__ import annotations

import math
import time

from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK
from wsfront.maintenance.inventory import referenced_blob_ids
from wsfront.transfer.pool import NodeState, StoragePool

log = Logger()

#: Most checks skipped between two tries of a new store whose listing
#: failed: the waits double from 1 up to this (64 ticks of 2 s: about two
#: minutes), so a replacement disk that answers health but cannot list
#: (EIO) does not cost a walk of the whole catalog and a warning per tick.
RETRY_MAX_CHECKS = 64


def _when(created: float | None) -> str:
    if created is None or not math.isfinite(created):
        return "at an unknown time"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created))
    except (OverflowError, OSError, ValueError):
        return "at an unknown time"


class StoreWatch:
    """The maintenance lease holder's check of its servers' store ids."""

    def __init__(self, catalog, pool: StoragePool) -> None:
        self._catalog = catalog
        self._pool = pool
        #: Server name -> the id this front end last found the registry to
        #: agree with: a server whose probes name it costs no catalog read.
        self._confirmed: dict[str, str] = {}
        #: Server name -> (the new id whose listing failed, checks still to
        #: skip, the last wait): see RETRY_MAX_CHECKS.
        self._retry: dict[str, tuple[str, int, int]] = {}

    def _waiting(self, node: NodeState) -> bool:
        """Whether ``node``'s new store is left alone this check, its
        listing having failed lately (one skipped check counted)."""
        retry = self._retry.get(node.name)
        if retry is None or retry[0] != node.store_id or retry[1] == 0:
            return False
        self._retry[node.name] = (retry[0], retry[1] - 1, retry[2])
        return True

    def _changed(self) -> list[NodeState]:
        return [
            n
            for n in self._pool.nodes()
            if n.up and n.store_id is not None and n.store_id != self._confirmed.get(n.name)
        ]

    async def check(self) -> list[str]:
        """Compare what the pool heard with the registry; handle each
        replacement; return the names of the servers found replaced (their
        lost replicas marked: the caller should repair now)."""
        changed = [n for n in self._changed() if not self._waiting(n)]
        if not changed:
            return []
        registry = {n.name: n for n in await self._catalog.list_nodes()}
        replaced = []
        for node in changed:
            known = registry.get(node.name)
            if known is None:
                continue  # not registered (any more): nothing to compare with
            reported = node.store_id
            assert reported is not None
            if known.store_id == reported:
                self._confirmed[node.name] = reported
            elif known.store_id is None:
                if await self._catalog.set_node_store(node.name, None, reported):
                    self._confirmed[node.name] = reported
                    log.info(
                        "storage server {name} runs on store {store} (created {created})",
                        name=node.name,
                        store=reported,
                        created=_when(node.store_created),
                    )
            else:
                try:
                    if await self._replaced(node, known.store_id, reported):
                        replaced.append(node.name)
                except catalog_errors.CatalogError:
                    raise
                except Exception as e:
                    self._failed(node.name, reported, e)
                else:
                    self._retry.pop(node.name, None)
        return replaced

    def _failed(self, name: str, reported: str, error: Exception) -> None:
        """The listing of ``name``'s new store failed (down again, a disk
        error): nothing was marked; try again after a wait that doubles,
        saying so once per new store."""
        last = self._retry.get(name)
        if last is not None and last[0] == reported:
            wait = min(last[2] * 2, RETRY_MAX_CHECKS)
        else:
            wait = 1
            log.warn(
                "storage server {name} answers as another store, but its blobs cannot be "
                "listed yet (tried again after 1, 2, 4 ... up to {most} ticks): {err}",
                name=name,
                most=RETRY_MAX_CHECKS,
                err=error,
            )
        self._retry[name] = (reported, wait, wait)

    async def _replaced(self, node: NodeState, old: str, new: str) -> bool:
        """``node`` answers as store ``new`` where the registry knows
        ``old``: mark what it lost, then record the change.  False if the
        registry changed meanwhile (nothing recorded: the next check sees)."""
        listed, missing = await missing_replicas(self._catalog, self._pool, node.name)
        for blob_id in missing:
            try:
                await self._catalog.mark_replica(blob_id, node.name, REPLICA_LOST)
            except catalog_errors.NotFound:
                continue  # the blob or its replica went meanwhile
        if not await self._catalog.set_node_store(node.name, old, new, len(missing)):
            return False
        self._confirmed[node.name] = new
        log.warn(
            "storage server {name} came back on another data directory: it answers as "
            "store {new} (created {created}), the catalog knew it as store {old}; its data "
            "directory was wiped or replaced.  The catalog lists {listed} replica(s) there; "
            "{lost} of them are gone, marked lost, and are copied back from other replicas "
            "by repair",
            name=node.name,
            new=new,
            created=_when(node.store_created),
            old=old,
            listed=listed,
            lost=len(missing),
        )
        return True


async def missing_replicas(catalog, pool: StoragePool, node: str) -> tuple[int, list[str]]:
    """How many ok replicas the catalog lists on ``node`` (of blobs files
    and live uploads refer to), and the sealed blobs among them that the
    server does not hold: fsck's *missing* (``fsck.check``), for one
    server.  Only sealed blobs: a live upload's current blob belongs to its
    write session, which drops a replica that fails it.

    The catalog is walked first and the server listed after: a blob the
    walk found sealed there was sealed before the listing began, so it is
    listed if the server holds it, and a blob written to the new store
    meanwhile is never taken for missing.  Raises what the listing raises
    (the server went down again): nothing is marked, the next check tries
    again."""
    candidates: list[str] = []
    listed = 0
    for blob_id in sorted(await referenced_blob_ids(catalog)):
        try:
            blob = await catalog.get_blob(blob_id)
        except catalog_errors.NotFound:
            continue
        if any(r.node == node and r.state == REPLICA_OK for r in blob.replicas):
            listed += 1
            if blob.sealed:
                candidates.append(blob_id)
    held = {info.blob_id for info in await pool.client(node).list_blobs()}
    return listed, [b for b in candidates if b not in held]
