"""The consumer a tus PATCH (or creation-with-upload POST) body streams into.

It stands between the request and the transfer layer's ``WriteSession``:
it counts the bytes, feeds the Upload-Checksum hash as they pass (so a
chunk is verified without being held anywhere), and refuses bytes beyond
the upload's length instead of writing them.  Backpressure is the
session's: the request's producer is registered straight on it.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from wsfront.http.errors_map import HttpError
from wsfront.http.tus_headers import Checksum


@implementer(IConsumer)
class ChunkSink:
    """Relays a body into ``session``, at most ``limit`` bytes (None: no limit)."""

    def __init__(self, request, session, limit: int | None, checksum: Checksum | None) -> None:
        self._request = request
        self._session = session
        self._limit = limit
        self._checksum = checksum
        self._hash = checksum.hasher() if checksum is not None else None
        self.count = 0

    def registerProducer(self, producer, streaming: bool) -> None:
        self._session.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._session.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._limit is not None and self.count + len(data) > self._limit:
            self._request.fail_body(
                HttpError(413, f"the body goes past the upload's length ({self._limit} bytes left)")
            )
            return
        self.count += len(data)
        if self._hash is not None:
            self._hash.update(data)
        self._session.write(data)

    @property
    def verified(self) -> bool:
        """Whether the bytes relayed match the Upload-Checksum (True without one)."""
        if self._checksum is None:
            return True
        return self._hash.digest() == self._checksum.digest
