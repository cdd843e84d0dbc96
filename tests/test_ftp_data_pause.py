"""When a data connection's reads are paused (wsfront.ftp.data.DataChannel),
over real sockets: one that arrives before its transfer command waits
paused, unread, until the command claims it; one the command already
waits for is claimed as it connects and never paused, so a client of many
small files pays no pause and resume (two epoll changes) per transfer."""

from __future__ import annotations

import pytest_twisted

from tests.ftp_env import payload, until
from wsfront.ftp import data


def count_connect_pauses(monkeypatch) -> list[data.DataChannel]:
    """The channels paused while they connected (``connectionMade``), one
    entry per pause."""
    paused: list[data.DataChannel] = []
    made = data.DataChannel.connectionMade

    def counted(self) -> None:
        transport = self.transport
        pause = transport.pauseProducing

        def pause_counted() -> None:
            paused.append(self)
            pause()

        transport.pauseProducing = pause_counted
        try:
            made(self)
        finally:
            del transport.pauseProducing

    monkeypatch.setattr(data.DataChannel, "connectionMade", counted)
    return paused


def server_session(ftp, c):
    return next(s for s in ftp.factory.sessions if s.transport.getPeer() == c.transport.getHost())


@pytest_twisted.ensureDeferred
async def test_a_connection_its_stor_waits_for_is_never_paused(ftp, monkeypatch):
    paused = count_connect_pauses(monkeypatch)
    body = payload(5000)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    c.send("STOR waited")
    session = server_session(ftp, c)
    await until(
        lambda: session.transfer is not None and session.transfer.waiting is not None,
        "the STOR to wait for its data connection",
    )
    peer = await c.data_connection(port)
    code, text = await c.reply()
    assert code == 150, text
    peer.transport.write(body)
    peer.transport.loseConnection()
    code, text = await c.reply()
    assert code == 226, text
    assert paused == []
    assert (await ftp.env.download("/waited"))[0] == body


@pytest_twisted.ensureDeferred
async def test_a_connection_before_its_command_waits_paused_and_unread(ftp, monkeypatch):
    paused = count_connect_pauses(monkeypatch)
    body = payload(5000)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    await until(lambda: len(paused) == 1, "the data connection to arrive")
    channel = paused[0]
    peer.transport.write(body)  # sent before any STOR: left in the socket
    assert not channel.claimed and channel.received == 0
    assert channel.transport not in ftp.reactor.getReaders()
    code, text = await c.cmd("STOR early")
    assert code == 150, text
    peer.transport.loseConnection()
    code, text = await c.reply()
    assert code == 226, text
    assert paused == [channel]
    assert (await ftp.env.download("/early"))[0] == body
