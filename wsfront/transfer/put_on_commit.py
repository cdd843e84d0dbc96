"""A replica writer that stores an upload which ends small with one ``put``.

A 4 KiB FTP STOR paid, for each replica, a ``write`` request before its 150
reply (the storage server creates the blob in a thread), the DATA frames,
then a ``commit`` request (the seal, in a thread again): two round trips and
two thread hand-offs per replica, about 4 ms of the 10 ms such a STOR took
here before the fsyncs that make it durable.  ``PutOnCommit`` stands in for
a replica's IBlobWriter and opens nothing at first: it keeps the bytes it is
given, and if the upload ends within ``limit`` bytes its ``commit`` sends
them with one ``put`` (docs/wire-protocol.md: create, write and seal in one
request and one thread task on the server), which fires once the blob is
durable and sealed, exactly as a stream's commit does.

Past ``limit`` bytes, or when a checkpoint asks for a ``flush``, it opens
the real write stream at offset 0, hands it the bytes it kept and passes
everything through from then on: a big upload pays the one open it always
paid, only after the client's first bytes instead of before them.  The
producer registered on it (the upload's backpressure) is paused while that
open runs, so what is kept stays bounded by ``limit`` plus one chunk.

What the open would have refused (a dead server, a full disk) is reported
later, by the open past ``limit``, a flush or the ``put``, through the same
``when_failed``/``commit`` errors as a stream's own failures; adapters reply
to it after their start reply (FTP: 150 then 451/452), as for any error of
a running upload.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.transfer.cache_hint import hint_drop_behind
from wsstorage._interfaces import IBlobWriter, IStorageClient
from wsstorage.errors import StorageError

#: Uploads (blobs) that end within this many bytes are stored with one put.
PUT_LIMIT = 64 * 1024


@implementer(IBlobWriter)
class PutOnCommit:
    """One replica's writer of a new blob; see the module docstring."""

    def __init__(
        self,
        client: IStorageClient,
        blob_id: str,
        epoch: int,
        meta: dict[str, Any],
        limit: int = PUT_LIMIT,
    ) -> None:
        self._client = client
        self.blob_id = blob_id
        self.epoch = epoch
        self._meta = meta
        self._limit = limit
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._writer: Any = None  # the real stream, once open
        self._opening = False
        self._waiters: list[Deferred] = []  # for the real stream
        self._watchers: list[Deferred] = []  # when_failed() before it opened
        self._producer: Any = None
        self._streaming = True
        self._held = False  # we paused the producer while the stream opens
        self._error: BaseException | None = None
        self._finished = False
        self._drop_cache = False

    @property
    def offset(self) -> int:
        return self._writer.offset if self._writer is not None else self._kept_bytes

    @property
    def opened(self) -> bool:
        """Whether the real write stream was opened (a put was not enough)."""
        return self._opening

    # -- IConsumer ----------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered on this writer")
        self._producer, self._streaming = producer, streaming
        if self._writer is not None:
            self._writer.registerProducer(producer, streaming)
        elif self._opening and self._error is None:
            self._hold()  # until the stream is open (a failed open never will be)

    def unregisterProducer(self) -> None:
        self._producer, self._held = None, False
        if self._writer is not None:
            self._writer.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._finished:
            raise StorageError("write after commit or abort")
        if self._error is not None or not data:
            return
        if self._writer is not None:
            self._writer.write(data)
            return
        self._kept.append(bytes(data))
        self._kept_bytes += len(data)
        if self._kept_bytes > self._limit:
            self._open()

    # -- stream control -------------------------------------------------

    def drop_cache_behind(self) -> None:
        """Pass the hint (``BlobWriter.drop_cache_behind``) to the real
        stream, now or once it opens; a put keeps its small blob cached."""
        self._drop_cache = True
        hint_drop_behind(self._writer)

    def flush(self) -> Deferred:
        if self._error is not None:
            return fail(self._error)
        if self._writer is not None:
            return self._writer.flush()
        if not self._opening and not self._kept_bytes:
            return succeed(0)  # nothing written: nothing to make durable
        return self._when_open().addCallback(lambda writer: writer.flush())

    def commit(self) -> Deferred:
        if self._error is not None:
            return fail(self._error)
        if self._writer is not None:
            return self._writer.commit()
        if self._opening:
            return self._when_open().addCallback(lambda writer: writer.commit())
        self._finished = True
        self.unregisterProducer()
        data, self._kept, self._kept_bytes = b"".join(self._kept), [], 0
        return self._client.put(self.blob_id, self.epoch, self._meta, data)

    def abort(self) -> Deferred:
        self._finished = True
        self._kept, self._kept_bytes = [], 0
        self.unregisterProducer()
        if self._writer is not None:
            return self._writer.abort()
        if self._opening and self._error is None:
            return self._when_open().addCallbacks(lambda writer: writer.abort(), lambda _: None)
        return succeed(None)

    def when_failed(self) -> Deferred:
        if self._error is not None:
            return fail(self._error)
        if self._writer is not None:
            return self._writer.when_failed()
        d: Deferred = Deferred()
        self._watchers.append(d)
        return d

    # -- opening the real stream ------------------------------------------

    def _hold(self) -> None:
        if self._producer is not None and self._streaming and not self._held:
            self._held = True
            self._producer.pauseProducing()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._producer.resumeProducing()

    def _open(self) -> None:
        if self._opening:
            return
        self._opening = True
        self._hold()
        d = self._client.write(self.blob_id, self.epoch, 0, self._meta)
        d.addCallbacks(self._opened, self._open_failed)

    def _when_open(self) -> Deferred:
        """Fires with the real stream (opening it now if need be)."""
        self._open()
        if self._writer is not None:
            return succeed(self._writer)
        if self._error is not None:
            return fail(self._error)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def _opened(self, writer: Any) -> None:
        kept, self._kept, self._kept_bytes = b"".join(self._kept), [], 0
        if kept:
            writer.write(kept)  # before anything that follows it
        self._writer = writer
        if self._drop_cache:
            hint_drop_behind(writer)
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            writer.when_failed().chainDeferred(d)
        if not self._finished:
            producer = self._producer
            self._release()  # writes it makes now go to the stream, after kept
            if producer is not None and self._producer is producer:
                writer.registerProducer(producer, self._streaming)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(writer)

    def _open_failed(self, failure: Failure) -> None:
        self._error = failure.value
        self._kept, self._kept_bytes = [], 0
        self._release()
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            d.errback(failure)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)
