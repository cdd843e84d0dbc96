"""The transfer layer holds a user's pending uploads against their quota:
a new upload gets the room the committed files and the other pending
uploads leave (refused mid-stream past it), a resume is not charged
twice for its own bytes, and a checkpoint the catalog refuses for the
quota (two uploads that each saw the room free) ends that session with
QuotaExceeded, its upload pending at the checkpoint before.  Real storage
servers, a real SQLite catalog."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.transfer_env import Feeder, TransferEnv
from wsfront.transfer.errors import QuotaExceeded

QUOTA = 100_000


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path)
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    pytest_twisted.blockon(e.catalog.set_quota("alice", QUOTA, None))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def usage(env) -> tuple[int, int]:
    user = await env.refresh_user()
    return user.used_bytes, user.pending_bytes


async def leave_pending(env, vpath: str, size: int) -> None:
    """An upload of ``size`` bytes whose client went away (kept, resumable)."""
    session = await env.transfers.open_write(await env.refresh_user(), vpath, 0)
    await Feeder(env.reactor, session, b"p" * size).start()
    await session.interrupt()


@pytest_twisted.ensureDeferred
async def test_a_new_upload_gets_the_room_pending_uploads_leave(env):
    await leave_pending(env, "/held", 60_000)
    assert await usage(env) == (0, 60_000)
    session = await env.transfers.open_write(await env.refresh_user(), "/other", 0)
    failed = session.when_failed()
    await Feeder(env.reactor, session, b"o" * 60_000).start()
    with pytest.raises(QuotaExceeded):
        await failed
    assert session.received <= QUOTA - 60_000
    with pytest.raises(QuotaExceeded):
        await session.finish()
    assert (await usage(env))[0] == 0


@pytest_twisted.ensureDeferred
async def test_a_resume_has_the_room_of_its_own_bytes(env):
    await leave_pending(env, "/held", 60_000)
    session = await env.transfers.open_write(await env.refresh_user(), "/held", 60_000)
    await Feeder(env.reactor, session, b"r" * 40_000).start()
    version = await session.finish()
    assert version.size == QUOTA
    assert await usage(env) == (QUOTA, 0)


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_past_the_quota_ends_its_session_pending(env):
    user = await env.refresh_user()  # both see the whole quota free
    first = await env.transfers.open_write(user, "/a", 0)
    second = await env.transfers.open_write(user, "/b", 0)
    failed = second.when_failed()
    await Feeder(env.reactor, first, b"a" * 60_000).start()
    await Feeder(env.reactor, second, b"b" * 60_000).start()
    await first.checkpoint()
    await second.checkpoint()
    with pytest.raises(QuotaExceeded):
        await failed
    await second.when_recorded()
    upload = await env.catalog.get_upload(second.upload_id)
    assert (upload.state, upload.checkpoint) == ("interrupted", 0)
    assert await usage(env) == (0, 60_000)
    assert (await first.finish()).size == 60_000
    assert await usage(env) == (60_000, 0)


@pytest_twisted.ensureDeferred
async def test_an_interruption_past_the_quota_is_recorded_at_the_checkpoint_before(env):
    """A client goes away after bytes the quota has no room for (another
    upload of theirs took it meanwhile): its upload is still recorded
    interrupted, pending at its last checkpoint, not left active here."""
    user = await env.refresh_user()
    first = await env.transfers.open_write(user, "/a", 0)
    second = await env.transfers.open_write(user, "/b", 0)
    await Feeder(env.reactor, first, b"a" * 60_000).start()
    await Feeder(env.reactor, second, b"b" * 60_000).start()
    await first.checkpoint()
    await second.interrupt()
    upload = await env.catalog.get_upload(second.upload_id)
    assert (upload.state, upload.checkpoint) == ("interrupted", 0)
    assert await usage(env) == (0, 60_000)


@pytest_twisted.ensureDeferred
async def test_a_resumed_overwrite_has_the_room_of_the_file_it_replaces(env):
    """An 80k file overwritten, the overwrite interrupted at 90k (charged
    10k pending: its bytes past the 80k it replaces), resumed at 90k with
    the last 10k: the commit fits the quota exactly.  The takeover's room
    counts the replaced 80k, and the upload's own charge (10k) once."""
    session = await env.transfers.open_write(await env.refresh_user(), "/g", 0)
    await Feeder(env.reactor, session, b"x" * 80_000).start()
    await session.finish()
    await leave_pending(env, "/g", 90_000)
    assert await usage(env) == (80_000, 10_000)
    session = await env.transfers.open_write(await env.refresh_user(), "/g", 90_000)
    await Feeder(env.reactor, session, b"z" * 10_000).start()
    version = await session.finish()
    assert version.size == QUOTA
    assert await usage(env) == (QUOTA, 0)
