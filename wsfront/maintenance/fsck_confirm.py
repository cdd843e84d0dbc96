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

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
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
from wsstorage.diskformat import FormatError
from wsstorage.errors import (
    AuthenticationFailed,
    BlobNotFound,
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

#: How many blobs' worth of confirmations, in multiples of the ones under
#: way at once, may be started ahead of the earliest one not yet
#: answered: its answers wait in order to be handed on.  Enough that one
#: slow blob (a stat waiting out a timeout) does not stop the others at
#: once; bounded, so the waiting answers are few.
WINDOW = 4

#: A blob under way in ``Confirmations``' reorder buffer.
PENDING = object()

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


def lost(error: BaseException) -> bool:
    """Whether a ``stat``'s error is its server saying it has no such
    copy: not found, or a record it cannot decode (``format``, an error
    code the client keeps without a class of its own)."""
    return isinstance(error, BlobNotFound) or getattr(error, "code", None) == FormatError.code


class Skipped(Exception):
    """A ``stat`` not sent: its server went silent while it waited its turn."""


@attrs.frozen
class Verdict:
    """What ``confirm`` found of a blob's suspect copies: ``bad``, node ->
    (its ``stat``, None if the copy is gone; the length it was judged
    against), the copies missing or wrong; ``unknown``, how many were not
    judged (their server did not answer, or answered with an error that
    says nothing of the copy), of which ``erred`` answered with an error."""

    bad: dict[str, tuple[BlobInfo | None, int]] = attrs.Factory(dict)
    unknown: int = 0
    erred: int = 0

    def __bool__(self) -> bool:
        """Whether there is anything to report."""
        return bool(self.bad) or self.unknown > 0


#: What ``confirm`` judged: None if the catalog forgot the blob meanwhile.
Judged = Verdict | None


async def confirm(
    catalog: Any,
    stat: Callable[[str, str], Deferred],
    blob: BlobRecord,
    nodes: list[str],
    silent: set[str],
) -> Judged:
    """Of ``nodes``, whose listing lacked ``blob`` or showed it open or
    short, those whose copy is missing (None) or wrong (its ``stat``)
    now, each with the length it was judged against, and how many could
    not be judged (``Verdict``); None if the catalog forgot the blob
    meanwhile.  ``stat(node, blob_id)`` asks a server.

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
    (not found, a record it cannot decode) has lost it; any other error
    it answers with leaves that copy unjudged (logged)."""
    unknown = len(nodes)  # less each one found or judged lost
    erred = 0
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
        elif lost(value.value):
            # The server answered without the copy: gone, or a record it
            # cannot decode (left out of its listing too): a copy lost,
            # not a server away.
            found[node] = None
        else:
            # Any other error it answered with (EIO reading the record,
            # its store closing, a bug of its own) says nothing of the
            # copy, which may be whole: not judged.
            log.warn("fsck: {node} failed the stat of {blob}: {err}; that copy is not judged",
                     node=node, blob=blob.blob_id, err=value.value)  # fmt: skip
            erred += 1
    unknown -= len(found)
    if all(info is not None and holds_the_blob(info, blob.length) for info in found.values()):
        return Verdict(unknown=unknown, erred=erred)
    try:
        now = await catalog.get_blob(blob.blob_id)
    except catalog_errors.NotFound:
        return None
    still_ok = {r.node for r in now.replicas if r.state == REPLICA_OK}
    bad = {
        node: (info, now.length)
        for node, info in found.items()
        if node in still_ok and (info is None or not holds_the_blob(info, now.length))
    }
    return Verdict(bad, unknown, erred)


#: What ``Confirmations`` hands on of a blob whose record was gone
#: before its copies could be looked at (``put``): reported apart.
NO_RECORD = "no blob record"


class Confirmations:
    """``confirm`` for many blobs, at most ``limit`` at a time, each
    blob's verdict handed to ``verdict(blob_id, judged)`` in the order the
    blobs were added (``add``, ``put``), as they come in: none kept past
    its turn, and one with nothing to say (every copy whole, the blob
    forgotten) not kept at all.  An answer that comes before an earlier
    blob's waits in a reorder buffer, at most ``WINDOW`` times ``limit``
    blobs long (``add`` waits for room), so a check's memory does not
    grow with the number of suspects (a server that lost 10M copies).

    ``add`` waits for a free slot and starts one, unless ``keep_going()``
    turned false or a confirmation failed (the catalog out of reach)
    meanwhile: that sets ``failed``, the caller starts no more, and
    ``finish`` raises that failure once the others are done (none is left
    running behind the check)."""

    def __init__(
        self,
        catalog: Any,
        pool: StoragePool,
        silent: set[str],
        verdict: Callable[[str, Verdict | str], None],
        limit: int = CONFIRM_CONCURRENCY,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        if limit < 1:
            raise ValueError(f"confirmations at once must be at least 1, not {limit}")
        self._catalog = catalog
        self._pool = pool
        self._per_server: dict[str, DeferredSemaphore] = {}
        self._silent = silent
        self._verdict = verdict
        self._keep_going = keep_going
        self._slots = DeferredSemaphore(limit)
        self._room = DeferredSemaphore(WINDOW * limit)
        self._running: set[Deferred] = set()
        self._failure: Failure | None = None
        #: In the order added: each blob under way (PENDING), or answered
        #: with something to report and waiting for the blobs before it.
        self._order: OrderedDict[int, tuple[str, Any]] = OrderedDict()
        self._next = 0

    @property
    def failed(self) -> bool:
        return self._failure is not None

    async def add(self, blob: BlobRecord, nodes: list[str]) -> bool:
        """Start confirming ``nodes``' copies of ``blob`` once a slot is
        free; False if none was started: the lease was lost or a
        confirmation failed while it waited (asked again once the slot is
        had, or one more would start after it)."""
        await self._room.acquire()
        await self._slots.acquire()
        if self.failed or not self._keep_going():
            self._slots.release()
            self._room.release()
            return False
        seq = self._enter(blob.blob_id)
        d = ensureDeferred(confirm(self._catalog, self._stat, blob, nodes, self._silent))
        self._running.add(d)

        def done(result: Any) -> None:
            self._running.discard(d)
            if isinstance(result, Failure):
                if self._failure is None:
                    self._failure = result
                result = None
            # Failed first: the ``add`` the slot goes to must see it.
            self._slots.release()
            self._answered(seq, result)

        d.addBoth(done)
        return True

    async def put(self, blob_id: str, verdict: str) -> None:
        """Hand on ``verdict`` (``NO_RECORD``) of ``blob_id`` in its turn."""
        await self._room.acquire()
        self._answered(self._enter(blob_id), verdict)

    def _enter(self, blob_id: str) -> int:
        seq = self._next
        self._next += 1
        self._order[seq] = (blob_id, PENDING)
        return seq

    def _answered(self, seq: int, result: Judged | str) -> None:
        """Record ``seq``'s answer (dropped if it has nothing to say), then
        hand on every answer whose turn has come."""
        freed = 0
        if not result:  # all whole, forgotten (None), or failed
            del self._order[seq]
            freed += 1
        else:
            self._order[seq] = (self._order[seq][0], result)
        while self._order:
            seq, (blob_id, result) = next(iter(self._order.items()))
            if result is PENDING:
                break
            del self._order[seq]
            freed += 1
            try:
                self._verdict(blob_id, result)
            except Exception:
                if self._failure is None:
                    self._failure = Failure()
        # Room given back only now: it may resume the check's ``add`` or
        # ``put`` at once, whose own hand-on must not overtake these.
        for _ in range(freed):
            self._room.release()

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

    async def finish(self) -> None:
        """Wait for every confirmation started (every verdict handed on);
        raise the first failure."""
        if self._running:
            await DeferredList(list(self._running))
        if self._failure is not None:
            self._failure.raiseException()
