"""Uploads that end small are stored with one ``put`` per replica
(wsfront.transfer.put_on_commit): no write stream, one request each, and
every durability and failure rule of a streamed upload still holds.

Over real storage servers and the fake; the counts are of calls the front
end makes on its storage clients.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.transfer_env import TransferEnv, sha256
from wsfront.transfer.errors import NoReplicasAvailable
from wsfront.transfer.put_on_commit import PUT_LIMIT, PutOnCommit
from wsfront.transfer.service import TransferSettings
from wsstorage._interfaces import IBlobWriter
from wsstorage.client import PUT_MAX
from wsstorage.errors import NodeUnavailable
from wsstorage.records import SEALED
from wsstorage.testing import FakeStorageCluster


@pytest.fixture(params=["real", "fake"])
def env(request, tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend=request.param)
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


class Calls:
    """Counts ``write`` (stream opens) and ``put`` calls on every client of
    the env's front end."""

    def __init__(self, env) -> None:
        self.writes = 0
        self.puts = 0
        for name in env.transfers.pool.names():
            client = env.transfers.pool.client(name)
            write, put = client.write, client.put

            def counted_write(*a, _write=write, **kw):
                self.writes += 1
                return _write(*a, **kw)

            def counted_put(*a, _put=put, **kw):
                self.puts += 1
                return _put(*a, **kw)

            client.write, client.put = counted_write, counted_put


def data_of(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


async def blob_on(env, node: str, blob_id: str):
    return await env.transfers.pool.client(node).stat(blob_id)


@pytest_twisted.ensureDeferred
async def test_a_small_upload_is_one_put_per_replica_and_sealed_on_both(env):
    calls = Calls(env)
    data = data_of(4096)
    session = await env.transfers.open_write(env.user, "/s.bin", 0)
    assert (calls.writes, calls.puts) == (0, 0)  # nothing waited for before the data
    session.write(data)
    version = await session.finish()
    assert (calls.writes, calls.puts) == (0, 2)
    [extent] = version.extents
    assert len(extent.replicas) == 2 and version.sha256 == sha256(data)
    for replica in extent.replicas:
        info = await blob_on(env, replica.node, extent.blob_id)
        assert (info.state, info.size, info.durable) == (SEALED, 4096, 4096)
        assert info.meta["upload"] == session.upload_id
    got, _ = await env.download("/s.bin")
    assert got == data


@pytest_twisted.ensureDeferred
async def test_an_upload_past_the_limit_opens_a_stream_and_keeps_every_byte_in_order(env):
    calls = Calls(env)
    data = data_of(PUT_LIMIT + 5000)
    version = await env.upload("/big.bin", data)
    assert (calls.writes, calls.puts) == (2, 0)
    assert version.size == len(data) and version.sha256 == sha256(data)
    got, _ = await env.download("/big.bin")
    assert got == data


def test_a_put_limit_above_what_one_put_carries_is_refused():
    # Every upload between PUT_MAX and such a limit would fail on every replica.
    with pytest.raises(ValueError, match="put_limit"):
        TransferSettings(put_limit=PUT_MAX + 1)
    with pytest.raises(ValueError, match="put_limit"):
        TransferSettings(put_limit=-1)
    assert TransferSettings(put_limit=0).put_limit == 0
    assert TransferSettings().put_limit == PUT_LIMIT


@pytest.mark.parametrize("backend", ["real", "fake"])
@pytest_twisted.ensureDeferred
async def test_an_upload_of_the_highest_put_limit_is_one_put_per_replica(tmp_path, backend):
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path, backend=backend, put_limit=PUT_MAX).start()
    try:
        calls = Calls(env)
        data = data_of(PUT_MAX)
        version = await env.upload("/max.bin", data)
        assert (calls.writes, calls.puts) == (0, 2)
        got, _ = await env.download("/max.bin")
        assert version.size == len(data) and got == data
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_of_a_small_upload_makes_its_bytes_durable_first(env):
    calls = Calls(env)
    session = await env.transfers.open_write(env.user, "/c.bin", 0)
    session.write(b"a" * 1000)
    await session.checkpoint()
    assert calls.writes == 2 and session.durable == 1000
    upload = await env.catalog.get_upload(session.upload_id)
    assert upload.checkpoint == 1000
    session.write(b"b" * 500)
    version = await session.finish()
    assert calls.puts == 0 and version.size == 1500
    got, _ = await env.download("/c.bin")
    assert got == b"a" * 1000 + b"b" * 500


@pytest_twisted.ensureDeferred
async def test_an_interrupted_small_upload_keeps_its_bytes_and_resumes(env):
    session = await env.transfers.open_write(env.user, "/r.bin", 0)
    session.write(b"x" * 3000)
    await session.interrupt()
    upload = await env.catalog.get_upload(session.upload_id)
    assert (upload.state, upload.checkpoint) == ("interrupted", 3000)
    resumed = await env.transfers.open_write(env.user, "/r.bin", 3000)
    resumed.write(b"y" * 100)
    version = await resumed.finish()
    assert version.size == 3100
    got, _ = await env.download("/r.bin")
    assert got == b"x" * 3000 + b"y" * 100


@pytest_twisted.ensureDeferred
async def test_a_replica_dead_before_the_put_is_dropped_and_the_file_recorded_without_it(env):
    session = await env.transfers.open_write(env.user, "/d.bin", 0)
    victim, survivor = session.replicas
    await env.kill(victim)
    session.write(b"z" * 2000)
    version = await session.finish()
    [extent] = version.extents
    ok = [r.node for r in extent.replicas if r.state == "ok"]
    assert ok == [survivor]
    assert await env.catalog.count_under_replicated() == 1
    got, _ = await env.download("/d.bin")
    assert got == b"z" * 2000


@pytest_twisted.ensureDeferred
async def test_every_replica_dead_fails_the_commit_and_commits_nothing(env):
    session = await env.transfers.open_write(env.user, "/n.bin", 0)
    for node in session.replicas:
        await env.kill(node)
    session.write(b"q" * 100)
    with pytest.raises(NoReplicasAvailable):
        await session.finish()
    entry = await env.catalog.stat(env.transfers.full_path(env.user, "/n.bin"))
    assert entry.version is None
    # Interrupted (resumable), not left active and owned here until it expires.
    assert (entry.upload.state, entry.upload.owner) == ("interrupted", "fe-a")


# -- PutOnCommit alone, over the fake ----------------------------------------------


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@pytest_twisted.ensureDeferred
async def test_the_producer_is_paused_while_the_stream_opens_and_bytes_keep_their_order():
    from twisted.internet import reactor

    node = FakeStorageCluster(reactor, ["s1"]).node("s1")
    writer = PutOnCommit(node, "bput", 1, {"k": 1}, limit=10)
    assert verifyObject(IBlobWriter, writer)
    producer = Producer()
    writer.registerProducer(producer, True)
    writer.write(b"0123456789")
    assert producer.events == [] and not writer.opened
    node.freeze()
    writer.write(b"abc")  # past the limit: the stream opens, the producer waits
    assert producer.events == ["pause"] and writer.opened
    writer.write(b"def")  # already on its way: kept, in order
    assert writer.offset == 16
    node.thaw()
    info = await writer.commit()
    assert producer.events == ["pause", "resume"]
    assert (info.size, info.state, info.meta) == (16, SEALED, {"k": 1})
    assert node.blob_bytes("bput") == b"0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_an_open_refused_fails_the_writer_and_releases_its_producer():
    from twisted.internet import reactor

    node = FakeStorageCluster(reactor, ["s1"]).node("s1")
    writer = PutOnCommit(node, "bdead", 1, {}, limit=4)
    producer = Producer()
    writer.registerProducer(producer, True)
    failed = writer.when_failed()
    node.kill()
    writer.write(b"too long")
    with pytest.raises(NodeUnavailable):
        await failed
    assert producer.events == ["pause", "resume"]
    with pytest.raises(NodeUnavailable):
        await writer.flush()
    with pytest.raises(NodeUnavailable):
        await writer.commit()
    await writer.abort()


@pytest_twisted.ensureDeferred
async def test_a_producer_registered_after_a_failed_open_is_not_paused():
    from twisted.internet import reactor

    node = FakeStorageCluster(reactor, ["s1"]).node("s1")
    writer = PutOnCommit(node, "bgone", 1, {}, limit=4)
    failed = writer.when_failed()
    node.kill()
    writer.write(b"too long")
    with pytest.raises(NodeUnavailable):
        await failed
    producer = Producer()
    writer.registerProducer(producer, True)  # nothing would ever resume it
    assert producer.events == []
    with pytest.raises(NodeUnavailable):
        await writer.commit()


@pytest_twisted.ensureDeferred
async def test_a_flush_opens_the_stream_and_an_abort_before_any_creates_nothing():
    from twisted.internet import reactor

    node = FakeStorageCluster(reactor, ["s1"]).node("s1")
    writer = PutOnCommit(node, "babort", 1, {})
    writer.write(b"abc")
    assert await writer.flush() == 3  # a checkpoint opens the stream first
    writer2 = PutOnCommit(node, "bnever", 1, {})
    writer2.write(b"abc")
    await writer2.abort()
    assert "bnever" not in node.blobs and "babort" in node.blobs
