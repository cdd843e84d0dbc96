"""Repair: bring every referenced blob back to its wanted count of ok replicas.

A pass has two steps.  First it decides which unreachable storage servers
count as *lost*: automatic passes wait ``grace_seconds`` after a server was
first seen down (a reboot should not trigger a copy storm), the operator's
``wsfs repair`` (``now=True``) counts every unreachable server as lost at
once.  Replicas of sealed blobs on lost servers are marked ``lost`` in the
catalog.  Then it takes ``catalog.under_replicated`` batch by batch and for
each blob has a healthy target server pull the blob from a healthy source
(``copy_from``: the bytes go storage-to-storage, never through the front
end), checks the copy's size against the catalog and records it with
``add_replica``.

Safety rules (docs/maintenance.md):
* a target is a live server without an ok replica of the blob; a copy the
  catalog does not vouch for (a lost or stale replica, a leftover of an
  earlier attempt) is deleted and replaced, never trusted;
* a lost replica on a server that is back is read back first (every block
  checked by its server) and compared with a verified copy: equal, it counts
  ok again where it lies, with no copy made (``reclaim``); torn, short,
  other bytes or no answer, it is replaced by a copy like any other;
* a source whose size differs from the catalog's is marked stale, not used;
* a blob left with stale or lost replicas only (a lost one's server may be
  back, its disk intact) is copied from one of them on a server that is up
  to a server without a copy; the copy checks every block's CRC and the
  length, so the first that succeeds is a verified replica
  (``copy_from_unvouched``);
  if none does, the blob is reported under ``no_verified_replica``;
* copies are throttled (bytes per second) and bounded in number at a time;
* only sealed blobs are touched: a live upload's current blob belongs to its
  write session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
    gatherResults,
)
from twisted.internet.defer import TimeoutError as StatTimedOut  # addTimeout's
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import (
    NODE_DRAINING,
    REPLICA_LOST,
    REPLICA_OK,
    REPLICA_STALE,
    BlobRecord,
)
from wsfront.maintenance.inventory import referenced_blob_ids, referenced_blobs
from wsfront.maintenance.reclaim import reclaim_lost
from wsfront.maintenance.throttle import Throttle
from wsfront.transfer.pool import StoragePool
from wsstorage import errors as storage_errors

log = Logger()

Progress = Callable[[dict[str, Any]], Awaitable[None] | None]


async def draining_nodes(catalog) -> set[str]:
    """Servers being drained: never the target of a copy (a replica placed
    there would have to move again, or go with the server when the
    operator removes it, as a finished drain allows), still a source.
    Asked of the catalog, not the pool: a front end's pool learns of a
    drain only at its next health record."""
    return {n.name for n in await catalog.list_nodes() if n.state == NODE_DRAINING}


@attrs.frozen
class RepairSettings:
    """Knobs of repair, with the defaults a front end runs on."""

    #: Seconds an unreachable server is given before its replicas count as lost.
    grace_seconds: float = 600.0
    #: Copy budget in bytes per second over all copies (None: unlimited).
    bytes_per_second: float | None = 64 * 1024 * 1024
    #: Copies running at the same time.
    concurrency: int = 2
    #: Blobs fetched from the catalog at a time.
    batch: int = 100


#: Seconds repair waits for a server's ``stat`` of a copy the catalog does
#: not vouch for (``Repairer._holding``): a store whose disk hangs answers
#: keepalives but never the request.
STAT_TIMEOUT = 30.0


def holds_the_blob(info, length: int) -> bool:
    """Whether a replica (its ``stat``) holds the ``length`` bytes the
    catalog's extents name: sealed, and at least that long.  Longer is
    sound: its old writer sealed it past the offset a takeover resumed at
    (``Transfers._fence_current_blob``), and nothing reads past ``length``.
    Only a short or open copy is wrong (fsck and repair judge alike)."""
    return bool(info.sealed) and info.size >= length


class Repairer:
    """Repair passes of one front end (the maintenance lease holder)."""

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        pool: StoragePool,
        settings: RepairSettings | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self._clock = clock
        self._catalog = catalog
        self._pool = pool
        self.settings = settings or RepairSettings()
        self._throttle = throttle or Throttle(clock, self.settings.bytes_per_second)
        self._down_since: dict[str, float] = {}
        self._marked: set[str] = set()  # lost servers whose replicas are all marked
        self._holds = 0  # copies that held room (``_hold_room``'s keys)
        #: During a pass, servers that let a ``stat`` or a read of a copy
        #: run out of time (a hung disk): not asked again in that pass, so
        #: one such server costs the pass one timeout, not one per blob.
        self._silent: set[str] | None = None

    # -- which servers are lost ------------------------------------------

    def observe(self) -> None:
        """Note which servers are down now (call every tick, cheap)."""
        now = self._clock.seconds()
        for name in self._pool.names():
            if self._pool.is_up(name):
                self._down_since.pop(name, None)
                self._marked.discard(name)
            else:
                self._down_since.setdefault(name, now)

    def lost_nodes(self, now: bool = False) -> set[str]:
        """Unreachable servers whose replicas no longer count."""
        self.observe()
        if now:
            return set(self._down_since)
        limit = self._clock.seconds() - self.settings.grace_seconds
        return {n for n, since in self._down_since.items() if since <= limit}

    def _usable(self, node: str, lost: set[str]) -> bool:
        return self._pool.is_up(node) and node not in lost

    # -- a pass ------------------------------------------------------------

    async def run_pass(
        self,
        now: bool = False,
        progress: Progress | None = None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> dict:
        """One repair pass; fires with a summary dict.  ``now`` counts every
        unreachable server as lost at once (``wsfs repair``).  The pass stops
        between batches once ``keep_going()`` is false (the lease is lost)."""
        self._silent = set()
        try:
            return await self._run_pass(now, progress, keep_going)
        finally:
            self._silent = None

    async def _run_pass(
        self, now: bool, progress: Progress | None, keep_going: Callable[[], bool]
    ) -> dict:
        if now:
            await self._pool.probe_all()
        lost = self.lost_nodes(now)
        stats: dict[str, Any] = {
            "phase": "marking",
            "lost_nodes": sorted(lost),
            "marked_lost": 0,
            "examined": 0,
            "copied": 0,
            "bytes": 0,
            "failed": 0,
            "unrecoverable": [],
            "from_stale": [],
            "no_verified_replica": [],
            # Lost replicas of servers back up that read back intact: ok again, not copied.
            "reclaimed": 0,
        }

        async def report() -> None:
            if progress is not None:
                result = progress(dict(stats))
                if result is not None:
                    await result

        await report()
        if now or lost - self._marked:
            # One namespace walk per newly lost server: it is O(files).
            stats["marked_lost"] = await self._mark_lost(lost, unknown_too=now)
            self._marked |= lost
        stats["phase"] = "copying"
        stats["total"] = await self._catalog.count_under_replicated()
        await report()
        draining = await draining_nodes(self._catalog)
        given_up: set[str] = set()
        semaphore = DeferredSemaphore(max(1, self.settings.concurrency))
        while keep_going():
            limit = self.settings.batch + len(given_up)
            batch = await self._catalog.under_replicated(limit)
            todo = [b for b in batch if b.blob_id not in given_up]
            if not todo:
                break

            async def one(blob: BlobRecord) -> None:
                ok = await self._repair_blob(blob, lost, draining, stats)
                stats["examined"] += 1
                if not ok:
                    given_up.add(blob.blob_id)

            await gatherResults(
                [semaphore.run(lambda b=b: ensureDeferred(one(b))) for b in todo],
                consumeErrors=True,
            )
            await report()
        if now and stats["no_verified_replica"]:
            # The operator's way out starts from the files (docs/maintenance.md):
            # one namespace walk, for `wsfs repair` only (not every minute).
            paths: dict[str, set[str]] = {b["blob"]: set() for b in stats["no_verified_replica"]}
            async for use in referenced_blobs(self._catalog):
                if use.blob_id in paths:
                    paths[use.blob_id].add(use.path)
            for b in stats["no_verified_replica"]:
                b["paths"] = sorted(paths[b["blob"]])
        stats["phase"] = "done"
        stats["under_replicated"] = await self._catalog.count_under_replicated()
        await report()
        return stats

    async def _mark_lost(self, lost: set[str], unknown_too: bool = False) -> int:
        """Mark ok replicas of sealed referenced blobs on ``lost`` servers lost
        (``unknown_too``: also on servers this front end does not know)."""
        known = set(self._pool.names())
        marked = 0
        for blob_id in sorted(await referenced_blob_ids(self._catalog)):
            try:
                blob = await self._catalog.get_blob(blob_id)
            except catalog_errors.NotFound:
                continue
            if not blob.sealed:
                continue
            for replica in blob.replicas:
                gone = replica.node in lost or (unknown_too and replica.node not in known)
                if replica.state == REPLICA_OK and gone:
                    await self._catalog.mark_replica(blob_id, replica.node, REPLICA_LOST)
                    marked += 1
        if marked:
            log.info("repair: {n} replicas on lost servers marked lost", n=marked)
        return marked

    async def _repair_blob(
        self, blob: BlobRecord, lost: set[str], draining: set[str], stats: dict
    ) -> bool:
        """Copy ``blob`` until it has its wanted ok replicas; False if it
        could not be brought to strength now.  Lost servers are neither
        source nor target, draining ones only a source.  A blob GC forgot
        meanwhile needs nothing more (True)."""
        try:
            return await self._strengthen(blob, lost, draining, stats)
        except catalog_errors.NotFound:
            return True

    async def _strengthen(
        self, blob: BlobRecord, lost: set[str], draining: set[str], stats: dict
    ) -> bool:
        unvouched = unvouched_replicas(blob)
        back = [n for n in self._pool.order_for_read(sorted(unvouched)) if self._usable(n, lost)]
        returned = [r.node for r in blob.replicas if r.state == REPLICA_LOST and r.node in back]
        asked, asked_all = None, not blob.ok_replicas
        if not asked_all:
            # A lost copy on a server being drained is never counted ok
            # again (``reclaim_lost``); with an ok replica to compare with,
            # it is not even read.
            returned = [n for n in returned if n not in draining]
        if returned:
            # With no ok replica, the stale ones are asked too, for
            # ``copy_from_unvouched`` should none be kept.
            asked = await self._holding(blob, back if asked_all else returned)
            blob = await self._keep_returned(blob, asked[0], lost, draining, stats)
            unvouched = unvouched_replicas(blob)
        ok = set(blob.ok_replicas)
        if not ok and any(self._usable(n, lost) for n in unvouched):
            verified = await self.copy_from_unvouched(
                blob, unvouched, lost, draining, stats, asked=asked if asked_all else None
            )
            if not verified:
                return False
            # The lost copies are not compared with this copy: made from
            # one of them, it would prove nothing of that one (at twice its
            # length in reads), and pick a side among copies that disagreed.
            blob = await self._catalog.get_blob(blob.blob_id)
            ok = set(blob.ok_replicas)
        sources = [n for n in self._pool.order_for_read(sorted(ok)) if self._usable(n, lost)]
        if not sources:
            log.error("repair: blob {blob} has no reachable ok replica", blob=blob.blob_id)
            stats["unrecoverable"].append(blob.blob_id)
            return False
        need = blob.wanted_replicas - len(ok)
        for target in self.targets(blob, exclude=ok | lost | draining):
            if need <= 0:
                break
            if not sources:
                break
            done = await self.copy(blob, target, sources, stats)
            if done:
                need -= 1
        if need > 0:
            log.warn(
                "repair: blob {blob} still needs {n} replicas (no more targets)",
                blob=blob.blob_id,
                n=need,
            )
            return False
        return True

    async def _keep_returned(
        self,
        blob: BlobRecord,
        holding: list[str],
        lost: set[str],
        draining: set[str],
        stats: dict,
    ) -> BlobRecord:
        """Count ok again the lost copies among ``holding`` (servers up whose
        copy is sealed and long enough) that read back equal to a verified
        one (``reclaim.reclaim_lost``), instead of copying the blob to
        another server and leaving them as strays; the blob as it is now.
        None on a server in ``draining``: drain passes over a blob whose
        copy there is lost while an ok replica is elsewhere, so one counted
        ok there would leave with the server and the blob count full
        strength without it.  Such a copy may still vouch for another lost
        copy that reads the same (its bytes are no less whole for the
        server leaving)."""
        if blob.wanted_replicas <= len(blob.ok_replicas):
            return blob
        states = {r.node: r.state for r in blob.replicas}
        returned = [n for n in holding if states.get(n) == REPLICA_LOST]
        ok = self._pool.order_for_read(sorted(blob.ok_replicas))
        references = [n for n in ok if self._usable(n, lost)]
        kept = await reclaim_lost(
            self._clock,
            self._catalog,
            self._pool,
            self._throttle,
            blob,
            returned,
            references,
            STAT_TIMEOUT,
            self._silent if self._silent is not None else set(),
            leaving=draining,
        )
        stats["reclaimed"] += len(kept)
        # Read again even if none was kept here: another repairer may have
        # recorded one meanwhile (the mark then changed nothing).
        return await self._catalog.get_blob(blob.blob_id) if returned else blob

    async def copy_from_unvouched(
        self,
        blob: BlobRecord,
        unvouched: list[str],
        lost: set[str],
        draining: set[str],
        stats: dict,
        asked: tuple[list[str], list[str]] | None = None,
    ) -> bool:
        """``blob`` has no ok replica at all, only stale or lost ones, on the
        servers ``unvouched`` (a stale one once failed a checksum or a size
        check; a lost one was on a server down past the grace period, or
        marked so by ``wsfs repair``, that may be back with its disk
        intact; a reader still falls back on both).  The wire protocol has
        no "verify" operation, but ``copy`` is one: the source checks every
        block's CRC as it reads, the target the length.  So one such replica
        after the other, on a server up now, is the source of one copy to a
        server holding no copy of it (a failed copy there would first
        delete one of the last copies); the first copy that succeeds is a
        verified replica and recorded ok (the rule of ``add_replica``), the
        rest of the repair copies from it.  True once recorded; else the
        blob is reported in ``no_verified_replica``.  Drain uses it too,
        for such a blob with a copy on the server it empties.  ``asked``:
        what ``_holding`` answered of them just now (not asked twice: a
        hung server would hold up the pass twice as long)."""
        if asked is None:
            order = self._pool.order_for_read(sorted(unvouched))
            asked = await self._holding(blob, [n for n in order if self._usable(n, lost)])
        usable, unasked = asked
        # A server whose read of its copy stalled in this pass (``_silent``,
        # after its stat answered: a disk hung mid-read) is no source: a
        # copy from it would pull from that disk.
        silent = self._silent if self._silent is not None else set()
        stalled = [n for n in usable if n in silent]
        usable = [n for n in usable if n not in silent]
        targets = self.targets(blob, exclude=set(unvouched) | lost | draining)
        if not usable:
            # Copies on wiped stores, or servers down: no copy (and no part
            # of the throttle's budget) is spent on a source that has none.
            if unasked or stalled:
                hung = []
                if unasked:
                    hung.append(f"{', '.join(unasked)} did not answer whether it holds a copy")
                if stalled:
                    hung.append(f"{', '.join(stalled)} stalled reading its copy")
                why = f"{'; '.join(hung)} (asked again next pass)"
            else:
                why = "no server that is up holds a whole sealed copy"
            targets = []
        elif targets:
            why = "none of them copies clean"
        else:
            why = "no server without a copy to copy to"
        for target in targets[:2]:
            if await self.copy(blob, target, list(usable), stats):
                log.warn(
                    "repair: blob {blob} had only stale or lost replicas; a copy to {target} "
                    "read back clean and is its ok replica now",
                    blob=blob.blob_id,
                    target=target,
                )
                stats["from_stale"].append(blob.blob_id)
                return True
        log.error(
            "repair: blob {blob}: no verified replica: {n} stale or lost, {why}",
            blob=blob.blob_id,
            n=len(unvouched),
            why=why,
        )
        # ``stale``: this count's old name, kept for one release: an older
        # ``wsfs`` (or a --json script) reading this result looks it up.
        count = len(unvouched)
        stats["no_verified_replica"].append(
            {"blob": blob.blob_id, "stale_or_lost": count, "stale": count, "why": why}
        )
        return False

    async def _holding(self, blob: BlobRecord, nodes: list[str]) -> tuple[list[str], list[str]]:
        """Those of ``nodes`` whose copy of ``blob`` is there, sealed and
        long enough, by a ``stat`` of each, all at once and each given
        ``STAT_TIMEOUT`` (the catalog does not vouch for these copies: a
        lost one may be on a store wiped since; a disk hung in the middle
        of I/O must not hold up the pass); and those that did not answer
        (in a pass, one that timed out is not asked again: ``_silent``)."""
        silent = self._silent if self._silent is not None else set()

        def ask(node: str) -> Deferred:
            d = self._pool.client(node).stat(blob.blob_id)
            d.addTimeout(STAT_TIMEOUT, self._clock)
            return d

        asking = [n for n in nodes if n not in silent]
        answers = await DeferredList([ask(n) for n in asking], consumeErrors=True)
        holding, unasked = [], [n for n in nodes if n in silent]
        for node, (ok, value) in zip(asking, answers):
            if ok:
                if holds_the_blob(value, blob.length):
                    holding.append(node)
            elif not value.check(storage_errors.BlobNotFound):
                unasked.append(node)
                if value.check(StatTimedOut):
                    silent.add(node)
        return holding, unasked

    def targets(self, blob: BlobRecord, exclude: set[str]) -> list[str]:
        """Healthy servers to copy ``blob`` to, best first: those whose last
        reported free space, less their reserve and what is placed there
        since, holds it before those where it would not fit (tried last,
        not left out: the report may be seconds old, a storage server
        checks its reserve only when a blob is created, and a stale copy
        the copy replaces frees its room first; a copy that finds the disk
        full just fails); then servers without any copy of it (a stale or
        lost one is replaced, so it is kept while there is a choice); then
        the pool's order (most free space first, servers of similar free
        space in turn).  Left out: a server whose disk, by that report,
        cannot hold the blob even with its reserve spent and its own copy
        of it deleted; the copy would fill it and fail (ENOSPC) on every
        pass, blob after blob.  Nothing is counted as taken here: ``copy``
        holds the room on the one target it copies to."""
        nodes = {n.name: n for n in self._pool.nodes()}
        known = {r.node for r in blob.replicas}

        def fits(name: str) -> bool:
            node = nodes.get(name)
            # Never probed yet: no report to go by (``has_room_for``).
            return node is None or node.has_room_for(blob.length)

        def disk_holds(name: str) -> bool:
            node = nodes.get(name)
            if node is None or node.last_seen is None:
                return True
            room = node.free_bytes - node.placed_bytes
            if name in known:
                room += blob.length  # its copy is deleted before the copy is made
            return room >= blob.length

        chosen = self._pool.choose(len(nodes), exclude=exclude)
        return sorted([n for n in chosen if disk_holds(n)], key=lambda n: (not fits(n), n in known))

    def _hold_room(self, blob: BlobRecord, target: str, written: Callable[[], int]) -> str | None:
        """Count ``blob``'s bytes as taken on ``target`` for the copy about
        to run (``StoragePool.hold``), so copies and uploads placed
        meanwhile do not count on the same room; the key of the hold, for
        ``StoragePool.release`` when the copy ends, or None if by the pool's
        count ``target`` has no room for it now (a last-resort target: the
        copy runs without a hold).  The key is this copy's own, not the
        blob's id: two copies of one blob may run at once (a drain job
        beside a repair pass), and each gives back only its own.

        The copy runs storage to storage, so this front end does not see
        its bytes land: ``written()`` says none until the copy is recorded
        (all of them then), so the whole size stays held while it runs (the
        server's health answers meanwhile show some of it used too: counted
        twice, on the safe side, for the length of one copy)."""
        self._holds += 1
        key = f"copy-{self._holds}-{blob.blob_id}-{target}"
        return key if self._pool.hold(key, target, blob.length, written) else None

    async def copy(self, blob: BlobRecord, target: str, sources: list[str], stats: dict) -> bool:
        """Have ``target`` pull ``blob`` from one of ``sources`` (throttled);
        True once recorded with ``add_replica``.  A source found wrong is
        marked stale and removed from ``sources``.  ``stats`` counts
        ``copied``, ``bytes`` and ``failed``.  Drain and rebalance use it too.
        The blob's size is held as taken on ``target`` while the copy runs
        (``_hold_room``) and given back however it ends; a target short of
        room by the pool's count (tried last, ``targets``) is copied to
        without a hold.
        NotFound (catalog) if the blob was forgotten meanwhile (GC collected
        it): the copy just made is deleted first, and there is nothing more
        to copy."""
        landed = [0]  # the copy's bytes on the target's disk: all, once recorded
        hold = self._hold_room(blob, target, lambda: landed[0])
        try:
            copied = await self._copy(blob, target, sources, stats)
            if copied:
                landed[0] = blob.length
            return copied
        finally:
            # Copied, failed or refused, the hold ends: a failed copy's room
            # is the server's again; a recorded one's stays counted as used
            # until the server's next health answer shows it so.
            if hold is not None:
                self._pool.release(hold)

    async def _copy(self, blob: BlobRecord, target: str, sources: list[str], stats: dict) -> bool:
        client = self._pool.client(target)
        await self._throttle.reserve(blob.length)
        await self._discard_untrusted(blob, target)
        for source in list(sources):
            try:
                info = await client.copy_from(blob.blob_id, self._pool.endpoint(source))
            except storage_errors.BlobExists:
                # A sealed leftover the catalog does not vouch for: replace it.
                await self._discard_untrusted(blob, target, force=True)
                try:
                    info = await client.copy_from(blob.blob_id, self._pool.endpoint(source))
                except Exception as e:
                    return self._copy_failed(blob, target, source, e, stats)
            except Exception as e:
                # The target or the source failed (the target reports a source
                # it cannot reach as unavailable too): try the next source.
                self._copy_failed(blob, target, source, e, stats)
                continue
            if not holds_the_blob(info, blob.length):
                log.error(
                    "repair: copy of {blob} from {src} has {size} bytes, catalog says {length}",
                    blob=blob.blob_id,
                    src=source,
                    size=info.size,
                    length=blob.length,
                )
                await self._discard_untrusted(blob, target, force=True)
                await self._catalog.mark_replica(blob.blob_id, source, REPLICA_STALE)
                sources.remove(source)
                continue
            try:
                await self._catalog.add_replica(blob.blob_id, target)
            except catalog_errors.NotFound:
                # GC forgot the blob while it was copied (nothing references
                # it any more): the copy is nobody's, and would be left for
                # the storage sweep to find as an orphan.
                log.info(
                    "repair: {blob} was collected while copied to {dst}; the copy is deleted",
                    blob=blob.blob_id,
                    dst=target,
                )
                await delete_unrecorded(self._pool, blob.blob_id, target, "repair")
                raise
            stats["copied"] += 1
            stats["bytes"] += info.size
            log.info(
                "repair: {blob} ({n} bytes) copied {src} -> {dst}",
                blob=blob.blob_id,
                n=info.size,
                src=source,
                dst=target,
            )
            return True
        return False

    def _copy_failed(self, blob, target, source, error, stats) -> bool:
        stats["failed"] += 1
        log.warn(
            "repair: copy of {blob} {src} -> {dst} failed: {err}",
            blob=blob.blob_id,
            src=source,
            dst=target,
            err=error,
        )
        return False

    async def _discard_untrusted(self, blob: BlobRecord, target: str, force: bool = False) -> None:
        """Delete ``target``'s copy of ``blob`` if the catalog does not count
        it ok (``force``: also an unrecorded one).  The catalog is asked
        again first: a copy another repairer recorded meanwhile stays."""
        states = {r.node: r.state for r in blob.replicas}
        if not force and target not in states:
            return
        try:
            fresh = await self._catalog.get_blob(blob.blob_id)
        except catalog_errors.NotFound:
            return
        if target in fresh.ok_replicas:
            return
        try:
            await self._pool.client(target).delete(blob.blob_id)
        except storage_errors.BlobNotFound:
            pass

    # -- damage reports ----------------------------------------------------

    async def report_damaged(self, blob_id: str, node: str) -> None:
        """A read or a scrub found ``node``'s copy of ``blob_id`` damaged:
        stop counting it; the next pass replaces it from a good copy."""
        try:
            await self._catalog.mark_replica(blob_id, node, REPLICA_STALE)
        except catalog_errors.NotFound:
            return
        log.warn("repair: replica of {blob} on {node} is damaged", blob=blob_id, node=node)


async def delete_unrecorded(pool: StoragePool, blob_id: str, node: str, job: str) -> bool:
    """Delete ``node``'s copy of a blob no catalog record keeps (a copy
    the catalog refused, a blob forgotten); False, with one log line
    naming ``job``, if it cannot be deleted now: an orphan then, for GC's
    storage sweep.  A copy already gone counts as deleted."""
    try:
        await pool.client(node).delete(blob_id)
    except storage_errors.BlobNotFound:
        pass
    except Exception as e:
        log.warn(
            "{job}: delete of {blob} on {node}: {err}; left to GC's sweep",
            job=job,
            blob=blob_id,
            node=node,
            err=e,
        )
        return False
    return True


def unvouched_replicas(blob: BlobRecord) -> list[str]:
    """The servers holding a replica of ``blob`` the catalog does not vouch
    for, but that may be intact: stale (it failed a check once) or lost
    (its server was down past the grace period, and may be back)."""
    return [r.node for r in blob.replicas if r.state in (REPLICA_STALE, REPLICA_LOST)]
