"""What a data connection buffers while it moves a file (wsfront.ftp.data's
stream shares), over real sockets: a download alone gets large buffers
(few sends and reactor turns per MiB), many share one budget, and a client
that stops reading holds the server to its share by backpressure."""

from __future__ import annotations

import pytest_twisted

from tests.ftp_env import payload, sha256, tick, until
from wsfront.ftp import data
from wsstorage.framing import MAX_DATA, TRANSPORT_BUFFER

MiB = 1 << 20


def buffered(tcp) -> int:
    """Bytes a Twisted TCP transport holds, not yet handed to the kernel."""
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


async def _stalled_retr(ftp, path: str):
    """A RETR whose client reads nothing; its server-side DataChannel."""
    c = await ftp.client()
    await c.cmd("TYPE I")
    peer = await c.data_connection(await c.epsv())
    peer.transport.pauseProducing()
    assert (await c.cmd(f"RETR {path}"))[0] == 150
    session = next(
        s for s in ftp.factory.sessions if s.transport.getPeer() == c.transport.getHost()
    )
    return c, peer, session.transfer.channel


def test_stream_shares_split_one_budget_between_bounds():
    assert data.stream_share(1) == data.STREAM_MAX
    assert data.stream_share(50) == data.STREAM_BUDGET // 50 < data.STREAM_MAX
    assert data.stream_share(100_000) == data.STREAM_MIN


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_holds_the_server_to_its_share(ftp):
    size = 48 * MiB
    await ftp.env.upload("/big", payload(size))
    c, _peer, channel = await _stalled_retr(ftp, "big")
    tcp = channel._tcp
    assert tcp is not None and data._streams == 1
    assert tcp.bufferSize == data.STREAM_MAX and tcp.SEND_LIMIT == data.STREAM_SEND_LIMIT
    # The kernel's buffers fill, then Twisted's, then the read is paused.
    # The kernel may let more in for a while (it grows a socket's buffers
    # as it sees fit, and on a busy machine it does so late), so the stream
    # may resume and pause again; all along the server holds no more than
    # its share, and the download settles paused short of the file.
    settled, sent = 0, -1
    for _ in range(2000):
        await tick()
        assert buffered(tcp) <= data.STREAM_MAX + MAX_DATA
        if tcp.producerPaused and channel.sent == sent:
            settled += 1
            if settled == 20:
                break
        else:
            settled, sent = 0, channel.sent
    else:
        raise AssertionError("the download never settled paused")
    assert channel.sent < size
    c.send("ABOR")
    assert (await c.reply())[0] == 426
    assert (await c.reply())[0] == 226
    assert data._streams == 0


@pytest_twisted.ensureDeferred
async def test_a_stalled_download_holds_its_share_and_one_socket_read(ftp, monkeypatch):
    """With the shares of 200 downloads at once (a data connection's
    STREAM_MIN, a storage read's RECV_MIN), a client that stops reading
    holds the front end to its share plus one storage socket read in the
    data connection, and one socket read in the storage connection: the
    storage client passes DATA bodies on as they arrive, never holding a
    256 KiB frame (MAX_DATA) until its last byte."""
    from wsfront.transfer import reader
    from wsstorage import client as storage_client

    monkeypatch.setattr(data, "STREAM_BUDGET", data.STREAM_MIN)
    monkeypatch.setattr(reader, "RECV_BUDGET", reader.RECV_MIN)
    assert reader.RECV_MIN < MAX_DATA and storage_client.READ_FIRST_RECV <= reader.RECV_MIN
    reads = []
    init = storage_client._ReadCall.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        reads.append(self)

    monkeypatch.setattr(storage_client._ReadCall, "__init__", recorded)
    size = 48 * MiB
    await ftp.env.upload("/big", payload(size))
    c, _peer, channel = await _stalled_retr(ftp, "big")
    tcp = channel._tcp
    assert tcp.bufferSize == data.STREAM_MIN
    settled, sent, held = 0, -1, 0
    for _ in range(2000):
        await tick()
        storage = reads[-1].proto
        assert storage.transport.bufferSize <= reader.RECV_MIN
        assert storage._decoder.buffered <= reader.RECV_MIN
        assert buffered(tcp) <= data.STREAM_MIN + reader.RECV_MIN
        held = max(held, buffered(tcp) + storage._decoder.buffered)
        if tcp.producerPaused and channel.sent == sent:
            settled += 1
            if settled == 20:
                break
        else:
            settled, sent = 0, channel.sent
    else:
        raise AssertionError("the download never settled paused")
    assert 0 < held < MAX_DATA and channel.sent < size
    c.send("ABOR")
    assert (await c.reply())[0] == 426
    assert (await c.reply())[0] == 226
    # The storage connection went back to its own read size (or was dropped).
    assert all(r._saved_recv is None for r in reads)


@pytest_twisted.ensureDeferred
async def test_a_stream_gives_back_its_share_when_others_start(ftp, monkeypatch):
    monkeypatch.setattr(data, "STREAM_BUDGET", 4 * data.STREAM_MIN)
    body = payload(32 * MiB)
    await ftp.env.upload("/big", body)
    c1, peer1, first = await _stalled_retr(ftp, "big")
    assert first._tcp.bufferSize == 4 * data.STREAM_MIN
    c2, _peer2, second = await _stalled_retr(ftp, "big")
    assert second._tcp.bufferSize == 2 * data.STREAM_MIN and data._streams == 2
    # The first client reads on: at its next resume the first stream
    # takes the smaller share.
    peer1.transport.resumeProducing()
    await until(lambda: first._tcp.bufferSize == 2 * data.STREAM_MIN, "the first stream reshared")
    assert sha256(await peer1.done) == sha256(body)
    assert (await c1.reply())[0] == 226
    assert data._streams == 1
    c2.send("ABOR")
    assert (await c2.reply())[0] == 426
    assert (await c2.reply())[0] == 226
    assert data._streams == 0


@pytest_twisted.ensureDeferred
async def test_uploads_take_a_share_and_give_it_back(ftp):
    body = payload(5 * MiB)
    c = await ftp.client()
    assert (await c.stor("up.bin", body))[0] == 226
    assert data._streams == 0
    assert sha256(await c.retr("up.bin")) == sha256(body)
    assert data._streams == 0
    # The storage connections the download read on went back to the pool
    # with their own read size (a read starts them at READ_FIRST_RECV).
    idle = [conn for client in ftp.env.clients for conn in client._idle]
    assert idle and all(conn.transport.bufferSize == TRANSPORT_BUFFER for conn in idle)
