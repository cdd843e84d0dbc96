"""Request bodies for treq that behave like real clients' bodies.

``ChunkedBody`` has no announced length (treq then sends it chunked);
``GatedBody`` sends its first ``gate_at`` bytes and then holds the rest back
until the test opens the gate.  Both honour pause/resume, so the server's
backpressure reaches them as it would reach a socket.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

CHUNK = 64 * 1024


@implementer(IBodyProducer)
class GatedBody:
    def __init__(self, reactor, data: bytes, gate_at: int | None = None, known_length=True):
        self.reactor = reactor
        self.data = memoryview(data)
        self.length = len(data) if known_length else UNKNOWN_LENGTH
        self.gate_at = gate_at
        self.gate: Deferred = Deferred()
        self.reached_gate: Deferred = Deferred()
        self.pos = 0
        self.paused = False
        self.stopped = False
        self._call = None
        self._done: Deferred | None = None
        self._consumer = None

    def startProducing(self, consumer) -> Deferred:
        self._consumer = consumer
        self._done = Deferred()
        self.gate.addCallback(lambda _: self._schedule())
        self._schedule()
        return self._done

    def open_gate(self) -> None:
        if not self.gate.called:
            self.gate.callback(None)

    def _schedule(self) -> None:
        if self._call is None and not self.paused and not self.stopped:
            self._call = self.reactor.callLater(0, self._step)

    def _step(self) -> None:
        self._call = None
        if self.paused or self.stopped:
            return
        if self.gate_at is not None and self.pos >= self.gate_at and not self.gate.called:
            if not self.reached_gate.called:
                self.reached_gate.callback(self.pos)
            return
        if self.pos >= len(self.data):
            self._done.callback(None)
            return
        end = min(self.pos + CHUNK, len(self.data))
        if self.gate_at is not None and self.pos < self.gate_at:
            end = min(end, self.gate_at)
        self._consumer.write(bytes(self.data[self.pos : end]))
        self.pos = end
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True


def ChunkedBody(reactor, data: bytes) -> GatedBody:
    """A body of unknown length: treq sends it with chunked transfer coding."""
    return GatedBody(reactor, data, known_length=False)
