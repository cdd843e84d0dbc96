"""Keep a returned server's intact replicas instead of copying them again.

A replica is marked ``lost`` when its server stays down past the grace
period (or ``wsfs repair`` runs while it is down).  A server that comes
back with its disk intact still holds the bytes; copying the blob to
another server and leaving the old copy for GC as a stray costs one whole
copy per blob, and a rack that was away an hour costs a copy of all it
holds.  So repair first judges such a copy where it lies and, if it is
whole, counts it ok again (``catalog.reclaim_replica``, only if the row is
still ``lost``: a change to the row meanwhile is seen, not one to the copy
while its row stays lost, such as a lease-less second repairer replacing
it; docs/maintenance.md says what is covered).

The catalog keeps a blob's length but no checksum of it, and the wire
protocol has no "verify" operation, so the copy is read: the caller has
already seen by ``stat`` that it is sealed and holds the catalog's length;
the read of those bytes has the server check every block's CRC32C (a torn
or damaged block fails it), and their sha256 must equal that of the same
bytes read from a *reference*: an ok replica (the catalog vouches for it),
or, for a blob with no ok replica, other lost replicas that read the same
(two servers' copies agreeing byte for byte; of copies that disagree, only
the largest group, and only if no other is as large).  A lone lost copy with
nothing to compare to is not re-marked: repair copies from it as before
(``Repairer.copy_from_unvouched``).  The reads come to the front end (no
storage server writes a byte) and spend the repair throttle's budget like
a copy of the same size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set as AbstractSet
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront.catalog.records import BlobRecord
from wsfront.maintenance.throttle import Throttle
from wsfront.transfer.pool import StoragePool

log = Logger()


class _Hashing:
    """A consumer of a blob read that keeps only its sha256 and byte count
    (memory stays one chunk, whatever the blob's size)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.count = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.count += len(data)


class ReadFailed(Exception):
    """A replica could not be read whole: a bad block, a short read, its
    server gone."""


class ReadStalled(ReadFailed):
    """No byte of a replica's read came between two of its progress checks
    (one every stall timeout)."""


async def replica_digest(
    clock: IReactorTime, pool: StoragePool, node: str, blob: BlobRecord, stall_timeout: float
) -> str:
    """sha256 of the first ``blob.length`` bytes of ``node``'s copy, read
    with every block checked by the server; ReadFailed otherwise.  A read
    that stops bringing bytes is given up on at the first of its progress
    checks, one every ``stall_timeout``, to find none came since the last:
    ``stall_timeout`` to twice that after its last byte.  A disk hung
    mid-read answers keepalives, so the client's idle timer never fires."""
    sink = _Hashing()
    if blob.length == 0:
        return sink.sha.hexdigest()
    d: Deferred = pool.client(node).read(blob.blob_id, 0, blob.length, sink)
    seen = [-1]
    stalled = [False]

    def check() -> None:
        if sink.count == seen[0]:
            stalled[0] = True
            d.cancel()
        seen[0] = sink.count

    watch = task.LoopingCall(check)
    watch.clock = clock
    watch.start(stall_timeout, now=True)
    try:
        got = await d
    except Exception as e:
        if stalled[0]:
            raise ReadStalled(f"{node}: no byte for {stall_timeout}s") from e
        raise ReadFailed(f"{node}: {e.__class__.__name__}: {e}") from e
    finally:
        watch.stop()
    if got != blob.length or sink.count != blob.length:
        raise ReadFailed(f"{node}: short read ({sink.count} of {blob.length})")
    return sink.sha.hexdigest()


async def reclaim_lost(
    clock: IReactorTime,
    catalog: Any,
    pool: StoragePool,
    throttle: Throttle,
    blob: BlobRecord,
    returned: list[str],
    references: list[str],
    stall_timeout: float,
    silent: set[str],
    leaving: AbstractSet[str] = frozenset(),
) -> list[str]:
    """Count ok again those of ``returned`` (servers back up whose lost
    copy of ``blob`` is sealed and long enough, by their ``stat``) whose
    bytes equal a reference's: the first of ``references`` (ok replicas on
    servers up, best first) that reads whole, or with none, one another
    (``_agreeing``).  At most as many as ``blob`` is short of.  A server in ``silent`` is
    not read; one whose read stalls is added to it (the caller's pass then
    spends one stall on it, not one per blob).  A server in ``leaving``
    (being drained) is never counted ok again; with no ok replica, its copy
    is read to vouch for the others.  Fires with the servers re-marked;
    NotFound (catalog) if the blob was forgotten meanwhile."""
    need = blob.wanted_replicas - len(blob.ok_replicas)
    if references:
        returned = [n for n in returned if n not in leaving]  # nothing to vouch for
    if need <= 0 or not [n for n in returned if n not in leaving]:
        return []
    if not references and len(returned) < 2:
        return []  # a lone copy has nothing to agree with: a copy judges it

    async def digest(node: str) -> str | None:
        if node in silent:
            return None
        await throttle.reserve(blob.length)
        try:
            return await replica_digest(clock, pool, node, blob, stall_timeout)
        except ReadFailed as e:
            if isinstance(e, ReadStalled):
                silent.add(node)
            log.warn("repair: {blob} not read back whole: {err}", blob=blob.blob_id, err=e)
            return None

    want: str | None = None
    for node in references:
        want = await digest(node)
        if want is not None:
            break
    if references and want is None:
        return []  # nothing to compare with: copying judges the copies
    found: dict[str, str] = {}
    matches: list[str] = []
    for node in returned:
        if want is not None and len(matches) >= need:
            break
        got = await digest(node)
        if got is None:
            continue
        found[node] = got
        if got == want:
            matches.append(node)
        elif want is not None:
            log.warn(
                "repair: {node}'s lost copy of {blob} reads whole but holds other bytes "
                "than its ok replica; not counted",
                node=node,
                blob=blob.blob_id,
            )
    if want is None:
        matches = _agreeing(blob, found)
    return await _record(catalog, blob, [n for n in matches if n not in leaving][:need])


def _agreeing(blob: BlobRecord, found: dict[str, str]) -> list[str]:
    """With no ok replica, the lost copies (``found``: server to sha256 of
    those read whole) that vouch for each other: the largest group reading
    the same, if it has two or more and no other group is as large.  Two
    groups of two (A and B read X, C and D read Y) say nothing about which
    bytes are the file's: none is kept, never one of each, and the blob is
    left to ``copy_from_unvouched`` as on main (which checks CRCs and the
    length, and so cannot tell the two apart either)."""
    groups: dict[str, list[str]] = {}
    for node, digest in found.items():
        groups.setdefault(digest, []).append(node)
    sizes = sorted((len(g) for g in groups.values()), reverse=True)
    if len(sizes) > 1:
        log.warn(
            "repair: the lost copies of {blob} read back whole hold {n} different contents "
            "({sizes} copies)",
            blob=blob.blob_id,
            n=len(sizes),
            sizes=sizes,
        )
    if not sizes or sizes[0] < 2 or (len(sizes) > 1 and sizes[1] == sizes[0]):
        return []
    return max(groups.values(), key=len)


async def _record(catalog: Any, blob: BlobRecord, nodes: list[str]) -> list[str]:
    kept = []
    for node in nodes:
        if await catalog.reclaim_replica(blob.blob_id, node):
            kept.append(node)
            log.info(
                "repair: {node}'s lost copy of {blob} ({n} bytes) read back intact; ok again",
                node=node,
                blob=blob.blob_id,
                n=blob.length,
            )
    return kept
