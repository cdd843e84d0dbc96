"""The storage client's connect: a timeout, and a cancel by the caller.

A TCP endpoint fails a cancelled connect with ConnectingCancelledError,
whichever side cancelled it.  ``_acquire`` bounded the connect with
``addTimeout``, which converts only CancelledError, so its own timeout
came out as NodeUnavailable naming just the address, and a caller that
gave up (a Deferred cancelled, by a probe's or a stat's timeout too) got
NodeUnavailable as if the server had failed: the pool's probe recorded
that, not its timeout, and a caller that marks a server down on
NodeUnavailable would have marked a healthy one down for our own cancel.

Real sockets: a listener on 127.0.0.1 whose accept queue is full, so the
kernel drops the client's SYN and its connect stays under way for as long
as the test needs (no server process; nothing is ever accepted).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.support import tcp_sockets
from wsfront.transfer.pool import StoragePool
from wsstorage.client import StorageClient
from wsstorage.errors import NodeUnavailable

SECRET = b"x" * 32
SYN_SENT = "02"


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose connects never complete: listening with a
    backlog of 0 and one connection, never accepted, filling its queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def connecting_to(port: int) -> int:
    """This process's sockets still connecting (SYN sent) to ``port``."""
    return sum(
        int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == SYN_SENT
        for fields in tcp_sockets(os.getpid())
    )


async def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the reactor until true (a condition wait with
    a deadline, not a fixed sleep)."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, f"{what}: not reached within {timeout}s"
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_connect_that_times_out_says_within_how_long(unanswered_port) -> None:
    client = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{unanswered_port}", SECRET, connect_timeout=0.3
    )
    with pytest.raises(
        NodeUnavailable, match=r"could not connect to storage server s1 within 0\.3s"
    ):
        await client.stat("b1")
    # The endpoint fails the connect before it closes the socket.
    await wait_for(lambda: connecting_to(unanswered_port) == 0, "the attempt given up")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_an_operation_cancelled_while_connecting_is_cancelled_not_unavailable(
    unanswered_port,
) -> None:
    client = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{unanswered_port}", SECRET, connect_timeout=30.0
    )
    d = client.stat("b1")
    await wait_for(lambda: connecting_to(unanswered_port) == 1, "the connect under way")
    d.cancel()
    with pytest.raises(defer.CancelledError, match="connecting to storage server s1"):
        await d
    assert connecting_to(unanswered_port) == 0
    assert client._conns == set() and client._idle == []
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_probe_that_times_out_while_connecting_records_its_timeout(
    unanswered_port,
) -> None:
    """The probe's own timeout (shorter than the connect's) cancels the
    health request while it connects: the server is down for "no answer
    within" the probe timeout, not for an error naming only its address."""
    pool = StoragePool(reactor, probe_timeout=0.3)
    client = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{unanswered_port}", SECRET, connect_timeout=30.0
    )
    pool.add("s1", f"tcp:127.0.0.1:{unanswered_port}", client)
    await pool.probe_all()
    [node] = pool.nodes()
    assert not node.up
    assert node.last_error == "no answer to a health probe within 0.3 s"
    await wait_for(lambda: connecting_to(unanswered_port) == 0, "the attempt given up")
    await client.close()
