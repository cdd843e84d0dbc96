"""An operation cancelled while its connection's handshake is under way
leaves no connection behind outside the pool.

Found by chaos testing (``kill -STOP`` of two storage servers while
downloads timed out, eight times over): each front end's idle connections
to a server grew by a few per freeze and never came back.  A reader's stall
check (or a departing client) cancelled the read while ``_acquire`` waited
for the handshake; the cancel failed ``conn.ready``, the server's READY
after SIGCONT was dropped, and the connection stayed open, authenticated,
in neither the idle pool nor any operation's hands.  Now it goes to the
idle pool once ready (closed when the pool is full), and one whose
handshake fails is closed as before.

Driven by the loopback rig (real client and server protocols on iosim
pumps and a Clock): until ``flush`` nothing moves, which is a frozen
server as the client sees it.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from tests.storage_loopback import CollectingConsumer, Rig


def test_a_read_cancelled_during_the_handshake_leaves_its_connection_in_the_pool() -> None:
    rig = Rig()
    d = rig.client.read("b1", 0, None, CollectingConsumer())
    [conn] = rig.client._conns
    assert not conn.authenticated  # HELLO sent, nothing answered yet
    d.cancel()
    with pytest.raises(defer.CancelledError):
        rig.result(d)
    rig.flush()  # the server answers the handshake late
    assert conn.authenticated and conn.connected
    assert rig.client._idle == [conn]
    # ...and it is the connection the next operation gets.
    rig.result(rig.client.health())
    assert len(rig.endpoint.pumps) == 1 and rig.client._conns == {conn}


def test_cancelled_handshakes_keep_at_most_the_pool_size_open() -> None:
    rig = Rig(pool_size=2)
    ds = [rig.client.read("b1", 0, None, CollectingConsumer()) for _ in range(5)]
    assert len(rig.client._conns) == 5
    failures: list = []
    for d in ds:
        d.cancel()
        d.addErrback(lambda f: failures.append(f.trap(defer.CancelledError)))
    assert len(failures) == 5
    rig.flush()
    assert len(rig.client._idle) == 2
    assert len(rig.client._conns) == 2
    assert all(c.connected and c.authenticated for c in rig.client._conns)
    assert len(rig.factory.connections) == 2  # the server saw the other three close


def test_a_stat_cancelled_during_the_handshake_of_a_closing_client_is_closed() -> None:
    rig = Rig()
    d = rig.client.stat("b1")
    [conn] = rig.client._conns
    d.cancel()
    rig.client._closing = True  # close() begun: nothing goes back to the pool
    with pytest.raises(defer.CancelledError):
        rig.result(d)  # and the server answers the handshake late
    assert rig.client._idle == [] and not conn.connected
    assert rig.client._conns == set() and rig.factory.connections == set()


def test_a_cancelled_handshake_that_fails_is_closed_and_forgotten() -> None:
    """The server refuses our credentials after the cancel: the failure is
    nobody's to hear now, and must not be logged as unhandled either."""
    rig = Rig(client_secret=b"another-cluster-secret-0123456789ab")
    d = rig.client.read("b1", 0, None, CollectingConsumer())
    [conn] = rig.client._conns
    d.cancel()
    with pytest.raises(defer.CancelledError):
        rig.result(d)
    rig.flush()
    assert not conn.connected and conn.ready.called
    assert rig.client._conns == set() and rig.client._idle == []
    out: list = []
    conn.ready.addBoth(out.append)
    assert out == [None]  # consumed, not an unhandled failure
