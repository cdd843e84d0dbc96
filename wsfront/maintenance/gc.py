"""Garbage collection: delete the bytes nothing references any more.

The pass first expires overdue uploads (their blobs become collectable)
and purges the catalog rows of uploads finished longer ago than
``upload_retention_seconds`` (a week; nothing reads them after that: see
``purge_uploads`` in the catalog and docs/maintenance.md).

Two sources of garbage:

* **collectable blobs** (``catalog.collectable_blobs``): blobs of
  overwritten or deleted files, aborted and expired uploads.  Once a blob
  has been seen collectable for ``grace_seconds`` (downloads that started
  before the delete may still be reading it), its replicas are deleted from
  every reachable server and the record is forgotten (``forget_blob``).
  Copies on servers that were unreachable are left behind, to be found by:
* the **storage sweep**: each live server's ``list_blobs`` is compared with
  the catalog.  A blob the catalog does not know (an *orphan*: a delete
  missed while the server was away) and a copy the catalog does not count
  ok while the blob has its wanted ok replicas elsewhere (a *stray*: a
  replica that missed a fence, or was replaced by repair while its server
  was away) are deleted once they have been seen so for
  ``orphan_grace_seconds``, after a last check against the catalog.

Safety rules (docs/maintenance.md): the catalog records a blob before any
byte of it is written, so a blob being written is never an orphan; grace
periods are counted from the first time *this* collector saw the blob as
garbage while its front end held the maintenance lease (an fsck's
sighting of a stray included: ``sweep_after``; a restarted front end, or
one that took the lease again, starts counting again, never sooner:
``forget_sightings``); a
server where more than ``orphan_guard`` of the blobs look orphaned, or every
server when that holds over the whole cluster, is left alone (a catalog
that lost data, or the wrong catalog, must not empty the storage tier); a
blob the catalog still references is never deleted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_OK, BlobRecord
from wsfront.maintenance.repair import Progress
from wsfront.transfer.pool import StoragePool
from wsstorage import errors as storage_errors
from wsstorage.records import BlobInfo

log = Logger()

ORPHAN = "orphan"
STRAY = "stray"

#: Why the sweep deletes nothing on a server (``GarbageCollector.spared``).
UNBOUND = "not bound to this cluster"
CLUSTER_WIDE = "too many unknown blobs cluster-wide"
GUARDED = "too many unknown blobs"


def _whole_at_least_one(instance: object, attribute: attrs.Attribute, value: int) -> None:
    """``GCSettings``' validator of counts (a batch, passes) that at 0
    would make a loop run for ever or a walk never start again."""
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{attribute.name} must be a whole number, at least 1, not {value!r}")


@attrs.frozen
class GCSettings:
    """Knobs of garbage collection."""

    #: Seconds a blob stays collectable before its bytes are deleted.
    grace_seconds: float = 3600.0
    #: Seconds an orphan or stray copy is left alone after it is first seen.
    orphan_grace_seconds: float = 3600.0
    #: Above this fraction of a server's blobs looking orphaned, touch nothing.
    orphan_guard: float = 0.9
    #: ... unless the server holds fewer orphans than this.
    orphan_guard_min: int = 8
    #: Blobs fetched from the catalog at a time, and uploads expired or
    #: purged per write transaction.  At least 1: the expiry loops until a
    #: batch comes back short, which one of 0 never is.
    batch: int = attrs.field(default=100, validator=_whole_at_least_one)

    #: Expire overdue uploads first, so their blobs become collectable.
    expire_uploads: bool = True
    #: Seconds the catalog keeps the row of a finished (committed, aborted,
    #: expired) upload before the pass purges it (None: kept for ever, as
    #: ``--upload-retention-days 0`` asks).  Until then
    #: a tus client can still learn, by HEAD of its upload's URL, that an
    #: upload whose last reply it lost did complete; after, the URL is 404,
    #: as tusd's for an upload its expiry removed.
    upload_retention_seconds: float | None = 7 * 86400.0
    #: Seconds (on the collector's clock) one pass may spend purging; the
    #: rest of a backlog waits for the next pass.  The pass runs inside the
    #: maintenance tick, which admin jobs, the interruption of a crashed
    #: front end's uploads, repair and SIGTERM wait for: a first pass over
    #: a million rows kept before the purge existed would hold them minutes.
    #: More than 0 and finite: a pass with no time to purge would purge
    #: nothing, silently, for ever.
    purge_pass_seconds: float = attrs.field(default=10.0)

    @purge_pass_seconds.validator
    def _check_purge_pass_seconds(self, attribute, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(
                f"purge_pass_seconds must be a number of seconds above 0, not {value!r} "
                "(a pass with no time to purge purges nothing)"
            )

    #: Passes one walk of the purge (from the oldest end of the finished
    #: uploads' index, each pass going on where the previous one stopped)
    #: may span; the next pass starts again at the oldest end, for rows
    #: that finished behind the walk's cursor (``_purge_uploads``).  With
    #: the scheduled pass every 10 minutes, 6 is an hour.  At least 1.
    purge_restart_passes: int = attrs.field(default=6, validator=_whole_at_least_one)


@attrs.frozen
class Garbage:
    """A copy on one server that the sweep found unreferenced."""

    node: str
    blob_id: str
    kind: str
    size: int


class GarbageCollector:
    """GC passes of one front end (the maintenance lease holder)."""

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        pool: StoragePool,
        settings: GCSettings | None = None,
    ) -> None:
        self._clock = clock
        self._catalog = catalog
        self._pool = pool
        self.settings = settings or GCSettings()
        self._collectable_since: dict[str, float] = {}
        self._garbage_since: dict[tuple[str, str], float] = {}
        #: The purge's keyset cursor, carried from one pass to the next
        #: (None: the next pass starts at the oldest end), and how many
        #: passes the walk it belongs to has run.
        self._purge_after: float | None = None
        self._purge_walk_passes = 0
        #: Finished uploads' rows this collector purged, all passes
        #: together (``/-/metrics``: ``wsfs_gc_purged_uploads_total``).
        self.purged_uploads_total = 0

    async def run_pass(
        self,
        progress: Progress | None = None,
        keep_going: Callable[[], bool] = lambda: True,
        grace: float | None = None,
    ) -> dict[str, Any]:
        """Expire uploads, purge old finished ones, collect collectable
        blobs, sweep the servers; each step stops between its units of work
        (a batch, a blob, a copy) once ``keep_going()`` is false (the lease
        is lost: the new holder runs its own pass), and the steps after it
        do not start.  ``grace``: for this pass, the seconds a blob stays
        collectable before its bytes go, instead of ``grace_seconds``
        (``wsfs gc --grace``: an operator freeing a full cluster now)."""
        stats: dict[str, Any] = {"expired_uploads": 0, "purged_uploads": 0}
        if self.settings.expire_uploads:
            stats["expired_uploads"] = await self._expire_uploads(keep_going)
        if self.settings.upload_retention_seconds is not None:
            stats["purged_uploads"] = await self._purge_uploads(keep_going)
        stats.update(await self.collect(keep_going, grace))
        if keep_going():
            stats.update(await self.sweep(keep_going=keep_going))
        if progress is not None:
            result = progress(dict(stats))
            if result is not None:
                await result
        return stats

    async def _expire_uploads(self, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Expire uploads in transactions of ``batch``, so other writes get
        the catalog's writer between them; none after ``keep_going()`` is
        false."""
        now = self._clock.seconds()
        total = 0
        while keep_going():
            expired = await self._catalog.expire_uploads(now, self.settings.batch)
            total += len(expired)
            if len(expired) < self.settings.batch:
                break
        return total

    async def _purge_uploads(self, keep_going: Callable[[], bool]) -> int:
        """Purge finished uploads past their retention in transactions of
        ``batch`` (as ``_expire_uploads``), while ``keep_going()`` (the
        lease) and for at most ``purge_pass_seconds``: the first pass on a
        store that kept every upload may have millions to delete, which
        several passes share rather than one holding the maintenance tick
        (and a SIGTERM waiting for it).  A batch is never cut short, so a
        pass may overrun the bound by one batch.

        Each batch starts where the previous one ended (the catalog's
        keyset cursor ``after``), and so does a pass where the previous
        pass stopped (the cursor is kept in the collector), not at the
        index's oldest end, which PostgreSQL fills with dead entries until
        VACUUM: a backlog shared by many passes would otherwise be walked
        again from its start by each.

        Why that skips nothing for long: the walk purged every finished
        row below its cursor, and the cursor is at most the cutoff
        (``now - retention``; an hour at least from the command line).  A
        row finishes once, with ``updated_at`` the finishing front end's
        clock then, and never changes after; so a row finishing later
        lands above the cursor, unless that clock is more than the retention behind this
        one (a skewed front end, a clock stepped back).  Such a row would
        wait below the cursor; hence a pass starts again at the oldest end
        when the previous one found nothing more (the walk is over), when
        the cutoff has moved below the cursor (this clock stepped back:
        the walk's range is empty), and after ``purge_restart_passes``
        passes of one walk (a backlog that never drains, the late row
        still waits at most that many passes).  Starting at the oldest
        end is only slower on PostgreSQL, never wrong: the cursor is an
        optimisation, the cutoff the rule."""
        retention = self.settings.upload_retention_seconds
        assert retention is not None
        started = self._clock.seconds()
        before = started - retention
        total = 0
        after = self._purge_after
        if after is not None and (
            after > before or self._purge_walk_passes >= self.settings.purge_restart_passes
        ):
            after = self._purge_after = None
        if after is None:
            self._purge_walk_passes = 0
        self._purge_walk_passes += 1
        while keep_going():
            if self._clock.seconds() - started >= self.settings.purge_pass_seconds:
                log.info(
                    "gc: purge paused after {seconds:g} s and {count} upload(s); "
                    "the next pass goes on",
                    seconds=self.settings.purge_pass_seconds,
                    count=total,
                )
                break
            result = await self._catalog.purge_uploads(before, self.settings.batch, after)
            total += result.count
            self.purged_uploads_total += result.count
            if result.last_updated_at is None or result.count < self.settings.batch:
                self._purge_after = None  # the walk is over: the next starts anew
                break
            after = self._purge_after = result.last_updated_at
        if total:
            log.info(
                "gc: purged {count} upload(s) finished over {days:g} days ago",
                count=total,
                days=retention / 86400,
            )
        return total

    # -- collectable blobs ------------------------------------------------

    async def collect(
        self, keep_going: Callable[[], bool] = lambda: True, grace: float | None = None
    ) -> dict[str, Any]:
        """Delete and forget blobs collectable for longer than the grace
        (``grace`` for sealed blobs, else ``grace_seconds``); no further delete once
        ``keep_going()`` is false (the lease is lost: the new holder's pass
        deletes the rest, while this one's deletes would run beside it).  A
        blob being deleted is finished first."""
        now = self._clock.seconds()
        usual = self.settings.grace_seconds
        if grace is None:
            grace = usual
        skip: set[str] = set()
        seen: set[str] = set()
        forgotten = 0
        left_behind = 0
        complete = False
        while keep_going():
            limit = self.settings.batch + len(skip)
            batch = await self._catalog.collectable_blobs(limit)
            todo = [b for b in batch if b.blob_id not in skip]
            if not todo:
                complete = True
                break
            for blob in todo:
                if not keep_going():
                    break
                seen.add(blob.blob_id)
                since = self._collectable_since.setdefault(blob.blob_id, now)
                # A one-off grace is for the sealed blobs of deleted and
                # overwritten files: an unsealed one may be a compaction's
                # new blob, unreferenced only until its swap commits.
                if now - since < (grace if blob.sealed else usual):
                    skip.add(blob.blob_id)
                    continue
                missed = await self._delete_replicas(blob)
                left_behind += len(missed)
                try:
                    removed = await self._catalog.forget_blob(blob.blob_id)
                except catalog_errors.Exists:
                    log.error("gc: blob {blob} is referenced again; kept", blob=blob.blob_id)
                    skip.add(blob.blob_id)
                    continue
                except catalog_errors.NotFound:
                    removed = []
                again = self._made_since(blob, removed, missed)
                if again:
                    also = await self._delete_replicas(blob, again, again=True)
                    left_behind += len(set(also) - set(missed))
                self._collectable_since.pop(blob.blob_id, None)
                forgotten += 1
            if len(batch) < limit:
                complete = keep_going()
                break
        if complete:
            # Only a full listing says a blob is no longer collectable: one
            # cut short would restart the grace of the blobs it did not reach.
            for blob_id in list(self._collectable_since):
                if blob_id not in seen:
                    del self._collectable_since[blob_id]
        return {"forgotten": forgotten, "waiting": len(skip), "left_behind": left_behind}

    @staticmethod
    def _made_since(blob: BlobRecord, removed: list[str], missed: list[str]) -> list[str]:
        """The servers of ``removed`` (the replica rows ``forget_blob``
        removed) that may hold a copy made after GC's listing ``blob`` and
        its deletes there (a repair, drain or rebalance copy that landed
        meanwhile): the forget removed its row too, so it is deleted now,
        not left for the storage sweep as an orphan.

        * a server the listing had no row for (a copy recorded since);
        * a server whose row the listing did not count ok (stale or lost)
          and whose copy GC's delete reached (gone since, or never there):
          a copier never targets a server it counts ok, but does replace a
          stale or lost copy there, and may have done so after that delete.
          A server GC could not reach is already counted as left behind.

        Not every server again: a second delete of each replica of each
        collected blob would double GC's deletes for copies that, but for
        a stale or lost one, can only be its own.  (A row ok at the listing,
        marked stale after GC's delete and copied again before the forget
        is left to the sweep.)"""
        listed = {r.node: r.state for r in blob.replicas}
        return [
            n for n in removed if n not in listed or (listed[n] != REPLICA_OK and n not in missed)
        ]

    async def _delete_replicas(
        self, blob: BlobRecord, nodes: list[str] | None = None, again: bool = False
    ) -> list[str]:
        """Delete every reachable copy (those on ``nodes``, default: every
        replica of ``blob``); return the servers it could not reach.
        ``again``: these are copies made after the listing (``_made_since``):
        one found is logged."""
        missed = []
        for node in [r.node for r in blob.replicas] if nodes is None else nodes:
            if node not in self._pool.names() or not self._pool.is_up(node):
                missed.append(node)
                continue
            try:
                await self._pool.client(node).delete(blob.blob_id)
            except storage_errors.BlobNotFound:
                continue
            except Exception as e:
                log.warn("gc: delete of {blob} on {node}: {err}", blob=blob.blob_id, node=node,
                         err=e)  # fmt: skip
                missed.append(node)
                continue
            if again:
                log.info(
                    "gc: {blob} was copied to {node} while collected; that copy is deleted",
                    blob=blob.blob_id,
                    node=node,
                )
        return missed

    # -- the storage sweep -------------------------------------------------

    async def find_garbage(self, node: str) -> tuple[list[Garbage], int]:
        """Orphan and stray copies on ``node`` now, and its blob count."""
        infos: list[BlobInfo] = await self._pool.client(node).list_blobs()
        found = []
        for info in infos:
            kind = await self._classify(node, info.blob_id)
            if kind is not None:
                found.append(Garbage(node, info.blob_id, kind, info.size))
        return found, len(infos)

    async def _classify(self, node: str, blob_id: str) -> str | None:
        try:
            blob = await self._catalog.get_blob(blob_id)
        except catalog_errors.NotFound:
            return ORPHAN
        states = {r.node: r.state for r in blob.replicas}
        if states.get(node) == REPLICA_OK or not blob.sealed:
            return None
        others = [n for n, s in states.items() if s == REPLICA_OK and n != node]
        if len(others) >= blob.wanted_replicas:
            return STRAY
        return None  # maybe the last copy: repair decides, not GC

    def forget_sightings(self) -> None:
        """Forget when each garbage blob and copy was first seen: the
        maintenance lease was (re)taken (``LeaseKeeper``'s
        ``on_acquired``).  While another front end held it, a stray
        sighted before may have been counted ok again and become a stray
        anew (or a collectable blob referenced again); an old first
        sighting would give it no grace at all.  Counting starts again,
        as on a restart: later, never sooner."""
        self._garbage_since.clear()
        self._collectable_since.clear()

    def sweep_after(self, g: Garbage) -> float | None:
        """When the storage sweep may delete ``g`` (its grace,
        ``orphan_grace_seconds``, over), or None if it may already.  The
        grace counts from the first time this collector saw ``g`` as
        garbage; one not seen before is seen now, so a caller (fsck) that
        finds it first starts its grace as a sweep would, and the time it
        reports is the one the sweep keeps.  Whether a sweep ever deletes
        it is the guard's call (``guarded``), not this."""
        return self._grace_ends(
            g.node, g.blob_id, self._clock.seconds(), self.settings.orphan_grace_seconds
        )

    def _grace_ends(self, node: str, blob_id: str, now: float, grace: float) -> float | None:
        """When the grace of ``blob_id``'s copy on ``node`` ends (counted
        from its first sighting, which is now if it was never seen), or
        None if it is over: the sweep's rule and fsck's report, one."""
        since = self._garbage_since.setdefault((node, blob_id), now)
        return since + grace if now - since < grace else None

    def guarded(self, garbage: list[Garbage], total: int) -> bool:
        """True if the server looks too orphaned to trust the catalog."""
        orphans = sum(1 for g in garbage if g.kind == ORPHAN)
        return orphans >= self.settings.orphan_guard_min and orphans > (
            self.settings.orphan_guard * total
        )

    def spared(self, found: dict[str, tuple[list[Garbage], int]]) -> dict[str, str]:
        """The servers of ``found`` (server -> its ``find_garbage``) the
        sweep deletes nothing on, each with why: ``UNBOUND`` (not bound to
        this cluster: its blobs are not this catalog's to judge),
        ``CLUSTER_WIDE`` (too many orphans over all the bound servers
        together: every server is left alone) or ``GUARDED`` (too many on
        this one, ``guarded``).  The cluster-wide count is over the bound
        servers only, the ones the sweep lists.  One decision for the
        sweep and for fsck, which calls a stray waiting only where the
        sweep will delete it when its grace is over."""
        bound = {n: v for n, v in found.items() if self._pool.of_this_cluster(n)}
        everything = [g for garbage, _ in bound.values() for g in garbage]
        whole = self.guarded(everything, sum(total for _, total in bound.values()))
        spared = {}
        for node, (garbage, total) in found.items():
            if node not in bound:
                spared[node] = UNBOUND
            elif whole:
                spared[node] = CLUSTER_WIDE
            elif self.guarded(garbage, total):
                spared[node] = GUARDED
        return spared

    async def sweep(
        self, grace: float | None = None, keep_going: Callable[[], bool] = lambda: True
    ) -> dict[str, Any]:
        """Delete orphan and stray copies on every live server once they
        have been garbage for ``grace`` (default ``orphan_grace_seconds``);
        no further delete once ``keep_going()`` is false (the lease is lost:
        another front end's repair may be making a copy we would judge)."""
        grace = self.settings.orphan_grace_seconds if grace is None else grace
        now = self._clock.seconds()
        stats: dict[str, Any] = {
            "orphans_deleted": 0,
            "strays_deleted": 0,
            # Seen, but not yet for ``grace``: deleted by a later pass.
            "orphans_waiting": 0,
            "strays_waiting": 0,
            "guarded": [],
        }
        found: dict[str, tuple[list[Garbage], int]] = {}
        for node in self._pool.names():
            if not self._pool.is_up(node):
                continue
            if not self._pool.of_this_cluster(node):
                # Its bind pending or failed: another cluster may bind it
                # yet, and its blobs are not this catalog's to judge.
                log.info("gc: {node} is not bound to this cluster yet: not swept", node=node)
                continue
            try:
                found[node] = await self.find_garbage(node)
            except storage_errors.StorageError as e:
                log.warn("gc: cannot list {node}: {err}", node=node, err=e)
        spared = self.spared(found)
        for node, (garbage, total) in found.items():
            current = {(node, g.blob_id) for g in garbage}
            for key in [k for k in self._garbage_since if k[0] == node and k not in current]:
                del self._garbage_since[key]
            if spared.get(node) == UNBOUND:
                continue  # its bind was undone since the check above
            if node in spared:
                log.error(
                    "gc: {n} of {total} blobs on {node} are unknown to the catalog "
                    "(cluster-wide: {all}); refusing to delete any (wrong or damaged catalog?)",
                    n=sum(1 for g in garbage if g.kind == ORPHAN),
                    total=total,
                    node=node,
                    all="too many" if spared[node] == CLUSTER_WIDE else "ok",
                )
                stats["guarded"].append(node)
                continue
            for g in garbage:
                if not keep_going():
                    return stats
                if self._grace_ends(node, g.blob_id, now, grace) is not None:
                    stats["orphans_waiting" if g.kind == ORPHAN else "strays_waiting"] += 1
                    continue
                if await self._classify(node, g.blob_id) != g.kind:
                    continue  # the catalog changed meanwhile
                try:
                    await self._pool.client(node).delete(g.blob_id)
                except storage_errors.BlobNotFound:
                    pass
                except storage_errors.StorageError as e:
                    log.warn("gc: delete of {blob} on {node}: {err}", blob=g.blob_id, node=node,
                             err=e)  # fmt: skip
                    continue
                self._garbage_since.pop((node, g.blob_id), None)
                log.info("gc: {kind} copy of {blob} deleted on {node}", kind=g.kind,
                         blob=g.blob_id, node=node)  # fmt: skip
                stats["orphans_deleted" if g.kind == ORPHAN else "strays_deleted"] += 1
        return stats
