"""The log lines of an upload (wsfront/transfer/upload_log.py): one line
for an upload that commits within its first checkpoint period, saying who
stored what where; a start line first for one that runs longer, or that
ends otherwise than by a commit.  Over real storage servers and SQLite."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.transfer_env import Feeder, TransferEnv

NAMESPACE = "wsfront.transfer.upload_log"


class Lines:
    """The upload_log events of one test, and Deferreds that fire on the
    first event whose format starts with a given text (no sleeping)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._waiting: list[tuple[str, defer.Deferred]] = []

    def __call__(self, event: dict) -> None:
        if event.get("log_namespace") != NAMESPACE:
            return
        self.events.append(event)
        for waited in list(self._waiting):
            prefix, d = waited
            if event["log_format"].startswith(prefix):
                self._waiting.remove(waited)
                d.callback(event)

    def next(self, prefix: str) -> defer.Deferred:
        """Fires with the next such event; fails after 10 s without one."""
        from twisted.internet import reactor

        d: defer.Deferred = defer.Deferred()
        self._waiting.append((prefix, d))
        return d.addTimeout(10, reactor)

    def of(self, upload_id: str) -> list[str]:
        """The formats of ``upload_id``'s lines, in order."""
        return [e["log_format"].split(":")[0] for e in self.events if e["id"] == upload_id]


@pytest.fixture
def lines():
    observer = Lines()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def make_env(tmp_path, **settings):
    from twisted.internet import reactor

    env = TransferEnv(reactor, tmp_path, **settings)
    return pytest_twisted.blockon(defer.ensureDeferred(env.start()))


@pytest.fixture
def env(tmp_path):
    e = make_env(tmp_path)
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest.fixture
def ticking(tmp_path):
    """Checkpoint timer ticks every 50 ms: an upload outlives its first
    checkpoint period without a test waiting seconds."""
    e = make_env(tmp_path, checkpoint_seconds=0.05)
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_a_quick_upload_writes_one_line_that_says_who_stored_what_where(env, lines):
    committed = lines.next("upload {id} committed")
    version = await env.upload("/a.txt", os.urandom(4096))
    event = await committed
    assert lines.of(event["id"]) == ["upload {id} committed"]
    assert (event["user"], event["size"], event["offset"]) == ("alice", version.size, 0)
    assert event["path"].endswith("/a.txt")
    assert sorted(event["replicas"].split(",")) == sorted(
        r.node for r in version.extents[0].replicas
    )


@pytest_twisted.ensureDeferred
async def test_an_upload_past_its_first_checkpoint_period_writes_its_start_line_then(
    ticking, lines
):
    env = ticking
    started = lines.next("upload {id} starts")
    session = await env.transfers.open_write(env.user, "/long.bin", 0)
    await Feeder(env.reactor, session, os.urandom(10_000)).start()
    event = await started  # the first timer tick, while the upload runs
    assert event["id"] == session.upload_id
    assert event["path"].endswith("/long.bin") and event["user"] == "alice"
    assert event["offset"] == 0 and event["ago"] >= 0.05
    committed = lines.next("upload {id} committed")
    await session.finish()
    event = await committed
    # The start line said who and where: the commit line is the short one.
    assert "user" not in event and event["size"] == 10_000
    assert lines.of(session.upload_id) == ["upload {id} starts", "upload {id} committed"]


@pytest_twisted.ensureDeferred
async def test_an_aborted_upload_writes_its_start_line_before_its_end(env, lines):
    session = await env.transfers.open_write(env.user, "/gone.bin", 0)
    session.write(b"x" * 1000)
    assert lines.of(session.upload_id) == []  # not yet: it may still commit
    await session.abort()
    assert lines.of(session.upload_id) == ["upload {id} starts"]
    [start] = [e for e in lines.events if e["id"] == session.upload_id]
    assert start["path"].endswith("/gone.bin")


@pytest_twisted.ensureDeferred
async def test_an_interrupted_upload_writes_its_start_line(env, lines):
    session = await env.transfers.open_write(env.user, "/cut.bin", 0)
    await Feeder(env.reactor, session, os.urandom(5000)).start()
    await session.interrupt()
    assert lines.of(session.upload_id) == ["upload {id} starts"]
    info = await env.transfers.stat(env.user, "/cut.bin")
    assert info.pending and info.size == 5000


class FailedWriter:
    """A replica writer that failed before its session was built (its
    connection dropped between the open and the session)."""

    def registerProducer(self, producer, streaming) -> None:
        pass

    def when_failed(self) -> defer.Deferred:
        return defer.fail(RuntimeError("replica connection lost"))

    def abort(self) -> defer.Deferred:
        return defer.succeed(None)


class Interrupts:
    """The one catalog call a session failing at its start makes."""

    def __init__(self) -> None:
        self.interrupted: list[tuple[str, int]] = []

    def interrupt_upload(self, upload_id: str, epoch: int) -> defer.Deferred:
        self.interrupted.append((upload_id, epoch))
        return defer.succeed(None)


def test_a_session_whose_only_replica_failed_before_it_was_built_logs_its_start_then_its_end(
    lines,
):
    """Its writer's failure fires as the session registers for it, inside
    the constructor: the start line (handed to the constructor) comes
    first, once, then the end; and the constructor survives the writer
    dropping out of the dict it walks."""
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from wsfront.catalog.records import UploadSession
    from wsfront.transfer.pool import StoragePool
    from wsfront.transfer.upload_log import StartLine
    from wsfront.transfer.writer import FAILED, WriteSession

    ends: list[dict] = []

    def end_lines(event):
        if (event.get("log_format") or "").startswith("upload {id} ends"):
            ends.append(event)
            lines.events.append(event)  # in order with the start line

    globalLogPublisher.addObserver(end_lines)
    try:
        clock = Clock()
        upload = UploadSession(
            "u1", 7, "/alice/f", "alice", (), "b" + "0" * 32, 0, (), 2, 0, "fe-a", 1,
            "active", None, {}, 0.0, 0.0, 60.0,
        )  # fmt: skip
        catalog = Interrupts()
        line = StartLine("u1", "alice", "/alice/f", 0, "s1", clock.seconds())
        session = WriteSession(
            clock, StoragePool(clock), catalog, upload, {"s1": FailedWriter()}, start_line=line
        )
    finally:
        globalLogPublisher.removeObserver(end_lines)
    assert session.state == FAILED
    assert [e["log_format"].split(":")[0] for e in lines.events] == [
        "upload {id} starts",
        "upload {id} ends",
    ]
    assert catalog.interrupted == [("u1", 1)]


@pytest_twisted.ensureDeferred
async def test_an_upload_no_replica_takes_writes_its_start_line_before_it_fails(tmp_path, lines):
    """Write streams (no put at commit), every storage server gone: no
    session opens, and the start line still says which upload failed."""
    from twisted.internet import reactor

    from wsfront.transfer.errors import NoReplicasAvailable

    env = await TransferEnv(reactor, tmp_path, put_limit=0).start()
    try:
        for name in list(env.nodes):
            await env.kill(name)
        with pytest.raises(NoReplicasAvailable):
            await env.transfers.open_write(env.user, "/nowhere.bin", 0)
        [start] = lines.events
        assert start["log_format"].startswith("upload {id} starts")
        assert start["path"].endswith("/nowhere.bin") and start["user"] == "alice"
    finally:
        await env.stop()
