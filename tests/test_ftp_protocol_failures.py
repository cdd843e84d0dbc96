"""FTP uploads that end badly, and the guards around data connections.

Quota, takeover by another session (fenced), a client that vanishes
mid-upload, a busy path, a data connection from a stranger: each gets its
own reply (never a 226 for bytes that were not committed) and leaves the
stored data consistent.
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.ftp_env import PASSWORD, FTPEnv, payload, sha256, until

MiB = 1 << 20


def _session_received(ftp) -> int:
    return max((s.received for s in ftp.transfers.sessions.values()), default=0)


@pytest_twisted.ensureDeferred
async def test_quota_exceeded_during_stor_is_552_and_nothing_is_committed(ftp):
    await ftp.catalog.set_quota("alice", 100_000, None)
    c = await ftp.client(login=False)
    await c.login("alice", PASSWORD)
    code, text = await c.stor("/big.bin", payload(300_000))
    assert code == 552, text
    await c.cmd("TYPE I")
    assert (await c.cmd("RETR big.bin"))[0] == 550


@pytest_twisted.ensureDeferred
async def test_upload_taken_over_by_another_connection_is_fenced_not_226(ftp):
    first = payload(200_000)
    c1 = await ftp.client()
    await c1.cmd("TYPE I")
    port = await c1.epsv()
    peer = await c1.data_connection(port)
    assert (await c1.cmd("STOR f.bin"))[0] == 150
    peer.transport.write(first)
    await until(lambda: _session_received(ftp) >= len(first), "the first bytes")
    # The same user resumes from another connection (as after a crash).
    c2 = await ftp.client()
    full = payload(300_000)
    code, text = await c2.stor("f.bin", full)
    assert code == 226, text
    # The old connection's upload ends with an error, never a 226.
    peer.transport.write(b"late bytes")
    peer.transport.loseConnection()
    code, text = await c1.reply()
    assert code == 451, text
    got, _ = await ftp.env.download("/f.bin")
    assert sha256(got) == sha256(full)


@pytest_twisted.ensureDeferred
async def test_a_small_stor_whose_replicas_all_die_is_451_after_its_150(ftp):
    """A small upload opens no storage stream before 150 (one put per
    replica at the end): storage that fails meanwhile is reported by the
    final reply, never a 226, and nothing is committed."""
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd("STOR s.bin"))[0] == 150
    [session] = ftp.transfers.sessions.values()
    for node in session.replicas:
        await ftp.env.kill(node)
    peer.transport.write(b"x" * 4096)
    peer.transport.loseConnection()
    code, text = await c.reply()
    assert code == 451, text
    assert (await c.cmd("RETR s.bin"))[0] == 550
    # Not left active and owned by this front end until it expires: the
    # session is interrupted (resumable), and a new STOR of the path works.
    upload = await ftp.catalog.find_upload("/alice/s.bin")
    assert (upload.state, upload.checkpoint) == ("interrupted", 0)
    assert (await c.stor("s.bin", b"again"))[0] == 226
    assert await c.retr("s.bin") == b"again"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with SO_LINGER 0: the peer gets an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest_twisted.ensureDeferred
async def test_a_reset_data_connection_is_426_and_the_upload_stays_pending(ftp):
    """An RST is no normal close (DESIGN.md, Uploads: FTP commits when the
    data connection closes normally): it was answered 226 and what arrived
    replaced the committed file."""
    await ftp.env.upload("/r.bin", b"committed")
    data = payload(300_000)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        assert (await c.cmd("STOR r.bin"))[0] == 150
        sock.sendall(data[:100_000])
        await until(lambda: _session_received(ftp) >= 100_000, "the first bytes")
    finally:
        _reset(sock)
    code, text = await c.reply()
    assert code == 426 and "resume" in text, text
    assert ftp.factory.stats.uploads_committed == 0
    other = await ftp.client()
    assert await other.retr("r.bin") == b"committed"
    upload = await ftp.catalog.find_upload("/alice/r.bin")
    assert upload.state == "interrupted"
    assert await c.cmd("SIZE r.bin") == (213, "100000")
    assert (await c.stor("r.bin", data[100_000:], verb="APPE"))[0] == 226
    assert sha256(await c.retr("r.bin")) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_a_reset_before_any_byte_leaves_no_upload(ftp):
    await ftp.env.upload("/r.bin", b"committed")
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        assert (await c.cmd("STOR r.bin"))[0] == 150
    finally:
        _reset(sock)
    code, text = await c.reply()
    assert code == 426 and "no upload is kept" in text, text
    assert await ftp.catalog.find_upload("/alice/r.bin") is None
    assert await c.retr("r.bin") == b"committed"


@pytest_twisted.ensureDeferred
async def test_client_vanishing_mid_upload_keeps_what_arrived_resumable(ftp):
    data = payload(500_000)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd("STOR v.bin"))[0] == 150
    peer.transport.write(data[:200_000])
    await until(lambda: _session_received(ftp) >= 200_000, "the bytes")
    c.transport.abortConnection()
    peer.transport.abortConnection()  # both reset: not a normal close
    await until(lambda: not ftp.transfers.sessions, "the session to end")
    assert (await ftp.catalog.find_upload("/alice/v.bin")).state == "interrupted"
    c2 = await ftp.client()
    await c2.cmd("TYPE I")
    assert await c2.cmd("SIZE v.bin") == (213, "200000")
    assert (await c2.stor("v.bin", data[200_000:], verb="APPE"))[0] == 226
    assert await c2.retr("v.bin") == data


@pytest_twisted.ensureDeferred
async def test_delete_of_a_file_with_a_live_upload_is_450(ftp):
    c = await ftp.client()
    assert (await c.stor("/f", b"committed"))[0] == 226
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd("STOR f"))[0] == 150
    peer.transport.write(b"partial")
    c2 = await ftp.client()
    assert (await c2.cmd("DELE f"))[0] == 450
    peer.transport.loseConnection()
    assert (await c.reply())[0] == 226
    assert (await c2.cmd("DELE f"))[0] == 250


@pytest_twisted.ensureDeferred
async def test_passive_connection_from_another_address_is_refused(ftp):
    from twisted.internet import reactor

    c = await ftp.client()
    port = await c.epsv()
    stranger_lost = defer.Deferred()

    class Stranger(protocol.Protocol):
        def connectionLost(self, reason=None):
            stranger_lost.callback(None)

    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0))
    await ep.connect(protocol.Factory.forProtocol(Stranger))
    await stranger_lost  # dropped on arrival
    await ftp.env.upload("/f", b"for alice only")
    assert await c.retr("/f") == b"for alice only"
    assert ftp.factory.stats.refused_data_connections >= 1


@pytest_twisted.ensureDeferred
async def test_control_connections_have_tcp_nodelay(ftp):
    await ftp.client()
    [session] = list(ftp.factory.sessions)
    sock = session.transport.getHandle()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest_twisted.ensureDeferred
async def test_data_connection_that_never_arrives_is_425(tmp_path):
    from twisted.internet import reactor

    from wsfront.ftp.factory import FTPSettings

    env = await FTPEnv(reactor, tmp_path, FTPSettings(data_timeout=0.3)).start()
    try:
        await env.env.upload("/f", b"x")
        c = await env.client()
        await c.cmd("TYPE I")
        await c.epsv()
        assert (await c.cmd("RETR f"))[0] == 425
        assert (await c.cmd("NOOP"))[0] == 200
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_two_hundred_clients_connecting_at_once_all_get_the_banner(ftp):
    # Logins are left out: 200 password checks cost seconds, and the listen
    # backlog is what decides whether a burst of connections gets in.
    clients = await defer.gatherResults(
        [defer.ensureDeferred(ftp.client(login=False)) for _ in range(200)]
    )
    assert len(clients) == 200
    assert ftp.factory.stats.connections == 200
    replies = await defer.gatherResults([defer.ensureDeferred(c.cmd("NOOP")) for c in clients])
    assert {code for code, _ in replies} == {200}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest_twisted.ensureDeferred
async def test_ipv6_control_connection_with_epsv_and_eprt(tmp_path):
    from twisted.internet import reactor

    from tests.ftp_env import DataPeer

    env = await FTPEnv(reactor, tmp_path, listen=r"tcp6:0:interface=\:\:1").start()
    try:
        data = payload(100_000)
        await env.env.upload("/six.bin", data)
        c = await env.client(host="::1")
        assert (await c.cmd("PASV"))[0] == 425  # PASV can't describe IPv6
        assert (await c.cmd("EPSV 1"))[0] == 522
        assert await c.retr("/six.bin") == data
        peers: list[DataPeer] = []

        def build():
            peers.append(DataPeer())
            return peers[-1]

        listening = reactor.listenTCP(0, protocol.Factory.forProtocol(build), interface="::1")
        try:
            assert (await c.cmd("EPRT |1|127.0.0.1|40000|"))[0] == 504
            port = listening.getHost().port
            assert (await c.cmd(f"EPRT |2|::1|{port}|"))[0] == 200
            assert (await c.cmd("RETR six.bin"))[0] == 150
            assert (await c.reply())[0] == 226
            assert await peers[0].done == data
        finally:
            await listening.stopListening()
    finally:
        await env.stop()
