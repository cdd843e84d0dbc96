"""What a read costs: catalog transactions and storage streams per request.

A download is answered from one catalog lookup (``Transfers.open_read``):
metadata, preconditions and ranges come from the version that lookup found,
and HEAD or 304 open no storage stream at all.  These tests count the
catalog transactions and storage reads a request makes, and check that the
answers stay right while they are cut (a new version committed between the
lookup and the body, a pending upload's Upload-Offset, ranges).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv, payload
from tests.transfer_env import Collector
from wsfront.catalog import errors as catalog_errors
from wsfront.transfer.extent_cache import ExtentCache
from wsfront.transfer.service import NoCommittedVersion, PathView


class Counting:
    """Counts catalog transactions and storage read streams of one env."""

    def __init__(self, env: HttpEnv) -> None:
        self.catalog = 0
        self.durable = 0  # write transactions whose commit waits for the disk
        self.reads = 0
        runner = env.catalog._runner
        run, read_now = runner.run, runner.read_now

        def counted_run(fn, write=True, durable=True, **kw):
            self.catalog += 1
            self.durable += write and durable
            return run(fn, write, durable, **kw)

        def counted_read_now(*a, **kw):
            # A read in the reactor thread is a transaction too (and one
            # that falls back to the pool is not counted twice).
            self.catalog += 1
            runner.run = run
            try:
                return read_now(*a, **kw)
            finally:
                runner.run = counted_run

        runner.run = counted_run
        runner.read_now = counted_read_now
        for client in env.transfer.clients:
            read = client.read

            def counted_read(*a, _read=read, **kw):
                self.reads += 1
                return _read(*a, **kw)

            client.read = counted_read

    def reset(self) -> None:
        self.catalog = self.durable = self.reads = 0


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def fetch(env, path, method="GET", headers=None):
    r = await env.request(method, path, headers=headers or {})
    return r, await r.content()


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else values[0]


@pytest_twisted.ensureDeferred
async def test_a_get_is_one_catalog_transaction_and_one_storage_read(env):
    data = payload(4096)
    await env.upload("/small.bin", data)
    await fetch(env, "/")  # logs in (the login is cached afterwards)
    # As after a restart: the upload's bytes are not in the cache.
    env.transfers.extent_cache = ExtentCache(env.transfers.extent_cache.capacity)
    count = Counting(env)
    r, body = await fetch(env, "/small.bin")
    assert r.code == 200 and body == data
    assert (count.catalog, count.reads) == (1, 1)
    # Its verified bytes are kept: the next GET asks the catalog only.
    count.reset()
    r, body = await fetch(env, "/small.bin")
    assert r.code == 200 and body == data
    assert (count.catalog, count.reads) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_small_upload_read_back_asks_no_storage_server(env):
    """The sealed bytes of a small upload are cached as it commits
    (wsfront.transfer.write_through); a big one's are not."""
    data = payload(4096)
    await env.upload("/w.bin", data)
    limit = env.transfers.extent_cache.max_extent
    big = payload(limit + 1)
    await env.upload("/big.bin", big)
    await fetch(env, "/")
    count = Counting(env)
    r, body = await fetch(env, "/w.bin")
    assert r.code == 200 and body == data
    assert (count.catalog, count.reads) == (1, 0)
    count.reset()
    r, body = await fetch(env, "/big.bin")
    assert r.code == 200 and body == big
    assert (count.catalog, count.reads) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_head_and_not_modified_read_no_storage_and_ask_the_catalog_once(env):
    await env.upload("/f.txt", b"hello world")
    r, _ = await fetch(env, "/f.txt")
    etag = header(r, "ETag")
    count = Counting(env)
    r, body = await fetch(env, "/f.txt", "HEAD")
    assert r.code == 200 and body == b""
    assert header(r, "Content-Length") == "11"
    assert header(r, "ETag") == etag
    assert (count.catalog, count.reads) == (1, 0)
    count.reset()
    r, body = await fetch(env, "/f.txt", headers={b"If-None-Match": [etag.encode()]})
    assert r.code == 304 and body == b""
    assert (count.catalog, count.reads) == (1, 0)
    count.reset()
    r, _ = await fetch(env, "/f.txt", headers={b"If-Match": [b'"other"']})
    assert r.code == 412
    assert (count.catalog, count.reads) == (1, 0)
    assert env.transfers.stats.reads_started == 1  # the first GET only


@pytest_twisted.ensureDeferred
async def test_multipart_ranges_read_one_version_with_one_lookup(env):
    data = payload(100_000)
    await env.upload("/r.bin", data)
    await fetch(env, "/r.bin", "HEAD")
    count = Counting(env)
    r, body = await fetch(env, "/r.bin", headers={b"Range": [b"bytes=0-9,50000-50009,-5"]})
    assert r.code == 206
    assert data[0:10] in body and data[50000:50010] in body and data[-5:] in body
    assert count.catalog == 1 and count.reads == 3


@pytest_twisted.ensureDeferred
async def test_the_owner_of_a_pending_upload_gets_its_offset_from_the_same_lookup(env):
    await env.upload("/p.bin", b"committed")
    session = await env.transfers.open_write(env.user, "/p.bin", 0)
    session.write(b"new bytes")
    await session.checkpoint()
    await fetch(env, "/p.bin", "HEAD")  # logs in
    count = Counting(env)
    r, body = await fetch(env, "/p.bin")
    assert r.code == 200 and body == b"committed"
    assert header(r, "Upload-Offset") == "9"
    assert header(r, "Link") is not None and "tus-upload" in header(r, "Link")
    assert count.catalog == 1
    await session.interrupt()


@pytest_twisted.ensureDeferred
async def test_a_pending_only_file_is_404_with_its_offset_for_the_owner_only(env):
    session = await env.transfers.open_write(env.user, "/only.bin", 0)
    session.write(b"abc")
    await session.checkpoint()
    r, _ = await fetch(env, "/only.bin", "HEAD")
    assert r.code == 404
    assert header(r, "Upload-Offset") == "3"
    with pytest.raises(NoCommittedVersion) as caught:
        await env.transfers.open_read(env.user, "/only.bin")
    assert caught.value.pending.size == 3
    other = await env.catalog.add_user("bob", "bob password")
    other = type(other)(**{**_fields(other), "root": env.user.root})
    with pytest.raises(NoCommittedVersion) as caught:
        await env.transfers.open_read(other, "/only.bin")
    assert caught.value.pending is None
    assert isinstance(caught.value, catalog_errors.NotFound)
    await session.interrupt()


@pytest_twisted.ensureDeferred
async def test_reopen_reads_the_version_the_handle_describes_after_a_newer_commit(env):
    old = payload(300_000)
    await env.upload("/v.bin", old)
    handle = await env.transfers.open_read(env.user, "/v.bin")
    await env.upload("/v.bin", payload(300_000))  # a new version replaces it
    sink = Collector()
    stream = handle.reopen(1000, 5000)
    assert stream.length == 5000
    await stream.start(sink)
    assert sink.data == old[1000:6000]
    handle.stream.stopProducing()


@pytest_twisted.ensureDeferred
async def test_head_needs_read_permission_like_get(env):
    await env.upload("/secret.txt", b"s")
    await env.catalog.set_permissions("alice", frozenset({"write"}))
    env.authenticator.forget("alice")
    for method in ("GET", "HEAD"):
        r, _ = await fetch(env, "/secret.txt", method)
        assert r.code == 403, method


def _fields(record) -> dict:
    import attrs

    return attrs.asdict(record, recurse=False)


# -- memory: how much a storage connection pulls per read ------------------------------


def test_recv_size_shares_a_budget_and_follows_what_is_left():
    from wsfront.transfer import reader

    assert reader.recv_size(1, 1 << 30) == reader.RECV_MAX
    assert reader.recv_size(200, 1 << 30) == max(reader.RECV_MIN, reader.RECV_BUDGET // 200)
    assert reader.recv_size(200, 1 << 30) * 200 <= max(reader.RECV_BUDGET, 200 * reader.RECV_MIN)
    assert reader.recv_size(10_000, 1 << 30) == reader.RECV_MIN
    assert reader.recv_size(1, 4096) == 4096 + reader.RECV_MIN


@pytest_twisted.ensureDeferred
async def test_concurrent_reads_pull_less_per_turn_and_the_pooled_connection_gets_its_size_back(
    env,
):
    from tests.transfer_env import PausingCollector
    from wsfront.transfer import reader
    from wsstorage import framing

    data = payload(4 << 20)
    await env.upload("/m.bin", data)
    transfers = env.transfers
    count = 40
    handles = [await transfers.open_read(env.user, "/m.bin") for _ in range(count)]
    sinks = [PausingCollector(1) for _ in handles]
    done = [h.stream.start(s) for h, s in zip(handles, sinks)]
    await defer.gatherResults([s.paused for s in sinks])
    sizes = set()
    for h in handles:
        transport = reader._transport_of(h.stream._sink.producer)
        sizes.add(transport.bufferSize)
    # The last reads to start shared the budget with all the others.
    assert min(sizes) == reader.recv_size(count, len(data))
    assert max(sizes) <= reader.RECV_MAX
    for s in sinks:
        s.producer.resumeProducing()
    await defer.gatherResults(done)
    assert all(s.data == data for s in sinks)
    idle = [c for client in env.transfer.clients for c in client._idle]
    assert idle
    assert {c.transport.bufferSize for c in idle} == {framing.TRANSPORT_BUFFER}
    assert reader._active_reads == 0


# -- uploads: catalog transactions per small upload -------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_small_upload_records_its_length_in_the_commit_alone(env):
    count = Counting(env)
    session = await env.transfers.open_write(env.user, "/small.txt", 0)
    # The lookup and begin_upload are one transaction, which waits for no
    # disk: nothing is acknowledged for it.
    assert (count.catalog, count.durable) == (1, 0)
    session.write(b"x" * 4096)
    version = await session.finish()
    # The replicas sealed; one durable transaction commits (no checkpoint
    # before it), and its sync covers the begin too.
    assert (count.catalog, count.durable) == (2, 1)
    assert version.size == 4096 and session.durable == 4096
    entry = await env.catalog.stat(env.transfers.full_path(env.user, "/small.txt"))
    assert entry.upload is None and entry.size == 4096
    [extent] = entry.version.extents
    assert extent.length == 4096 and len(extent.replicas) == 2
    _, body = await fetch(env, "/small.txt")
    assert body == b"x" * 4096


@pytest_twisted.ensureDeferred
async def test_a_small_put_checks_its_preconditions_on_open_writes_lookup(env):
    """PUT's If-Match, quota and directory checks run on the lookup
    open_write makes anyway: lookup, begin_upload, commit, nothing more."""
    await fetch(env, "/")  # logs in (the login is cached afterwards)
    count = Counting(env)
    r = await env.request("PUT", "/p.bin", data=b"x" * 4096)
    assert r.code == 201
    assert count.catalog == 3
    etag = header(r, "ETag")
    count.reset()
    r = await env.request("PUT", "/p.bin", data=b"y" * 10, headers={"If-Match": '"nope"'})
    assert r.code == 412 and count.catalog == 1
    r = await env.request("PUT", "/p.bin", data=b"y" * 10, headers={"If-Match": etag})
    assert r.code == 204


@pytest_twisted.ensureDeferred
async def test_a_replica_lost_before_the_commit_is_recorded_before_the_commit(env):
    session = await env.transfers.open_write(env.user, "/two.bin", 0)
    session.write(b"y" * 100_000)
    await session.checkpoint()
    lost = session.replicas[0]
    await env.transfer.kill(lost)
    session.write(b"y" * 1000)
    version = await session.finish()
    [extent] = version.extents
    ok = [r.node for r in extent.replicas if r.state == "ok"]
    assert ok == list(session.replicas) and lost not in ok
    assert version.size == 101_000


# -- the whole-file hash, off the reactor thread ----------------------------------------


class _Blocker:
    """Holds the hashing thread until ``release`` is set."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()

    def _work(self, item) -> None:
        self.release.wait(30)


@pytest_twisted.ensureDeferred
async def test_a_slow_hash_pauses_the_upload_and_resumes_it_with_the_right_digest(monkeypatch):
    import hashlib

    from twisted.internet import reactor

    from wsfront.transfer.writer import Sha256Stream

    monkeypatch.setattr(Sha256Stream, "INLINE", 1000)
    monkeypatch.setattr(Sha256Stream, "HIGH", 50_000)
    monkeypatch.setattr(Sha256Stream, "LOW", 10_000)
    events = []
    resumed = defer.Deferred()

    def on_resume():
        events.append("resume")
        resumed.callback(None)

    sha = Sha256Stream(reactor, lambda: events.append("pause"), on_resume)
    blocker = _Blocker()
    Sha256Stream._worker_queue().put((blocker, None))
    chunks = [bytes([i]) * 20_000 for i in range(5)]
    for chunk in chunks:
        sha.update(chunk)
    # 1000 bytes inline are not enough for the first chunk: all 100 kB queued.
    assert events == ["pause"]
    blocker.release.set()
    await resumed
    assert events == ["pause", "resume"]
    assert await sha.digest() == hashlib.sha256(b"".join(chunks)).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_small_upload_is_hashed_inline():
    import hashlib

    from twisted.internet import reactor

    from wsfront.transfer.writer import Sha256Stream

    sha = Sha256Stream(reactor, lambda: None, lambda: None)
    sha.update(b"abc")
    d = sha.digest()
    assert d.called  # no thread round trip for a small file
    assert await d == hashlib.sha256(b"abc").hexdigest()


def test_widen_raises_a_tcp_transports_buffer_for_a_read_and_restores_it():
    from twisted.internet.abstract import FileDescriptor

    from wsfront.transfer import reader

    class Transport(FileDescriptor):  # a TCP transport's buffer attributes
        bufferSize = 65536
        SEND_LIMIT = 131072

    t = Transport()
    restore = reader.widen(t, 1 << 30)
    assert t.bufferSize == t.SEND_LIMIT == reader.recv_size(reader._active_reads + 1, 1 << 30)
    assert t.bufferSize > 65536
    restore()
    assert (t.bufferSize, t.SEND_LIMIT) == (65536, 131072)
    # A small file needs no more than the defaults; a TLS wrapper is left alone.
    small = Transport()
    reader.widen(small, 1000)()
    assert (small.bufferSize, small.SEND_LIMIT) == (65536, 131072)
    reader.widen(object(), 1 << 30)()


@pytest_twisted.ensureDeferred
async def test_a_big_get_widens_the_response_socket_only_while_it_streams(env, monkeypatch):
    from wsfront.transfer import reader

    seen = []
    original = reader.widen

    def watching(transport, length):
        before = (transport.bufferSize, transport.SEND_LIMIT)
        restore = original(transport, length)
        seen.append((before, (transport.bufferSize, transport.SEND_LIMIT)))

        def check_restore():
            restore()
            seen.append((transport.bufferSize, transport.SEND_LIMIT))

        return check_restore

    monkeypatch.setattr(reader, "widen", watching)
    data = payload(3 << 20)
    await env.upload("/w.bin", data)
    _, body = await fetch(env, "/w.bin")
    assert body == data
    (before, during), after = seen
    assert during[0] > before[0] and during[1] > before[1]
    assert after == before


@pytest_twisted.ensureDeferred
async def test_open_write_hands_its_lookup_to_the_adapters_check(env):
    await env.upload("/c.txt", b"old")
    count = Counting(env)
    seen = []
    session = await env.transfers.open_write(env.user, "/c.txt", 0, check=seen.append)
    assert count.catalog == 2  # the lookup the check saw, then begin_upload
    [view] = seen
    info = view.committed
    assert info.size == 3 and not info.pending and info.etag and view.pending is None
    await session.interrupt()
    seen.clear()
    session = await env.transfers.open_write(env.user, "/new.txt", 0, check=seen.append)
    assert seen == [PathView()]
    await session.interrupt()

    class Refused(Exception):
        pass

    def refuse(info):
        raise Refused()

    await env.upload("/d.txt", b"kept")
    count.reset()
    with pytest.raises(Refused):
        await env.transfers.open_write(env.user, "/d.txt", 0, check=refuse)
    assert count.catalog == 1  # nothing begun
    entry = await env.catalog.stat(env.transfers.full_path(env.user, "/d.txt"))
    assert entry.upload is None and entry.size == 4
    assert env.transfers.sessions == {}


@pytest_twisted.ensureDeferred
async def test_a_read_that_started_alone_gives_back_its_share_when_others_start(env):
    from tests.transfer_env import PausingCollector
    from wsfront.transfer import reader

    data = payload(4 << 20)
    await env.upload("/s.bin", data)
    env.transfers.per_user.limit = None  # 100 reads of one user, on purpose
    first = await env.transfers.open_read(env.user, "/s.bin")
    sink = PausingCollector(1)
    done = first.stream.start(sink)
    await sink.paused
    transport = reader._transport_of(first.stream._sink.producer)
    assert transport.bufferSize == reader.RECV_MAX  # alone
    others = [await env.transfers.open_read(env.user, "/s.bin") for _ in range(99)]
    sinks = [PausingCollector(1) for _ in others]
    dones = [h.stream.start(s) for h, s in zip(others, sinks)]
    await defer.gatherResults([s.paused for s in sinks])
    sink.producer.resumeProducing()  # its next turn takes its share of 100 reads
    assert transport.bufferSize == reader.recv_size(100, 4 << 20) < reader.RECV_MAX
    for s in sinks:
        s.producer.resumeProducing()
    await defer.gatherResults([done, *dones])
    assert sink.data == data and all(s.data == data for s in sinks)
