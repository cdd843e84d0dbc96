"""TLS between front ends and storage servers, with certificates made here.

A real ``twistd -n wsstorage`` listens on ``ssl:PORT:privateKey=..:certKey=..``
and clients connect with ``tls:127.0.0.1:PORT:trustRoots=CA_DIR``, the
strings an operator writes (docs/wire-protocol.md, "TLS").  The wsstorage
handshake still runs inside TLS: TLS protects the bytes, the secret proves
membership.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import pytest
import pytest_twisted
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl
from twisted.internet import defer

from tests.migration_cluster import PASSWORD, USER, MigrationCluster
from tests.storage_procs import (
    DrainConsumer,
    StorageProcess,
    pattern,
    read_sha,
    write_blob,
)
from tests.storage_tls import make_tls
from tests.support import free_port, require_tool
from tests.transfer_env import sha256
from wsstorage import framing
from wsstorage import server as storage_server
from wsstorage.client import StorageClient
from wsstorage.errors import NodeUnavailable
from wsstorage.service import start_storage_server

MiB = 1 << 20


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    tls = make_tls(tmp / "tls")
    proc = StorageProcess(tmp, tls=tls).start()
    yield proc, tls, tmp
    proc.stop()


@pytest_twisted.ensureDeferred
async def test_blob_written_and_read_over_tls_keeps_its_sha256(tls_node):
    from twisted.internet import reactor

    proc, _tls, _ = tls_node
    assert proc.endpoint.startswith("tls:") and "trustRoots=" in proc.endpoint
    client = proc.client(reactor)
    data = pattern(9 * MiB + 12345)
    try:
        info = await write_blob(client, "tls-blob", data, chunk=256 * 1024)
        assert info.size == len(data)
        digest, n = await read_sha(client, "tls-blob")
        assert (digest, n) == (sha256(data), len(data))
        # A range read in the middle, over a pooled TLS connection.
        digest, n = await read_sha(client, "tls-blob", 3 * MiB + 7, 2 * MiB)
        assert digest == sha256(data[3 * MiB + 7 : 5 * MiB + 7])
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_client_trusting_another_ca_is_refused_with_a_clear_error(tls_node):
    from twisted.internet import reactor

    proc, _tls, tmp = tls_node
    other = make_tls(tmp / "other-ca", label="other")
    client = StorageClient(reactor, "s1", other.connect(proc.port), proc.secret())
    try:
        with pytest.raises(NodeUnavailable, match="certificate verify failed"):
            await client.stat("tls-blob")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_client_without_trust_roots_does_not_trust_a_private_ca(tls_node):
    """No ``trustRoots``: the platform's CAs, which never signed ours, so no
    unverified TLS by default."""
    from twisted.internet import reactor

    proc, _tls, _ = tls_node
    client = StorageClient(reactor, "s1", f"tls:127.0.0.1:{proc.port}", proc.secret())
    try:
        with pytest.raises(NodeUnavailable, match="certificate verify failed"):
            await client.stat("tls-blob")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_plain_tcp_client_on_the_tls_port_fails_at_once_and_clearly(tls_node):
    from twisted.internet import reactor

    proc, _tls, _ = tls_node
    # A long connect timeout: the failure must come from the server, not a timer.
    client = StorageClient(
        reactor, "s1", f"tcp:127.0.0.1:{proc.port}", proc.secret(), connect_timeout=60
    )
    try:
        with pytest.raises(NodeUnavailable, match=r"during the handshake.*TLS port reached"):
            await client.stat("tls-blob")
    finally:
        await client.close()
    assert proc.proc.poll() is None


def _python_tls_client(ca_pem, port: int, version: ssl.TLSVersion) -> str:
    """Handshake with only ``version`` offered; the version negotiated."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca_pem))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old versions
    ctx.minimum_version = version
    ctx.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        return conn.version()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused_and_1_2_and_1_3_are_accepted(tls_node):
    """A client offering only TLS 1.0 or 1.1 gets no session.  (The OpenSSL
    of pyOpenSSL here refuses them even when allowed, so the 1.2 minimum of
    the server's options is checked in process below.)"""
    proc, tls, _ = tls_node
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError):
            _python_tls_client(tls.ca_pem, proc.port, old)
    assert _python_tls_client(tls.ca_pem, proc.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _python_tls_client(tls.ca_pem, proc.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert proc.proc.poll() is None


@pytest_twisted.ensureDeferred
async def test_copy_between_tls_servers_uses_the_tls_endpoint(tls_node):
    """``copy`` hands a peer's registered endpoint to the receiving server,
    which then connects with TLS itself (same CA directory on every host)."""
    from twisted.internet import reactor

    proc, tls, tmp = tls_node
    second = StorageProcess(tmp, "s2", tls=tls)
    second.secret_file = proc.secret_file
    second.start()
    data = pattern(3 * MiB + 1, seed=2)
    source = proc.client(reactor)
    target = second.client(reactor)
    try:
        await write_blob(source, "copied", data)
        info = await target.copy_from("copied", proc.endpoint)
        assert info.size == len(data)
        assert await read_sha(target, "copied") == (sha256(data), len(data))
    finally:
        await source.close()
        await target.close()
        second.stop()


# -- in-process: what the transports look like under TLS ----------------------


@pytest.fixture
def in_process_tls(tmp_path):
    from twisted.internet import reactor

    tls = make_tls(tmp_path / "tls")
    port = free_port()
    server = pytest_twisted.blockon(
        start_storage_server(reactor, tls.listen(port), str(tmp_path / "data"), "s1", b"k" * 32)
    )
    client = StorageClient(reactor, "s1", tls.connect(port), b"k" * 32)
    yield server, client
    pytest_twisted.blockon(client.close())
    pytest_twisted.blockon(server.stop())


def _nodelay(tcp) -> int:
    return tcp.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest_twisted.ensureDeferred
async def test_tune_transport_reaches_the_tcp_transport_under_tls(in_process_tls):
    server, client = in_process_tls
    await client.health()
    (server_conn,) = server.factory.connections
    (client_conn,) = client._conns
    # A server reads more per turn: an upload's batch is 1 MiB plus headers.
    reads = ((server_conn, storage_server.RECEIVE_SIZE), (client_conn, framing.TRANSPORT_BUFFER))
    for proto, read_size in reads:
        tcp = framing.tcp_transport(proto.transport)
        assert tcp is not None and tcp is not proto.transport  # the TLS wrapper is above
        assert tcp.bufferSize == read_size
        assert tcp.SEND_LIMIT >= framing.TRANSPORT_BUFFER
        assert _nodelay(tcp)


@pytest_twisted.ensureDeferred
async def test_server_tls_context_refuses_tls_1_0_and_1_1(in_process_tls):
    """Twisted's CertificateOptions default (TLS 1.2 minimum), as configured
    by an ``ssl:`` endpoint without ``sslmethod``."""
    server, client = in_process_tls
    await client.health()
    (server_conn,) = server.factory.connections
    handle = server_conn.transport.getHandle()
    assert handle.get_protocol_version() >= SSL.TLS1_2_VERSION
    # The context is frozen once used; read its option mask through OpenSSL.
    options = _openssl.SSL_get_options(handle._ssl)
    assert options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1
    assert not options & SSL.OP_NO_TLSv1_2


class PausingConsumer(DrainConsumer):
    """Pauses the read after ``pause_at`` bytes until told to resume."""

    def __init__(self, pause_at: int) -> None:
        super().__init__()
        self.pause_at = pause_at
        self.paused: defer.Deferred = defer.Deferred()

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.count >= self.pause_at and not self.paused.called:
            self.producer.pauseProducing()
            self.paused.callback(self.count)


async def _turns(n: int, delay: float = 0.0) -> None:
    from twisted.internet import reactor, task

    for _ in range(n):
        await task.deferLater(reactor, delay, lambda: None)


async def _wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the reactor (a condition wait, not a fixed sleep)."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached"
        await _turns(1, 0.01)


def _server_stream(server):
    return next((c._read for c in server.factory.connections if c._read is not None), None)


@pytest_twisted.ensureDeferred
async def test_a_paused_reader_pauses_the_server_through_tls(in_process_tls):
    """Backpressure across the TLS wrapper: with the consumer paused the
    server's read stream is paused by the TCP transport under TLS and sends
    no more than socket buffers hold."""
    server, client = in_process_tls
    size = 96 * MiB
    data = pattern(size, seed=3)
    await write_blob(client, "big", data, chunk=MiB)
    sink = PausingConsumer(4 * MiB)
    reading = client.read("big", 0, None, sink)
    try:
        await sink.paused
        await _wait_for(
            lambda: _server_stream(server) is not None and _server_stream(server).paused
        )
        stream = _server_stream(server)
        conn = next(c for c in server.factory.connections if c._read is stream)
        tcp = framing.tcp_transport(conn.transport)
        assert len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen <= 3 * MiB
        await _turns(50, 0.01)  # ample time to send everything, were it not paused
        assert stream.sent < size // 2  # kernel socket buffers hold the rest, not us
        assert sink.count <= 6 * MiB  # one socket read past the pause, not the stream
    finally:
        if sink.producer is not None:
            sink.producer.resumeProducing()
    assert await reading == size
    assert sink.sha.hexdigest() == sha256(data)


@pytest_twisted.ensureDeferred
async def test_closing_a_client_with_a_paused_tls_read_does_not_hang(in_process_tls):
    """A clean TLS close waits for the peer's close_notify, which a paused
    read never lets through: close() cuts connections that are busy."""
    _server, client = in_process_tls
    await write_blob(client, "big", pattern(48 * MiB, seed=5), chunk=MiB)
    sink = PausingConsumer(2 * MiB)
    reading = client.read("big", 0, None, sink)
    await sink.paused
    from twisted.internet import reactor

    await client.close().addTimeout(10, reactor)
    with pytest.raises(NodeUnavailable):
        await reading


# -- a real front end over TLS -------------------------------------------------


def test_front_end_uploads_and_downloads_through_tls_storage(tmp_path):
    """``twistd -n wsfront --storage s1=tls:...`` and curl over HTTP."""
    curl = require_tool("curl")
    tls = make_tls(tmp_path / "tls")
    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cluster.storage = [StorageProcess(tmp_path, f"s{i}", tls=tls) for i in (1, 2, 3)]
    try:
        cluster.start()
        fe = cluster.a.start()
        data = pattern(5 * MiB + 3, seed=4)
        src = tmp_path / "upload.bin"
        src.write_bytes(data)
        url = f"http://127.0.0.1:{fe.http_port}/tls-file.bin"
        auth = f"{USER}:{PASSWORD}"
        put = subprocess.run(
            [curl, "-sS", "-f", "-u", auth, "-T", str(src), url], capture_output=True, timeout=60
        )
        assert put.returncode == 0, put.stderr
        got = subprocess.run([curl, "-sS", "-f", "-u", auth, url], capture_output=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert sha256(got.stdout) == sha256(data)
        # Stored on two replicas, both reached through their TLS listeners.
        status = json.loads(cluster.wsfs("--json", "status"))
        assert status["under_replicated"] == 0 and status["files"] == 1
        assert all(n["endpoint"].startswith("tls:") and n["state"] == "up" for n in status["nodes"])
    finally:
        cluster.stop()
