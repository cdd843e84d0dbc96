"""Every operation of the storage server, driven by the real client over iosim.

No sockets, no threads: the server's blocking work runs synchronously
(``run_now``) against an in-memory store, and ``Rig.result`` pumps bytes
until a Deferred fires.
"""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from tests.storage_loopback import SECRET, CollectingConsumer, Rig
from tests.storage_memstore import BLOCK
from wsstorage import auth, failpoints, framing, server
from wsstorage.blobstore import BlobStore
from wsstorage.errors import (
    AuthenticationFailed,
    BadRequest,
    BlobExists,
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    DiskError,
    DiskFull,
    InvalidOffset,
    StaleEpoch,
    StorageError,
)
from wsstorage.fsshims import RecordingFileSystem
from wsstorage.records import SEALED


def write_blob(rig: Rig, blob_id: str, data: bytes, epoch: int = 1, commit: bool = True):
    w = rig.result(rig.client.write(blob_id, epoch, 0, {"inode": 1, "owner": "u"}))
    w.write(data)
    if commit:
        return rig.result(w.commit())
    rig.result(w.flush())
    return w


def read_all(rig: Rig, blob_id: str, offset: int = 0, length: int | None = None) -> bytes:
    c = CollectingConsumer()
    n = rig.result(rig.client.read(blob_id, offset, length, c))
    assert n == len(c.data)
    assert c.unregistered
    return c.data


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def log_text(events: list[dict]) -> str:
    return "\n".join(formatEvent(e) for e in events)


def test_written_blob_reads_back_after_commit_with_its_meta(rig: Rig) -> None:
    data = bytes(range(256)) * 3000
    info = write_blob(rig, "b1", data)
    assert (info.size, info.durable, info.state, info.epoch) == (len(data), len(data), SEALED, 1)
    assert info.meta == {"inode": 1, "owner": "u"}
    assert read_all(rig, "b1") == data
    assert rig.result(rig.client.stat("b1")) == info


def test_read_of_a_range_delivers_exactly_that_range(rig: Rig) -> None:
    data = bytes(range(256)) * 4000
    write_blob(rig, "b1", data)
    assert read_all(rig, "b1", 1000, 300000) == data[1000:301000]
    assert read_all(rig, "b1", len(data), 0) == b""
    assert read_all(rig, "b1", 5) == data[5:]


def test_flush_returns_the_durable_length_of_an_open_blob(rig: Rig) -> None:
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    w.write(b"a" * 1000)
    assert rig.result(w.flush()) == 1000
    assert w.offset == 1000
    info = rig.result(rig.client.stat("b1"))
    assert (info.size, info.durable, info.state) == (1000, 1000, "open")
    rig.result(w.abort())
    assert rig.result(rig.client.stat("b1")).size == 1000


def test_write_at_a_smaller_offset_truncates_then_appends(rig: Rig) -> None:
    write_blob(rig, "b1", b"a" * 100, commit=False)
    w = rig.result(rig.client.write("b1", 1, 40, {}))
    w.write(b"b" * 10)
    info = rig.result(w.commit())
    assert info.size == 50
    assert read_all(rig, "b1") == b"a" * 40 + b"b" * 10


def test_write_beyond_the_end_is_invalid_offset(rig: Rig) -> None:
    write_blob(rig, "b1", b"a" * 100, commit=False)
    with pytest.raises(InvalidOffset):
        rig.result(rig.client.write("b1", 1, 101, {}))
    assert rig.store.blobs["b1"].data == b"a" * 100


def test_read_past_the_end_is_invalid_offset_and_changes_nothing(rig: Rig) -> None:
    write_blob(rig, "b1", b"z" * 10)
    with pytest.raises(InvalidOffset):
        read_all(rig, "b1", 5, 6)
    with pytest.raises(InvalidOffset):
        read_all(rig, "b1", 11)
    assert read_all(rig, "b1") == b"z" * 10


def test_write_to_a_sealed_blob_is_refused_and_the_blob_is_unchanged(rig: Rig) -> None:
    write_blob(rig, "b1", b"sealed")
    with pytest.raises(BlobSealed):
        rig.result(rig.client.write("b1", 1, 0, {}))
    assert read_all(rig, "b1") == b"sealed"


def test_stat_and_delete_of_a_missing_blob_are_not_found(rig: Rig) -> None:
    with pytest.raises(BlobNotFound):
        rig.result(rig.client.stat("nope"))
    with pytest.raises(BlobNotFound):
        rig.result(rig.client.delete("nope"))


def test_delete_removes_a_blob(rig: Rig) -> None:
    write_blob(rig, "b1", b"x")
    assert rig.result(rig.client.delete("b1")) is None
    assert "b1" not in rig.store.blobs


def test_fence_raises_the_epoch_and_truncates(rig: Rig) -> None:
    w = write_blob(rig, "b1", b"x" * 100, epoch=1, commit=False)
    rig.result(w.abort())
    info = rig.result(rig.client.fence("b1", 2, 60))
    assert (info.epoch, info.size) == (2, 60)
    with pytest.raises(StaleEpoch):
        rig.result(rig.client.write("b1", 1, 60, {}))
    with pytest.raises(StaleEpoch):
        rig.result(rig.client.commit("b1", 1))
    with pytest.raises(StaleEpoch):
        rig.result(rig.client.fence("b1", 1, 0))
    with pytest.raises(InvalidOffset):
        rig.result(rig.client.fence("b1", 3, 61))
    assert rig.result(rig.client.commit("b1", 2)).state == SEALED


def test_fence_during_an_open_write_fails_the_stream_with_stale_epoch(rig: Rig) -> None:
    w = write_blob(rig, "b1", b"x" * 100, epoch=1, commit=False)
    failed = w.when_failed()
    rig.result(rig.client.fence("b1", 2, 100))
    w.write(b"late bytes")
    rig.flush()
    with pytest.raises(StaleEpoch):
        rig.result(failed)
    with pytest.raises(StaleEpoch):
        rig.result(w.flush())
    with pytest.raises(StaleEpoch):
        rig.result(w.commit())
    rig.result(w.abort())
    assert rig.store.blobs["b1"].data == b"x" * 100
    # the connection went back to the pool in a usable state
    assert rig.result(rig.client.stat("b1")).epoch == 2
    assert len(rig.endpoint.pumps) == 2


def test_damaged_block_fails_the_read_after_the_good_bytes(rig: Rig) -> None:
    data = bytes(range(256)) * (3 * BLOCK // 256)
    write_blob(rig, "b1", data)
    rig.store.damage("b1", 2)
    c = CollectingConsumer()
    with pytest.raises(ChecksumError):
        rig.result(rig.client.read("b1", 0, None, c))
    assert c.data == data[: 2 * BLOCK]
    assert c.unregistered and c.producer is None
    assert read_all(rig, "b1", 0, 2 * BLOCK) == data[: 2 * BLOCK]


def test_list_streams_many_blobs_in_pages(rig: Rig, monkeypatch) -> None:
    monkeypatch.setattr(server, "LIST_PAGE_BYTES", 2000)
    monkeypatch.setattr(server, "LIST_BATCH", 7)
    for i in range(60):
        write_blob(rig, f"blob{i:03d}", b"x" * i)
    pages = []
    original = server.StorageServerProtocol._send

    def spy(self, ftype, rid, body):
        if ftype == framing.REPLY and "blobs" in body:
            pages.append(len(body["blobs"]))
        original(self, ftype, rid, body)

    monkeypatch.setattr(server.StorageServerProtocol, "_send", spy)
    blobs = rig.result(rig.client.list_blobs())
    assert [b.blob_id for b in blobs] == [f"blob{i:03d}" for i in range(60)]
    assert [b.size for b in blobs] == list(range(60))
    assert len(pages) > 3 and sum(pages) == 60


def test_health_reports_space_blobs_and_version(rig: Rig) -> None:
    write_blob(rig, "b1", b"x")
    h = rig.result(rig.client.health())
    assert (h.name, h.free_bytes, h.total_bytes, h.blobs, h.version) == (
        "s1",
        10**9,
        10**9,
        1,
        framing.VERSION,
    )


def test_full_disk_fails_the_write_stream_and_keeps_committed_blobs(rig: Rig) -> None:
    write_blob(rig, "safe", b"committed")
    w = rig.result(rig.client.write("b2", 1, 0, {}))
    failed = w.when_failed()
    rig.store.full = True
    w.write(b"no room")
    with pytest.raises(DiskFull):
        rig.result(failed)
    rig.store.full = False
    assert read_all(rig, "safe") == b"committed"


def test_copy_pulls_a_sealed_blob_from_a_peer(rig: Rig) -> None:
    peer = Rig()
    data = bytes(range(256)) * 2000
    peer_info = write_blob(peer, "b1", data, epoch=4)
    rig.factory._peer_client = lambda endpoint: peer.client
    d = rig.client.copy_from("b1", "tcp:127.0.0.1:1")
    for _ in range(100):
        rig.flush()
        peer.flush()
    info = rig.result(d)
    assert (info.size, info.epoch, info.state, info.meta) == (
        len(data),
        4,
        SEALED,
        peer_info.meta,
    )
    assert read_all(rig, "b1") == data


def test_copy_refuses_to_overwrite_a_sealed_blob(rig: Rig) -> None:
    write_blob(rig, "b1", b"mine")
    with pytest.raises(BlobExists):
        rig.result(rig.client.copy_from("b1", "tcp:127.0.0.1:1"))
    assert read_all(rig, "b1") == b"mine"


def test_failed_copy_leaves_no_partial_blob(rig: Rig) -> None:
    peer = Rig()
    write_blob(peer, "b1", b"x" * 10, commit=False)
    rig.factory._peer_client = lambda endpoint: peer.client
    d = rig.client.copy_from("b1", "tcp:127.0.0.1:1")
    for _ in range(50):
        rig.flush()
        peer.flush()
    with pytest.raises(BadRequest, match="not sealed"):
        rig.result(d)
    assert "b1" not in rig.store.blobs


def test_copy_onto_a_full_disk_fails_with_disk_full_and_leaves_no_blob(rig: Rig) -> None:
    peer = Rig()
    write_blob(peer, "b1", bytes(range(256)) * 2000)
    rig.factory._peer_client = lambda endpoint: peer.client
    rig.store.full = True
    d = rig.client.copy_from("b1", "tcp:127.0.0.1:1")
    for _ in range(100):
        rig.flush()
        peer.flush()
    with pytest.raises(DiskFull):
        rig.result(d)
    assert "b1" not in rig.store.blobs


def test_path_like_blob_id_is_refused_by_the_client(rig: Rig) -> None:
    for bad in ("../x", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(BadRequest):
            rig.result(rig.client.stat(bad))
        with pytest.raises(BadRequest):
            rig.result(rig.client.write(bad, 1, 0, {}))


def test_write_failpoint_cuts_the_chunk_exactly_at_its_threshold(rig: Rig, monkeypatch) -> None:
    monkeypatch.setattr(server._ProcessCounters, "written", 0)
    monkeypatch.setattr(
        failpoints, "_global", failpoints.Failpoints("storage.write.bytes=raise@1000")
    )
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    failed = w.when_failed()
    w.write(b"a" * 600)
    w.write(b"b" * 600)
    with pytest.raises(StorageError, match="FailpointError"):
        rig.result(failed)
    assert rig.store.blobs["b1"].data == b"a" * 600 + b"b" * 400


def test_write_failpoint_cuts_a_batch_of_frames_at_its_threshold(rig: Rig, monkeypatch) -> None:
    """Frames that arrive together are stored as one batch; the failpoint
    still fires with exactly the bytes before its threshold stored."""
    monkeypatch.setattr(server._ProcessCounters, "written", 0)
    monkeypatch.setattr(
        failpoints, "_global", failpoints.Failpoints("storage.write.bytes=raise@1000")
    )
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    failed = w.when_failed()
    for byte in b"abcd":
        w.write(bytes([byte]) * 300)
    with pytest.raises(StorageError, match="FailpointError"):
        rig.result(failed)
    assert rig.store.blobs["b1"].data == b"a" * 300 + b"b" * 300 + b"c" * 300 + b"d" * 100


def test_write_failpoint_counts_and_cuts_the_bytes_of_puts(rig: Rig, monkeypatch) -> None:
    """A put's bytes count for ``storage.write.bytes`` exactly as a
    stream's do: the point fires inside a put with exactly the bytes before
    its threshold stored, and bytes of earlier puts move the threshold."""
    monkeypatch.setattr(server._ProcessCounters, "written", 0)
    monkeypatch.setattr(
        failpoints, "_global", failpoints.Failpoints("storage.write.bytes=raise@1000")
    )
    assert rig.result(rig.client.put("p1", 1, {}, b"p" * 700)).size == 700
    assert server._ProcessCounters.written == 700
    with pytest.raises(StorageError, match="FailpointError"):
        rig.result(rig.client.put("p2", 1, {}, b"q" * 500))
    assert rig.store.blobs["p2"].data == b"q" * 300
    assert not rig.store.blobs["p2"].sealed


def test_data_frames_received_together_reach_the_disk_in_one_write(tmp_path) -> None:
    """The DATA frames the server takes from one received batch go to the
    data file in one pwritev of views into the received bytes, not one
    pwrite of a copied body per frame, and read back verified."""
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", block_size=4096, fs=fs)
    rig = Rig(store=store)
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    rig.flush()
    del fs.calls[:]
    chunks = [bytes([i]) * (3000 + 7 * i) for i in range(40)]  # blocks straddle frames
    for chunk in chunks:
        w.write(chunk)
    rig.flush()  # one dataReceived with all 40 frames
    assert [c for c in fs.calls if c[1].endswith(".data")] == [("write", "b1.data")]
    info = rig.result(w.commit())
    assert info.size == sum(map(len, chunks))
    assert read_all(rig, "b1") == b"".join(chunks)
    store.close()


def test_read_failpoint_stops_the_stream_exactly_at_its_threshold(rig: Rig, monkeypatch) -> None:
    write_blob(rig, "b1", bytes(range(256)) * 4000)
    monkeypatch.setattr(server._ProcessCounters, "read", 0)
    monkeypatch.setattr(
        failpoints, "_global", failpoints.Failpoints("storage.read.bytes=raise@300001")
    )
    c = CollectingConsumer()
    with pytest.raises(StorageError, match="FailpointError"):
        rig.result(rig.client.read("b1", 0, None, c))
    assert c.data == (bytes(range(256)) * 4000)[:300001]


# -- raw frames against one server protocol ---------------------------------


class RawPeer:
    """A server protocol on a StringTransport, fed raw bytes."""

    def __init__(self, rig: Rig) -> None:
        self.proto = rig.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.decoder = framing.FrameDecoder()
        self.nonce = auth.new_nonce()

    def send(self, data: bytes) -> list:
        self.proto.dataReceived(data)
        return self.sent()

    def sent(self) -> list:
        """The frames the server wrote since last asked."""
        out = self.transport.value()
        self.transport.clear()
        return list(self.decoder.frames(out))

    def hello(self) -> dict:
        hello = framing.encode_control(
            framing.HELLO, 0, {"version": framing.VERSION, "nonce": self.nonce}
        )
        [(ftype, _, body)] = self.send(hello)
        assert ftype == framing.CHALLENGE
        return body

    def login(self, secret: bytes = SECRET) -> list:
        challenge = self.hello()
        proof = auth.client_proof(secret, self.nonce, challenge["nonce"])
        return self.send(framing.encode_control(framing.AUTH, 0, {"proof": proof}))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


def test_client_with_the_wrong_secret_is_dropped_before_any_operation(rig, logged) -> None:
    [(ftype, _, body)] = RawPeer(rig).login(b"wrong-secret-wrong-secret")
    assert (ftype, body["code"]) == (framing.ERROR, "auth_failed")
    raw = RawPeer(rig)
    raw.login(b"wrong-secret-wrong-secret")
    assert raw.closed
    assert raw.send(framing.encode_control(framing.REQUEST, 1, {"op": "health"})) == []
    assert "client failed authentication from" in log_text(logged)


def test_real_client_with_the_wrong_secret_gets_authentication_failed() -> None:
    rig = Rig(client_secret=b"another-secret-of-enough-length")
    with pytest.raises(AuthenticationFailed):
        rig.result(rig.client.stat("b1"))
    assert rig.store.blobs == {}


def test_client_refuses_a_server_that_cannot_prove_the_secret() -> None:
    rig = Rig(secret=b"server-has-a-different-secret!!")
    rig.client.secret = SECRET
    with pytest.raises(AuthenticationFailed, match="could not prove"):
        rig.result(rig.client.health())


def test_replayed_handshake_is_refused(rig: Rig) -> None:
    first = RawPeer(rig)
    [(ftype, _, _)] = first.login()
    assert ftype == framing.READY
    captured_hello = framing.encode_control(
        framing.HELLO, 0, {"version": framing.VERSION, "nonce": first.nonce}
    )
    challenge = first.proto._server_nonce
    captured_auth = framing.encode_control(
        framing.AUTH, 0, {"proof": auth.client_proof(SECRET, first.nonce, challenge)}
    )
    replay = RawPeer(rig)
    replay.send(captured_hello)
    [(ftype, _, body)] = replay.send(captured_auth)
    assert (ftype, body["code"]) == (framing.ERROR, "auth_failed")
    assert replay.closed


def test_request_before_authentication_drops_the_connection(rig, logged) -> None:
    raw = RawPeer(rig)
    [(ftype, _, body)] = raw.send(framing.encode_control(framing.REQUEST, 1, {"op": "list"}))
    assert (ftype, body["code"]) == (framing.ERROR, "protocol")
    assert raw.closed
    assert "expected HELLO" in log_text(logged)


def test_wrong_protocol_version_in_hello_drops_the_connection(rig: Rig) -> None:
    raw = RawPeer(rig)
    hello = framing.encode_control(framing.HELLO, 0, {"version": 99, "nonce": raw.nonce})
    [(ftype, _, body)] = raw.send(hello)
    assert (ftype, body["code"]) == (framing.ERROR, "protocol")
    assert raw.closed


@pytest.mark.parametrize("stage", ["hello", "auth"])
def test_a_large_frame_before_the_handshake_is_refused_from_its_header(
    rig: Rig, stage: str, logged
) -> None:
    raw = RawPeer(rig)
    if stage == "auth":
        raw.hello()
    header = framing.encode_header(framing.AUTH, 0, framing.MAX_PREAUTH + 1)
    frames = raw.send(header + b"x" * 100)  # the body never has to arrive
    assert [(f[0], f[2]["code"]) for f in frames] == [(framing.ERROR, "protocol")]
    assert raw.closed
    assert f"exceeds the {framing.MAX_PREAUTH}-byte cap" in log_text(logged)


def test_after_the_handshake_control_frames_may_be_larger_than_the_preauth_cap(rig) -> None:
    write_blob(rig, "b1", b"keep")
    raw = RawPeer(rig)
    [(ftype, _, _)] = raw.login()
    assert ftype == framing.READY
    request = {"op": "stat", "blob": "b1", "pad": "z" * (4 * framing.MAX_PREAUTH)}
    [(ftype, rid, body)] = raw.send(framing.encode_control(framing.REQUEST, 7, request))
    assert (ftype, rid, body["size"]) == (framing.REPLY, 7, 4)
    assert not raw.closed


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        framing.encode_header(framing.DATA, 1, framing.MAX_DATA + 1),
        framing.encode_header(framing.REQUEST, 1, framing.MAX_CONTROL + 1),
        framing.encode_header(framing.REQUEST, 1, 3) + b"{{{",
        framing.encode_header(42, 1, 0),
    ],
    ids=["http", "oversized-data", "oversized-control", "bad-json", "unknown-type"],
)
def test_malformed_frames_after_login_drop_the_connection_and_change_nothing(
    rig: Rig, garbage: bytes, logged
) -> None:
    write_blob(rig, "b1", b"keep")
    raw = RawPeer(rig)
    raw.login()
    frames = raw.send(garbage)
    assert [(f[0], f[2]["code"]) for f in frames] == [(framing.ERROR, "protocol")]
    assert raw.closed
    assert "dropping" in log_text(logged)
    assert rig.store.blobs["b1"].data == b"keep"


def test_data_frame_outside_a_write_stream_drops_the_connection(rig: Rig) -> None:
    write_blob(rig, "b1", b"keep", commit=False)
    raw = RawPeer(rig)
    raw.login()
    frames = raw.send(b"".join(bytes(p) for p in framing.data_frames(1, b"junk")))
    assert frames[0][2]["code"] == "protocol"
    assert raw.closed
    assert rig.store.blobs["b1"].data == b"keep"


def test_unknown_op_and_bad_fields_get_an_error_and_keep_the_connection(rig, logged) -> None:
    raw = RawPeer(rig)
    raw.login()
    cases = [
        ({"op": "format_disk"}, "unknown op"),
        ({"op": "stat", "blob": "../x"}, "invalid blob id"),
        ({"op": "read", "blob": "b1", "offset": -1}, "offset"),
        ({"op": "write", "blob": "b1", "epoch": True, "offset": 0}, "epoch"),
        ({"op": "copy", "blob": "b1"}, "source"),
        ({"op": "flush"}, "unknown op"),
    ]
    for rid, (req, why) in enumerate(cases, 1):
        [(ftype, got_rid, body)] = raw.send(framing.encode_control(framing.REQUEST, rid, req))
        assert (ftype, got_rid, body["code"]) == (framing.ERROR, rid, "bad_request")
        assert why in body["message"]
        assert f"refused request {rid}" in log_text(logged)
    assert not raw.closed
    assert rig.store.blobs == {}


def test_an_abort_of_a_stream_already_over_is_answered_not_refused(rig: Rig, logged) -> None:
    """A front end aborts every replica stream of an upload that failed,
    whichever of them the server had ended already (sealed by a commit
    before the catalog refused the upload, or ended by the server): the
    abort finds no stream and is answered, not refused as an unknown op
    (an operator's false alarm in the log each time), and what the stream
    sealed stays as it was."""
    w = rig.client.write("b1", 1, 0, {"inode": 1, "owner": "u"})
    w = rig.result(w)
    w.write(b"sealed")
    rig.result(w.commit())
    rig.result(w.abort())
    assert "refused request" not in log_text(logged)
    assert read_all(rig, "b1") == b"sealed"
    raw = RawPeer(rig)
    raw.login()
    [(ftype, rid, body)] = raw.send(framing.encode_control(framing.REQUEST, 7, {"op": "abort"}))
    assert (ftype, rid, body) == (framing.REPLY, 7, {})
    assert not raw.closed


def test_connection_without_a_handshake_is_dropped_after_the_timeout(rig: Rig, logged) -> None:
    raw = RawPeer(rig)
    rig.clock.advance(rig.factory.handshake_timeout + 1)
    assert raw.closed
    assert "no handshake" in log_text(logged)


def test_slow_request_sends_keepalives_while_it_runs(rig: Rig) -> None:
    from twisted.internet import defer

    pending: defer.Deferred = defer.Deferred()
    rig.factory.run_blocking = lambda f, *a: pending
    raw = RawPeer(rig)
    raw.login()
    assert raw.send(framing.encode_control(framing.REQUEST, 5, {"op": "health"})) == []
    rig.clock.advance(rig.factory.keepalive_interval)
    rig.clock.advance(rig.factory.keepalive_interval)
    frames = raw.send(b"")
    assert [(f[0], f[1]) for f in frames] == [(framing.KEEPALIVE, 5)] * 2
    pending.callback({"free_bytes": 1, "total_bytes": 2, "blobs": 0})
    frames = raw.send(b"")
    assert frames[0][0] == framing.REPLY and frames[0][2]["free_bytes"] == 1


def test_blob_info_goes_on_the_wire_as_attrs_made_it() -> None:
    """``info_to_wire`` builds a reply's body by hand: the same keys, in
    the same order, as ``attrs.asdict``, meta a copy, and the client
    reads it back to the same BlobInfo."""
    import attrs

    from wsstorage.client import info_from_wire
    from wsstorage.records import BlobInfo

    meta = {"inode": 7, "owner": "u", "extents": {"0": 1}}
    info = BlobInfo(blob_id="b1", size=3, durable=3, state=SEALED, epoch=2, meta=meta)
    wire = server.info_to_wire(info)
    assert list(wire.items()) == list(attrs.asdict(info).items())
    assert wire["meta"] is not meta
    assert info_from_wire(wire) == info


def test_frames_sent_while_a_request_runs_wait_and_stop_the_reading(rig: Rig) -> None:
    """A request runs with frames held, but the socket is not stopped for
    it (two epoll_ctl per request): only once bytes come meanwhile does
    the server stop reading, so what a peer can make it hold stays one
    read; they are acted on, in order, once the request is answered."""
    from twisted.internet import defer

    pending: list[defer.Deferred] = []

    def run_blocking(f, *args):
        pending.append(defer.Deferred())
        return pending[-1]

    rig.factory.run_blocking = run_blocking
    raw = RawPeer(rig)
    raw.login()
    health = {"free_bytes": 1, "total_bytes": 2, "blobs": 0}
    assert raw.send(framing.encode_control(framing.REQUEST, 5, {"op": "health"})) == []
    assert raw.transport.producerState == "producing"
    assert raw.send(framing.encode_control(framing.REQUEST, 6, {"op": "health"})) == []
    assert raw.transport.producerState == "paused"
    assert len(pending) == 1  # the second waits in the decoder
    pending[0].callback(health)
    frames = raw.sent()
    assert [(f[0], f[1]) for f in frames] == [(framing.REPLY, 5)]
    # request 6 runs from the frames that waited: reading stays stopped
    # until nothing waits (else each pipelined request adds a read)
    assert raw.transport.producerState == "paused"
    assert len(pending) == 2
    pending[1].callback(health)
    frames = raw.sent()
    assert [(f[0], f[1]) for f in frames] == [(framing.REPLY, 6)]
    assert raw.transport.producerState == "producing"


def test_a_commit_waiting_on_a_flush_that_fails_is_refused_not_sealed(rig: Rig) -> None:
    from twisted.internet import defer

    w = rig.result(rig.client.write("b", 1, 0, {"inode": 1, "owner": "u"}))
    w.write(b"x" * 100)
    syncing: defer.Deferred = defer.Deferred()
    real = rig.factory.run_blocking
    rig.factory.run_blocking = lambda f, *a: syncing if f.__name__ == "sync" else real(f, *a)
    flushed = w.flush()
    committed = w.commit()
    rig.flush()
    assert not flushed.called and not committed.called  # the commit waits for the flush
    syncing.errback(OSError(5, "Input/output error"))
    rig.flush()
    for d in (flushed, committed):
        failures = []
        d.addErrback(failures.append)
        assert failures, "the flush and the commit both fail"
    assert ("seal", "b") not in rig.store.calls


def _levels(events: list[dict]) -> list[str]:
    return [e["log_level"].name for e in events if "log_level" in e]


def test_copy_onto_a_full_disk_is_logged_as_one_warning_not_a_traceback(rig: Rig, logged) -> None:
    peer = Rig()
    write_blob(peer, "b1", bytes(range(256)) * 2000)
    rig.factory._peer_client = lambda endpoint: peer.client
    rig.store.full = True
    d = rig.client.copy_from("b1", "tcp:127.0.0.1:1")
    for _ in range(100):
        rig.flush()
        peer.flush()
    with pytest.raises(DiskFull):
        rig.result(d)
    assert "critical" not in _levels(logged)
    assert not [e for e in logged if "log_failure" in e]
    [line] = [formatEvent(e) for e in logged if e["log_level"].name == "warn"]
    assert line.startswith("copy of b1 from") and "DiskFull" in line


@pytest.mark.parametrize(
    ("code", "error"),
    [(errno.EROFS, DiskError), (errno.ENOENT, DiskError), (errno.ENOSPC, DiskFull)],
)
def test_a_routine_disk_error_is_one_warning_and_names_no_path(
    rig: Rig, logged, code, error
) -> None:
    write_blob(rig, "b1", b"x")

    def stat(blob_id: str):
        raise OSError(code, os.strerror(code), "/srv/secret-place/blobs/b1.meta")

    rig.store.stat = stat
    with pytest.raises(error) as caught:
        rig.result(rig.client.stat("b1"))
    assert "secret-place" not in str(caught.value)
    assert not [e for e in logged if "log_failure" in e]
    [line] = [formatEvent(e) for e in logged if e["log_level"].name == "warn"]
    assert line.startswith("stat of b1 from") and error.__name__ in line
    assert "secret-place" not in line


def test_an_unexpected_error_keeps_its_traceback_and_names_no_path(rig: Rig, logged) -> None:
    def stat(blob_id: str):
        raise OSError(errno.EIO, "Input/output error", "/srv/secret-place/blobs/b1.meta")

    rig.store.stat = stat
    with pytest.raises(StorageError) as caught:
        rig.result(rig.client.stat("b1"))
    assert type(caught.value) is StorageError and "secret-place" not in str(caught.value)
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [OSError]
