"""One client address cannot take a passive port range from the others.

Over real sockets: a server on 127.0.0.1 with a four-port ``passive_ports``
range (a share of two per address), one client address (127.0.0.1)
opening control connections and sending EPSV on each, and another client
(127.0.0.2, loopback too on Linux, both its control and data sockets bound
there: passive ports accept only the control connection's peer) that still
gets ports and moves a file both ways.  The protocol's side, with the
accept timeout, is ``test_ftp_passive_hold.py``.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.ftp_env import PASSWORD, DataPeer, FTPClient, FTPEnv, _ClientFactory, payload
from tests.support import free_port_range
from wsfront.ftp.factory import FTPSettings

OTHER = "127.0.0.2"


async def _client_from(env: FTPEnv, source: str) -> FTPClient:
    """A logged-in client whose control connection comes from ``source``."""
    ep = TCP4ClientEndpoint(env.reactor, "127.0.0.1", env.port, bindAddress=(source, 0))
    client = await ep.connect(_ClientFactory(env.reactor))
    env.clients.append(client)
    assert (await client.reply())[0] == 220
    await client.login("alice", PASSWORD)
    return client


async def _data_from(env: FTPEnv, source: str, port: int) -> DataPeer:
    ep = TCP4ClientEndpoint(env.reactor, "127.0.0.1", port, bindAddress=(source, 0))
    return await connectProtocol(ep, DataPeer())


@pytest_twisted.ensureDeferred
async def test_one_address_cannot_take_every_passive_port_from_another(tmp_path):
    from twisted.internet import reactor

    low, high = free_port_range(4)
    settings = FTPSettings(data_timeout=10.0, passive_ports=(low, high))
    env = await FTPEnv(reactor, tmp_path, settings).start()
    try:
        hoarders = [await env.client() for _ in range(4)]
        held = [await hoarders[0].epsv(), await hoarders[1].epsv()]
        assert all(low <= port <= high for port in held)
        for hoarder in hoarders[2:]:
            code, text = await hoarder.cmd("EPSV")
            assert code == 425 and "Too many passive ports" in text, (code, text)
            assert (await hoarder.cmd("PASV"))[0] == 425

        # The other address still gets ports of the range, and uses them.
        other = await _client_from(env, OTHER)
        assert (await other.cmd("TYPE I"))[0] == 200
        data = payload(256 * 1024)
        port = await other.epsv()
        assert low <= port <= high and port not in held
        peer = await _data_from(env, OTHER, port)
        assert (await other.cmd("STOR shared.bin"))[0] == 150
        peer.transport.write(data)
        peer.transport.loseConnection()
        assert (await other.reply())[0] == 226
        port = await other.epsv()
        peer = await _data_from(env, OTHER, port)
        assert (await other.cmd("RETR shared.bin"))[0] == 150
        assert await peer.done == data
        assert (await other.reply())[0] == 226

        # The first address is still held to its share, until it lets a
        # port go: a QUIT frees its connection's port for another.
        assert (await hoarders[2].cmd("EPSV"))[0] == 425
        assert (await hoarders[0].cmd("QUIT"))[0] == 221
        await hoarders[0].closed
        port = await hoarders[2].epsv()
        peer = await _data_from(env, "127.0.0.1", port)
        listing = hoarders[2]
        assert (await listing.cmd("NLST"))[0] == 150
        assert b"shared.bin" in await peer.done
        assert (await listing.reply())[0] == 226
    finally:
        await env.stop()
