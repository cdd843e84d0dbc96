"""The transfer layer over real storage servers and a real SQLite catalog.

Walks docs/architecture.md's path-state x operation table, then failures:
replicas dying mid-read and mid-write, damaged blocks, takeover and fencing.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.transfer_env import Feeder, PausingCollector, TransferEnv, sha256
from wsfront.catalog import errors as catalog_errors
from wsfront.transfer.cache_hint import cached_replica
from wsfront.transfer.errors import (
    NoReplicasAvailable,
    OffsetTooLarge,
    SessionFenced,
    UploadBusy,
)

MiB = 1 << 20


@pytest.fixture(params=["real", "fake"])
def env(request, tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend=request.param)
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def payload(size: int, seed: int = 1) -> bytes:
    block = os.urandom(min(size, 256 * 1024)) if seed else b"x" * min(size, 256 * 1024)
    return (block * (size // len(block) + 1))[:size] if size else b""


@pytest_twisted.ensureDeferred
async def test_upload_then_download_is_identical_on_two_replicas(env):
    data = payload(3 * MiB + 123)
    version = await env.upload("/big.bin", data)
    assert version.size == len(data)
    assert version.sha256 == sha256(data)
    [extent] = version.extents
    assert len(extent.replicas) == 2
    got, stream = await env.download("/big.bin")
    assert sha256(got) == sha256(data)
    assert stream.failovers == 0


@pytest_twisted.ensureDeferred
async def test_download_from_an_offset(env):
    data = payload(MiB)
    await env.upload("/f", data)
    got, _ = await env.download("/f", 1000)
    assert got == data[1000:]
    with pytest.raises(OffsetTooLarge):
        await env.download("/f", len(data) + 1)


@pytest_twisted.ensureDeferred
async def test_read_of_missing_path_and_of_pending_only_path_is_not_found(env):
    with pytest.raises(catalog_errors.NotFound):
        await env.download("/nothing")
    session = await env.transfers.open_write(env.user, "/pending", 0)
    await Feeder(env.reactor, session, b"abc").start()
    await session.checkpoint()
    with pytest.raises(catalog_errors.NotFound):
        await env.download("/pending")
    await session.finish()
    got, _ = await env.download("/pending")
    assert got == b"abc"


@pytest_twisted.ensureDeferred
async def test_empty_file_round_trips(env):
    version = await env.upload("/empty", b"")
    assert version.size == 0
    got, _ = await env.download("/empty")
    assert got == b""


# -- path state x operation: uploads --------------------------------------


@pytest_twisted.ensureDeferred
async def test_owner_sees_the_pending_size_and_others_the_committed_one(env):
    old = payload(100_000)
    await env.upload("/f", old)
    bob = await env.catalog.add_user("bob", "pw-bob-123456", root="/alice", adopt_files=True)
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"y" * 5000).start()
    await session.checkpoint()
    mine = await env.transfers.stat(env.user, "/f")
    theirs = await env.transfers.stat(bob, "/f")
    assert (mine.pending, mine.size) == (True, 5000)
    assert (theirs.pending, theirs.size) == (False, len(old))
    got, _ = await env.download("/f")
    assert got == old, "readers see the committed version, never pending bytes"
    with pytest.raises(UploadBusy):
        await env.transfers.open_write(bob, "/f", 0)
    await session.finish()
    got, _ = await env.download("/f")
    assert got == b"y" * 5000


@pytest_twisted.ensureDeferred
async def test_append_to_a_committed_file_copies_no_bytes(env):
    first, second = payload(300_000), payload(200_000, seed=2)
    await env.upload("/log", first)
    session = await env.transfers.open_write(env.user, "/log", append=True)
    await Feeder(env.reactor, session, second).start()
    version = await session.finish()
    assert session.received == len(second)
    assert [e.length for e in version.extents] == [len(first), len(second)]
    got, _ = await env.download("/log")
    assert got == first + second


@pytest_twisted.ensureDeferred
async def test_rest_below_the_committed_size_truncates_then_continues(env):
    data = payload(500_000)
    await env.upload("/f", data)
    version = await env.upload("/f", b"TAIL", offset=1000)
    assert version.size == 1004
    got, _ = await env.download("/f")
    assert got == data[:1000] + b"TAIL"


@pytest_twisted.ensureDeferred
async def test_resume_above_the_size_is_refused_and_changes_nothing(env):
    data = payload(10_000)
    await env.upload("/f", data)
    with pytest.raises(OffsetTooLarge):
        await env.transfers.open_write(env.user, "/f", len(data) + 1)
    got, _ = await env.download("/f")
    assert got == data
    assert await env.catalog.find_upload("/alice/f") is None


@pytest_twisted.ensureDeferred
async def test_interrupted_upload_resumes_at_its_durable_offset(env):
    data = payload(2 * MiB)
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, data, stop_at=MiB + 77).start()
    await session.interrupt()
    info = await env.transfers.stat(env.user, "/f")
    assert info.pending and info.size == MiB + 77
    resumed = await env.transfers.open_write(env.user, "/f", append=True)
    assert resumed.offset == MiB + 77
    await Feeder(env.reactor, resumed, data[MiB + 77 :]).start()
    version = await resumed.finish()
    assert resumed.received == len(data) - (MiB + 77)
    assert version.size == len(data)
    got, _ = await env.download("/f")
    assert sha256(got) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_resume_below_the_durable_offset_rolls_back(env):
    data = payload(MiB)
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"z" * 600_000).start()
    await session.interrupt()
    resumed = await env.transfers.open_write(env.user, "/f", 400_000)
    await Feeder(env.reactor, resumed, data[400_000:]).start()
    await resumed.finish()
    got, _ = await env.download("/f")
    assert got == b"z" * 400_000 + data[400_000:]


@pytest_twisted.ensureDeferred
async def test_resume_above_the_durable_offset_is_refused(env):
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"q" * 1000).start()
    await session.interrupt()
    with pytest.raises(OffsetTooLarge):
        await env.transfers.open_write(env.user, "/f", 1001)
    info = await env.transfers.stat(env.user, "/f")
    assert info.size == 1000


@pytest_twisted.ensureDeferred
async def test_expired_upload_disappears(env):
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"q" * 1000).start()
    await session.interrupt()
    expired = await env.catalog.expire_uploads(env.reactor.seconds() + 10 * 86400)
    assert [u.path for u in expired] == ["/alice/f"]
    with pytest.raises(catalog_errors.NotFound):
        await env.transfers.stat(env.user, "/f")


@pytest_twisted.ensureDeferred
async def test_quota_is_enforced_mid_stream(env):
    await env.catalog.set_quota("alice", 100_000, None)
    user = await env.refresh_user()
    session = await env.transfers.open_write(user, "/f", 0)
    failed = session.when_failed()
    await Feeder(env.reactor, session, payload(300_000)).start()
    from wsfront.transfer.errors import QuotaExceeded

    with pytest.raises(QuotaExceeded):
        await failed
    with pytest.raises(QuotaExceeded):
        await session.finish()
    assert session.received <= 100_000
    # Not left active (a live upload of this front end) until it expires.
    await session._interrupting
    assert (await env.catalog.get_upload(session.upload_id)).state == "interrupted"
    # ... and it counts among the user's pending uploads here.
    assert env.transfers.pending_per_user.count("alice") == 1


# -- failures ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_read_fails_over_when_the_serving_replica_dies(env):
    data = payload(16 * MiB)
    await env.upload("/f", data)
    handle = await env.transfers.open_read(env.user, "/f")
    sink = PausingCollector(pause_at=MiB)
    done = handle.stream.start(sink)
    await sink.paused
    serving = handle.stream.serving
    await env.kill(serving)
    killed_at = sink.received
    sink.producer.resumeProducing()
    await done
    assert 0 < killed_at < len(data)
    assert sha256(sink.data) == sha256(data)
    assert handle.stream.failovers == 1
    assert handle.stream.serving != serving
    assert env.transfers.stats.read_failovers == 1
    assert [e.kind for e in env.transfers.stats.events] == ["failover"]


@pytest_twisted.ensureDeferred
async def test_read_survives_a_flipped_byte_in_one_replica(env):
    data = payload(MiB)
    version = await env.upload("/f", data)
    [extent] = version.extents
    # A blob's only reader starts on the replica that kept its page cache:
    # damage that one, so the first download fails over at the bad block;
    # the second starts on the other once the damaged one is marked stale.
    first = cached_replica(extent.blob_id, [r.node for r in extent.replicas])
    env.corrupt(first, extent.blob_id, 300_000)
    got1, stream1 = await env.download("/f")
    got2, stream2 = await env.download("/f")
    assert sha256(got1) == sha256(got2) == sha256(data)
    assert stream1.failovers == 1 and stream2.failovers <= 1


@pytest_twisted.ensureDeferred
async def test_a_replica_whose_data_file_is_gone_is_damage_read_elsewhere_and_marked(tmp_path):
    """A sealed blob's ``.data`` removed on one server (its record and
    checksums left) is damage, as a flipped block is: the read fails over
    and the replica is marked stale for repair, and no server path reaches
    the front end."""
    from twisted.internet import reactor
    from twisted.logger import formatEvent, globalLogPublisher

    from wsfront.catalog.records import REPLICA_STALE

    env = await TransferEnv(reactor, tmp_path).start()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        data = payload(MiB)
        version = await env.upload("/f", data)
        [extent] = version.extents
        first = cached_replica(extent.blob_id, [r.node for r in extent.replicas])
        os.unlink(env.nodes[first].blob_path(extent.blob_id))
        got, stream = await env.download("/f")
        assert sha256(got) == sha256(data)
        assert stream.failovers == 1

        async def state() -> str:
            blob = await env.catalog.get_blob(extent.blob_id)
            return {r.node: r.state for r in blob.replicas}[first]

        deadline = reactor.seconds() + 10
        while await state() != REPLICA_STALE:
            assert reactor.seconds() < deadline, "the replica was never marked stale"
            await task.deferLater(reactor, 0.01, lambda: None)
        failovers = [e for e in env.transfers.stats.events if e.kind == "failover"]
        assert failovers and str(tmp_path) not in repr(failovers)
        assert not [e for e in events if e.get("log_level") and e["log_level"].name == "critical"]
        assert str(tmp_path) not in "\n".join(formatEvent(e) for e in events if "log_failure" in e)
    finally:
        globalLogPublisher.removeObserver(events.append)
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_write_survives_a_replica_dying_and_is_under_replicated(env):
    data = payload(3 * MiB)
    session = await env.transfers.open_write(env.user, "/f", 0)
    feeder = Feeder(env.reactor, session, data)
    done = feeder.start()
    while feeder.pos < MiB:
        await task.deferLater(env.reactor, 0.001, lambda: None)
    victim = session.replicas[0]
    await env.kill(victim)
    await done
    version = await session.finish()
    assert victim not in session.replicas
    got, _ = await env.download("/f")
    assert sha256(got) == sha256(data)
    assert await env.catalog.count_under_replicated() == 1
    assert version.size == len(data)


@pytest_twisted.ensureDeferred
async def test_every_replica_dying_mid_write_leaves_the_upload_interrupted(env):
    data = payload(300_000)
    session = await env.transfers.open_write(env.user, "/f", 0)
    failed = session.when_failed()
    await Feeder(env.reactor, session, data).start()
    await session.checkpoint()
    for node in session.replicas:
        await env.kill(node)
    session.write(b"more")
    with pytest.raises(NoReplicasAvailable):
        await failed
    await session._interrupting  # the catalog update _fail started
    upload = await env.catalog.find_upload("/alice/f")
    assert (upload.state, upload.checkpoint) == ("interrupted", len(data))
    assert not env.transfers.sessions


@pytest_twisted.ensureDeferred
async def test_takeover_fences_the_old_writer(env):
    data = payload(2 * MiB)
    session_a = await env.transfers.open_write(env.user, "/f", 0)
    failed_a = session_a.when_failed()
    await Feeder(env.reactor, session_a, data[:MiB]).start()
    await session_a.checkpoint()
    fe_b = await env.front_end("fe-b")
    session_b = await fe_b.open_write(env.user, "/f", append=True)
    assert session_b.offset == MiB
    assert session_b.epoch == session_a.epoch + 1
    # A wakes up and writes on: its write is refused for its epoch.
    session_a.write(b"stale bytes from A")
    with pytest.raises(SessionFenced):
        await failed_a
    with pytest.raises(SessionFenced):
        await session_a.finish()
    assert (fe_b.stats.takeovers, env.transfers.stats.fenced) == (1, 1)
    await Feeder(env.reactor, session_b, data[MiB:]).start()
    await session_b.finish()
    assert fe_b.stats.uploads_committed == 1
    got, _ = await env.download("/f")
    assert sha256(got) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_takeover_fences_the_old_writer_of_a_small_upload_held_for_a_put(env):
    """A's small upload is still in memory (a put at commit, no blob on
    storage yet) when B takes over at 0: B's fence creates the blob empty at
    its epoch, so A's put is refused for its epoch on every replica and
    nothing of A's is sealed on storage."""
    data = payload(1000)
    session_a = await env.transfers.open_write(env.user, "/f", 0)
    old_blob, old_epoch = session_a.blob_id, session_a.epoch
    replicas = session_a.replicas
    session_a.write(data)
    fe_b = await env.front_end("fe-b")
    session_b = await fe_b.open_write(env.user, "/f", 0)
    assert (session_b.offset, session_b.epoch) == (0, old_epoch + 1)
    with pytest.raises(SessionFenced):
        await session_a.finish()
    for node in replicas:
        info = await env.transfers.pool.client(node).stat(old_blob)
        assert (info.state, info.size, info.epoch) == ("open", 0, old_epoch + 1)
    new = b"from B"
    await Feeder(env.reactor, session_b, new).start()
    await session_b.finish()
    got, _ = await env.download("/f")
    assert got == new


@pytest_twisted.ensureDeferred
async def test_takeover_keeps_replicas_the_old_writer_already_sealed(env):
    """A finishing writer seals its replicas before its catalog commit; a
    takeover landing between the two fences blobs sealed past the durable
    offset it resumes at.  Sealed bytes cannot change, so those replicas
    stay in the replica set (the extent references the first bytes only)
    and the resume goes on, instead of every replica being marked stale."""
    data = payload(2 * MiB)
    session_a = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session_a, data[:MiB]).start()
    await session_a.checkpoint()
    await Feeder(env.reactor, session_a, data[MiB:]).start()
    blob, epoch, replicas = session_a.blob_id, session_a.epoch, session_a.replicas
    for node in replicas:  # what A's finish does before its catalog commit
        await env.transfers.pool.client(node).commit(blob, epoch)
    fe_b = await env.front_end("fe-b")
    session_b = await fe_b.open_write(env.user, "/f", append=True)
    assert (session_b.offset, session_b.epoch) == (MiB, epoch + 1)
    upload = await env.catalog.find_upload("/alice/f")
    assert upload.blob_id != blob
    # A's own seals now find its blobs sealed (the test sealed them for it):
    # it fails, and commits nothing.
    with pytest.raises(NoReplicasAvailable):
        await session_a.finish()
    rest = payload(MiB // 2, seed=2)
    await Feeder(env.reactor, session_b, rest).start()
    await session_b.finish()
    got, _ = await env.download("/f")
    assert sha256(got) == sha256(data[:MiB] + rest)
    record = await env.catalog.get_blob(blob)
    assert sorted(r.node for r in record.replicas if r.state == "ok") == sorted(replicas)


@pytest_twisted.ensureDeferred
async def test_two_front_ends_racing_to_take_over_one_wins(env):
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"a" * 1000).start()
    await session.interrupt()
    fe_b = await env.front_end("fe-b")
    fe_c = await env.front_end("fe-c")
    # Both saw the same session (same epoch) and race to take it over.
    upload = await env.catalog.find_upload("/alice/f")
    results = await defer.DeferredList(
        [
            defer.ensureDeferred(fe_b._take_over(env.user, upload, 1000, upload.declared_length)),
            defer.ensureDeferred(fe_c._take_over(env.user, upload, 1000, upload.declared_length)),
        ],
        consumeErrors=True,
    )
    assert sorted(ok for ok, _ in results) == [False, True]
    [loser] = [v for ok, v in results if not ok]
    assert loser.check(UploadBusy)
    [winner] = [v for ok, v in results if ok]
    await Feeder(env.reactor, winner, b"b" * 10).start()
    await winner.finish()
    got, _ = await env.download("/f")
    assert got == b"a" * 1000 + b"b" * 10


@pytest_twisted.ensureDeferred
async def test_delete_is_refused_while_a_pending_upload_is_live(env):
    await env.upload("/f", b"committed")
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"new").start()
    with pytest.raises(UploadBusy):
        await env.transfers.delete(env.user, "/f")
    await session.finish()
    await env.transfers.delete(env.user, "/f")
    with pytest.raises(catalog_errors.NotFound):
        await env.transfers.stat(env.user, "/f")


@pytest_twisted.ensureDeferred
async def test_checkpoints_keep_a_long_upload_from_expiring(env):
    session = await env.transfers.open_write(env.user, "/f", 0)
    first = (await env.catalog.get_upload(session.upload_id)).expires_at
    await Feeder(env.reactor, session, b"x" * 1000).start()
    await session.checkpoint()
    later = (await env.catalog.get_upload(session.upload_id)).expires_at
    assert later >= first
    assert later >= env.reactor.seconds() + env.transfers.settings.upload_expiry - 60
    await session.finish()


@pytest_twisted.ensureDeferred
async def test_a_draining_front_end_takes_no_new_sessions_and_says_so_per_protocol(env):
    from wsfront.ftp.errors_map import reply_for
    from wsfront.http.errors_map import http_error
    from wsfront.transfer.errors import Draining

    await env.upload("/f", b"abc")
    env.transfers.draining = True
    with pytest.raises(Draining) as read:
        await env.transfers.open_read(env.user, "/f")
    with pytest.raises(Draining):
        await env.transfers.open_write(env.user, "/g", 0)
    assert reply_for(read.value)[0] == 421
    assert http_error(read.value).status == 503


@pytest_twisted.ensureDeferred
async def test_a_quick_uploads_one_log_line_comes_after_the_caller_has_its_answer(env):
    """An upload that commits within its first checkpoint period writes no
    start line, and its one line (start and commit: ``upload_log``) comes a
    reactor turn after ``finish`` fires, so an adapter's reply (FTP 226)
    goes out before it is formatted and written."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    committed: defer.Deferred = defer.Deferred()

    def observe(event) -> None:
        if event.get("id") is None or "upload {id}" not in (event.get("log_format") or ""):
            return
        events.append(event)
        if "committed" in event["log_format"] and not committed.called:
            committed.callback(event)

    globalLogPublisher.addObserver(observe)
    try:
        session = await env.transfers.open_write(env.user, "/logged", 0)
        await Feeder(env.reactor, session, b"x" * 4096).start()
        version = await session.finish()
        assert version.size == 4096 and not committed.called
        event = await committed
        assert (event["id"], event["size"], event["offset"]) == (session.upload_id, 4096, 0)
        assert event["path"].endswith("/logged") and event["user"] == env.user.name
        assert [e["id"] for e in events] == [session.upload_id], "one line for the upload"
    finally:
        globalLogPublisher.removeObserver(observe)
