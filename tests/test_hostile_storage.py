"""A real ``twistd -n wsstorage`` process against hostile peers on its port.

The storage tier faces only front ends, yet anyone who reaches its port
must be dropped before any operation unless it proves the cluster secret
on a fresh nonce.  Each case talks raw frames over TCP; afterwards a real
``StorageClient`` still reads the stored blob back with its sha256 and the
process is still alive.  (In-memory unit tests of the same rules live in
``tests/test_storage_server.py``; these add the real process and socket.)
"""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.storage_procs import DrainConsumer, StorageProcess
from tests.transfer_env import sha256
from wsstorage import auth, framing
from wsstorage.errors import BlobNotFound, ProtocolError

BLOB = "b" + "5e" * 16


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from twisted.internet import reactor

    proc = StorageProcess(tmp_path_factory.mktemp("wsstorage")).start()
    client = proc.client(reactor)
    data = os.urandom(600 * 1024)

    async def store():
        writer = await client.write(BLOB, 1, 0, {"owner": "test"})
        writer.write(data)
        await writer.commit()

    pytest_twisted.blockon(defer.ensureDeferred(store()))
    yield proc, client, sha256(data)
    pytest_twisted.blockon(defer.ensureDeferred(client.close()))
    proc.stop()


async def _still_fine(node) -> None:
    proc, client, digest = node
    assert proc.proc.poll() is None, "the storage server died"
    sink = DrainConsumer()
    await client.read(BLOB, 0, None, sink)
    assert sink.sha.hexdigest() == digest


class FramePeer(Protocol):
    """A raw wire-protocol peer: sends bytes, decodes what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()
        self._waiters: list[tuple[int, defer.Deferred]] = []

    def frames(self) -> list:
        decoder = framing.FrameDecoder()
        decoder.feed(self.received)
        out = []
        try:
            while (frame := decoder.next_frame()) is not None:
                out.append(frame)
        except ProtocolError:
            out.append(("undecodable", 0, {}))
        return out

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        have = len(self.frames())
        ready = [(n, d) for n, d in self._waiters if have >= n]
        self._waiters = [(n, d) for n, d in self._waiters if have < n]
        for _, d in ready:
            d.callback(None)

    def connectionLost(self, reason=None) -> None:
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.callback(None)
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    async def frame(self, index: int):
        """Frame number ``index`` (0-based) once it arrived (10 s at most)."""
        from twisted.internet import reactor

        if len(self.frames()) <= index and not self.closed.called:
            d: defer.Deferred = defer.Deferred()
            self._waiters.append((index + 1, d))
            await d.addTimeout(10, reactor)
        frames = self.frames()
        assert len(frames) > index, f"closed after {frames}"
        return frames[index]

    async def all_until_closed(self) -> list:
        from twisted.internet import reactor

        await self.closed.addTimeout(10, reactor)
        return self.frames()


async def _open(proc) -> FramePeer:
    from twisted.internet import reactor

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proc.port)
    return await connectProtocol(endpoint, FramePeer())


def _hello(nonce: str) -> bytes:
    return framing.encode_control(framing.HELLO, 0, {"version": framing.VERSION, "nonce": nonce})


DELETE = framing.encode_control(framing.REQUEST, 1, {"op": "delete", "blob": BLOB})


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 64,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        framing.encode_header(framing.HELLO, 0, 2**32 - 1),
        framing.encode_header(framing.DATA, 0, framing.MAX_DATA + 1),
        framing.encode_header(framing.HELLO, 0, 5) + b"nope!",
        framing.encode_header(framing.HELLO, 0, 2) + b"[]",
        framing.encode_header(77, 0, 0),
        framing.encode_control(framing.REQUEST, 1, {"op": "delete", "blob": BLOB}),
        framing.encode_control(framing.AUTH, 0, {"proof": "00" * 32}) + DELETE,
    ],
    ids=[
        "zeros",
        "http",
        "ssh",
        "frame-of-4-GiB",
        "data-over-cap",
        "not-json",
        "json-array",
        "unknown-type",
        "request-before-hello",
        "auth-before-hello",
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_gets_an_error_frame_and_the_connection_is_dropped(node, garbage):
    proc, _client, _digest = node
    raw = await _open(proc)
    raw.send(garbage)
    frames = await raw.all_until_closed()
    assert [(t, body["code"]) for t, _, body in frames] == [(framing.ERROR, "protocol")]
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_oversized_frame_is_refused_from_its_header_without_waiting_for_the_body(node):
    proc, _client, _digest = node
    raw = await _open(proc)
    raw.send(framing.encode_header(framing.DATA, 1, 2**31) + b"x" * 1000)
    frames = await raw.all_until_closed()  # no 2 GiB ever had to arrive
    assert frames[0][0] == framing.ERROR
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_client_without_the_secret_is_dropped_before_any_operation(node):
    proc, _client, _digest = node
    raw = await _open(proc)
    nonce = auth.new_nonce()
    raw.send(_hello(nonce))
    ftype, _, challenge = await raw.frame(0)
    assert ftype == framing.CHALLENGE
    wrong = auth.client_proof(b"not-the-cluster-secret!!", nonce, challenge["nonce"])
    # The delete is pipelined right behind the failed AUTH: it must never run.
    raw.send(framing.encode_control(framing.AUTH, 0, {"proof": wrong}) + DELETE)
    frames = await raw.all_until_closed()
    assert [(t, b.get("code")) for t, _, b in frames[1:]] == [(framing.ERROR, "auth_failed")]
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_replayed_handshake_is_refused_and_its_request_never_runs(node):
    proc, _client, _digest = node
    secret = proc.secret()
    # A front end's genuine handshake, captured on the wire.
    first = await _open(proc)
    nonce = auth.new_nonce()
    first.send(_hello(nonce))
    _, _, challenge = await first.frame(0)
    captured_auth = framing.encode_control(
        framing.AUTH, 0, {"proof": auth.client_proof(secret, nonce, challenge["nonce"])}
    )
    first.send(captured_auth)
    assert (await first.frame(1))[0] == framing.READY
    first.transport.loseConnection()
    # The attacker replays it byte for byte on a new connection.
    replay = await _open(proc)
    replay.send(_hello(nonce))
    _, _, fresh = await replay.frame(0)
    assert fresh["nonce"] != challenge["nonce"]
    replay.send(captured_auth + DELETE)
    frames = await replay.all_until_closed()
    assert [(t, b.get("code")) for t, _, b in frames[1:]] == [(framing.ERROR, "auth_failed")]
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_reflecting_the_servers_own_proof_is_refused(node):
    proc, _client, _digest = node
    raw = await _open(proc)
    raw.send(_hello(auth.new_nonce()))
    _, _, challenge = await raw.frame(0)
    raw.send(framing.encode_control(framing.AUTH, 0, {"proof": challenge["proof"]}) + DELETE)
    frames = await raw.all_until_closed()
    assert [(t, b.get("code")) for t, _, b in frames[1:]] == [(framing.ERROR, "auth_failed")]
    await _still_fine(node)


@pytest.mark.parametrize(
    "nonce",
    ["", "00", "zz" * 32, "a" * 10000, None, 12],
    ids=["empty", "short", "not-hex", "huge", "null", "number"],
)
@pytest_twisted.ensureDeferred
async def test_hello_without_a_valid_nonce_is_dropped(node, nonce):
    proc, _client, _digest = node
    raw = await _open(proc)
    raw.send(framing.encode_control(framing.HELLO, 0, {"version": framing.VERSION, "nonce": nonce}))
    frames = await raw.all_until_closed()
    assert [(t, b["code"]) for t, _, b in frames] == [(framing.ERROR, "protocol")]
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_hello_leaves_the_server_serving(node):
    """What holds today: the peer is cut off and the process keeps serving."""
    proc, _client, _digest = node
    raw = await _open(proc)
    body = b"[" * 200_000
    raw.send(framing.encode_header(framing.HELLO, 0, len(body)) + body)
    await raw.all_until_closed()
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_hello_gets_a_protocol_error_frame(node):
    proc, _client, _digest = node
    raw = await _open(proc)
    body = b"[" * 200_000
    raw.send(framing.encode_header(framing.HELLO, 0, len(body)) + body)
    frames = await raw.all_until_closed()
    assert [(t, b["code"]) for t, _, b in frames] == [(framing.ERROR, "protocol")]


def test_a_dropped_peer_still_sending_reads_its_error_frame_and_a_clean_close(node):
    """A peer the server drops while its bytes still arrive (a frame over
    the cap, 8 MiB behind it): the server closed with them unread, so the
    kernel answered with a reset, which could discard the ERROR frame
    before the peer read it (the nested-HELLO test above failed that way
    now and then).  The server now ends only its side and reads on."""
    proc, _client, _digest = node
    with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as s:
        s.sendall(framing.encode_header(framing.AUTH, 0, framing.MAX_CONTROL))
        s.sendall(b"x" * (8 << 20))
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    decoder = framing.FrameDecoder()
    decoder.feed(got)
    frame = decoder.next_frame()
    assert frame is not None and frame[0] == framing.ERROR
    assert frame[2]["code"] == "protocol" and decoder.next_frame() is None


@pytest.mark.parametrize("stage", ["before-hello", "after-hello"])
@pytest_twisted.ensureDeferred
async def test_a_large_frame_before_the_handshake_is_refused_without_its_body(node, stage):
    """Before AUTH succeeds a peer gets MAX_PREAUTH bytes a frame, not 1 MiB."""
    proc, _client, _digest = node
    raw = await _open(proc)
    frames_before = 0
    if stage == "after-hello":
        raw.send(_hello(auth.new_nonce()))
        assert (await raw.frame(0))[0] == framing.CHALLENGE
        frames_before = 1
    # A 1 MiB AUTH announced; only 1000 bytes of it are ever sent.
    raw.send(framing.encode_header(framing.AUTH, 0, framing.MAX_CONTROL) + b"x" * 1000)
    frames = await raw.all_until_closed()
    assert [(t, b["code"]) for t, _, b in frames[frames_before:]] == [(framing.ERROR, "protocol")]
    assert f"exceeds the {framing.MAX_PREAUTH}-byte cap" in frames[-1][2]["message"]
    assert f"before the handshake is complete exceeds the {framing.MAX_PREAUTH}" in proc.log()
    await _still_fine(node)


async def _authenticated(proc) -> FramePeer:
    """A raw peer that proved the cluster secret (READY received)."""
    raw = await _open(proc)
    nonce = auth.new_nonce()
    raw.send(_hello(nonce))
    _, _, challenge = await raw.frame(0)
    proof = auth.client_proof(proc.secret(), nonce, challenge["nonce"])
    raw.send(framing.encode_control(framing.AUTH, 0, {"proof": proof}))
    assert (await raw.frame(1))[0] == framing.READY
    return raw


def _put(rid: int, blob: str, length: object) -> bytes:
    body = {"op": "put", "blob": blob, "epoch": 1, "meta": {}, "length": length}
    return framing.encode_control(framing.REQUEST, rid, body)


@pytest.mark.parametrize(
    "frames",
    [
        _put(1, "b" + "61" * 16, 300 * 1024),
        _put(1, "b" + "62" * 16, 10) + framing.encode_header(framing.DATA, 1, 11) + b"y" * 11,
        _put(1, "b" + "63" * 16, 10)
        + framing.encode_header(framing.DATA, 1, 4)
        + b"y" * 4
        + DELETE,
        _put(1, "b" + "64" * 16, 10) + framing.encode_header(framing.DATA, 2, 10) + b"y" * 10,
        _put(1, "b" + "67" * 16, "10") + framing.encode_header(framing.DATA, 1, 10) + b"y" * 10,
    ],
    ids=[
        "over-the-cap",
        "more-data-than-announced",
        "request-in-its-data",
        "data-of-another-id",
        "length-not-an-integer",
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_put_whose_data_does_not_add_up_drops_the_connection_and_stores_nothing(
    node, frames
):
    proc, client, _digest = node
    raw = await _authenticated(proc)
    raw.send(frames)
    received = await raw.all_until_closed()
    assert received[-1][0] == framing.ERROR and received[-1][2]["code"] == "protocol"
    blob = frames[framing.HEADER_SIZE :].split(b'"blob":"')[1][:33].decode()
    with pytest.raises(BlobNotFound):
        await client.stat(blob)
    await _still_fine(node)


@pytest_twisted.ensureDeferred
async def test_a_put_inside_a_write_stream_is_refused_and_its_data_drops_the_connection(node):
    proc, client, _digest = node
    raw = await _authenticated(proc)
    streamed, put = "b" + "65" * 16, "b" + "66" * 16
    write = {"op": "write", "blob": streamed, "epoch": 1, "offset": 0, "meta": {}}
    raw.send(framing.encode_control(framing.REQUEST, 1, write))
    assert (await raw.frame(2))[:2] == (framing.REPLY, 1)
    raw.send(_put(2, put, 10) + framing.encode_header(framing.DATA, 2, 10) + b"y" * 10)
    received = await raw.all_until_closed()
    assert [(f[0], f[1], f[2]["code"]) for f in received[3:]] == [
        (framing.ERROR, 2, "bad_request"),
        (framing.ERROR, 0, "protocol"),
    ]
    with pytest.raises(BlobNotFound):
        await client.stat(put)
    await _still_fine(node)
