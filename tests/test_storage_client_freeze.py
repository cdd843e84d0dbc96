"""Reads cancelled while their storage server is frozen (SIGSTOP) leave the
client no more connections to it than its idle pool keeps, once the server
resumes: the chaos tester's repro (``kill -STOP``, six downloads that time
out, ``kill -CONT``, over and over) on a real ``twistd wsstorage`` process.

Each round the reads are cancelled as the front end's stall check does,
while their connections wait for the handshake (or, for connections the
pool had kept, for the read's reply).  Before the fix every round left the
new connections open and authenticated, outside the pool, for good.
Counted three ways: the client's own bookkeeping, this process's socket
descriptors to the server's port, and the server's sockets.
"""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.storage_procs import DrainConsumer, StorageProcess, pattern
from tests.support import tcp_sockets

POOL = 2
READS = 6
ROUNDS = 3


@pytest.fixture
def storage_process(tmp_path):
    p = StorageProcess(tmp_path)
    yield p
    if p.proc is not None and p.proc.poll() is None:
        os.kill(p.proc.pid, signal.SIGCONT)  # a failed round may leave it stopped
    p.stop()


async def wait_for(condition, what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` on the reactor until true (a condition wait with a
    deadline, not a fixed sleep)."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, f"{what}: not reached within {timeout}s"
        await task.deferLater(reactor, 0.01, lambda: None)


def sockets(pid: int, port: int, *, remote: bool) -> int:
    """TCP sockets process ``pid`` holds a descriptor of whose remote (or,
    with ``remote=False``, local) port is ``port``, listening ones aside."""
    return sum(
        int((fields[2] if remote else fields[1]).rsplit(":", 1)[1], 16) == port
        for fields in tcp_sockets(pid)
        if fields[3] != "0A"  # 0A: TCP_LISTEN
    )


@pytest_twisted.ensureDeferred
async def test_reads_cancelled_while_the_server_is_stopped_leave_at_most_the_pool_open(
    storage_process,
) -> None:
    storage_process.start()
    server_pid, port = storage_process.proc.pid, storage_process.port
    # idle_timeout well past a round: the reads end by their cancel only.
    client = storage_process.client(reactor, pool_size=POOL, idle_timeout=60.0)
    data = pattern(100_000, seed=7)
    await client.put("k1", 1, {}, data)

    def mine() -> int:
        return sockets(os.getpid(), port, remote=True)

    def settled() -> bool:
        # No handshake under way nor connection closing any more: every
        # connection the client still holds is ready and staying.
        return all(
            c.authenticated and c.connected and not c.transport.disconnecting for c in client._conns
        )

    try:
        for n in range(ROUNDS):
            os.kill(server_pid, signal.SIGSTOP)
            reads = [client.read("k1", 0, None, DrainConsumer()) for _ in range(READS)]
            # Connected (the kernel accepts for a stopped process), each
            # waiting for the handshake or for a pooled connection's reply.
            await wait_for(lambda: len(client._conns) == READS, f"round {n}: {READS} connections")
            assert not any(d.called for d in reads)
            for d in reads:
                d.cancel()
            outcomes = await defer.DeferredList(reads, consumeErrors=True)
            assert all(not ok and f.check(defer.CancelledError) for ok, f in outcomes)
            os.kill(server_pid, signal.SIGCONT)
            await wait_for(settled, f"round {n}: handshakes over")
            assert len(client._conns) <= POOL, f"round {n}: {len(client._conns)} connections"
            assert len(client._idle) <= POOL
            await wait_for(lambda: mine() <= POOL, f"round {n}: client sockets <= {POOL}")
            await wait_for(
                lambda: sockets(server_pid, port, remote=False) <= POOL,
                f"round {n}: server sockets <= {POOL}",
            )
        # The pooled connections serve the next reads.
        kept = set(client._conns)
        consumer = DrainConsumer()
        assert await client.read("k1", 0, None, consumer) == len(data)
        assert client._conns <= kept and mine() <= POOL
    finally:
        os.kill(server_pid, signal.SIGCONT)
        await client.close()
