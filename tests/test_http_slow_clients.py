"""Slow and half-closing clients against a real site on a real socket.

The deadlines themselves are checked on a Clock in ``test_http_request``;
here the site runs with short ones on the reactor, so a test waits for the
server's own timer (each wait bounded, never a sleep): a slow-loris client
gets its 408 and is disconnected, and a client that shuts down its sending
side after a complete request still gets the answer.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of
from tests.transfer_env import PASSWORD, sha256
from wsfront.http.site import SiteSettings

AUTH = b"Authorization: Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()) + b"\r\n"
HOST = b"Host: 127.0.0.1\r\n"


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    settings = SiteSettings(header_timeout=0.5, body_min_rate=1000, body_rate_window=0.5)
    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path, settings).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def _client(env):
    from twisted.internet import reactor

    return await connect(reactor, env.port.getHost().port)


async def _closed(client) -> bytes:
    from twisted.internet import reactor

    return await client.closed.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_finishes_its_headers_gets_408_and_is_closed(env):
    client = await _client(env)
    client.send(b"GET /x HTTP/1.1\r\n" + HOST + b"X-Slow: ")
    received = await _closed(client)
    assert head_of(received)[0] == 408


@pytest_twisted.ensureDeferred
async def test_a_put_body_that_trickles_gets_408_and_is_closed(env):
    client = await _client(env)
    client.send(b"PUT /slow.bin HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: 100000\r\n\r\nx")
    received = await _closed(client)
    assert head_of(received)[0] == 408
    info = await env.transfers.stat(env.user, "/slow.bin")
    assert info.pending  # what arrived stays resumable, nothing was committed


@pytest_twisted.ensureDeferred
async def test_a_put_then_a_half_close_still_gets_its_answer(env):
    body = b"half-closed but complete\n"
    client = await _client(env)
    length = b"Content-Length: %d\r\n\r\n" % len(body)
    client.send(b"PUT /half.txt HTTP/1.1\r\n" + HOST + AUTH + length)
    client.send(body)
    client.transport.loseWriteConnection()
    received = await _closed(client)
    assert head_of(received)[0] == 201
    data, _ = await env.transfer.download("/half.txt")
    assert sha256(data) == sha256(body)


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_then_a_half_close_are_all_answered(env):
    await env.upload("/p.txt", b"pipelined\n")
    get = b"GET /p.txt HTTP/1.1\r\n" + HOST + AUTH + b"\r\n"
    client = await _client(env)
    client.send(get + get)
    client.transport.loseWriteConnection()
    received = await _closed(client)
    assert received.count(b"HTTP/1.1 200 ") == 2
    assert received.endswith(b"pipelined\n")


@pytest_twisted.ensureDeferred
async def test_a_half_close_in_the_middle_of_a_body_closes_the_connection(env):
    client = await _client(env)
    client.send(b"PUT /cut.txt HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: 100\r\n\r\nabc")
    client.transport.loseWriteConnection()
    received = await _closed(client)
    assert b"HTTP/1.1 2" not in received
