"""A frozen storage server is logged once per outage, not once per connection.

Found by chaos testing (a wsstorage process SIGSTOPped under a front end):
"storage server s1 silent for 10.0s: dropping the connection" came every
~3 s for as long as the server stayed stopped, since every health probe
(each second, given up after 2 s) left a connection waiting for the
handshake, and each of them timed out on its own.  Now the first
connection to time out says it, the others are dropped without a word,
and one line says when the server answers again.

Driven by a ``task.Clock`` and in-memory transports: the server never
answers until the test plays its part of the handshake.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from wsfront.transfer.pool import StoragePool
from wsstorage import auth, framing
from wsstorage.client import StorageClient

SECRET = b"silence-test-secret-0123456789abcdef"


@implementer(IStreamClientEndpoint)
class SilentServer:
    """Accepts every connection (the kernel does, for a stopped process)
    and sends nothing until ``answer`` plays the server's handshake."""

    def __init__(self) -> None:
        self.conns: list = []

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.conns.append(proto)
        return defer.succeed(proto)

    def answer(self, proto) -> None:
        """CHALLENGE, then READY once the client sent AUTH."""
        decoder = framing.FrameDecoder()
        decoder.feed(proto.transport.value())
        ftype, _rid, hello = decoder.next_frame()
        assert ftype == framing.HELLO
        nonce = auth.new_nonce()
        proof = auth.server_proof(SECRET, hello["nonce"], nonce)
        proto.dataReceived(
            framing.encode_control(
                framing.CHALLENGE, 0, {"version": framing.VERSION, "nonce": nonce, "proof": proof}
            )
        )
        proto.dataReceived(framing.encode_control(framing.READY, 0, {"name": "s1"}))
        assert proto.authenticated


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events, needle: str) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if needle in formatEvent(e)]


def test_a_silent_server_is_logged_once_per_outage_and_when_it_answers_again(logged):
    clock = task.Clock()
    server = SilentServer()
    client = StorageClient(clock, "s1", server, SECRET, idle_timeout=10.0)
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=2.0)
    pool.add("s1", "tcp:127.0.0.1:1", client)
    pool.start()
    for _ in range(120):  # a minute of probes, every one unanswered
        clock.advance(0.5)
    assert not pool.is_up("s1")
    assert len(server.conns) >= 15  # one per probe, each timed out
    silent = lines(logged, "silent for")
    assert silent == ["storage server s1 silent for 10.0s: dropping the connection"], silent
    assert lines(logged, "answers again") == []

    # It answers again (SIGCONT): one line, and the next outage is said again.
    waiting = [c for c in server.conns if c.connected]
    server.answer(waiting[-1])
    for c in waiting[:-1]:
        server.answer(c)
    assert len(lines(logged, "answers again")) == 1
    for _ in range(60):
        clock.advance(0.5)
    assert len(lines(logged, "silent for")) == 2
    pool.stop()
    for c in server.conns:
        if c.connected:
            c.transport.loseConnection()
            c.connectionLost(None)
