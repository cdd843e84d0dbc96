"""A failed upload's interruption, tried again while the catalog is out,
against the catalog's end and against an interruption that did commit.

A retry still waiting when the front end stops is cancelled when the catalog
closes (``ICatalog.when_closed``), not run into the closed catalog to log
"could not record its interruption: catalog is closed" at every shutdown.
A retry that finds the session moved on (taken over after an earlier
attempt committed, its answer lost) has nothing to record: it says so at
info, not as a failure.  On a real SQLite catalog, locked from outside."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.catalog_outage import make_writes_wait_briefly, write_locked
from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog import errors as catalog_errors

RETRYING = "upload {id} could not record its interruption, again in"
GAVE_UP = "upload {id} could not record its interruption: "
MOVED_ON = "upload {id} needs no interruption recorded"


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend="fake")
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


class Events:
    """Log events of the writer's interruption, as they come."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self._waiting: list[tuple[tuple[str, ...], defer.Deferred]] = []
        globalLogPublisher.addObserver(self)

    def __call__(self, event: dict) -> None:
        if not (event.get("log_format") or "").startswith("upload {id} "):
            return
        self.seen.append(event)
        for starts, d in list(self._waiting):
            if event["log_format"].startswith(starts):
                self._waiting.remove((starts, d))
                d.callback(event)

    def first(self, *starts: str) -> defer.Deferred:
        """Fires with the first event (from now) whose format starts so."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((starts, d))
        return d

    def formats(self) -> list[str]:
        return [e["log_format"] for e in self.seen]

    def stop(self) -> None:
        globalLogPublisher.removeObserver(self)


@pytest.fixture
def events():
    e = Events()
    yield e
    e.stop()


def pending_retries(reactor) -> list:
    """The writer's interruption retries still scheduled on the reactor."""
    return [
        call
        for call in reactor.getDelayedCalls()
        if call.active()
        and getattr(call.func, "__qualname__", "").startswith("WriteSession._record_interrupted")
    ]


async def failed_upload(env, events) -> object:
    """An upload whose commit and first interruption the locked catalog
    refused; returns its session, a retry scheduled."""
    from twisted.internet import reactor

    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"abc").start()
    await session.checkpoint()
    await make_writes_wait_briefly(env.catalog)
    retrying = events.first(RETRYING)
    with write_locked(env.catalog_dir / "catalog.sqlite"):
        with pytest.raises(catalog_errors.CatalogUnavailable):
            await session.finish()
        await retrying.addTimeout(30, reactor)
    return session


@pytest_twisted.ensureDeferred
async def test_a_retry_waiting_when_the_catalog_closes_is_cancelled(env, events):
    from twisted.internet import reactor

    session = await failed_upload(env, events)
    assert len(pending_retries(reactor)) == 1
    await env.catalog.close()
    assert pending_retries(reactor) == []
    # One that was already on its way meets a closed catalog: no warning.
    await session._record_interrupted(1)
    assert not [f for f in events.formats() if f.startswith(GAVE_UP)]


@pytest_twisted.ensureDeferred
async def test_a_retry_of_an_interruption_that_committed_is_quiet(env, events, monkeypatch):
    """The first attempt commits but its answer is lost (a PostgreSQL
    connection lost inside the commit: CatalogUnavailable); the client
    resumes on another front end before the retry, which then meets the
    new epoch: the session is fenced off, nothing to record."""
    from twisted.internet import reactor

    cat = env.catalog
    interrupt, commit = cat.interrupt_upload, cat.commit_upload

    def commit_refused(*args, **kwargs):
        monkeypatch.setattr(cat, "commit_upload", commit)
        return defer.fail(catalog_errors.CatalogUnavailable("postgresql: server closed"))

    async def committed_answer_lost(upload_id, epoch):
        monkeypatch.setattr(cat, "interrupt_upload", interrupt)
        await interrupt(upload_id, epoch)
        await cat.take_over(upload_id, epoch, "fe2")
        raise catalog_errors.CatalogUnavailable("postgresql: server closed the connection")

    monkeypatch.setattr(cat, "commit_upload", commit_refused)
    monkeypatch.setattr(
        cat, "interrupt_upload", lambda *a: defer.ensureDeferred(committed_answer_lost(*a))
    )
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"abc").start()
    ended = events.first(MOVED_ON, GAVE_UP)
    with pytest.raises(catalog_errors.CatalogUnavailable):
        await session.finish()
    event = await ended.addTimeout(30, reactor)
    assert event["log_format"].startswith(MOVED_ON), event["log_format"]
    assert event["log_level"].name == "info"
    up = await cat.get_upload(session.upload_id)
    assert (up.state, up.epoch, up.owner) == ("active", 2, "fe2")
