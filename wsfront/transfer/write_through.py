"""Small uploads go into the extent cache as their blob is sealed.

A client that stores a small file and reads it back soon (a mirror, a
sync tool, the FTP benchmark's 1000 files) paid a storage round trip for
the first read: 800 us of a 4 KiB RETR's 1.8 ms here, against 100 us once
the file's bytes sat in ``ExtentCache``.  The bytes an upload writes into
a new blob from its first byte are that blob's bytes, and once a replica
has sealed the blob (``commit`` fired with its size) they never change
(wsfront.transfer.extent_cache says why), so they are as good a cache entry
as bytes a read fetched: the key ``(blob_id, 0, size)`` is what a committed
version's extent of the whole blob reads.

``WriteThrough`` wraps one replica's writer (the others get the very same
bytes) and keeps at most ``cache.max_extent`` bytes while they come; past
that it keeps nothing.  A blob that is fenced, aborted or fails to seal on
that replica is never cached, and nothing is served from the cache unless
the catalog's lookup of a read still names the extent.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from wsfront.transfer.extent_cache import ExtentCache
from wsstorage._interfaces import IBlobWriter


@implementer(IBlobWriter)
class WriteThrough:
    """An IBlobWriter that passes everything to ``writer`` and, when the
    blob seals small, puts its bytes into ``cache``."""

    def __init__(self, writer, cache: ExtentCache) -> None:
        self._writer = writer
        self._cache = cache
        self._kept: list[bytes] | None = [] if writer.offset == 0 else None
        self._size = 0

    @property
    def blob_id(self) -> str:
        return self._writer.blob_id

    @property
    def epoch(self) -> int:
        return self._writer.epoch

    @property
    def offset(self) -> int:
        return self._writer.offset

    def registerProducer(self, producer, streaming: bool) -> None:
        self._writer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._writer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        if self._kept is not None:
            self._size += len(data)
            if self._cache.wants(self._size):
                self._kept.append(bytes(data))
            else:
                self._kept = None

    def flush(self) -> Deferred:
        return self._writer.flush()

    def commit(self) -> Deferred:
        def sealed(info):
            kept, self._kept = self._kept, None
            if kept is not None and info.size == self._size:
                self._cache.put((self.blob_id, 0, self._size), b"".join(kept))
            return info

        return self._writer.commit().addCallback(sealed)

    def abort(self):
        self._kept = None
        return self._writer.abort()

    def when_failed(self) -> Deferred:
        return self._writer.when_failed()
