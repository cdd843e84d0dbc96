"""The wire's ``put`` runs in the server's put threads (``wsstorage.putthreads``).

A small FTP STOR costs each replica one ``put``; handed to the reactor's
ThreadPool it paid that pool's Python on both sides of the hand-off.  The
server's queue-fed put threads (which the in-process puts of ``wslocal``
used already) run it instead, and the reply still goes out only once the
blob is sealed and durable.
"""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet import defer, reactor

from wsstorage import putthreads
from wsstorage.client import StorageClient
from wsstorage.service import start_storage_server

SECRET = b"put-threads-test-secret-0123456789abcdef"


@pytest_twisted.async_yield_fixture
async def served(tmp_path):
    server = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "s1"), "s1", SECRET
    )
    client = StorageClient(reactor, "s1", server.client_endpoint, SECRET, idle_timeout=10)
    yield server, client
    await client.close()
    await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_wire_put_is_sealed_in_the_servers_put_threads(served, monkeypatch):
    server, client = served
    store = server.store
    sealed_in: list[str] = []
    real_put_inline = store.put_inline

    def put_inline(*args, **kwargs):
        info = real_put_inline(*args, **kwargs)
        sealed_in.append(threading.current_thread().name)
        return info

    monkeypatch.setattr(store, "put_inline", put_inline)
    info = await client.put("blob-a", 1, {"inode": 1}, b"hello")
    # Answered after the seal returned in that thread: durable and sealed.
    assert sealed_in == ["put-s1"]
    assert (info.size, info.durable, info.state) == (5, 5, "sealed")
    assert [t.name for t in putthreads.put_threads(server.factory)._threads] == ["put-s1"]
    assert store.stat("blob-a").state == "sealed"


@pytest_twisted.ensureDeferred
async def test_concurrent_wire_puts_are_each_answered_once_sealed(served):
    """Puts over several connections at once: each is answered, sealed,
    and every one is there (the threads share the journal's flushes)."""
    server, client = served
    blobs = [f"blob-{i}" for i in range(20)]
    infos = await defer.gatherResults(
        [defer.ensureDeferred(client.put(b, 1, {}, b.encode())) for b in blobs]
    )
    assert [(i.size, i.state) for i in infos] == [(len(b), "sealed") for b in blobs]
    assert all(server.store.stat(b).state == "sealed" for b in blobs)


@pytest_twisted.ensureDeferred
async def test_stopping_the_server_ends_its_put_threads_before_the_store_closes(tmp_path):
    """The store closes after every put that reached a put thread, and no
    put thread outlives the server (they would idle on for PUT_IDLE)."""
    server = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "s1"), "s1", SECRET
    )
    client = StorageClient(reactor, "s1", server.client_endpoint, SECRET, idle_timeout=10)
    await client.put("blob-a", 1, {}, b"hello")
    threads = list(putthreads.put_threads(server.factory)._threads)
    assert threads and all(t.is_alive() for t in threads)
    closed_with: list[list[bool]] = []
    real_close = server.store.close

    def close():
        closed_with.append([t.is_alive() for t in threads])
        return real_close()

    server.store.close = close
    await client.close()
    await server.stop()
    assert closed_with == [[False] * len(threads)]
