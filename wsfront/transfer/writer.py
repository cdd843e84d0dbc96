"""Writing an upload to its replicas: the consumer an adapter writes into.

A ``WriteSession`` fans every chunk out to the replica writers of the
session's current blob (see docs/architecture.md for why fan-out), pauses the
client while any replica is behind, checkpoints the durable offset into the
catalog every few MiB or seconds, and on ``finish()`` seals every replica and
commits in the catalog conditionally on its epoch, so nothing is acknowledged
before it is durable and recorded.  A replica that dies drops out; a write
or catalog update refused for its epoch ends the session as fenced.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import UploadSession, Version
from wsfront.transfer.errors import (
    LengthExceeded,
    NoReplicasAvailable,
    QuotaExceeded,
    SessionFailed,
    SessionFenced,
    StorageFull,
    TransferAborted,
    UploadEnded,
    UploadIncomplete,
)
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.upload_log import StartLine, committed
from wsstorage import errors as storage_errors
from wsstorage import failpoints
from wsstorage._interfaces import IBlobWriter, IStorageClient

log = Logger()

STREAMING = "streaming"
COMMITTING = "committing"
DONE = "done"
INTERRUPTED = "interrupted"
FENCED = "fenced"
FAILED = "failed"

#: Bytes relayed into uploads by this process, for ``transfer.write.bytes``.
_relayed = 0
#: The name the whole-file hash pauses an upload under (beside replica names).
_HASHING = "(sha256)"
#: Seconds between the tries to mark a failed session interrupted while the
#: catalog is unavailable (a restart, a lock timeout): about 15 s in all.
INTERRUPT_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


class Sha256Stream:
    """The whole-file sha256 of a stream of chunks (a straight upload, a
    compaction copy).

    The first ``INLINE`` bytes are hashed in the reactor thread (a small
    file is done before a thread could be woken); after that every chunk
    goes, in order, to one hashing thread shared by the process, so the
    reactor thread relays the next chunk meanwhile (hashlib releases the GIL
    for large updates).  ``backlog`` bytes queued and not yet hashed pause the
    upload above ``HIGH`` and resume it below ``LOW`` (``on_pause``,
    ``on_resume``, called in the reactor thread), so memory stays bounded
    when the hash is slower than the network.  ``digest()`` fires with the
    hex digest once every chunk is hashed.
    """

    INLINE = 1 << 20
    HIGH = 8 << 20
    LOW = 2 << 20

    _queue: queue.SimpleQueue | None = None
    _start_lock = threading.Lock()

    def __init__(self, reactor, on_pause, on_resume) -> None:
        self._sha = hashlib.sha256()
        self._call_from_thread = getattr(reactor, "callFromThread", None)
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._inline = 0
        self._lock = threading.Lock()
        self._queued = 0
        self._hashed = 0
        self._paused = False
        self._threaded = False
        self.cancelled = False

    def update(self, data: bytes) -> None:
        if not self._threaded:
            if self._inline + len(data) <= self.INLINE or self._call_from_thread is None:
                self._inline += len(data)
                self._sha.update(data)
                return
            self._threaded = True
        with self._lock:
            self._queued += len(data)
            pause = not self._paused and self._queued - self._hashed > self.HIGH
            if pause:
                self._paused = True
        self._worker_queue().put((self, data))
        if pause:
            self._on_pause()

    def digest_now(self) -> str | None:
        """The hex digest, if every chunk was hashed inline (a file within
        ``INLINE``: no thread to wait for); else None, and ``digest()``."""
        return None if self._threaded else self._sha.hexdigest()

    def digest(self) -> Deferred:
        if not self._threaded:
            return succeed(self._sha.hexdigest())
        d: Deferred = Deferred()
        self._worker_queue().put((self, d))
        return d

    # -- in the hashing thread ---------------------------------------------

    def _work(self, item) -> None:
        if isinstance(item, Deferred):
            self._call_from_thread(item.callback, self._sha.hexdigest())
            return
        if not self.cancelled:
            self._sha.update(item)
        with self._lock:
            self._hashed += len(item)
            wake = self._paused and self._queued - self._hashed <= self.LOW
            if wake:
                self._paused = False
        if wake:
            self._call_from_thread(self._on_resume)

    @classmethod
    def _worker_queue(cls) -> queue.SimpleQueue:
        with cls._start_lock:
            if cls._queue is None:
                cls._queue = queue.SimpleQueue()
                threading.Thread(
                    target=cls._run, args=(cls._queue,), name="wsfs-sha256", daemon=True
                ).start()
        return cls._queue

    @staticmethod
    def _run(work: queue.SimpleQueue) -> None:
        while True:
            hasher, item = work.get()
            try:
                hasher._work(item)
            except Exception:
                log.failure("hashing an upload failed")


class _Settled(Deferred):
    """``settled``'s Deferred: its ``cancel`` cancels each of the Deferreds
    it waits on and nothing more, as ``DeferredList.cancel`` does, so it
    still fires with every one's own result once they have all fired (a
    child that goes on after its cancel, e.g. a seal that completes, is
    not lost to the caller)."""

    def __init__(self, ds: list[Deferred]) -> None:
        super().__init__()
        self._children = ds

    def cancel(self) -> None:
        if self.called:
            return
        for d in self._children:
            try:
                d.cancel()
            except BaseException:
                log.failure("a canceller raised while cancelling an upload's seal")


def _when_settled(d: Deferred) -> Deferred:
    """A Deferred that fires with None once ``d`` has fired, whatever its
    result, which stays ``d``'s for its other waiters."""
    done: Deferred = Deferred()

    def fire(result: object) -> object:
        done.callback(None)
        return result

    d.addBoth(fire)
    return done


def settled(ds: list[Deferred]) -> Deferred:
    """Fires, once every one of ``ds`` has, with ``[(ok, result or
    Failure)]`` in their order, their errors consumed: what
    ``DeferredList(ds, consumeErrors=True)`` gives, without its per-result
    bookkeeping (typing casts, the fireOnOne checks), for the seal that
    every upload's commit waits on.  Cancelling it cancels each of ``ds``
    and waits for them, as DeferredList's cancel does (``_Settled``)."""
    results: list = [None] * len(ds)
    left = len(ds)
    done = _Settled(ds)
    if not left:
        done.callback(results)
        return done

    def one(result, index: int):
        nonlocal left
        ok = not isinstance(result, Failure)
        results[index] = (ok, result)
        left -= 1
        if not left:
            done.callback(results)
        # A failure is consumed (consumeErrors); a result stays for any
        # other holder of that Deferred, as DeferredList leaves it.
        return result if ok else None

    for index, d in enumerate(ds):
        d.addBoth(one, index)
    return done


@implementer(IPushProducer)
class ReplicaBackpressure:
    """Registered as the producer on one storage writer: its pause calls
    ``paused(node)`` and its resume (or stop) ``resumed(node)``, so whoever
    feeds several replicas pauses while any one of them is behind (an
    upload's WriteSession, compaction's relay)."""

    def __init__(self, node: str, paused, resumed) -> None:
        self._node = node
        self._paused = paused
        self._resumed = resumed

    def pauseProducing(self) -> None:
        self._paused(self._node)

    def resumeProducing(self) -> None:
        self._resumed(self._node)

    def stopProducing(self) -> None:
        self._resumed(self._node)


@implementer(IConsumer)
class WriteSession:
    """One front end's live handle on an upload session."""

    def __init__(
        self,
        clock: IReactorTime,
        pool: StoragePool,
        catalog,
        session: UploadSession,
        writers: dict[str, IBlobWriter],
        *,
        quota_remaining: int | None = None,
        checkpoint_bytes: int = 8 << 20,
        checkpoint_seconds: float = 2.0,
        hash_whole_file: bool = False,
        on_end: Callable[[WriteSession], None] | None = None,
        stats=None,
        expiry: float | None = None,
        start_line: StartLine | None = None,
        new_upload: bool = False,
        clients: dict[str, IStorageClient] | None = None,
    ) -> None:
        self._clock = clock
        self._pool = pool
        #: The client each replica's writer was opened through: a failure
        #: reported through one the pool no longer uses (the server moved)
        #: does not mark the new address down (``StoragePool.mark_down``).
        self._clients = clients or {}
        self._catalog = catalog
        self.session = session
        self.upload_id = session.upload_id
        self.epoch = session.epoch
        self.blob_id = session.blob_id
        self.blob_start = session.blob_start
        self.offset = session.blob_start
        self.durable = session.checkpoint
        #: When the upload expires as the catalog last recorded it: the
        #: start's or takeover's, then each checkpoint's (activity moves it).
        self.expires_at: float = session.expires_at
        self.state = STREAMING
        self.error: Exception | None = None
        self.received = 0
        self._writers = dict(writers)
        #: Whether every replica dropped so far ran out of space (DiskFull):
        #: then losing the last one is StorageFull, not a replica outage.
        self._only_full_drops = True
        self._recorded_replicas = tuple(sorted(writers))
        self._quota_remaining = quota_remaining
        self._checkpoint_bytes = checkpoint_bytes
        self._checkpoint_seconds = checkpoint_seconds
        self._sha = None
        if hash_whole_file and session.blob_start == 0:
            self._sha = Sha256Stream(
                clock,
                lambda: self._replica_paused(_HASHING),
                lambda: self._replica_resumed(_HASHING),
            )
        self._since_checkpoint = 0
        self._checkpointing: Deferred | None = None
        self._timer = None
        self._producer = None
        self._paused_by: set[str] = set()
        self._failure_waiters: list[Deferred] = []
        #: The catalog update that marks the session interrupted once no
        #: replica is left (``_fail``); ``finish`` waits for it.
        self._interrupting: Deferred | None = None
        self._on_end = on_end
        self._stats = stats
        self._expiry = expiry
        #: The upload began with this session (a STOR, PUT or tus creation,
        #: not a resume or takeover of a pending one) and no client was told
        #: it exists:
        #: refused for room with nothing of it durable, it is ``discarded``.
        self._new_upload = new_upload
        #: Whether it is ``discarded``: decided once (``_decide_end``), as
        #: the catalog is told how the session ended; None until then.
        self._discarded: bool | None = None
        #: The upload's start line, written at most once (``upload_log``):
        #: set before anything below can end the session.
        self._start_line = start_line
        if stats is not None:
            stats.uploads_started += 1
        # The room its placement set aside (a blob of known size) is held
        # until the session ends (``_ended``), less what it has relayed.
        pool.claim(self.blob_id, self._writers, self._written)
        # A copy: a writer that failed already drops out (from the dict)
        # as soon as its errback is added.
        for node, writer in list(self._writers.items()):
            writer.registerProducer(
                ReplicaBackpressure(node, self._replica_paused, self._replica_resumed), True
            )
            writer.when_failed().addErrback(self._replica_failed, node)
        self._arm_timer()

    # -- what adapters use ------------------------------------------------

    def _write_start_line(self) -> None:
        if self._start_line is not None:
            self._start_line.write(self._clock.seconds())

    @property
    def replicas(self) -> tuple[str, ...]:
        return tuple(self._writers)

    def _written(self) -> int:
        """The bytes relayed into the blob (its placement's room used)."""
        return self.received

    @property
    def left_pending(self) -> bool:
        """Whether the upload stays pending, resumable from ``durable`` until
        it expires: its client went away, or the session failed (every
        replica gone, the quota, a failed commit): never left active with
        no writer.  Not when its adapter gave it up (aborted: the adapter
        decides its fate), the catalog ended it already, or it is
        ``discarded``."""
        return self.state == INTERRUPTED or (
            self.state == FAILED
            and not isinstance(self.error, TransferAborted | UploadEnded)
            and not self.discarded
        )

    @property
    def discarded(self) -> bool:
        """Whether the upload is aborted in the catalog rather than left
        pending: a new upload refused for room (StorageFull) before any
        of its bytes was durable.  Kept, it stood as a pending upload at
        its start with nothing in it to resume, shown to its owner (SIZE,
        HEAD's Upload-Offset), counted toward the cap on pending uploads
        and holding its blob until it expired.  Its blob is collected as
        any aborted upload's; a committed version of the path stays.  A
        resume or takeover keeps its upload: what it resumed is still
        there to resume.

        Decided once (``_decide_end``), when the session's end is recorded:
        after a checkpoint still in flight when it failed has settled, so
        bytes that checkpoint made durable keep the upload; never changed
        after.  False until then: read it once ``interrupt()`` or
        ``when_recorded()`` has fired."""
        return bool(self._discarded)

    def _may_be_discarded(self) -> bool:
        """Whether a failed session is ``discarded`` if nothing more of it
        is durable than now."""
        return (
            self._new_upload
            and self.state == FAILED
            and isinstance(self.error, StorageFull)
            and self.durable == self.blob_start
        )

    def _decide_end(self) -> bool:
        """Decide ``discarded``, once: call it when nothing can make more
        of the upload durable (no checkpoint in flight)."""
        if self._discarded is None:
            self._discarded = self._may_be_discarded()
        return self._discarded

    def when_recorded(self) -> Deferred:
        """Fires (never fails) once the catalog has recorded how a failed
        session ended, left interrupted or discarded; at once if nothing
        is being recorded.  An adapter answers a failure after it, so a
        client that asks again (SIZE, HEAD, a new upload) finds what the
        answer meant, as ``finish`` waits for it before it raises.

        Best effort: it fires after the first attempt, whatever came of
        it.  When the catalog was unavailable, the retries
        (``INTERRUPT_RETRY_DELAYS``, about 15 s in all) go on without the
        answer waiting for them, and a client that asks at once may find
        the upload still active (or, for a discarded one, still there)."""
        recording = self._interrupting
        if recording is None or recording.called:
            return succeed(None)
        done: Deferred = Deferred()

        def fire(result: object) -> object:
            done.callback(None)
            return result

        recording.addBoth(fire)
        return done

    def when_failed(self) -> Deferred:
        """Errbacks with the error that ended the session early (fenced,
        every replica gone, quota); never fires on success."""
        d: Deferred = Deferred()
        if self.error is not None and self.state in (FENCED, FAILED):
            d.errback(self.error)
        else:
            self._failure_waiters.append(d)
        return d

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        if self._paused_by:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        """Relay a chunk from the client to every live replica."""
        global _relayed
        if self.state != STREAMING or not data:
            return
        quota = self._quota_remaining
        if quota is not None and self.received + len(data) > quota:
            self._fail(QuotaExceeded("the upload exceeds the user's quota"))
            return
        declared = self.session.declared_length
        if declared is not None and self.offset + len(data) > declared:
            self._fail(LengthExceeded(f"the upload was declared {declared} bytes long"))
            return
        limit = failpoints.threshold("transfer.write.bytes")
        if limit is not None and _relayed + len(data) >= limit > _relayed:
            cut = limit - _relayed
            self._relay(data[:cut])
            _relayed += cut
            failpoints.hit("transfer.write.bytes", _relayed)
            data = data[cut:]
            if not data or self.state != STREAMING:
                return
        _relayed += len(data)
        self._relay(data)

    def _relay(self, data: bytes) -> None:
        # Every replica's writer frames the same bytes with views (no copy).
        for node, writer in list(self._writers.items()):
            try:
                writer.write(data)
            except Exception as e:
                self._drop_replica(node, e)
        if self.state != STREAMING:
            return
        if self._sha is not None:
            self._sha.update(data)
        self.offset += len(data)
        self.received += len(data)
        if self._stats is not None:
            self._stats.write_bytes += len(data)
        self._since_checkpoint += len(data)
        if self._since_checkpoint >= self._checkpoint_bytes:
            self.checkpoint()

    # -- checkpoints ------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._checkpoint_seconds > 0:
            self._timer = self._clock.callLater(self._checkpoint_seconds, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state != STREAMING:
            return
        self._write_start_line()
        if self._since_checkpoint:
            self.checkpoint()
        self._arm_timer()

    def checkpoint(self) -> Deferred:
        """Flush every live replica and record the least durable offset.

        At most one checkpoint runs at a time; a call while one runs returns
        that one.  Errors end the session (fenced or failed); the Deferred
        itself never fails.
        """
        if self._checkpointing is not None:
            return self._checkpointing
        self._write_start_line()
        self._since_checkpoint = 0
        d = self._checkpointing = self._do_checkpoint()

        def done(result):
            self._checkpointing = None
            if isinstance(result, Failure):
                self._fail(result.value)
            elif self.state == STREAMING and self._since_checkpoint >= self._checkpoint_bytes:
                # Bytes kept arriving while we flushed: chain the next one.
                self.checkpoint()
            return None

        d.addBoth(done)
        return d

    @inlineCallbacks
    def _do_checkpoint(self, final: bool = False):
        writers = list(self._writers.items())
        results = yield settled([w.flush() for _, w in writers])
        lengths = []
        for (node, _), (ok, value) in zip(writers, results):
            if ok:
                lengths.append(value)
            else:
                self._drop_replica(node, value.value)
        if self.state not in (STREAMING, COMMITTING, INTERRUPTED):
            return
        if not lengths:
            raise NoReplicasAvailable("every replica failed")
        durable = self.blob_start + min(lengths)
        replicas = tuple(sorted(self._writers))
        changed = replicas != self._recorded_replicas
        if durable <= self.durable and not changed:
            return
        failpoints.hit("transfer.before_checkpoint", durable)
        expires_at = self._expires_at()
        yield self._catalog.checkpoint(
            self.upload_id,
            self.epoch,
            durable,
            replicas=list(replicas) if changed else None,
            expires_at=expires_at,
        )
        self._recorded_replicas = replicas
        self.durable = durable
        if expires_at is not None:
            self.expires_at = expires_at
        failpoints.hit("transfer.after_checkpoint", durable)

    def _expires_at(self) -> float | None:
        """Activity keeps the session alive for another expiry period."""
        return None if self._expiry is None else self._clock.seconds() + self._expiry

    # -- the end of a session ---------------------------------------------

    @inlineCallbacks
    def finish(self) -> Version:
        """Seal every replica, then commit in the catalog; fires with the
        committed Version.  Only after this fires may an adapter answer
        226/201/204."""
        if self.state != STREAMING:
            raise self.error or SessionFailed(f"upload is {self.state}")
        declared = self.session.declared_length
        if declared is not None and self.offset != declared:
            # Ended short of the length its first client declared (an FTP
            # resume of a PUT or tus upload): kept pending, never committed
            # as a complete file, nor thrown away.
            yield self.interrupt()
            raise UploadIncomplete(
                f"{self.durable} of the {declared} bytes declared are stored; "
                f"the upload stays pending, resume it at {self.durable}"
            )
        self.state = COMMITTING
        self._cancel_timer()
        try:
            if self._checkpointing is not None:
                yield self._checkpointing
                if self.state != COMMITTING:
                    raise self.error or SessionFailed(f"upload is {self.state}")
            failpoints.hit("transfer.before_commit")
            writers = list(self._writers.items())
            results = yield settled([w.commit() for _, w in writers])
            for (node, _), (ok, value) in zip(writers, results):
                if not ok:
                    self._drop_replica(node, value.value)
            if self.state != COMMITTING:
                raise self.error or SessionFailed(f"upload is {self.state}")
            if not self._writers:
                raise NoReplicasAvailable("no replica could seal the upload")
            replicas = tuple(sorted(self._writers))
            if replicas != self._recorded_replicas:
                # commit_upload records the length (checkpoint and blob
                # length) in its own transaction; only a replica set that
                # changed since the last checkpoint must be recorded first.
                yield self._catalog.checkpoint(
                    self.upload_id, self.epoch, self.offset, replicas=list(replicas)
                )
                self._recorded_replicas = replicas
                self.durable = self.offset
            sha256 = None
            if self._sha is not None:
                sha256 = self._sha.digest_now()
                if sha256 is None:
                    sha256 = yield self._sha.digest()
                    if self.state != COMMITTING:
                        raise self.error or SessionFailed(f"upload is {self.state}")
            version = yield self._catalog.commit_upload(
                self.upload_id, self.epoch, self.offset, sha256=sha256
            )
        except Exception as e:
            self._fail(self._translate(e))
            if self._interrupting is not None:
                yield self._interrupting
            raise self.error from e
        self.durable = self.offset
        self.state = DONE
        if self._stats is not None:
            self._stats.uploads_committed += 1
        # A reactor turn later, after the adapter's reply (FTP 226) that
        # waits for this Deferred: the line is not part of the commit.
        start = self._start_line
        self._clock.callLater(
            0,
            committed,
            self.upload_id,
            self.offset,
            self.epoch,
            ",".join(sorted(self._writers)),
            start,
        )
        failpoints.hit("transfer.after_commit")
        self._ended()
        return version

    @inlineCallbacks
    def interrupt(self):
        """The client went away: keep the durable part, mark the session
        interrupted so it can be resumed from ``durable`` anywhere.  A
        session that failed meanwhile is waited for until its end is
        recorded (``when_recorded``), so ``discarded`` can be read after
        this, as its docstring says."""
        if self.state == FAILED:
            yield self.when_recorded()
            return
        if self.state != STREAMING:
            return
        self.state = INTERRUPTED
        if self._stats is not None:
            self._stats.uploads_interrupted += 1
        self._cancel_timer()
        self._write_start_line()
        try:
            if self._checkpointing is not None:
                yield self._checkpointing
            try:
                yield self._do_checkpoint()
            except catalog_errors.QuotaExceeded as e:
                # The user's quota has no room for the last bytes (other
                # uploads of theirs took it meanwhile): the upload stays
                # pending at the checkpoint recorded before them.
                log.info("upload {id} keeps its last checkpoint: {err}", id=self.upload_id, err=e)
            end, _ = self._end_in_catalog()  # discarded: its flush was refused for room
            yield end(self.upload_id, self.epoch)
        except Exception as e:
            log.warn(
                "upload {id} could not record its interruption: {err}", id=self.upload_id, err=e
            )
        finally:
            yield self._release_writers()
            self._ended()

    def fence(self, reason: str) -> None:
        """Another connection or front end took this upload over: end it as
        fenced (its client gets an error, never a success)."""
        self._fail(SessionFenced(reason))

    def abort(self) -> Deferred:
        """Stop without recording anything more (the adapter gives up)."""
        if self.state in (DONE, FENCED, FAILED):
            return succeed(None)
        self._fail(TransferAborted("upload aborted"))
        return succeed(None)

    # -- failures ---------------------------------------------------------

    def _translate(self, error: Exception) -> Exception:
        if isinstance(error, catalog_errors.UploadFinished):
            # Deleted with its file, aborted or expired meanwhile: no
            # takeover, and the client is told so.
            return UploadEnded(error.state)
        if isinstance(error, storage_errors.StaleEpoch | catalog_errors.EpochConflict):
            return SessionFenced(f"upload {self.upload_id} was taken over: {error}")
        if isinstance(error, catalog_errors.QuotaExceeded):
            return QuotaExceeded(str(error))
        return error

    def _replica_failed(self, failure: Failure, node: str) -> None:
        self._drop_replica(node, failure.value)

    def _drop_replica(self, node: str, error: Exception) -> None:
        if node not in self._writers:
            return
        if isinstance(error, storage_errors.StaleEpoch):
            self._fail(self._translate(error))
            return
        writer = self._writers.pop(node)
        self._paused_by.discard(node)
        self._pool.release(self.blob_id, (node,))
        self._only_full_drops &= isinstance(error, storage_errors.DiskFull)
        if self._stats is not None:
            self._stats.replica_drops += 1
            self._stats.event(
                self._clock.seconds(), "replica-dropped", upload=self.upload_id, node=node,
                error=str(error),
            )  # fmt: skip
        log.warn(
            "upload {id}: replica {node} dropped out: {err}",
            id=self.upload_id,
            node=node,
            err=error,
        )
        if isinstance(error, storage_errors.NodeUnavailable):
            self._pool.mark_down(node, str(error), self._clients.get(node))
        elif isinstance(error, storage_errors.DiskError):
            # Read-only, files gone: no blob will do better there.  Not
            # DiskFull: a smaller blob may still fit, and placement already
            # puts the emptiest servers first.
            self._pool.mark_unwritable(node, str(error), self._clients.get(node))
        try:
            writer.abort()
        except Exception:
            pass
        if not self._writers:
            lost = StorageFull if self._only_full_drops else NoReplicasAvailable
            self._fail(lost(f"every replica failed, last: {node}: {error}"))
        elif not self._paused_by:
            self._resume_upstream()

    def _fail(self, error: Exception) -> None:
        if self.state in (DONE, FENCED, FAILED):
            return
        error = self._translate(error)
        interrupting = self.state != INTERRUPTED  # else interrupt() records it
        self.state = FENCED if isinstance(error, SessionFenced) else FAILED
        if self._stats is not None:
            if self.state == FENCED:
                self._stats.fenced += 1
                self._stats.event(self._clock.seconds(), "fenced", upload=self.upload_id)
            else:
                self._stats.uploads_failed += 1
        self.error = error
        self._cancel_timer()
        self._write_start_line()
        log.warn("upload {id} ends: {err}", id=self.upload_id, err=error)
        self._release_writers()
        in_flight = self._checkpointing
        wait = self._may_be_discarded() and in_flight is not None
        if wait:
            # A checkpoint in flight may yet record durable bytes, which
            # keep the upload: decide (and record) its end once it settled.
            # Its client is told of the failure now, its answer waits
            # (``when_recorded``); so does the end of the session here.
            after = _when_settled(in_flight).addCallback(
                lambda _: self._record_end(interrupting, ended=True)
            )
            if interrupting:
                self._interrupting = after
        else:
            self._record_end(interrupting)
        waiters, self._failure_waiters = self._failure_waiters, []
        for d in waiters:
            d.errback(error)
        if not wait:
            self._ended()

    def _record_end(self, interrupting: bool, ended: bool = False) -> Deferred | None:
        """Decide whether the failed session is ``discarded`` and start
        recording its end in the catalog (unless ``interrupt()``, which
        waited for any checkpoint in flight, records it); that record's
        Deferred (``_interrupting``), if any.  ``ended``: end the session
        here too (it waited for a checkpoint)."""
        self._decide_end()
        recording = None
        if interrupting and (self.left_pending or self.discarded):
            recording = self._interrupting = self._record_interrupted()
        if ended:
            self._ended()
        return recording

    def _end_in_catalog(self) -> tuple[Callable[[str, int], Deferred], str]:
        """The catalog call that records this session's end, and its name:
        abort a ``discarded`` upload, else mark it interrupted (deciding
        which, if not yet decided)."""
        if self._decide_end():
            return self._catalog.abort_upload, "discard"
        return self._catalog.interrupt_upload, "interruption"

    def _record_interrupted(self, attempt: int = 0) -> Deferred:
        """Every replica failed, or the quota refused the next bytes: the
        session cannot go on here.  Mark it interrupted in the catalog, as an
        upload no replica accepted at its start is, so it is not left active
        and owned by this front end until it expires; its client can resume
        it from ``durable`` (after freeing space, for the quota).  A
        ``discarded`` upload is aborted instead, with the same retries.

        The failure was often the catalog's own (a commit refused as
        unavailable), so an unavailable catalog is tried again a few times
        on the reactor (``INTERRUPT_RETRY_DELAYS``); the Deferred returned
        (which ``finish`` waits for) is the first attempt's only."""
        end, what = self._end_in_catalog()
        d = maybeDeferred(end, self.upload_id, self.epoch)

        def recorded(_: object) -> None:
            if attempt:
                log.info(
                    "upload {id} recorded its " + what + " at attempt {n}",
                    id=self.upload_id,
                    n=attempt + 1,
                )

        def failed(f: Failure) -> None:
            if f.check(catalog_errors.EpochConflict):
                # Taken over, ended or expired meanwhile (often after an
                # earlier attempt did commit, its answer lost): fenced off,
                # nothing is left to record.
                log.info(
                    "upload {id} needs no " + what + " recorded: it moved on ({err})",
                    id=self.upload_id,
                    err=f.value,
                )
                return
            if f.check(catalog_errors.CatalogClosed):
                return  # stopping: the next start interrupts our sessions
            if f.check(catalog_errors.CatalogUnavailable) and attempt < len(INTERRUPT_RETRY_DELAYS):
                delay = INTERRUPT_RETRY_DELAYS[attempt]
                log.info(
                    "upload {id} could not record its " + what + ", again in {delay}s: {err}",
                    id=self.upload_id,
                    delay=delay,
                    err=f.value,
                )

                def again() -> None:
                    forget()
                    self._record_interrupted(attempt + 1)

                # Cancelled if the catalog closes first (the front end stops).
                forget = self._catalog.when_closed(self._clock.callLater(delay, again).cancel)
                return
            log.warn(
                "upload {id} could not record its " + what + ": {err}",
                id=self.upload_id,
                err=f.value,
            )

        d.addCallbacks(recorded, failed)
        return d

    def _release_writers(self) -> Deferred:
        writers, self._writers = list(self._writers.values()), {}
        ds = []
        for w in writers:
            try:
                ds.append(w.abort())
            except Exception:
                pass
        return DeferredList(ds, consumeErrors=True)

    def _ended(self) -> None:
        self._cancel_timer()
        self._pool.release(self.blob_id)
        if self._sha is not None:
            self._sha.cancelled = True  # chunks still queued need no hashing
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- backpressure -----------------------------------------------------

    def _replica_paused(self, node: str) -> None:
        if node not in self._writers and node != _HASHING:
            return
        first = not self._paused_by
        self._paused_by.add(node)
        if first and self._producer is not None:
            self._producer.pauseProducing()

    def _replica_resumed(self, node: str) -> None:
        self._paused_by.discard(node)
        if not self._paused_by:
            self._resume_upstream()

    def _resume_upstream(self) -> None:
        if self._producer is not None and self.state == STREAMING:
            self._producer.resumeProducing()
