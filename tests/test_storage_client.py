"""The client's own behaviour: pooling, flow control, timeouts, failures, cancel."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.storage_loopback import CollectingConsumer, Rig
from wsstorage import framing
from wsstorage._interfaces import IBlobWriter, IStorageClient
from wsstorage.client import StorageClient
from wsstorage.errors import NodeUnavailable, StorageError


def committed(rig: Rig, blob_id: str, data: bytes) -> None:
    w = rig.result(rig.client.write(blob_id, 1, 0, {}))
    w.write(data)
    rig.result(w.commit())


def test_client_and_writer_provide_their_interfaces() -> None:
    rig = Rig()
    assert verifyObject(IStorageClient, rig.client)
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    assert verifyObject(IBlobWriter, w)
    assert (w.blob_id, w.epoch, w.offset) == ("b1", 1, 0)


def test_sequential_calls_reuse_one_pooled_connection() -> None:
    rig = Rig()
    committed(rig, "b1", b"x")
    for _ in range(5):
        rig.result(rig.client.stat("b1"))
    assert len(rig.endpoint.pumps) == 1


def test_concurrent_calls_use_separate_connections() -> None:
    rig = Rig()
    committed(rig, "b1", b"x")
    ds = [rig.client.stat("b1") for _ in range(3)]
    for d in ds:
        rig.result(d)
    assert len(rig.endpoint.pumps) == 3
    assert len(rig.client._idle) == 3


def test_pausing_the_consumer_stops_delivery_until_resumed() -> None:
    rig = Rig()
    data = bytes(range(256)) * 4096  # 1 MiB: four DATA frames
    committed(rig, "b1", data)

    class PausingConsumer(CollectingConsumer):
        def write(self, chunk: bytes) -> None:
            super().write(chunk)
            self.producer.pauseProducing()

    c = PausingConsumer()
    d = rig.client.read("b1", 0, None, c)
    for _ in range(20):
        rig.flush()
        rig.clock.advance(0)
    assert len(c.chunks) == 1 and not d.called
    c.producer.resumeProducing()
    assert len(c.chunks) == 2 and not d.called
    while not d.called:
        c.producer.resumeProducing()
    assert rig.result(d) == len(data)
    assert c.data == data and c.unregistered


def test_a_consumer_that_pauses_and_resumes_inside_write_gets_every_byte_in_order() -> None:
    """Resuming from inside ``write`` must not start a nested pass over the
    buffered frames while the current DATA frame is still being handled
    (that pass saw the read's next DATA as a frame of an unknown request)."""
    rig = Rig()
    data = bytes(range(256)) * 4096  # 1 MiB: four DATA frames
    committed(rig, "b1", data)

    class Bouncing(CollectingConsumer):
        def write(self, chunk: bytes) -> None:
            super().write(chunk)
            self.producer.pauseProducing()
            self.producer.resumeProducing()

    c = Bouncing()
    assert rig.result(rig.client.read("b1", 0, None, c)) == len(data)
    assert c.data == data and len(c.chunks) == 4


def test_a_frozen_server_fails_a_read_with_node_unavailable_after_the_idle_timeout() -> None:
    rig = Rig(idle_timeout=3.0)
    committed(rig, "b1", b"x" * 1000)
    c = CollectingConsumer()
    d = rig.client.read("b1", 0, None, c)  # request written, never pumped: frozen
    rig.clock.advance(2.9)
    assert not d.called
    rig.clock.advance(0.2)
    with pytest.raises(NodeUnavailable, match=r"did not answer within 3\.0s"):
        rig.result(d)
    assert rig.client._idle == []


def test_a_consumer_paused_for_long_is_not_a_frozen_server() -> None:
    rig = Rig(idle_timeout=3.0)
    committed(rig, "b1", b"x" * 600_000)

    class PauseOnce(CollectingConsumer):
        def write(self, chunk: bytes) -> None:
            super().write(chunk)
            if len(self.chunks) == 1:
                self.producer.pauseProducing()

    c = PauseOnce()
    d = rig.client.read("b1", 0, None, c)
    rig.flush()
    rig.clock.advance(10)
    assert not d.called
    c.producer.resumeProducing()
    assert rig.result(d) == 600_000


def test_keepalives_keep_a_slow_operation_alive_past_the_idle_timeout() -> None:
    rig = Rig(idle_timeout=3.0)
    slow: defer.Deferred = defer.Deferred()
    d = rig.client.stat("b1")
    rig.flush()  # handshake done, request sent
    rig.factory.run_blocking = lambda f, *a: slow
    committed_d = rig.client.commit("b1", 1)
    for _ in range(10):
        rig.clock.advance(1.0)
        rig.flush()
    assert not committed_d.called
    with pytest.raises(StorageError):
        rig.result(d)


def test_a_write_blocked_by_a_frozen_server_fails_when_failed() -> None:
    rig = Rig(idle_timeout=2.0)
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    failed = w.when_failed()

    class Producer:
        paused = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False

        def stopProducing(self) -> None:
            pass

    p = Producer()
    w.registerProducer(p, True)
    transport = w.conn.transport
    transport.producer.pauseProducing()  # the socket's send buffer is full
    assert p.paused
    rig.clock.advance(2.1)
    with pytest.raises(NodeUnavailable):
        rig.result(failed)
    with pytest.raises(NodeUnavailable):
        rig.result(w.flush())


def test_lost_connection_fails_pending_calls_and_the_writer() -> None:
    rig = Rig()
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    failed = w.when_failed()
    w.write(b"abc")
    flushed = w.flush()
    # what the reactor does when the peer resets the connection
    w.conn.transport.disconnecting = True
    w.conn.connectionLost(Failure(ConnectionLost()))
    with pytest.raises(NodeUnavailable):
        rig.result(failed)
    with pytest.raises(NodeUnavailable):
        rig.result(flushed)
    with pytest.raises(NodeUnavailable):
        rig.result(w.when_failed())
    assert rig.result(w.abort()) is None


def test_cancelling_a_read_unregisters_the_producer_and_drops_the_connection() -> None:
    rig = Rig()
    committed(rig, "b1", b"x" * 1_000_000)

    class PauseOnce(CollectingConsumer):
        def write(self, chunk: bytes) -> None:
            super().write(chunk)
            self.producer.pauseProducing()

    c = PauseOnce()
    d = rig.client.read("b1", 0, None, c)
    rig.flush()
    assert c.producer is not None
    d.cancel()
    assert c.unregistered
    with pytest.raises(defer.CancelledError):
        rig.result(d)
    rig.flush()
    assert rig.factory.connections == set()


def test_stopping_the_producer_fails_the_read() -> None:
    rig = Rig()
    committed(rig, "b1", b"x" * 1_000_000)

    class StopAfterOne(CollectingConsumer):
        def write(self, chunk: bytes) -> None:
            super().write(chunk)
            self.producer.stopProducing()

    c = StopAfterOne()
    d = rig.client.read("b1", 0, None, c)
    with pytest.raises(StorageError, match="stopped"):
        rig.result(d)
    assert len(c.chunks) == 1 and c.unregistered


@implementer(IStreamClientEndpoint)
class NeverConnects:
    def connect(self, factory):
        return defer.Deferred()


@implementer(IStreamClientEndpoint)
class Refuses:
    def connect(self, factory):
        return defer.fail(ConnectionRefusedError("refused"))


def test_connect_timeout_is_node_unavailable() -> None:
    rig = Rig()
    client = StorageClient(rig.clock, "s9", NeverConnects(), b"x" * 20, connect_timeout=2.0)
    d = client.stat("b1")
    rig.clock.advance(2.0)
    with pytest.raises(NodeUnavailable, match=r"within 2\.0s"):
        rig.result(d)


def test_refused_connection_is_node_unavailable() -> None:
    rig = Rig()
    client = StorageClient(rig.clock, "s9", Refuses(), b"x" * 20)
    with pytest.raises(NodeUnavailable, match="refused"):
        rig.result(client.health())


def test_server_sending_more_data_than_asked_is_a_protocol_error() -> None:
    rig = Rig()
    committed(rig, "b1", b"x" * 10)
    c = CollectingConsumer()
    d = rig.client.read("b1", 0, 5, c)
    rig.flush()
    assert rig.result(d) == 5
    conn = rig.client._idle[0]
    c2 = CollectingConsumer()
    d2 = rig.client.read("b1", 0, 2, c2)
    [rid] = conn._pending
    # a server that answers a 2-byte read with 3 bytes
    conn.dataReceived(
        framing.encode_control(framing.REPLY, rid, {"length": 2, "size": 10})
        + b"".join(bytes(p) for p in framing.data_frames(rid, b"abc"))
    )
    with pytest.raises(StorageError, match="more DATA"):
        rig.result(d2)
    assert c2.registrations == 1 and c2.data == b""
    assert c2.unregistered and not conn.connected


def test_close_closes_every_connection() -> None:
    rig = Rig()
    committed(rig, "b1", b"x")
    d = rig.client.close()
    rig.flush()
    assert rig.result(d) is None
    assert rig.factory.connections == set()
    with pytest.raises(NodeUnavailable):
        rig.result(rig.client.stat("b1"))


@implementer(IStreamClientEndpoint)
class HostileServer:
    """Connects the client to a transport; the test feeds it the server's bytes."""

    def __init__(self) -> None:
        from twisted.internet.testing import StringTransport

        self.transport = StringTransport()
        self.proto = None

    def connect(self, factory):
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        return defer.succeed(self.proto)


def test_a_large_frame_from_a_server_before_ready_is_refused_from_its_header() -> None:
    rig = Rig()
    server = HostileServer()
    client = StorageClient(rig.clock, "s9", server, b"x" * 20)
    d = client.health()
    assert server.transport.value()  # our HELLO went out
    server.proto.dataReceived(
        framing.encode_header(framing.CHALLENGE, 0, framing.MAX_PREAUTH + 1) + b"{"
    )
    with pytest.raises(StorageError, match="before the handshake is complete"):
        rig.result(d)
    assert server.transport.disconnecting
