"""Compaction: merge a file built from many extents into one blob, and
record its whole-file sha256 on the way.

Every resume or append adds an extent (DESIGN.md, Files), so a file
uploaded through many interruptions ends up as dozens of blobs: more
catalog rows, more blobs per read, more for repair and fsck to walk, and no
whole-file hash (only one straight upload can compute it cheaply).  A pass
takes ``catalog.compaction_candidates`` (committed files with at least
``min_extents`` extents and no live upload) and for each one:

1. records a new blob in the catalog (``add_blob``) before writing a byte
   of it, as uploads do, so GC's sweep never takes it for an orphan, on
   servers with room for the file's size (``StoragePool.choose``);
2. streams the file's bytes through the transfer layer's read path
   (``ReadStream``: replica failover, stall detection, checksum-damage
   reports) into writers on ``wanted`` storage servers, hashing sha256 as
   the bytes pass, with backpressure from the slowest writer and a token
   bucket (``Throttle``) pacing every chunk, so client transfers keep their
   speed;
3. commits (fsync + seal) the blob on *every* chosen server; a file that is
   fully replicated now is never swapped for a less replicated copy, so a
   replica failing abandons the attempt instead of leaving it to repair;
4. swaps the version's extents with ``catalog.replace_extents``, a
   compare-and-set on the version's ETag that also refuses while an upload
   is live.  The ETag is kept (same bytes), so a resumed download goes on.

The bytes go through the front end rather than storage-to-storage: the
storage protocol has no "concatenate these ranges of those blobs" operation,
and the read path already does failover and checksum verification.  A
front end relaying a background copy costs one read and R writes per byte,
paced by the throttle; a storage-side merge is an optimisation left for
when the protocol grows one.

A lost race (the file was overwritten, appended, truncated or deleted, or an
upload began on it) or any failure abandons the new blob: its replicas are
forgotten and its replicas deleted (one on an unreachable server is an
orphan for GC's sweep).  The old blobs are never touched here: once
nothing references them they are collectable, and GC deletes them after its
grace period, so a download that began before the swap reads to its end.

The new blob's meta record (beside it on every server) is what
``fsck --rebuild-catalog`` needs: ``inode``, ``path``, ``owner`` (the file's
owner), ``upload`` (``compact-<blob>``, a one-segment "upload"),
``file_offset`` 0, ``created_at``, plus ``compacted: true``, the ``etag``
the version keeps, and ``sources``, the blobs it replaces (when they fit),
so a rebuild does not mistake the not-yet-collected old blobs for another
version of the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_STALE, CompactionCandidate, Version
from wsfront.maintenance.repair import Progress, delete_unrecorded, draining_nodes
from wsfront.maintenance.throttle import Throttle
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.reader import ReadStream
from wsfront.transfer.service import _read_extent, new_blob_id
from wsfront.transfer.writer import ReplicaBackpressure, Sha256Stream
from wsstorage._interfaces import IBlobWriter

log = Logger()

#: Outcomes of one file's compaction.
COMPACTED = "compacted"
CHANGED = "changed"  # lost the race: the file changed or became busy
FAILED = "failed"  # storage trouble: try again next pass
MISMATCH = "mismatch"  # the bytes read hash differently from the recorded sha256
SKIPPED = "skipped"

#: The ``sources`` list is left out of a meta record above this size (the
#: storage server takes 64 KiB; a rebuild then keeps old blobs found beside
#: the compacted one in /lost+found instead of recognising them).
MAX_SOURCES_JSON = 32 * 1024


@attrs.frozen
class CompactSettings:
    """Knobs of compaction, with the defaults a front end runs on."""

    #: Files with at least this many extents are merged.
    min_extents: int = 8
    #: Relay budget in bytes per second over the whole pass (None: unlimited).
    bytes_per_second: float | None = 32 * 1024 * 1024
    #: Larger files are left alone (None: no limit).
    max_file_bytes: int | None = None
    #: A periodic pass relays at most this much and skips a file that would
    #: take it past that: repair and GC run in the same serial tick and must
    #: not wait an hour (None: no limit; ``wsfs compact`` has none).
    pass_bytes: int | None = 4 << 30
    #: Candidates fetched from the catalog at a time.
    batch: int = 50
    #: Seconds without a byte from a replica before the read fails over.
    read_stall_timeout: float = 5.0


class CompactionAborted(Exception):
    """The relay stopped early (a writer failed, or the lease was lost)."""


@implementer(IConsumer)
class _Relay:
    """The consumer a ``ReadStream`` writes the file into: hashes every
    byte, fans it out to the writers, and pauses the read while a writer is
    behind or the throttle says wait.  Memory stays at a chunk or two."""

    def __init__(
        self,
        clock: IReactorTime,
        writers: dict[str, IBlobWriter],
        throttle: Throttle,
        keep_going: Callable[[], bool],
    ) -> None:
        # Hashed off the reactor thread, as uploads are; a hash that falls
        # behind pauses the read like a slow writer.
        self.sha = Sha256Stream(clock, lambda: self.pause("sha256"), lambda: self.resume("sha256"))
        self.written = 0
        self.error: Exception | None = None
        self._writers = writers
        self._throttle = throttle
        self._keep_going = keep_going
        self._producer: Any = None
        self._paused_by: set[str] = set()
        for node, writer in writers.items():
            writer.registerProducer(ReplicaBackpressure(node, self.pause, self.resume), True)
            writer.when_failed().addErrback(self._writer_failed, node)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        if self._paused_by:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.sha.update(data)
        self.written += len(data)
        for node, writer in self._writers.items():
            try:
                writer.write(data)
            except Exception as e:
                self._stop(CompactionAborted(f"writer on {node} failed: {e}"))
                return
        if not self._keep_going():
            self._stop(CompactionAborted("the maintenance lease was lost"))
            return
        wait: Deferred = self._throttle.reserve(len(data))
        if not wait.called:
            self.pause("throttle")
            wait.addCallback(lambda _: self.resume("throttle"))

    def pause(self, why: str) -> None:
        first = not self._paused_by
        self._paused_by.add(why)
        if first and self._producer is not None:
            self._producer.pauseProducing()

    def resume(self, why: str) -> None:
        if why not in self._paused_by:
            return
        self._paused_by.discard(why)
        if not self._paused_by and self._producer is not None and self.error is None:
            self._producer.resumeProducing()

    def _writer_failed(self, failure: Failure, node: str) -> None:
        self._stop(CompactionAborted(f"writer on {node} failed: {failure.value}"))

    def _stop(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
            if self._producer is not None:
                self._producer.stopProducing()


class Compactor:
    """Compaction passes of one front end (the maintenance lease holder)."""

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        pool: StoragePool,
        settings: CompactSettings | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self._clock = clock
        self._catalog = catalog
        self._pool = pool
        self.settings = settings or CompactSettings()
        self._throttle = throttle or Throttle(clock, self.settings.bytes_per_second)

    async def run_pass(
        self,
        progress: Progress | None = None,
        keep_going: Callable[[], bool] = lambda: True,
        min_extents: int | None = None,
        max_files: int | None = None,
        count: bool = False,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Compact every candidate (at most ``max_files``, and no new file
        once ``max_bytes`` were relayed); fires with a summary.  Stops
        between files once ``keep_going()`` is false.
        ``count`` first counts the candidates, so progress has a ``total``
        (``wsfs compact`` draws a bar from it)."""
        wanted = max(2, min_extents if min_extents is not None else self.settings.min_extents)
        stats: dict[str, Any] = {
            "phase": "compacting",
            "done": 0,
            "examined": 0,
            COMPACTED: 0,
            CHANGED: 0,
            FAILED: 0,
            MISMATCH: 0,
            SKIPPED: 0,
            "bytes": 0,
            "relayed": 0,
            "extents_before": 0,
        }

        async def report() -> None:
            if progress is not None:
                result = progress(dict(stats))
                if result is not None:
                    await result

        if count:
            stats["total"] = await self._count(wanted, max_files)
        await report()

        def more() -> bool:
            return (
                keep_going()
                and (max_files is None or stats["examined"] < max_files)
                and (max_bytes is None or stats["relayed"] < max_bytes)
            )

        after = None
        while more():
            batch = await self._catalog.compaction_candidates(wanted, self.settings.batch, after)
            if not batch:
                break
            # Asked once a page of files, not once a file: fresh enough that
            # a long ``wsfs compact`` stops writing to a server a drain began
            # on meanwhile.
            draining = await draining_nodes(self._catalog)
            for candidate in batch:
                after = candidate.inode
                if not more():
                    break
                stats["examined"] += 1
                if max_bytes is not None and candidate.size > max_bytes - stats["relayed"]:
                    # A budgeted (periodic) pass never starts a file it could
                    # not finish within its budget: one huge file would hold
                    # repair and GC back for hours.  ``wsfs compact`` has no
                    # budget and takes it.
                    stats[SKIPPED] += 1
                    stats["done"] = stats["examined"]
                    continue
                outcome = await self.compact(candidate, keep_going, draining)
                stats[outcome] += 1
                if outcome != SKIPPED:
                    stats["relayed"] += candidate.size
                stats["done"] = stats["examined"]
                if outcome == COMPACTED:
                    stats["bytes"] += candidate.size
                    stats["extents_before"] += candidate.extents
                await report()
            if len(batch) < self.settings.batch:
                break
        stats["phase"] = "done"
        await report()
        return stats

    async def _count(self, min_extents: int, max_files: int | None) -> int:
        total, after = 0, None
        while max_files is None or total < max_files:
            page = await self._catalog.compaction_candidates(min_extents, 1000, after)
            total += len(page)
            if len(page) < 1000:
                break
            after = page[-1].inode
        return total if max_files is None else min(total, max_files)

    async def compact(
        self,
        candidate: CompactionCandidate,
        keep_going: Callable[[], bool] = lambda: True,
        draining: set[str] | None = None,
    ) -> str:
        """Merge one file into one blob, on no server of ``draining`` (the
        catalog's draining servers, asked here if not given); fires with
        the outcome."""
        limit = self.settings.max_file_bytes
        if candidate.size <= 0 or (limit is not None and candidate.size > limit):
            return SKIPPED
        # Stamped before the catalog is read.  fsck --rebuild-catalog does not
        # rank a copy by it (this front end's clock may be fast): it matches
        # the copy to the version by the etag and sources in its meta.
        started = self._clock.seconds()
        try:
            entry = await self._catalog.stat(candidate.path)
        except catalog_errors.CatalogError:
            return CHANGED
        version = entry.version
        if (
            entry.inode != candidate.inode
            or version is None
            or version.etag != candidate.etag
            or (entry.upload is not None and entry.upload.live)
        ):
            return CHANGED
        wanted = await self._wanted_replicas(version)
        if draining is None:
            draining = await draining_nodes(self._catalog)
        # The new blob's size is known: only servers with room for it above
        # their reserve, and it stays counted as taken there until this
        # copy ends (as for an upload of known size), so a pass does not
        # send every file to the server that had room for one.
        size = version.size
        blob_id = new_blob_id()
        targets = self._pool.choose(wanted, exclude=draining, size=size, blob_id=blob_id)
        try:
            if len(targets) < wanted:
                log.warn(
                    "compact: {path}: {n} servers with room for {size} bytes, {w} wanted; later",
                    path=candidate.path,
                    n=len(targets),
                    size=size,
                    w=wanted,
                )
                return SKIPPED
            try:
                await self._catalog.add_blob(blob_id, targets, wanted)
            except Exception as e:
                log.warn(
                    "compact: {path}: cannot record a new blob: {err}", path=candidate.path, err=e
                )
                return FAILED
            try:
                meta = self._meta(candidate, version, blob_id, started)
                outcome = await self._write_and_swap(
                    candidate, version, blob_id, targets, meta, keep_going
                )
            except Exception as e:
                log.warn("compact: {path} failed: {err}", path=candidate.path, err=e)
                outcome = FAILED
            if outcome != COMPACTED:
                await self._abandon(blob_id, targets)
            return outcome
        finally:
            # Written or given up: what it still had to write is room again.
            self._pool.release(blob_id)

    async def _wanted_replicas(self, version: Version) -> int:
        wanted = 1
        for blob_id in {e.blob_id for e in version.extents}:
            try:
                blob = await self._catalog.get_blob(blob_id)
            except catalog_errors.NotFound:
                continue
            wanted = max(wanted, blob.wanted_replicas)
        return wanted

    def _meta(
        self, candidate: CompactionCandidate, version: Version, blob_id: str, started: float
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "inode": candidate.inode,
            "path": candidate.path,
            "owner": candidate.owner or "",
            "upload": f"compact-{blob_id}",
            "file_offset": 0,
            "epoch": 1,
            "created_at": started,
            "compacted": True,
            "etag": version.etag,
        }
        sources = sorted({e.blob_id for e in version.extents})
        if len(json.dumps(sources)) <= MAX_SOURCES_JSON:
            meta["sources"] = sources
        return meta

    async def _write_and_swap(
        self,
        candidate: CompactionCandidate,
        version: Version,
        blob_id: str,
        targets: list[str],
        meta: dict[str, Any],
        keep_going: Callable[[], bool],
    ) -> str:
        opened = await DeferredList(
            [self._pool.client(n).write(blob_id, 1, 0, meta) for n in targets], consumeErrors=True
        )
        writers = {n: value for n, (ok, value) in zip(targets, opened) if ok}
        if len(writers) < len(targets):
            await self._abort_writers(writers)
            return FAILED
        relay = _Relay(self._clock, writers, self._throttle, keep_going)
        # What it has written shows as used in the servers' health answers.
        self._pool.claim(blob_id, list(writers), lambda: relay.written)
        stream = ReadStream(
            self._clock,
            self._pool,
            [_read_extent(e) for e in version.extents],
            stall_timeout=self.settings.read_stall_timeout,
            on_damage=self._replica_damaged,
        )
        try:
            await stream.start(relay)
        except Exception as e:
            await self._abort_writers(writers)
            log.warn(
                "compact: reading {path} stopped: {err}", path=candidate.path, err=relay.error or e
            )
            return FAILED
        if relay.error is not None or relay.written != version.size:
            await self._abort_writers(writers)
            return FAILED
        sha256 = await relay.sha.digest()
        if version.sha256 is not None and version.sha256 != sha256:
            await self._abort_writers(writers)
            log.error(
                "compact: {path} reads as sha256 {got}, the catalog says {want}; left as it is",
                path=candidate.path,
                got=sha256,
                want=version.sha256,
            )
            return MISMATCH
        sealed = await DeferredList([w.commit() for w in writers.values()], consumeErrors=True)
        for node, (ok, value) in zip(writers, sealed):
            if not ok or value.size != version.size:
                log.warn(
                    "compact: {path}: sealing on {node} failed: {err}",
                    path=candidate.path,
                    node=node,
                    err=value.value if not ok else f"size {value.size}",
                )
                return FAILED
        if not keep_going():
            return FAILED
        try:
            await self._catalog.replace_extents(
                candidate.inode, version.etag, [(blob_id, 0, version.size)], sha256
            )
        except (catalog_errors.VersionChanged, catalog_errors.PendingUploadExists) as e:
            log.info(
                "compact: {path} changed meanwhile ({err}); new blob dropped",
                path=candidate.path,
                err=e,
            )
            return CHANGED
        except catalog_errors.HashMismatch:
            return MISMATCH
        log.info(
            "compact: {path}: {n} extents -> 1 blob {blob} ({size} bytes, sha256 {sha})",
            path=candidate.path,
            n=len(version.extents),
            blob=blob_id,
            size=version.size,
            sha=sha256,
        )
        return COMPACTED

    async def _abort_writers(self, writers: dict[str, IBlobWriter]) -> None:
        ds = []
        for writer in writers.values():
            try:
                ds.append(writer.abort())
            except Exception:
                pass
        await DeferredList(ds, consumeErrors=True)

    async def _abandon(self, blob_id: str, targets: list[str]) -> None:
        """Forget the new blob, then delete its replicas.  Forgetting first
        is the safety check: ``forget_blob`` refuses a blob the catalog
        references, which is what an unanswered ``replace_extents`` that did
        commit leaves behind.  A replica that cannot be deleted now is an
        orphan, which GC's storage sweep removes after its grace."""
        try:
            # Its rows' nodes too: one a repair copy added meanwhile.
            targets = sorted(set(targets) | set(await self._catalog.forget_blob(blob_id)))
        except catalog_errors.Exists:
            log.error("compact: {blob} is referenced after all; kept", blob=blob_id)
            return
        except catalog_errors.NotFound:
            pass
        except Exception as e:
            # Unknown (catalog unreachable): keep the bytes; an unreferenced
            # record is GC's to collect, a referenced one is the file.
            log.warn("compact: cannot forget {blob}: {err}; left to GC", blob=blob_id, err=e)
            return
        for node in targets:
            await delete_unrecorded(self._pool, blob_id, node, "compact")

    def _replica_damaged(self, blob_id: str, node: str) -> None:
        """The read found a bad block: mark that replica stale for repair."""
        d = self._catalog.mark_replica(blob_id, node, REPLICA_STALE)
        d.addErrback(
            lambda f: log.warn(
                "compact: cannot mark {blob} stale: {err}", blob=blob_id, err=f.value
            )
        )
