"""Resource limits and response hardening that keep one client from taking
the service away from others, and uploaded content from attacking browsers.

Connections per address (HTTP: more get 503 with Retry-After), idle and
slow-client timeouts (HTTP slow-loris, FTP idle control connection), and the
headers that stop an uploaded page from running script in the server's origin.
"""

from __future__ import annotations

import pytest_twisted
from twisted.web.client import readBody

from tests.ftp_env import FTPEnv
from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of
from wsfront.ftp.factory import FTPSettings
from wsfront.http.site import SiteSettings


@pytest_twisted.ensureDeferred
async def test_http_connections_per_address_are_capped_and_others_still_served(tmp_path):
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path, SiteSettings(max_connections_per_address=3)).start()
    try:
        port = env.port.getHost().port
        held = [await connect(reactor, port) for _ in range(3)]
        extra = await connect(reactor, port)
        refused = await extra.closed.addTimeout(10, reactor)  # answered, then closed
        status, headers = head_of(refused)
        assert (status, headers["retry-after"], headers["connection"]) == (503, "5", "close")
        assert refused.endswith(b"too many connections from your address; try again later\n")
        # A held connection is still served; once one closes, a new one is accepted.
        held[0].send(b"GET /-/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head_of(await held[0].until(b"\r\n\r\n"))[0] == 404
        held[1].close()
        await held[1].closed
        for _ in range(100):  # the server sees the close on its next reactor turn
            again = await connect(reactor, port)
            again.send(b"GET /-/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            received = await again.until(b"\r\n\r\n")
            again.close()
            if received:
                break
        assert head_of(received)[0] == 404
        for c in held:
            c.close()
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_http_slow_client_that_never_finishes_its_headers_is_dropped(tmp_path):
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path, SiteSettings(idle_timeout=0.5)).start()
    try:
        slow = await connect(reactor, env.port.getHost().port)
        slow.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # ... and nothing more
        await slow.closed.addTimeout(10, reactor)
        response = await env.request("GET", "/")
        await readBody(response)
        assert response.code == 200  # everyone else is served meanwhile
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_ftp_idle_control_connection_gets_421_and_is_closed(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(idle_timeout=0.5)).start()
    try:
        c = await env.client(login=False)
        code, _ = await c.reply()  # sent by the server on its own
        assert code == 421
        await c.closed.addTimeout(10, reactor)
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_uploaded_html_is_served_sandboxed_and_unsniffable(tmp_path):
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path).start()
    try:
        page = b"<html><script>alert(document.cookie)</script></html>"
        await env.upload("/evil.html", page)
        response = await env.request("GET", "/evil.html")
        assert await readBody(response) == page
        assert response.headers.getRawHeaders(b"X-Content-Type-Options") == [b"nosniff"]
        assert response.headers.getRawHeaders(b"Content-Security-Policy") == [b"sandbox"]
    finally:
        await env.stop()


FTP_PER_ADDRESS = 256


@pytest_twisted.ensureDeferred
async def test_ftp_control_connections_per_address_are_capped(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path).start()
    conns = []
    try:
        port = env.listening.getHost().port
        for _ in range(FTP_PER_ADDRESS + 10):
            c = await connect(reactor, port)
            conns.append(c)
        greetings = [(await c.until(b"\r\n"))[:3] for c in conns]
        assert greetings[:FTP_PER_ADDRESS] == [b"220"] * FTP_PER_ADDRESS
        assert set(greetings[FTP_PER_ADDRESS:]) == {b"421"}
        assert b"Too many connections from your address" in conns[-1].received
        await conns[-1].closed
        # Once one closes, the address may connect again.
        conns[0].close()
        await conns[0].closed
        for _ in range(100):
            again = await connect(reactor, port)
            conns.append(again)
            if (await again.until(b"\r\n"))[:3] == b"220":
                break
        assert again.received[:3] == b"220"
    finally:
        for c in conns:
            c.close()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_ftp_connections_in_total_are_capped(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(max_connections=3)).start()
    conns = []
    try:
        port = env.listening.getHost().port
        for _ in range(4):
            conns.append(await connect(reactor, port))
        greetings = [await c.until(b"\r\n") for c in conns]
        assert [g[:3] for g in greetings] == [b"220", b"220", b"220", b"421"]
        assert b"Too many connections in total" in greetings[3]
        assert len(env.factory.sessions) == 3
    finally:
        for c in conns:
            c.close()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_ftp_behind_a_proxy_protocol_balancer_takes_data_only_from_the_real_client(
    tmp_path,
):
    """The PROXY header names the client (127.0.0.2 here) and a destination
    that is no local address: the passive port opens on the real socket's
    address, PORT may point only at the client, and a data connection from
    the balancer's address (127.0.0.1) is refused while the client's works."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from tests.ftp_env import DataPeer

    env = await FTPEnv(reactor, tmp_path, listen="haproxy:tcp:0:interface=127.0.0.1").start()
    try:
        await env.env.upload("/f.txt", b"through the balancer")
        header = f"PROXY TCP4 127.0.0.2 192.0.2.1 40000 {env.port}\r\n".encode()
        c = await env.client(preamble=header)
        assert (await c.cmd("PORT 127,0,0,1,200,10"))[0] == 504
        assert (await c.cmd("EPRT |1|127.0.0.2|51234|"))[0] == 200
        await c.cmd("TYPE I")
        port = await c.epsv()
        stranger = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), DataPeer())
        assert await stranger.done == b""
        peer = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0)),
            DataPeer(),
        )
        assert (await c.cmd("RETR f.txt"))[0] == 150
        assert await peer.done == b"through the balancer"
        assert (await c.reply())[0] == 226
    finally:
        await env.stop()
