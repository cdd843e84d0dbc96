"""In-memory wiring of the real client and server protocols (twisted.test.iosim).

``Loopback`` is an IStreamClientEndpoint whose connections go to a
``StorageServerFactory`` through iosim pumps on a shared Clock, so unit
tests drive every operation of the wire protocol without sockets or
threads: call ``flush()`` to move bytes until both sides are quiet.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from zope.interface import implementer

from tests.storage_memstore import MemoryBlobStore
from wsstorage.client import StorageClient
from wsstorage.server import StorageServerFactory

SECRET = b"unit-test-cluster-secret-0123456789"


def run_now(f: Any, *args: Any) -> defer.Deferred:
    """run_blocking for unit tests: the 'thread' work happens synchronously."""
    return defer.maybeDeferred(f, *args)


@implementer(IStreamClientEndpoint)
class Loopback:
    def __init__(self, server_factory: StorageServerFactory, clock: MemoryReactorClock) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> defer.Deferred:
        client = factory.buildProtocol(None)
        server = self.server_factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps):
                if pump.flush():
                    moved = True


class Rig:
    """A memory store (or ``store``), a server factory, a client, all on one Clock."""

    def __init__(
        self,
        secret: bytes = SECRET,
        client_secret: bytes | None = None,
        store: Any = None,
        **kw: Any,
    ):
        self.clock = MemoryReactorClock()
        self.store = MemoryBlobStore() if store is None else store
        self.factory = StorageServerFactory(
            self.clock, self.store, "s1", secret, run_blocking=run_now
        )
        self.endpoint = Loopback(self.factory, self.clock)
        self.client = StorageClient(self.clock, "s1", self.endpoint, client_secret or secret, **kw)

    def flush(self) -> None:
        self.endpoint.flush()

    def result(self, d: defer.Deferred) -> Any:
        """Pump until ``d`` fires; return its result or raise its failure."""
        for _ in range(10000):
            self.flush()
            if d.called:
                break
            self.clock.advance(0)
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "Deferred never fired"
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]


class CollectingConsumer:
    """An IConsumer that keeps what it is given and can pause its producer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.producer: Any = None
        self.registrations = 0
        self.unregistered = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered = True

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)
