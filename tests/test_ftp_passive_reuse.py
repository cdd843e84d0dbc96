"""A control connection reuses the passive port of its last transfer for its
next PASV/EPSV (no socket, bind, listen and close per small file), while
that port refuses every connection between transfers; with a configured
port range each transfer's port closes once its connection arrived."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint

from tests.ftp_env import FTPEnv, sha256
from wsfront.ftp.factory import FTPSettings


def payload(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path)
    pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


def _session(ftp, client):
    return next(
        s for s in ftp.factory.sessions if s.transport.getPeer() == client.transport.getHost()
    )


async def _retr_on(c, port: int, path: str) -> bytes:
    peer = await c.data_connection(port)
    code, text = await c.cmd(f"RETR {path}")
    assert code == 150, (code, text)
    data = await peer.done
    assert (await c.reply())[0] == 226
    return data


@pytest_twisted.ensureDeferred
async def test_consecutive_transfers_reuse_one_passive_port(ftp):
    files = {f"/f{i}": payload(4096 + i) for i in range(3)}
    for path, body in files.items():
        await ftp.env.upload(path, body)
    c = await ftp.client()
    await c.cmd("TYPE I")
    ports = []
    for path, body in files.items():
        port = await c.epsv()
        ports.append(port)
        assert sha256(await _retr_on(c, port, path[1:])) == sha256(body)
    assert len(set(ports)) == 1
    # STOR and LIST use it too, and PASV answers the same port.
    up = payload(10_000)
    assert (await c.stor("up", up))[0] == 226
    assert "up" in await c.listing("NLST")
    code, text = await c.cmd("PASV")
    assert code == 227 and text.rstrip(").").endswith(f"{ports[0] >> 8},{ports[0] & 255}")
    assert sha256(await _retr_on(c, ports[0], "up")) == sha256(up)


@pytest_twisted.ensureDeferred
async def test_a_parked_port_refuses_connections_until_the_next_pasv(ftp):
    from twisted.internet import reactor

    body = payload(50_000)
    await ftp.env.upload("/f", body)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    assert sha256(await _retr_on(c, port, "f")) == sha256(body)
    # Between transfers: the port is open but drops whoever connects.
    ep = HostnameEndpoint(reactor, "127.0.0.1", port)
    from tests.ftp_env import DataPeer

    intruder = await ep.connect(protocol.Factory.forProtocol(DataPeer))
    assert await intruder.done == b""
    assert _session(ftp, c).parked is not None
    # The next transfer gets the port again, and the intruder's connection
    # did not become its data connection.
    assert await c.epsv() == port
    assert sha256(await _retr_on(c, port, "f")) == sha256(body)
    assert ftp.factory.stats.refused_data_connections == 1


@pytest_twisted.ensureDeferred
async def test_port_after_a_transfer_closes_the_parked_port(ftp):
    from twisted.internet import reactor

    await ftp.env.upload("/f", b"x" * 100)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    await _retr_on(c, port, "f")
    assert (await c.cmd("PORT 127,0,0,1,4,1"))[0] == 200
    assert _session(ftp, c).parked is None
    with pytest.raises(error.ConnectionRefusedError):
        await HostnameEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory())


@pytest_twisted.ensureDeferred
async def test_with_a_port_range_each_port_closes_once_its_connection_arrived(tmp_path):
    from twisted.internet import reactor

    from tests.support import free_port

    lo = free_port()
    env = await FTPEnv(
        reactor, tmp_path, FTPSettings(data_timeout=10.0, passive_ports=(lo, lo))
    ).start()
    try:
        await env.env.upload("/f", b"y" * 1000)
        c = await env.client()
        await c.cmd("TYPE I")
        for _ in range(2):  # the one port of the range serves transfer after transfer
            port = await c.epsv()
            assert port == lo
            peer = await c.data_connection(port)
            assert _session(env, c).passive.port is None  # closed on arrival
            assert (await c.cmd("RETR f"))[0] == 150
            assert await peer.done == b"y" * 1000
            assert (await c.reply())[0] == 226
            assert _session(env, c).parked is None
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_parked_port_closes_a_park_time_after_its_last_transfer():
    """One park timer serves a run of transfers: a port in use again
    (``rearm``) is never closed by it, each ``park`` moves it on, and the
    port closes once it stayed parked for the whole park time."""
    from twisted.internet import reactor, task

    from wsfront.ftp.data import open_passive

    clock = task.Clock()
    listener = open_passive(reactor, "127.0.0.1", "127.0.0.1", None)
    try:
        number = listener.port_number
        for _ in range(3):  # each park within the park time of the last
            peer = await HostnameEndpoint(reactor, "127.0.0.1", number).connect(
                protocol.Factory.forProtocol(protocol.Protocol)
            )
            channel = await listener.wait(reactor, 10.0)
            assert listener.park(clock, 5.0)
            clock.advance(4.0)
            assert listener.port is not None
            assert listener.rearm()
            peer.transport.loseConnection()
            channel.abort()
        clock.advance(10.0)  # in use (rearmed): the timer closes nothing
        assert listener.port is not None and listener.port_number == number
        peer = await HostnameEndpoint(reactor, "127.0.0.1", number).connect(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        await listener.wait(reactor, 10.0)
        assert listener.park(clock, 5.0)
        clock.advance(4.9)
        assert listener.port is not None
        clock.advance(0.2)
        assert listener.port is None
        peer.transport.loseConnection()
    finally:
        listener.close()
