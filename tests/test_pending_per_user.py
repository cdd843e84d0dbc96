"""A cap on the interrupted uploads one user leaves pending.

Each upload cut short stays pending for a day, resumable; the per-user
session cap counts only transfers running at once, so a user who starts
uploads and hangs up at once piled them up without bound (catalog rows,
blob files and a record in each replica's memory).  Past
``max_pending_uploads_per_user`` a new upload is refused as a quota (FTP
552, HTTP 507) with a message that says why; resuming a pending one never
is, and one resumed, cancelled or expired stops counting.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.task import Clock

from tests.ftp_env import FTPEnv
from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of
from tests.transfer_env import PASSWORD, TransferEnv
from wsfront.transfer.errors import QuotaExceeded, TooManyPendingUploads
from wsfront.transfer.pending_per_user import PendingPerUser


class _Upload:
    def __init__(self, user: str, upload_id: str, expires_at: float) -> None:
        self.user, self.upload_id, self.expires_at = user, upload_id, expires_at


def test_pending_uploads_count_per_user_until_resumed_or_expired():
    clock = Clock()
    pending = PendingPerUser(clock, limit=2, expiry=100.0)
    pending.add("alice", "u1")
    clock.advance(50)
    pending.add("alice", "u2")
    pending.add("bob", "u3")
    assert pending.full("alice") and not pending.full("bob")
    assert isinstance(pending.refuse("alice"), QuotaExceeded)
    pending.discard("u2")  # resumed
    assert pending.count("alice") == 1
    pending.add("alice", "u2")
    clock.advance(50)  # u1 expires
    assert pending.count("alice") == 1 and not pending.full("alice")
    pending.reset([_Upload("carol", "u9", clock.seconds() + 10)])
    assert (pending.count("alice"), pending.count("bob"), pending.count("carol")) == (0, 0, 1)
    assert not PendingPerUser(clock, limit=None, expiry=1.0).full("anyone")


def test_what_changes_while_the_count_is_taken_again_is_kept():
    """The catalog's answer predates an upload interrupted or resumed here
    while the query ran: those changes are applied on top of it, and no
    second count is due meanwhile."""
    clock = Clock()
    pending = PendingPerUser(clock, limit=5, expiry=100.0)
    pending.add("alice", "u1")
    pending.add("alice", "u2")
    pending.begin_refresh()
    assert not pending.may_refresh()  # one count at a time, however many opens
    pending.add("alice", "u3")  # interrupted during the query
    pending.discard("u1")  # resumed during the query
    pending.reset([_Upload("alice", "u1", 90.0), _Upload("alice", "u2", 90.0)])
    assert pending.count("alice") == 2  # u2 and u3; u1 not back from the dead
    pending.add("alice", "u4")
    assert pending.count("alice") == 3
    pending.begin_refresh()
    pending.add("bob", "u5")
    pending.abandon_refresh()  # the catalog did not answer: counts as they were
    assert (pending.count("alice"), pending.count("bob")) == (3, 1)


@pytest_twisted.ensureDeferred
async def test_a_new_upload_past_the_cap_is_refused_and_a_resume_is_not(tmp_path):
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path, max_pending_uploads_per_user=2).start()
    try:
        transfers, user = env.transfers, env.user
        for name in ("/a.bin", "/b.bin"):
            session = await transfers.open_write(user, name, 0)
            session.write(b"x" * 1000)
            await session.interrupt()
        assert transfers.pending_per_user.count(user.name) == 2
        with pytest.raises(TooManyPendingUploads, match="2 interrupted uploads pending"):
            await transfers.open_write(user, "/c.bin", 0)
        assert transfers.per_user.running(user.name) == 0, "the refusal gives its slot back"
        # Resuming one is allowed, and leaves one fewer pending.
        session = await transfers.open_write(user, "/a.bin", 1000)
        session.write(b"y" * 10)
        await session.finish()
        assert transfers.pending_per_user.count(user.name) == 1
        session = await transfers.open_write(user, "/c.bin", 0)
        await session.interrupt()
        # One cancelled behind this front end's back (tus DELETE) stops
        # counting once the counts are taken from the catalog again.
        transfers.pending_per_user.refresh_seconds = 0
        pending = await transfers.stat(user, "/b.bin")
        await transfers.catalog.abort_upload(pending.upload_id)
        session = await transfers.open_write(user, "/d.bin", 0)
        session.write(b"z")
        await session.finish()
    finally:
        await env.stop()


async def _until(condition, what: str) -> None:
    from twisted.internet import reactor

    for _ in range(1000):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"never: {what}")


def _auth() -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()) + b"\r\n"


def _put(path: bytes, length: int, extra: bytes = b"") -> bytes:
    return (
        b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\n" + _auth() + extra
        + b"Content-Length: %d\r\n\r\n" % length
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_http_past_the_cap_gets_507_saying_why_and_a_resume_gets_201(tmp_path):
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path, max_pending_uploads_per_user=2).start()
    try:
        port = env.port.getHost().port
        transfers = env.transfers
        for i in range(2):
            c = await connect(reactor, port)
            c.send(_put(b"/cut%d.bin" % i, 100) + b"abc")
            await _until(lambda: transfers.sessions, "the upload runs")
            c.close()
            await _until(lambda: not transfers.sessions, "the upload is interrupted")
        assert transfers.pending_per_user.count("alice") == 2
        c = await connect(reactor, port)
        c.send(_put(b"/new.bin", 3) + b"new")
        answer = await c.until(b"interrupted uploads pending")
        assert head_of(answer)[0] == 507, answer
        c.close()
        c = await connect(reactor, port)
        c.send(_put(b"/cut0.bin", 97, b"Content-Range: bytes 3-99/100\r\n") + b"d" * 97)
        assert b"HTTP/1.1 201 " in await c.until(b"HTTP/1.1 201 ")
        c.close()
        response = await env.request("GET", "/cut0.bin")
        assert await response.content() == b"abc" + b"d" * 97
        response = await env.request("PUT", "/new.bin", data=b"new")
        await response.content()
        assert response.code == 201
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_ftp_past_the_cap_gets_552_saying_why_and_appe_resumes(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, max_pending_uploads_per_user=1).start()
    try:
        c = await env.client()
        await c.cmd("TYPE I")
        peer = await c.data_connection(await c.epsv())
        assert (await c.cmd("STOR part"))[0] == 150
        peer.transport.write(b"p" * 5000)
        await _until(
            lambda: any(s.received >= 5000 for s in env.transfers.sessions.values()),
            "the server relayed the bytes",
        )
        assert (await c.cmd("ABOR"))[0] == 426
        assert (await c.reply())[0] == 226
        assert env.transfers.pending_per_user.count("alice") == 1
        code, text = await c.stor("other", b"o" * 10)
        assert code == 552 and "interrupted uploads pending" in text, (code, text)
        assert (await c.stor("part", b"q" * 10, verb="APPE"))[0] == 226
        assert await c.retr("part") == b"p" * 5000 + b"q" * 10
        assert (await c.stor("other", b"o" * 10))[0] == 226
    finally:
        await env.stop()
