"""A GET body sent straight into the client's socket while it can take it.

Written through ``Request.write``, every piece of a body waits in the TCP
transport's buffer and is joined (copied) by Twisted before it is sent, and
up to the transport's ``bufferSize`` of it stays in this process per
response.  Over plain TCP, with a Content-Length body (neither chunked nor
HEAD) and the status line and headers already out of twisted.web's hands,
``DirectBody`` sends each piece with one ``sendmsg`` while the transport
holds nothing unsent (``wsstorage.framing.send_iov``, as the FTP data
channel and the storage server do): the kernel takes what it can from the
bytes the storage read produced, and only the rest is left to the
transport.  It then pauses the producer as if the transport had (the
channel's ``pauseProducing``), so the transport resumes it once drained and
the next piece goes direct again rather than queueing behind the rest.

Everything else goes through ``Request.write`` unchanged: TLS, a PROXY
wrapper, chunked or multipart framing bytes, and whatever comes while the
transport is busy.  ``sentLength`` counts the body either way.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer
from twisted.web.http import NO_BODY_CODES
from zope.interface import implementer

from wsstorage.framing import direct_socket, pause_until_drained, send_iov, transport_idle

#: Bodies up to this size are written through the request as before: they
#: come in one piece from storage, which goes out with the headers anyway,
#: so the wrapper would only add calls to every small GET (17 per request).
DIRECT_MIN = 64 << 10


def body_consumer(request, length: int):
    """What a body of ``length`` bytes is written into: a ``DirectBody`` for
    a large one, else ``request`` itself."""
    if length <= DIRECT_MIN:
        return request
    return DirectBody(request, length)


@implementer(IConsumer)
class DirectBody:
    """The consumer a ``ReadStream`` writes a response body into: ``request``
    for everything about the response, its socket for the bytes when that
    is safe.  ``length`` is how many body bytes this consumer will be
    given; once they are all written it no longer pauses the producer for a
    rest left in the transport (nothing more is coming)."""

    def __init__(self, request, length: int) -> None:
        self._request = request
        self._left = length
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        self._transport = transport
        self._socket = direct_socket(transport) if transport is not None else None

    def registerProducer(self, producer, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        request = self._request
        self._left -= len(data)
        transport = self._transport
        if self._socket is None or request.finished or request._disconnected:
            request.write(data)
            return
        if not request.startedWriting:
            # The status line and headers (and whether the body is chunked,
            # or absent for HEAD) are twisted.web's: the first piece goes
            # with them, through the request.
            request.write(data)
            left_over = self._body_is_plain(request)
        elif not self._body_is_plain(request):
            request.write(data)
            return
        else:
            request.sentLength += len(data)
            if transport_idle(transport):
                left_over = send_iov(transport, self._socket, [data])
            else:
                transport.write(data)
                left_over = True
        if left_over and self._left > 0:
            pause_until_drained(transport)

    @staticmethod
    def _body_is_plain(request) -> bool:
        """The body goes on the wire as it is: Content-Length framing, and
        not dropped (HEAD, or a status without a body)."""
        return (
            not request.chunked
            and request.method != b"HEAD"
            and request.code not in NO_BODY_CODES
            and getattr(request, "_encoder", None) is None  # no gzip wrapper on the way
        )
