"""A raw HTTP/1.1 client for tests that must control every byte on the wire.

treq hides ``100 Continue``, cannot stop half-way through a body and cannot
send malformed framing; these tests need all three.  ``RawClient`` connects
to 127.0.0.1, writes what the test says, and lets it wait for the server's
bytes (``until(marker)``) or for the connection to close.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol


class RawClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.reason = None
        self.closed: Deferred = Deferred()
        self._waiters: list[tuple[bytes, Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        still = []
        for marker, d in self._waiters:
            if marker in self.received:
                d.callback(self.received)
            else:
                still.append((marker, d))
        self._waiters = still

    def connectionLost(self, reason) -> None:
        self.reason = reason
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.callback(self.received)
        self.closed.callback(self.received)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def until(self, marker: bytes) -> Deferred:
        """Fires with everything received once ``marker`` is in it (or at close)."""
        d: Deferred = Deferred()
        if marker in self.received or self.closed.called:
            d.callback(self.received)
        else:
            self._waiters.append((marker, d))
        return d

    def close(self) -> None:
        self.transport.abortConnection()


async def connect(reactor, port: int) -> RawClient:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())


def head_of(response: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of the first final answer in ``response``."""
    text = response.decode("latin-1")
    while text.startswith("HTTP/1.1 100"):
        text = text.split("\r\n\r\n", 1)[1]
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers
