"""Real servers over real TCP on 127.0.0.1 with the real blob store on disk."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python import threadable

from tests.storage_procs import StorageProcess, pattern, read_sha, write_blob
from wsstorage import framing
from wsstorage import server as server_module
from wsstorage.client import StorageClient
from wsstorage.errors import (
    AuthenticationFailed,
    BlobSealed,
    InvalidOffset,
    NodeUnavailable,
    StaleEpoch,
)
from wsstorage.records import store_identity
from wsstorage.service import start_storage_server

SECRET = b"tcp-test-secret-0123456789abcdef"


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    running = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "data"), "s1", SECRET
    )
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def client(server):
    c = StorageClient(reactor, "s1", server.client_endpoint, SECRET, idle_timeout=10)
    yield c
    await c.close()


@pytest_twisted.ensureDeferred
async def test_blob_of_several_mib_round_trips_over_tcp(client) -> None:
    data = pattern(5 * 1024 * 1024 + 123)
    info = await write_blob(client, "big", data)
    assert info.size == len(data) and info.sealed
    sha, n = await read_sha(client, "big")
    assert (sha, n) == (hashlib.sha256(data).hexdigest(), len(data))
    sha, n = await read_sha(client, "big", 1_000_001, 2_000_000)
    assert sha == hashlib.sha256(data[1_000_001:3_000_001]).hexdigest()


@pytest_twisted.ensureDeferred
async def test_writer_sends_data_frames_straight_to_an_idle_socket(client, monkeypatch) -> None:
    """Over plain TCP writes are queued as headers and views of the
    caller's bytes for one sendmsg, leaving nothing joined in the transport
    (writeSequence would queue a copy); once the socket is full the rest
    waits in the writer's backlog, still views, not copied into the
    transport; the producer is paused while it exceeds the transport's
    bufferSize, and the commit goes behind it, in order."""
    data = pattern(64 * 1024 * 1024 + 5)
    w = await client.write("direct", 1, 0, {})
    transport = w.conn.transport

    class Producer:
        paused = False
        resumed = defer.Deferred()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            if not self.resumed.called:
                self.resumed.callback(None)

        def stopProducing(self) -> None:
            pass

    producer = Producer()
    w.registerProducer(producer, True)
    gathered = []
    real_sendmsg = socket.socket.sendmsg

    def counting_sendmsg(sock, buffers, *a):
        buffers = list(buffers)
        gathered.append(sum(len(b) for b in buffers))
        return real_sendmsg(sock, buffers, *a)

    monkeypatch.setattr(socket.socket, "sendmsg", counting_sendmsg)
    w.write(data[:8192])
    assert framing.transport_idle(transport)
    # No reactor turn: the socket fills (how soon depends on the kernel's
    # buffers and the server process's pace), then the backlog grows.
    for i in range(8192, len(data), 65536):
        w.write(data[i : i + 65536])
        if w._backlog_bytes > transport.bufferSize:
            data = data[: i + 65536]
            break
    assert framing.transport_idle(transport)  # nothing joined into the transport
    assert w._backlog_bytes > transport.bufferSize and producer.paused
    assert all(
        isinstance(part, memoryview) or len(part) == framing.HEADER.size for part in w._backlog
    )
    flushed = w.flush()  # its request goes behind the backlog, not before
    assert framing.transport_idle(transport)
    assert await flushed == len(data)
    await producer.resumed  # the server read the backlog: the producer may go on
    assert not w._backlog and "doWrite" not in vars(transport)
    info = await w.commit()
    assert info.size == len(data)
    # The frames went out gathered: a sendmsg of the first turn's queue, all
    # of its 8 KiB and headers, and at least one more of the big turn.
    assert gathered and gathered[0] >= 8192 and len(gathered) >= 2
    assert await read_sha(client, "direct") == (hashlib.sha256(data).hexdigest(), len(data))


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_with_a_writer_backlog_closes_once_it_is_sent(client) -> None:
    """loseConnection() waits for what the transport holds; with the rest
    of a write waiting in the writer instead, the connection still closes
    once that is sent, not never."""
    data = pattern(8 * 1024 * 1024)
    w = await client.write("closing", 1, 0, {})
    for i in range(0, len(data), 65536):  # no reactor turn: the socket fills
        w.write(data[i : i + 65536])
    assert w._backlog
    conn = w.conn
    conn.transport.loseConnection()
    await conn.lost
    assert "doWrite" not in vars(conn.transport)


class _RecvSizeRecorder:
    """A consumer that records the storage connection's socket read size at
    each write (``sizes_reads`` as given)."""

    def __init__(self, sizes_reads: bool) -> None:
        self.sizes_reads = sizes_reads
        self.producer = None
        self.sizes: set[int] = set()
        self.count = 0

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data) -> None:
        self.count += len(data)
        self.sizes.add(framing.tcp_transport(self.producer.proto.transport).bufferSize)


@pytest_twisted.ensureDeferred
async def test_only_a_consumer_that_sizes_reads_starts_with_small_socket_reads(client) -> None:
    """A read starts its connection at READ_FIRST_RECV only for a consumer
    that resizes the reads itself (the front end's downloads); any other (a
    repair's copy into a blob) keeps the connection's full read size, and
    the pooled connection gets it back either way."""
    from wsstorage.client import READ_FIRST_RECV

    data = pattern(2 * 1024 * 1024)
    await write_blob(client, "rs", data)
    plain = _RecvSizeRecorder(sizes_reads=False)
    assert await client.read("rs", 0, None, plain) == len(data) == plain.count
    assert plain.sizes == {framing.TRANSPORT_BUFFER}
    sizing = _RecvSizeRecorder(sizes_reads=True)
    assert await client.read("rs", 0, None, sizing) == len(data) == sizing.count
    assert sizing.sizes == {READ_FIRST_RECV}
    assert [c.transport.bufferSize for c in client._idle] == [framing.TRANSPORT_BUFFER]


@pytest_twisted.ensureDeferred
async def test_write_flush_fence_and_stale_epoch_over_tcp(client) -> None:
    w, durable = await write_blob(client, "b1", b"a" * 300_000, epoch=1, commit=False)
    assert durable == 300_000
    failed = w.when_failed()
    info = await client.fence("b1", 2, 200_000)
    assert (info.epoch, info.size) == (2, 200_000)
    w.write(b"too late")
    with pytest.raises(StaleEpoch):
        await failed
    await w.abort()
    with pytest.raises(StaleEpoch):
        await client.commit("b1", 1)
    sealed = await client.commit("b1", 2)
    assert (sealed.size, sealed.state) == (200_000, "sealed")
    with pytest.raises(BlobSealed):
        await client.write("b1", 2, 0, {})
    with pytest.raises(InvalidOffset):
        await read_sha(client, "b1", 0, 200_001)


class _ReactorThreadCounters:
    """Stands in for ``server._ProcessCounters``: notes every change of the
    byte counters made outside the reactor thread (a ``+=`` there races
    with the reactor's own)."""

    def __init__(self) -> None:
        self._written = 0
        self.read = 0
        self.off_thread: list[int] = []

    @property
    def written(self) -> int:
        return self._written

    @written.setter
    def written(self, value: int) -> None:
        if not threadable.isInIOThread():
            self.off_thread.append(value)
        self._written = value


@pytest_twisted.ensureDeferred
async def test_put_bytes_are_counted_in_the_reactor_thread(client, monkeypatch) -> None:
    counters = _ReactorThreadCounters()
    monkeypatch.setattr(server_module, "_ProcessCounters", counters)
    sizes = [10, 70_000, 256 * 1024]
    for i, n in enumerate(sizes):
        assert (await client.put(f"p{i}", 1, {}, pattern(n))).size == n
    await write_blob(client, "streamed", pattern(5000))
    assert counters.off_thread == []
    assert counters.written == sum(sizes) + 5000


@pytest_twisted.ensureDeferred
async def test_list_health_and_delete_over_tcp(client) -> None:
    for i in range(20):
        await write_blob(client, f"blob{i}", pattern(i * 1000, seed=i))
    blobs = await client.list_blobs()
    assert sorted(b.blob_id for b in blobs) == sorted(f"blob{i}" for i in range(20))
    health = await client.health()
    assert health.name == "s1" and health.blobs == 20 and health.free_bytes > 0
    assert health.version == framing.VERSION
    await client.delete("blob3")
    assert len(await client.list_blobs()) == 19


@pytest_twisted.ensureDeferred
async def test_copy_from_a_peer_moves_bytes_server_to_server(tmp_path, server, client) -> None:
    peer = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "peer"), "s2", SECRET
    )
    try:
        peer_client = StorageClient(reactor, "s2", peer.client_endpoint, SECRET)
        data = pattern(3 * 1024 * 1024 + 7, seed=9)
        src = await write_blob(peer_client, "rep", data, epoch=5)
        info = await client.copy_from("rep", peer.client_endpoint)
        assert (info.size, info.epoch, info.meta, info.state) == (
            len(data),
            5,
            src.meta,
            "sealed",
        )
        sha, _ = await read_sha(client, "rep")
        assert sha == hashlib.sha256(data).hexdigest()
        await peer_client.close()
    finally:
        await peer.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_secret_over_tcp_is_refused_and_stores_nothing(server) -> None:
    bad = StorageClient(reactor, "s1", server.client_endpoint, b"not-the-cluster-secret!!")
    with pytest.raises(AuthenticationFailed):
        await bad.health()
    assert list(server.store.list_blobs()) == []


@pytest_twisted.ensureDeferred
async def test_garbage_on_the_socket_gets_an_error_frame_and_a_close(server) -> None:
    addr = server.port.getHost()

    def talk() -> bytes:
        with socket.create_connection((addr.host, addr.port), 5) as s:
            s.sendall(b"\x00" * 64)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    from twisted.internet import threads

    answer = await threads.deferToThread(talk)
    [(ftype, _, body)] = list(framing.FrameDecoder().frames(answer))
    assert (ftype, body["code"]) == (framing.ERROR, "protocol")


@pytest_twisted.ensureDeferred
async def test_dead_server_is_node_unavailable(server) -> None:
    port = server.port.getHost().port
    await server.stop()
    c = StorageClient(reactor, "s1", f"tcp:127.0.0.1:{port}", SECRET, connect_timeout=2)
    with pytest.raises(NodeUnavailable):
        await c.stat("b1")


# -- twistd subprocess ------------------------------------------------------


@pytest.fixture
def storage_process(tmp_path):
    p = StorageProcess(tmp_path)
    yield p
    p.stop()


@pytest_twisted.ensureDeferred
async def test_twistd_server_creates_its_secret_and_serves(storage_process) -> None:
    storage_process.start()
    assert os.stat(storage_process.secret_file).st_mode & 0o777 == 0o600
    assert "created secret file" in storage_process.log()
    c = storage_process.client(reactor)
    data = pattern(2 * 1024 * 1024, seed=3)
    await write_blob(c, "b1", data)
    sha, _ = await read_sha(c, "b1")
    assert sha == hashlib.sha256(data).hexdigest()
    await c.close()


@pytest_twisted.ensureDeferred
async def test_sigstopped_server_fails_a_stalled_read_within_the_timeout(storage_process) -> None:
    storage_process.start()
    # Written with a patient client: the seal's fsync of 64 MiB can keep the
    # server silent for seconds on a loaded disk; only the read is timed.
    writer = storage_process.client(reactor, idle_timeout=60.0)
    try:
        await write_blob(writer, "b1", pattern(64 * 1024 * 1024, seed=1))
    finally:
        await writer.close()
    c = storage_process.client(reactor, idle_timeout=2.0)

    class Stopper:
        """Freezes the server as soon as the first bytes arrive."""

        def __init__(self) -> None:
            self.count = 0

        def registerProducer(self, p, s) -> None:
            pass

        def unregisterProducer(self) -> None:
            pass

        def write(self, data: bytes) -> None:
            if self.count == 0:
                os.kill(storage_process.proc.pid, signal.SIGSTOP)
            self.count += len(data)

    started = reactor.seconds()
    try:
        with pytest.raises(NodeUnavailable, match="did not answer"):
            await c.read("b1", 0, None, Stopper())
    finally:
        os.kill(storage_process.proc.pid, signal.SIGCONT)
    assert reactor.seconds() - started < 6
    await c.close()


def test_empty_secret_file_is_a_clear_startup_error(tmp_path) -> None:
    import subprocess

    from tests.storage_procs import twistd_storage_argv
    from tests.support import python_env

    (tmp_path / "secret").write_bytes(b"\n")
    out = subprocess.run(
        twistd_storage_argv(
            "--listen", "tcp:0", "--data", str(tmp_path / "d"), "--name", "s1",
            "--secret-file", str(tmp_path / "secret"),
        ),
        env=python_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "secret file" in out.stdout + out.stderr and "is empty" in out.stdout + out.stderr


def test_missing_options_are_a_usage_error(tmp_path) -> None:
    import subprocess

    from tests.storage_procs import twistd_storage_argv
    from tests.support import python_env

    out = subprocess.run(
        twistd_storage_argv("--data", str(tmp_path)),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "missing required option(s): --listen, --name, --secret-file" in out.stderr + out.stdout


async def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the reactor (a condition wait, not a fixed sleep)."""
    from twisted.internet import task

    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached"
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_paused_consumer_pauses_the_server_and_bounds_its_buffers(server, client) -> None:
    size = 48 * 1024 * 1024
    data = pattern(size, seed=4)
    await write_blob(client, "slow", data, chunk=1024 * 1024)
    del data

    class Paused:
        def __init__(self) -> None:
            self.count = 0
            self.sha = hashlib.sha256()
            self.producer = None

        def registerProducer(self, producer, streaming) -> None:
            self.producer = producer

        def unregisterProducer(self) -> None:
            self.producer = None

        def write(self, chunk: bytes) -> None:
            if self.count == 0:
                self.producer.pauseProducing()
            self.count += len(chunk)
            self.sha.update(chunk)

    consumer = Paused()
    d = client.read("slow", 0, None, consumer)

    def server_stream():
        for conn in server.factory.connections:
            if conn._read is not None:
                return conn._read
        return None

    await wait_for(lambda: server_stream() is not None and server_stream().paused)
    stream = server_stream()
    transport = next(c for c in server.factory.connections if c._read is stream).transport
    buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    assert buffered <= 3 * 1024 * 1024
    assert stream.sent < size // 2  # kernel socket buffers hold the rest, not us
    assert consumer.count <= 2 * 1024 * 1024  # one socket read, not the stream
    consumer.producer.resumeProducing()
    assert await d == size
    assert consumer.sha.hexdigest() == hashlib.sha256(pattern(size, seed=4)).hexdigest()


@pytest_twisted.ensureDeferred
async def test_an_aborted_transport_is_never_idle_for_a_direct_send(client) -> None:
    """abortConnection() leaves ``connected`` set until the next reactor
    turn: transport_idle must already say no, or a direct sendmsg would put
    bytes on a connection its owner has just aborted."""
    await write_blob(client, "ab", b"x")
    (conn,) = client._idle
    transport = framing.tcp_transport(conn.transport)
    assert framing.transport_idle(transport)
    transport.abortConnection()
    assert transport.connected
    assert not framing.transport_idle(transport)


@pytest_twisted.ensureDeferred
async def test_a_backlog_of_tiny_writes_pauses_its_producer_by_the_parts_it_holds(
    client, monkeypatch
) -> None:
    """Each backlog part (a frame header, a view of one write) costs memory
    beside its bytes: a producer writing 1-byte chunks to a full socket is
    paused once the backlog holds BACKLOG_PARTS parts, long before their
    bytes reach bufferSize, and every byte still arrives once it drains."""
    from wsstorage import client as client_mod

    w = await client.write("tiny", 1, 0, {})
    transport = w.conn.transport

    class Producer:
        paused = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False

        def stopProducing(self) -> None:
            pass

    producer = Producer()
    w.registerProducer(producer, True)
    monkeypatch.setattr(client_mod, "_sendmsg", lambda sock, iov: 0)  # the socket is full
    data = pattern(client_mod.BACKLOG_PARTS)
    written = 0
    while not producer.paused and written < len(data):
        w.write(data[written : written + 1])
        written += 1
    w._send_gathered()
    assert producer.paused
    assert written < client_mod.BACKLOG_PARTS  # two parts per write
    assert w._backlog_bytes < transport.bufferSize
    monkeypatch.undo()
    assert await w.flush() == written
    assert (await w.commit()).size == written
    assert await read_sha(client, "tiny") == (hashlib.sha256(data[:written]).hexdigest(), written)


@pytest_twisted.ensureDeferred
async def test_replies_go_into_an_idle_socket_at_once(client, monkeypatch) -> None:
    """A reply (here a put's and a stat's) is sent into the socket by the
    call that makes it, not left in the transport for the reactor's next
    turn: the client is waiting for it."""
    idle_after = []
    real_send = server_module.StorageServerProtocol._send

    def watching_send(self, ftype, rid, body):
        real_send(self, ftype, rid, body)
        if ftype == framing.REPLY:
            idle_after.append(framing.transport_idle(self.transport))

    monkeypatch.setattr(server_module.StorageServerProtocol, "_send", watching_send)
    info = await client.put("replied", 1, {}, b"x" * 4096)
    assert info.size == 4096 and info.sealed
    assert (await client.stat("replied")).size == 4096
    assert idle_after == [True, True]


@pytest_twisted.ensureDeferred
async def test_connections_dropped_while_the_server_was_stopped_are_no_secret_mismatch(
    storage_process,
) -> None:
    """A client that sent HELLO and gave up while the server was stopped
    (SIGSTOP) is not reported as holding another cluster secret when the
    server resumes and answers it; a client that does hang up on our proof
    still is."""
    from wsstorage import auth
    from wsstorage.errors import AuthenticationFailed

    storage_process.start()
    os.kill(storage_process.proc.pid, signal.SIGSTOP)
    try:
        # The kernel accepts it into the backlog; the server runs nothing.
        with socket.create_connection(("127.0.0.1", storage_process.port)) as s:
            s.sendall(
                framing.encode_control(
                    framing.HELLO, 0, {"version": framing.VERSION, "nonce": auth.new_nonce()}
                )
            )
    finally:
        os.kill(storage_process.proc.pid, signal.SIGCONT)
    await wait_for(lambda: "before the handshake" in storage_process.run_log())
    assert "differs from ours" not in storage_process.run_log()
    c = storage_process.client(reactor)
    assert (await c.health()).name == "s1"
    await c.close()
    wrong = StorageClient(
        reactor, "s1", storage_process.endpoint, b"another-secret-of-enough-length!"
    )
    with pytest.raises(AuthenticationFailed):
        await wrong.health()
    await wrong.close()
    await wait_for(lambda: "differs from ours" in storage_process.run_log())


@pytest_twisted.ensureDeferred
async def test_health_names_the_store_the_server_runs_on(tmp_path, client) -> None:
    """The id and creation time of the data directory's IDENTITY, so that a
    front end notices a server back on a wiped one."""
    identity = json.loads((tmp_path / "data" / "IDENTITY").read_text())
    health = await client.health()
    assert (health.store_id, health.store_created) == (identity["store_id"], identity["created"])


@pytest.mark.parametrize(
    "body, expected",
    [
        ({}, (None, None)),  # a server from before identities
        ({"store_id": "ab" * 16, "store_created": 5}, ("ab" * 16, 5.0)),
        ({"store_id": "ab" * 16, "store_created": "soon"}, ("ab" * 16, None)),
        ({"store_id": "../x\n" * 40, "store_created": 5}, (None, None)),
        ({"store_id": 7, "store_created": 5}, (None, None)),
    ],
)
def test_a_health_answer_without_a_sound_store_id_reads_as_none(body, expected) -> None:
    """Junk from a server never reaches a front end's catalog."""
    got = store_identity(body)
    assert (got["store_id"], got["store_created"]) == expected
