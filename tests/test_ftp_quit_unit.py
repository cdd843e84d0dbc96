"""QUIT behind a transfer, played exactly on a memory reactor (``ftp_memory``).

RFC 959 (4.1.1): QUIT closes the control connection, but "if file transfer
is in progress, the connection will remain open for result response and
the server will then close it".  A client may send PASV, STOR (or RETR,
LIST, NLST) and QUIT without waiting for the data connection: the transfer
still runs when its data connection comes, ends with its own reply, and
only then QUIT is answered 221 and the connection closed.  The data
connection's timeout still bounds the wait (425, then 221); a data
connection cut short still gets its 426 (then 221); ABOR still aborts,
answered before the commands queued behind the transfer.
"""

from __future__ import annotations

import pytest
from twisted.internet import error as net_error

from tests.ftp_memory import MemoryFTP, close_data
from wsfront.ftp.factory import FTPSettings
from wsfront.ftp.protocol import CLOSE_DEADLINE

TIMEOUT = 30.0
DATA = bytes(range(256)) * 1000


def _ftp() -> MemoryFTP:
    ftp = MemoryFTP(FTPSettings(data_timeout=TIMEOUT, passive_ports=(40000, 40000)))
    ftp.send("TYPE I")
    ftp.send("EPSV")
    assert ftp.replies() == [200, 229]
    return ftp


@pytest.mark.parametrize("together", [True, False], ids=["same read", "separate read"])
def test_quit_after_a_stor_waiting_for_its_data_connection_lets_it_finish(together):
    ftp = _ftp()
    if together:
        ftp.send("STOR f.bin", "QUIT")
    else:
        ftp.send("STOR f.bin")
        ftp.send("QUIT")
    assert ftp.replies() == [] and not ftp.closing
    channel, _ = ftp.connect_data()
    assert ftp.replies() == [150]
    channel.dataReceived(DATA[:1000])
    channel.dataReceived(DATA[1000:])
    assert ftp.replies() == [] and not ftp.closing
    close_data(channel)
    assert ftp.replies() == [226, 221]
    assert ftp.closing
    assert ftp.transfers.files["/f.bin"] == DATA


@pytest.mark.parametrize("verb", ["RETR", "LIST", "NLST"])
def test_quit_after_a_download_waiting_for_its_data_connection_lets_it_finish(verb):
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = DATA
    ftp.send(f"{verb} f.bin" if verb == "RETR" else verb)
    ftp.send("QUIT")
    assert ftp.replies() == [] and not ftp.closing
    channel, data = ftp.connect_data()
    assert ftp.replies() == [150]
    if verb == "RETR":
        ftp.transfers.streams[-1].gate.callback(None)
    assert ftp.replies() == [] and not ftp.closing  # the data connection closes first
    assert data.disconnecting
    close_data(channel)
    assert ftp.replies() == [226, 221]
    assert ftp.closing
    sent = data.value()
    if verb == "RETR":
        assert sent == DATA
    else:
        assert b"f.bin" in sent


def test_quit_during_a_download_waits_for_its_last_byte():
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = DATA
    ftp.send("RETR f.bin")
    channel, data = ftp.connect_data()
    assert ftp.replies() == [150]
    assert data.value() == DATA[: len(DATA) // 2]
    ftp.send("QUIT")
    assert ftp.replies() == [] and not ftp.closing
    ftp.transfers.streams[-1].gate.callback(None)
    close_data(channel)
    assert ftp.replies() == [226, 221]
    assert data.value() == DATA


def test_quit_during_a_download_the_client_cuts_short_gets_426_then_221():
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = DATA
    ftp.send("RETR f.bin")
    channel, _ = ftp.connect_data()
    ftp.send("QUIT")
    close_data(channel)  # the client closes the data connection mid-file
    assert ftp.replies() == [150, 426, 221]
    assert ftp.closing


def test_quit_during_an_upload_reset_by_the_client_gets_426_then_221():
    ftp = _ftp()
    ftp.send("STOR f.bin")
    channel, _ = ftp.connect_data()
    channel.dataReceived(DATA[:1000])
    ftp.send("QUIT")
    close_data(channel, net_error.ConnectionLost("reset"))
    assert ftp.replies() == [150, 426, 221]
    assert ftp.closing
    assert ftp.transfers.writes[-1].state == "interrupted"  # kept, resumable
    assert "/f.bin" not in ftp.transfers.files


@pytest.mark.parametrize("verb", ["STOR", "RETR", "LIST"])
def test_quit_waits_for_the_data_connection_no_longer_than_its_timeout(verb):
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = DATA
    ftp.send(f"{verb} f.bin" if verb != "LIST" else verb)
    ftp.send("QUIT")
    ftp.reactor.advance(TIMEOUT - 1)
    assert ftp.replies() == [] and not ftp.closing
    ftp.reactor.advance(1)
    assert ftp.replies() == [425, 221]
    assert ftp.closing
    if verb == "STOR":
        assert ftp.transfers.writes[-1].state == "abandoned"


def test_abor_after_a_queued_quit_still_aborts_the_waiting_transfer():
    ftp = _ftp()
    ftp.send("STOR f.bin")
    ftp.send("QUIT")
    ftp.send("ABOR")
    assert ftp.replies() == [426, 226, 221]
    assert ftp.closing
    assert ftp.transfers.writes[-1].state == "abandoned"


@pytest.mark.parametrize("verb", ["RETR", "LIST"])
def test_abor_of_a_download_waiting_for_its_data_connection_answers_before_queued_commands(verb):
    """Nothing to let go: the aborted transfer ends within ABOR, yet ABOR's
    226 follows its 426 before the queued NOOP's 200 and QUIT's 221 (the
    226 once came after them)."""
    ftp = _ftp()
    ftp.transfers.files["/f.bin"] = DATA
    ftp.send(f"{verb} f.bin" if verb == "RETR" else verb)
    ftp.send("NOOP")
    ftp.send("QUIT")
    ftp.send("ABOR")
    assert ftp.replies() == [426, 226, 200, 221]
    assert ftp.closing


@pytest.mark.parametrize("together", [True, False], ids=["same read", "later read"])
def test_nothing_sent_after_quit_runs(together):
    """221 is the last reply: commands after QUIT (here TYPE A, which would
    change the session) are never run, whether read with it or after."""
    ftp = _ftp()
    if together:
        ftp.send("QUIT", "NOOP", "TYPE A")
    else:
        ftp.send("QUIT")
        ftp.send("NOOP", "TYPE A")
    assert ftp.replies() == [221]
    assert ftp.closing
    assert ftp.control.binary


def test_quit_jumping_a_flood_drops_the_queued_commands():
    """Behind ``max_queued_commands`` queued lines QUIT leaves at once (the
    flood guard), cutting the running transfer; the commands it jumped are
    dropped, never answered after the 221."""
    ftp = MemoryFTP(
        FTPSettings(data_timeout=TIMEOUT, passive_ports=(40000, 40000), max_queued_commands=8)
    )
    ftp.send("TYPE I")
    ftp.send("EPSV")
    ftp.transfers.files["/f.bin"] = DATA
    ftp.send("RETR f.bin")
    channel, _ = ftp.connect_data()
    assert ftp.replies() == [200, 229, 150]
    ftp.send(*(["NOOP"] * 20 + ["TYPE A", "QUIT"]))
    assert ftp.replies() == [221]
    assert ftp.closing
    close_data(channel, net_error.ConnectionLost())
    ftp.transfers.streams[-1].gate.callback(None)
    assert ftp.replies() == []  # neither the NOOPs' 200s nor the RETR's 426
    assert ftp.control.binary


def test_no_timer_speaks_after_the_221_and_a_close_never_done_is_aborted():
    """The idle timer's 421 never follows a 221; a close the peer never
    completes (under TLS: no close_notify back) is aborted after
    CLOSE_DEADLINE, so the connection's slot is not held for ever."""
    ftp = MemoryFTP(FTPSettings(data_timeout=TIMEOUT, idle_timeout=5.0))
    ftp.send("QUIT")
    assert ftp.replies() == [221]
    assert ftp.closing and not ftp.transport.disconnected
    ftp.reactor.advance(CLOSE_DEADLINE - 0.1)
    assert ftp.replies() == [] and not ftp.transport.disconnected
    ftp.reactor.advance(0.2)
    assert ftp.transport.disconnected  # StringTransport: abortConnection
    assert ftp.replies() == []
