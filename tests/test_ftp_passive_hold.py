"""Passive ports cannot be hoarded, played exactly on a memory reactor.

A PASV/EPSV port no data connection reaches within ``data_timeout`` is
closed (vsftpd's ``accept_timeout``), and a transfer command after that
gets 425; a transfer already waiting for its data connection keeps its own
``data_timeout``.  With a ``passive_ports`` range, one client address holds
at most its share of it (``passive_ports_per_address``, half the range by
default): 60 control connections from one address, one PASV each, had
taken a 51-port range from every other client for as long as they stayed
open.  The real-socket side is ``test_ftp_passive_share.py``.
"""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher

from tests.ftp_memory import CLIENT, MemoryFTP, close_data
from wsfront.catalog.errors import NotFound
from wsfront.ftp.factory import FTPSettings

TIMEOUT = 30.0
RANGE = (40000, 40003)  # four ports: a share of two by default
OTHER = "198.51.100.9"


def _ftp(**settings) -> MemoryFTP:
    settings.setdefault("passive_ports", RANGE)
    ftp = MemoryFTP(FTPSettings(data_timeout=TIMEOUT, **settings))
    ftp.send("TYPE I")
    assert ftp.replies() == [200]
    return ftp


@pytest.mark.parametrize("verb", ["PASV", "EPSV"])
def test_a_passive_port_nobody_connects_to_closes_after_the_data_timeout(verb):
    ftp = _ftp()
    ftp.send(verb)
    assert ftp.replies() == [227 if verb == "PASV" else 229]
    listener = ftp.control.passive
    share = ftp.factory.passive_share
    assert share.held(CLIENT) == 1
    ftp.reactor.advance(TIMEOUT - 1)
    assert listener.port is not None and ftp.control.passive is listener
    ftp.reactor.advance(1)
    assert listener.port is None  # closed, and its port back in the range
    assert ftp.control.passive is None
    assert share.held(CLIENT) == 0
    assert ftp.factory.stats.passive_ports_unreached == 1
    assert not ftp.closing  # only the port: the control connection stays
    ftp.transfers.files["/f.bin"] = b"x"
    for command in ("RETR f.bin", "STOR g.bin", "LIST"):
        ftp.send(command)
        [(code, text)] = ftp.reply_texts()
        assert code == 425
        assert "timed out" in text and "PASV or EPSV again" in text
    assert ftp.transfers.writes == []  # the STOR began no upload
    # A new PASV works as ever, and says nothing of the old one.
    ftp.send(verb, "STOR g.bin")
    assert ftp.replies() == [227 if verb == "PASV" else 229]
    channel, _ = ftp.connect_data()
    assert ftp.replies() == [150]
    channel.dataReceived(b"data")
    close_data(channel)
    assert ftp.replies() == [226]
    assert ftp.transfers.files["/g.bin"] == b"data"


def test_each_pasv_gives_its_port_the_whole_time_again():
    ftp = _ftp()
    ftp.send("PASV")
    listener = ftp.control.passive
    ftp.reactor.advance(TIMEOUT - 1)
    ftp.send("PASV")  # the same unused port, handed out again
    assert ftp.replies() == [227, 227]
    assert ftp.control.passive is listener
    ftp.reactor.advance(TIMEOUT - 1)
    assert listener.port is not None
    ftp.reactor.advance(1)
    assert listener.port is None


def test_a_transfer_waiting_for_its_data_connection_keeps_the_data_timeout():
    """The accept timeout does not cut a RETR short: sent 20 s after PASV,
    it waits its own 30 s (425 as before), not the 10 the port had left."""
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = b"x"
    ftp.send("PASV")
    ftp.reactor.advance(20)
    ftp.send("RETR f.bin")
    assert ftp.replies() == [227]
    ftp.reactor.advance(TIMEOUT - 1)  # 49 s after the PASV
    assert ftp.replies() == []
    assert ftp.factory.stats.passive_ports_unreached == 0
    ftp.reactor.advance(1)
    [(code, text)] = ftp.reply_texts()
    assert (code, text) == (425, "the data connection did not arrive in time")
    assert ftp.factory.passive_share.held(CLIENT) == 0


def test_a_transfer_command_in_time_is_not_failed_by_slow_catalog_work():
    """RETR sent before the port's time is up, whose catalog work (the
    open) outlasts it: the port is not closed under it; once the open
    answers, the client still connects and gets the file.  A port whose
    command failed (no such file) is closed a deadline later, as ever."""
    from twisted.internet.defer import Deferred

    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = b"payload"
    gate: Deferred = Deferred()
    open_read = ftp.transfers.open_read

    async def slow_open_read(user, path: str, offset: int):
        await gate
        return await open_read(user, path, offset)

    ftp.transfers.open_read = slow_open_read
    ftp.send("PASV")
    ftp.reactor.advance(TIMEOUT - 0.5)
    ftp.send("RETR f.bin")
    assert ftp.replies() == [227]
    ftp.reactor.advance(5)  # past the port's deadline, the open still out
    listener = ftp.control.passive
    assert listener is not None and listener.port is not None
    assert ftp.factory.stats.passive_ports_unreached == 0
    gate.callback(None)
    channel, _transport = ftp.connect_data()
    [stream] = ftp.transfers.streams
    stream.gate.callback(None)
    close_data(channel)
    assert ftp.replies() == [150, 226]

    async def missing(user, path: str, offset: int):
        raise NotFound(f"no such file: {path}")

    ftp.transfers.open_read = missing
    ftp.send("PASV", "RETR missing.bin")
    assert ftp.replies() == [227, 550]
    ftp.reactor.advance(TIMEOUT)
    assert ftp.factory.stats.passive_ports_unreached == 1
    assert ftp.factory.passive_share.held(CLIENT) == 0


def test_a_data_connection_that_arrived_waits_for_its_transfer_command():
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = b"payload"
    ftp.send("EPSV")
    channel, data = ftp.connect_data()
    ftp.reactor.advance(TIMEOUT * 3)
    ftp.send("RETR f.bin")
    assert ftp.replies() == [229, 150]
    ftp.transfers.streams[-1].gate.callback(None)
    close_data(channel)
    assert ftp.replies() == [226]
    assert data.value() == b"payload"
    assert ftp.factory.stats.passive_ports_unreached == 0


def test_with_no_port_range_an_unused_reusable_port_closes_too():
    """Without a range a port is kept open across transfers (``rearm``):
    handed out again by the next PASV, it is closed if nobody comes."""
    ftp = _ftp(passive_ports=None)
    ftp.transfers.files["/f.bin"] = b"x"
    ftp.send("EPSV", "RETR f.bin")
    channel, _ = ftp.connect_data()
    ftp.transfers.streams[-1].gate.callback(None)
    close_data(channel)
    assert ftp.replies() == [229, 150, 226]
    ftp.send("EPSV")
    assert ftp.replies() == [229]
    listener = ftp.control.passive
    assert listener is not None and listener.port is not None  # the same port again
    ftp.reactor.advance(TIMEOUT)
    assert listener.port is None and ftp.control.passive is None


def _events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    return seen


def test_one_address_holds_at_most_its_share_of_the_range_and_others_still_get_ports():
    first = _ftp()
    share = first.factory.passive_share
    assert share.per_address == 2  # half of four
    hoarders = [first] + [MemoryFTP(factory=first.factory) for _ in range(3)]
    for ftp in hoarders[:2]:
        ftp.send("PASV")
        assert ftp.replies() == [227]
    seen = _events()
    try:
        for ftp in hoarders[2:]:
            ftp.send("PASV")
            [(code, text)] = ftp.reply_texts()
            assert code == 425 and "Too many passive ports" in text
            ftp.send("EPSV")
            assert ftp.replies() == [425]
    finally:
        globalLogPublisher.removeObserver(seen.append)
    logged = [e for e in seen if "refused PASV/EPSV" in e.get("log_format", "")]
    assert len(logged) == 1 and logged[0]["host"] == CLIENT  # once, not per PASV
    assert share.held(CLIENT) == 2
    assert first.factory.stats.passive_ports_refused == 4
    # Another address still gets the rest of the range.
    others = [MemoryFTP(factory=first.factory, client=OTHER) for _ in range(3)]
    for ftp in others[:2]:
        ftp.send("EPSV")
        assert ftp.replies() == [229]
    others[2].send("EPSV")
    assert others[2].replies() == [425]
    # A PASV again on a connection that holds a port keeps that one port.
    first.send("PASV", "PASV")
    assert first.replies() == [227, 227]
    assert share.held(CLIENT) == 2
    # Ports come back as data connections reach them, time out, or their
    # control connection closes.
    first.connect_data()
    hoarders[2].send("PASV")
    assert hoarders[2].replies() == [227]
    hoarders[1].control.connectionLost(None)
    hoarders[3].send("EPSV")
    assert hoarders[3].replies() == [229]
    assert share.held(CLIENT) == 2
    first.reactor.advance(TIMEOUT)
    assert share.held(CLIENT) == 0 and share.held(OTHER) == 0


def test_the_share_of_the_range_is_configurable():
    first = _ftp(passive_ports_per_address=3)
    controls = [first] + [MemoryFTP(factory=first.factory) for _ in range(3)]
    for ftp in controls:
        ftp.send("PASV")
    assert [ftp.replies() for ftp in controls] == [[227], [227], [227], [425]]


def test_a_range_of_one_port_is_a_share_of_one():
    ftp = _ftp(passive_ports=(40000, 40000))
    assert ftp.factory.passive_share.per_address == 1
    ftp.send("PASV")
    assert ftp.replies() == [227]


def test_without_a_port_range_no_share_applies():
    """Any free port (the benchmark's 200 clients from 127.0.0.1): no cap."""
    first = _ftp(passive_ports=None)
    assert first.factory.passive_share is None
    controls = [first] + [MemoryFTP(factory=first.factory) for _ in range(9)]
    for ftp in controls:
        ftp.send("EPSV")
    assert all(ftp.replies() == [229] for ftp in controls)
