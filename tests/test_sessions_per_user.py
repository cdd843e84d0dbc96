"""Sessions per user: a cap on the transfers one user runs at once.

Counted in the transfer layer (``Transfers.per_user``), so the same cap holds
for FTP (450), HTTP and tus (429 with ``Retry-After``); a slot comes back
when its transfer ends however it ends, and other users are never affected.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.ftp_env import FTPEnv
from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of
from tests.security_support import BOB_PASSWORD
from tests.transfer_env import PASSWORD, Collector, TransferEnv
from wsfront.transfer.errors import TooManySessions
from wsfront.transfer.sessions_per_user import SessionsPerUser


def test_slots_are_counted_per_user_and_given_back_once():
    sessions = SessionsPerUser(limit=2)
    a1, a2 = sessions.acquire("alice"), sessions.acquire("alice")
    with pytest.raises(TooManySessions):
        sessions.acquire("alice")
    sessions.acquire("bob")  # another user has slots of their own
    a1.release()
    a1.release()  # a second release changes nothing
    assert sessions.running("alice") == 1
    sessions.acquire("alice")
    with pytest.raises(TooManySessions):
        sessions.acquire("alice")
    assert sessions.refused == 2
    a2.release()
    assert sessions.running("alice") == 1


class _Stream:
    """The two methods of a ReadStream that ``hold_read`` watches."""

    def __init__(self) -> None:
        self.started = Deferred()
        self.stopped = False

    def start(self, consumer) -> Deferred:
        return self.started

    def stopProducing(self) -> None:
        self.stopped = True


def test_a_read_gives_its_slot_back_when_it_ends_is_stopped_or_is_dropped():
    sessions = SessionsPerUser(limit=3)
    ended, stopped, dropped = _Stream(), _Stream(), _Stream()
    sessions.hold_read(sessions.acquire("alice"), ended)
    sessions.hold_read(sessions.acquire("alice"), stopped)
    sessions.hold_read(sessions.acquire("alice"), dropped)
    results = []
    ended.start(None).addBoth(results.append)
    ended.started.callback(7)
    assert results == [7] and sessions.running("alice") == 2  # the result passes through
    stopped.stopProducing()
    assert stopped.stopped and sessions.running("alice") == 1
    del dropped  # an adapter forgot its handle: no reference cycle keeps it
    assert sessions.running("alice") == 0


@pytest_twisted.ensureDeferred
async def test_reads_and_writes_hold_a_slot_until_they_end(tmp_path):
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path, max_sessions_per_user=2).start()
    try:
        await env.upload("/f.bin", b"x" * 1000)
        transfers, user = env.transfers, env.user
        read = await transfers.open_read(user, "/f.bin")
        write = await transfers.open_write(user, "/g.bin", 0)
        for opening in (
            lambda: transfers.open_read(user, "/f.bin"),
            lambda: transfers.open_write(user, "/h.bin", 0),
        ):
            with pytest.raises(TooManySessions):
                await opening()
        sink = Collector()
        await read.stream.start(sink)  # a read that ran to its end
        assert sink.received == 1000
        stopped = await transfers.open_read(user, "/f.bin")
        stopped.stream.stopProducing()  # a read stopped before it started
        assert transfers.per_user.running("alice") == 1
        write.write(b"data")
        await write.finish()  # a write that committed
        interrupted = await transfers.open_write(user, "/h.bin", 0)
        await interrupted.interrupt()
        assert transfers.per_user.running("alice") == 0
        with pytest.raises(Exception):  # noqa: B017 - any refusal of the open
            await transfers.open_read(user, "/missing")
        assert transfers.per_user.running("alice") == 0  # a failed open gives it back
    finally:
        await env.stop()


def _put_head(path: bytes, length: int, auth: bytes) -> bytes:
    return (
        b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % length
    )  # fmt: skip


def _auth(name: str, password: str) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{name}:{password}".encode()) + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_http_and_tus_beyond_the_cap_get_429_and_other_users_are_served(tmp_path):
    from twisted.internet import reactor

    from wsfront.http.tus import TusEndpoint

    env = await HttpEnv(reactor, tmp_path, max_sessions_per_user=2).start()
    env.site.mount("uploads", TusEndpoint())
    held = []
    try:
        await env.catalog.add_user("bob", BOB_PASSWORD)
        await env.upload("/f.bin", b"y" * 5000)
        port = env.port.getHost().port
        for i in range(2):  # two uploads waiting for their bodies
            c = await connect(reactor, port)
            c.send(_put_head(b"/held%d.bin" % i, 10, _auth("alice", PASSWORD)))
            assert b"100 Continue" in await c.until(b"100 Continue\r\n\r\n")
            held.append(c)
        response = await env.request("GET", "/f.bin")
        body = await response.content()
        assert response.code == 429 and b"at most 2 at once" in body
        assert response.headers.getRawHeaders(b"Retry-After") == [b"5"]
        c = await connect(reactor, port)
        c.send(_put_head(b"/third.bin", 10, _auth("alice", PASSWORD)))
        answer = await c.closed.addTimeout(10, reactor)
        assert b"100 Continue" not in answer and head_of(answer)[0] == 429
        response = await env.request(
            "POST",
            "/-/uploads/",
            headers={
                b"Tus-Resumable": [b"1.0.0"],
                b"Upload-Length": [b"3"],
                b"Upload-Metadata": [b"filename " + base64.b64encode(b"t.bin")],
            },
        )
        await response.content()
        assert response.code == 429
        bob = await env.http.get(env.url("/"), auth=("bob", BOB_PASSWORD), unbuffered=True)
        await bob.content()
        assert bob.code == 200
        # One held upload completes: its slot is free again.
        held[0].send(b"0123456789")
        assert b"HTTP/1.1 201 " in await held[0].until(b"HTTP/1.1 201 ")
        response = await env.request("GET", "/f.bin")
        assert response.code == 200 and await response.content() == b"y" * 5000
    finally:
        for c in held:
            c.close()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_ftp_beyond_the_cap_gets_450_and_the_session_goes_on(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, max_sessions_per_user=1).start()
    try:
        await env.env.upload("/f.bin", b"z" * 4000)
        uploader = await env.client()
        await uploader.cmd("TYPE I")
        peer = await uploader.data_connection(await uploader.epsv())
        code, _ = await uploader.cmd("STOR /held.bin")
        assert code == 150
        peer.transport.write(b"partial")
        reader = await env.client()
        await reader.cmd("TYPE I")
        idle = await reader.data_connection(await reader.epsv())
        code, text = await reader.cmd("RETR /f.bin")
        assert code == 450 and "Too many transfers" in text, (code, text)
        idle.transport.loseConnection()
        peer.transport.loseConnection()  # the upload ends: the slot is free
        assert (await uploader.reply())[0] == 226
        assert await reader.retr("/f.bin") == b"z" * 4000
    finally:
        await env.stop()
