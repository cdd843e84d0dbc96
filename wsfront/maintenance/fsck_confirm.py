"""fsck's confirmation of suspect copies, several blobs at a time.

A server's listing is a snapshot taken before the catalog is read, so a
copy it shows missing or wrong is only a suspect: it is asked for again
(``stat``) and the blob's record read again before it is judged
(``confirm``).  One blob at a time, that was a round trip per suspect
copy: a server that lost 100k blobs added some 25 s to a check on
localhost, far more across a network.  ``Confirmations`` runs up to
``limit`` blobs' confirmations at once (each its stats together, then
its record); the check that feeds it waits for a free slot, so it reads
no further ahead of the answers than that, and the judgements are the
same whatever order the answers come in (``check`` reports them in blob
order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
    fail,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_OK, BlobRecord
from wsfront.maintenance.repair import holds_the_blob
from wsfront.transfer.pool import StoragePool
from wsstorage.errors import (
    AuthenticationFailed,
    DiskError,
    NodeUnavailable,
    ProtocolError,
    WrongCluster,
)
from wsstorage.records import BlobInfo

log = Logger()

#: How many blobs' confirmations run at once by default: enough to hide
#: the round trips (a stat, a record read) behind each other, few enough
#: that a server gone silent has at most that many stats waiting out
#: their timeout before it is skipped.
CONFIRM_CONCURRENCY = 16

#: How many ``stat``s go to one server at once: its client keeps that
#: many idle connections (``StorageClient.pool_size``), and one request
#: goes on a connection at a time, so more would open connections that
#: are closed again after one answer each.
STATS_PER_SERVER = 4

#: Failures of a ``stat`` that mean the server did not answer it (it is
#: away, or not one this front end may use), not that it lacks the copy.
UNANSWERED = (
    NodeUnavailable,
    ProtocolError,
    AuthenticationFailed,
    DiskError,
    WrongCluster,
    CancelledError,
    TimeoutError,
)


class Skipped(Exception):
    """A ``stat`` not sent: its server went silent while it waited its turn."""


#: What ``confirm`` judged: node -> (its ``stat``, None if the copy is
#: gone; the length it was judged against); None if the catalog forgot
#: the blob meanwhile.
Judged = dict[str, tuple[BlobInfo | None, int]] | None


async def confirm(
    catalog: Any,
    stat: Callable[[str, str], Deferred],
    blob: BlobRecord,
    nodes: list[str],
    silent: set[str],
) -> Judged:
    """Of ``nodes``, whose listing lacked ``blob`` or showed it open or
    short, those whose copy is missing (None)
    or wrong (its ``stat``) now, each with the length it was judged
    against; None if the catalog forgot the blob meanwhile.  ``stat(node,
    blob_id)`` asks a server.

    A listing is a snapshot taken before the catalog is read: a blob
    uploaded, or a copy recorded, after a server was listed is referenced
    and counted ok by the time it is looked up, yet absent (or open) in
    that listing.  So each suspect copy is asked for directly (``stat``,
    all at once), and only then is the blob's record read again: a copy
    found whole is no problem; one still missing or wrong is judged only
    if the record still counts it ok (a mark since is someone else's
    judgement) and still exists (GC forgets a blob after deleting its
    copies: its deletes must not read as missing copies).  A server that
    does not answer the ``stat`` (away, or its disk failing the request:
    the copy may be whole) joins ``silent``: reported, none of its copies
    asked for or judged from then on.  One that answers without the copy
    (not found, a record it cannot read) has lost it."""
    nodes = [node for node in nodes if node not in silent]
    answers = await DeferredList([stat(node, blob.blob_id) for node in nodes], consumeErrors=True)
    found: dict[str, BlobInfo | None] = {}
    for node, (ok, value) in zip(nodes, answers):
        if ok:
            found[node] = value
        elif value.check(Skipped):
            continue  # silent meanwhile: not asked
        elif value.check(*UNANSWERED):
            log.warn("fsck: cannot stat {blob} on {node}: {err}", blob=blob.blob_id, node=node,
                     err=value.value)  # fmt: skip
            silent.add(node)
        else:
            # The server answered and cannot give the copy: gone, or a
            # record it cannot read (left out of its listing too): a copy
            # lost, not a server away.
            found[node] = None
    if all(info is not None and holds_the_blob(info, blob.length) for info in found.values()):
        return {}
    try:
        now = await catalog.get_blob(blob.blob_id)
    except catalog_errors.NotFound:
        return None
    still_ok = {r.node for r in now.replicas if r.state == REPLICA_OK}
    return {
        node: (info, now.length)
        for node, info in found.items()
        if node in still_ok and (info is None or not holds_the_blob(info, now.length))
    }


class Confirmations:
    """``confirm`` for many blobs, at most ``limit`` at a time.

    ``add`` waits for a free slot and starts one; ``finish`` waits for all
    and returns blob id -> what ``confirm`` judged.  A confirmation that
    fails (the catalog out of reach) sets ``failed``: the caller starts no
    more, and ``finish`` raises that failure once the others are done
    (none is left running behind the check)."""

    def __init__(
        self, catalog: Any, pool: StoragePool, silent: set[str], limit: int = CONFIRM_CONCURRENCY
    ) -> None:
        if limit < 1:
            raise ValueError(f"confirmations at once must be at least 1, not {limit}")
        self._catalog = catalog
        self._pool = pool
        self._per_server: dict[str, DeferredSemaphore] = {}
        self._silent = silent
        self._slots = DeferredSemaphore(limit)
        self._running: set[Deferred] = set()
        self._failure: Failure | None = None
        self._judged: dict[str, Judged] = {}

    @property
    def failed(self) -> bool:
        return self._failure is not None

    async def add(self, blob: BlobRecord, nodes: list[str]) -> None:
        """Start confirming ``nodes``' copies of ``blob`` once a slot is free."""
        await self._slots.acquire()
        d = ensureDeferred(confirm(self._catalog, self._stat, blob, nodes, self._silent))
        self._running.add(d)

        def done(result: Any) -> None:
            self._running.discard(d)
            self._slots.release()
            if isinstance(result, Failure):
                if self._failure is None:
                    self._failure = result
            else:
                self._judged[blob.blob_id] = result

        d.addBoth(done)

    def _stat(self, node: str, blob_id: str) -> Deferred:
        """``node``'s ``stat`` of ``blob_id``, ``STATS_PER_SERVER`` at most
        under way to it at a time; one whose turn comes after ``node``
        went silent is not sent (``Skipped``): each would wait out the
        timeout the ones before it did, a batch at a time."""
        slots = self._per_server.get(node)
        if slots is None:
            slots = self._per_server[node] = DeferredSemaphore(STATS_PER_SERVER)

        def ask() -> Deferred:
            if node in self._silent:
                return fail(Skipped(node))
            return self._pool.client(node).stat(blob_id).addErrback(unanswered)

        def unanswered(failure: Failure) -> Failure:
            # Silent before its slot is given to the next stat waiting
            # (``confirm`` sees the failure only after): that one is skipped.
            if failure.check(*UNANSWERED):
                self._silent.add(node)
            return failure

        return slots.run(ask)

    async def finish(self) -> dict[str, Judged]:
        """Wait for every confirmation started; raise the first failure."""
        if self._running:
            await DeferredList(list(self._running))
        if self._failure is not None:
            self._failure.raiseException()
        return self._judged
