"""QUIT while a transfer command waits for its data connection, and during one.

RFC 959 (4.1.1): QUIT closes the control connection at once "if file
transfer is not in progress"; if one is, the connection stays open for its
result reply, and the server closes it after.  A client may send STOR and
QUIT before it connects the data socket: QUIT queues behind the STOR,
which runs when the data connection comes (or gets 425 once
``data_timeout`` passes without one, ``test_ftp_quit_unit``), then QUIT is
answered 221.  A QUIT that came in a read of its own once the STOR waited
used to end the wait with 425 and lose the upload.  A transfer moving data
runs to its 226 before the 221 too.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.ftp_env import FTPEnv, payload, until
from wsfront.catalog import errors as catalog_errors
from wsfront.ftp.factory import FTPSettings

OLD = b"the committed version\n"
NEW = b"the version sent after QUIT\n"
LONG_WAIT = 600.0
"""data_timeout: far longer than any test waits for a reply (``PROMPT``)."""
PROMPT = 10.0


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path, FTPSettings(data_timeout=LONG_WAIT))
    env = pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


def _reply(client):
    from twisted.internet import reactor

    return client.reply().addTimeout(PROMPT, reactor)


async def _stored(ftp, vpath: str):
    """(committed bytes or None, whether an upload is pending) at ``vpath``."""
    try:
        view = await ftp.transfers.view(ftp.env.user, vpath)
    except catalog_errors.NotFound:
        return None, False
    committed = None
    if view.committed is not None:
        committed, _ = await ftp.env.download(vpath)
    return committed, view.pending is not None


def _waiting_for_data(ftp) -> bool:
    return any(
        s.transfer is not None and s.transfer.waiting is not None for s in ftp.factory.sessions
    )


def _quit_read(ftp) -> bool:
    """The server has read the QUIT: it is queued, or it ended the wait."""
    return any(s._queue for s in ftp.factory.sessions) or not _waiting_for_data(ftp)


@pytest_twisted.ensureDeferred
async def test_quit_while_a_stor_waits_for_its_data_connection_lets_the_upload_finish(ftp):
    from twisted.internet import reactor

    await ftp.env.upload("/kept.txt", OLD)
    for path in ("kept.txt", "fresh.txt"):
        c = await ftp.client()
        assert (await c.cmd("TYPE I"))[0] == 200
        port = await c.epsv()
        c.send(f"STOR {path}")
        await until(lambda: _waiting_for_data(ftp), "the STOR to wait for its data connection")
        c.send("QUIT")
        await until(lambda: _quit_read(ftp), "the server to read the QUIT")
        peer = await c.data_connection(port)
        code, text = await _reply(c)
        assert code == 150, text
        peer.transport.write(NEW)
        peer.transport.loseConnection()
        assert (await _reply(c))[0] == 226
        assert (await _reply(c))[0] == 221
        await c.closed.addTimeout(PROMPT, reactor)
        assert await _stored(ftp, "/" + path) == (NEW, False), path
    await until(lambda: not ftp.factory.sessions, "the sessions to end")
    assert not ftp.transfers.sessions


@pytest_twisted.ensureDeferred
async def test_quit_during_an_upload_is_answered_after_its_226(ftp):
    from twisted.internet import reactor

    data = payload(3 << 20)
    c = await ftp.client()
    assert (await c.cmd("TYPE I"))[0] == 200
    peer = await c.data_connection(await c.epsv())
    assert (await c.cmd("STOR moving.bin"))[0] == 150
    peer.transport.write(data[: 1 << 20])
    c.send("QUIT")
    peer.transport.write(data[1 << 20 :])
    peer.transport.loseConnection()
    code, text = await _reply(c)
    assert code == 226, text
    assert (await _reply(c))[0] == 221
    await c.closed.addTimeout(PROMPT, reactor)
    assert await _stored(ftp, "/moving.bin") == (data, False)


@pytest_twisted.ensureDeferred
async def test_a_quit_sent_with_its_stor_waits_for_the_transfer(ftp):
    """A client that pipelines STOR and QUIT means the upload to happen:
    its data connection, made after both were sent, still carries it."""
    from twisted.internet import reactor

    c = await ftp.client()
    assert (await c.cmd("TYPE I"))[0] == 200
    port = await c.epsv()
    c.transport.write(b"STOR piped.txt\r\nQUIT\r\n")
    peer = await c.data_connection(port)
    assert (await _reply(c))[0] == 150
    peer.transport.write(b"piped\n")
    peer.transport.loseConnection()
    assert (await _reply(c))[0] == 226
    assert (await _reply(c))[0] == 221
    await c.closed.addTimeout(PROMPT, reactor)
    assert await _stored(ftp, "/piped.txt") == (b"piped\n", False)


@pytest_twisted.ensureDeferred
async def test_abor_of_a_retr_waiting_for_its_data_connection_answers_before_the_queue(ftp):
    """ABOR's 226 follows the aborted RETR's 426 at once: the NOOP and the
    QUIT queued behind the RETR are answered after it, not between."""
    from twisted.internet import reactor

    await ftp.env.upload("/kept.txt", OLD)
    c = await ftp.client()
    assert (await c.cmd("TYPE I"))[0] == 200
    await c.epsv()  # and never connect to it
    c.send("RETR kept.txt")
    await until(lambda: _waiting_for_data(ftp), "the RETR to wait for its data connection")
    c.transport.write(b"NOOP\r\nQUIT\r\nABOR\r\n")
    codes = [(await _reply(c))[0] for _ in range(4)]
    assert codes == [426, 226, 200, 221]
    await c.closed.addTimeout(PROMPT, reactor)
