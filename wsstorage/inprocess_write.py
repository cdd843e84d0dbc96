"""Write streams into a storage server of this very process (``wslocal``).

``InProcessClient`` (``wsstorage.inprocess``) serves reads and small puts
of wslocal's own storage servers from their stores; a write stream (a big
upload) still went over a socket to the server, which stored its DATA
frames with the very ``write_pieces`` used here.  ``InProcessWriteClient``
opens the stream on the store itself (``open_write`` in the server's
thread pool, as ``_op_write``) and ``InProcessWriter`` stores each batch of
the caller's bytes in the reactor thread (``_store_counted``: the same
byte count, the same ``storage.write.bytes`` failpoint), syncs in the
thread pool one after the other (``flush``, as ``_sync_stream``), seals as
``_op_stream_commit`` (``storage.before_commit`` / ``after_commit``), and
closes the handle on abort.  A commit holds the stream's other controls
(flush, commit, abort) until it is answered, as the server holds a
connection's frames (``_run``): an abort does not close the handle under a
running seal, and a commit after the commit or an abort is refused with
BadRequest (the server's answer to it).  An error the store raises that
maps to no wire error (EIO, a bug) is logged with its traceback, as the
server's ``_send_error`` logs it (``inprocess._wire_error``).  Epochs
and fencing are the store's own (``BlobWriteHandle._check``), so they hold
as over the wire.  A server that stopped serving (no listening port, as
``InProcessClient`` sees it) fails the open and every running stream with
NodeUnavailable at its next write or flush, as a dropped connection would;
so does closing the client.
While a storage failpoint of the write path is armed (``WIRE_FAILPOINTS``)
a stream opens over the wire, as a read does while ``storage.read.bytes``
is: the failure tests see the server's behaviour, byte for byte.

Writes are synchronous (page cache only): nothing is buffered but one
reactor turn's batch.  A producer that writes more than TURN_BYTES in one
reactor turn is paused until the next one, so an upload cannot hold the
reactor (and the contract's flow control holds).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from wsstorage import failpoints
from wsstorage._interfaces import IBlobWriter
from wsstorage.counters import ProcessCounters
from wsstorage.errors import BadRequest, DiskFull, StorageError
from wsstorage.failwatch import FailureWatchers
from wsstorage.framing import IOV_MAX, TRANSPORT_BUFFER
from wsstorage.inprocess import InProcessClient, _checked, _wire_error, not_serving
from wsstorage.server import _store_counted, give_back_space

#: Bytes of a stream stored with one ``write_pieces`` at most; a reactor
#: turn's smaller rest is stored at the end of the turn (as the server's
#: socket reads batched DATA frames).
GATHER_BYTES = TRANSPORT_BUFFER
#: Bytes stored in one reactor turn before the producer is paused until
#: the next (``wsstorage.inprocess.TURN_BYTES`` for reads).
TURN_BYTES = 4 << 20
#: Failpoints of the server's write path: while one is armed, write
#: streams go over the wire.
WIRE_FAILPOINTS = ("storage.write.bytes", "storage.before_commit", "storage.after_commit")


def _failpoint_armed() -> bool:
    return any(failpoints.threshold(name) is not None for name in WIRE_FAILPOINTS)


class InProcessWriteClient(InProcessClient):
    """An ``InProcessClient`` whose write streams are in process too."""

    def __init__(self, wire: Any, factory: Any) -> None:
        super().__init__(wire, factory)
        #: Write streams not yet ended: close() fails them.
        self.writers: set[InProcessWriter] = set()

    def write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> defer.Deferred:
        if not self._closed and _failpoint_armed():  # a closed client refuses it below
            return self.wire.write(blob_id, epoch, offset, meta)
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        try:
            meta = _checked(blob_id, meta, epoch=epoch, offset=offset)
        except Exception as e:
            return defer.fail(e)
        factory = self.factory
        d = factory.run_blocking(factory.store.open_write, blob_id, epoch, offset, meta)

        def opened(handle: Any) -> InProcessWriter:
            if self._closed or not factory.numPorts:
                handle.close()
                raise not_serving(factory)
            writer = InProcessWriter(self, handle, blob_id, epoch, offset)
            self.writers.add(writer)
            return writer

        return d.addCallbacks(
            opened, lambda f: Failure(_wire_error(f, "write of {blob} to", blob_id, factory.name))
        )

    def close(self) -> defer.Deferred:
        """The running write streams fail with NodeUnavailable and release
        their handles (as a closed connection's), then as InProcessClient."""
        for writer in list(self.writers):
            writer.lost(self._closed_error())
        return super().close()


@implementer(IBlobWriter)
class InProcessWriter:
    """One write stream straight into the store's handle (IBlobWriter)."""

    def __init__(
        self, client: InProcessWriteClient, handle: Any, blob_id: str, epoch: int, offset: int
    ) -> None:
        self.client = client
        self.factory = client.factory
        self.handle = handle
        self.blob_id = blob_id
        self.epoch = epoch
        self.offset = offset
        self.error: StorageError | None = None
        self.finished = False
        self.producer: Any = None
        self._watchers = FailureWatchers()
        self._pieces: list[bytes] = []
        self._bytes = 0
        self._call: Any = None
        self._syncing: defer.Deferred = defer.succeed(None)
        self._drop_cache = False
        self._turn_bytes = 0
        self._resume_call: Any = None
        #: Fires once the running commit is answered (``_after_commit``).
        self._committing: defer.Deferred | None = None
        #: Fires once a full disk's partial blob has given its space back
        #: (``give_back_space``): what ``abort`` answers with, as the
        #: server's abort does.
        self._giving_back: defer.Deferred | None = None
        self.factory.in_process_writes += 1  # an active stream (health's count)

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered on this writer")
        self.producer = producer

    def unregisterProducer(self) -> None:
        """A producer paused for the rest of a turn is still resumed at the
        next (``_resume``): nothing else would resume it."""
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.finished or self._committing is not None:
            raise StorageError("write after commit or abort")
        if self.error is not None or not data:
            return
        self._pieces.append(bytes(data))
        self._bytes += len(data)
        self.offset += len(data)
        if self._bytes >= GATHER_BYTES or len(self._pieces) >= IOV_MAX:
            self._store()
        elif self._call is None:
            self._call = self.factory.reactor.callLater(0, self._store)
        first = not self._turn_bytes
        self._turn_bytes += len(data)
        producer = self.producer
        if self._turn_bytes >= TURN_BYTES and self._resume_call is None and producer is not None:
            producer.pauseProducing()
            self._resume_call = self.factory.reactor.callLater(0, self._resume, producer)
        elif first:
            self.factory.reactor.callLater(0, self._new_turn)

    def _new_turn(self) -> None:
        if self._resume_call is None:
            self._turn_bytes = 0

    def _resume(self, producer: Any) -> None:
        """Resume ``producer``, paused for the last turn: still registered,
        while the stream lives; unregistered meanwhile, always."""
        self._resume_call = None
        self._turn_bytes = 0
        if producer is not self.producer or (self.error is None and not self.finished):
            producer.resumeProducing()

    def _store(self) -> None:
        """Store the gathered pieces with one ``write_pieces``."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        pieces, size = self._pieces, self._bytes
        self._pieces, self._bytes = [], 0
        if not pieces or self.error is not None or self.handle is None:
            return
        if not self.factory.numPorts:
            self._failed(not_serving(self.factory))
            return
        start = ProcessCounters.written
        ProcessCounters.written += size
        try:
            _store_counted(self.handle, pieces, start)
        except Exception:
            self._failed(self._logged(Failure()))

    def lost(self, err: StorageError) -> None:
        """The stream's connection, as it were, is gone: fail it and let go
        of the handle (the server closes a dropped connection's stream)."""
        self._failed(err)
        self._end()

    def _logged(self, f: Failure) -> StorageError:
        return _wire_error(f, "write of {blob} to", self.blob_id, self.factory.name)

    def _failed(self, err: StorageError) -> None:
        if self.error is not None or self.finished:
            return
        self.error = err
        self._pieces, self._bytes = [], 0
        if isinstance(err, DiskFull) and self.handle is not None:
            self._giving_back = give_back_space(
                self.factory, self.handle, self.blob_id, self._syncing
            )
        self._watchers.fail(err)

    def drop_cache_behind(self) -> None:
        """As ``BlobWriter.drop_cache_behind``: from the next flush on."""
        self._drop_cache = True

    def _hint(self) -> None:
        if self._drop_cache and self.handle is not None:
            advise = getattr(self.handle, "drop_cache_behind", None)
            if advise is not None:
                advise()

    def _check(self) -> None:
        """Store what is gathered, then raise the stream's error if any."""
        self._store()
        if self.error is None and not self.factory.numPorts:
            self._failed(not_serving(self.factory))
        if self.error is not None:
            raise self.error
        if self.finished:
            raise BadRequest("the write stream is over (committed or aborted)")

    def _after_commit(self, control: Any) -> defer.Deferred | None:
        """``control`` once the running commit is answered, if one runs."""
        if self._committing is None:
            return None
        d: defer.Deferred = defer.Deferred()
        self._committing.addBoth(lambda _: control().chainDeferred(d))
        return d

    def flush(self) -> defer.Deferred:
        held = self._after_commit(self.flush)
        if held is not None:
            return held
        try:
            self._check()
        except StorageError as e:
            return defer.fail(e)
        self._hint()
        handle = self.handle
        d = self._syncing.addBoth(lambda _: self.factory.run_blocking(handle.sync))
        self._syncing = mine = defer.Deferred()

        def settle(result: Any) -> Any:
            if isinstance(result, Failure):
                err = self._logged(result)
                self._failed(err)
                mine.callback(None)
                return Failure(self.error or err)
            mine.callback(None)
            return int(result)

        return d.addBoth(settle)

    def commit(self) -> defer.Deferred:
        held = self._after_commit(self.commit)
        if held is not None:
            return held
        self._committing = answered = defer.Deferred()

        def settled(result: Any) -> Any:
            self._committing = None
            answered.callback(None)
            return result

        return self._commit().addBoth(settled)

    @defer.inlineCallbacks
    def _commit(self) -> Any:
        self._check()
        self._hint()
        self.unregisterProducer()
        yield self._syncing
        if self.error is not None:
            raise self.error
        failpoints.hit("storage.before_commit")
        try:
            info = yield self.factory.run_blocking(self.handle.seal)
        except Exception:
            err = self._logged(Failure())
            self._failed(err)
            raise (self.error or err) from None
        failpoints.hit("storage.after_commit")
        self._end()
        return info

    def abort(self) -> defer.Deferred:
        held = self._after_commit(self.abort)
        if held is not None:
            return held
        self._store()
        self.unregisterProducer()
        self._end()
        if self._giving_back is not None:
            giving_back, self._giving_back = self._giving_back, None
            return giving_back
        return defer.succeed(None)

    def when_failed(self) -> defer.Deferred:
        return self._watchers.watch(self.error)

    def _end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._watchers.forget()
        self.client.writers.discard(self)
        handle, self.handle = self.handle, None
        self.factory.in_process_writes -= 1
        if handle is not None:
            handle.close()
