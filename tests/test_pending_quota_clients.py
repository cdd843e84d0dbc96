"""A real FTP client (ftplib, in a thread) against the in-process server:
an upload it aborts stays pending and holds its bytes against the quota,
so a second upload that would pass the quota with them is refused 552;
once the pending upload is completed or deleted, the accounting is the
committed files' again."""

from __future__ import annotations

import ftplib
import io

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.ftp_env import PASSWORD, FTPEnv, until

QUOTA = 1 << 20
PART = 600_000


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path / "server")
    pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    pytest_twisted.blockon(env.catalog.set_quota("alice", QUOTA, None))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


def _client(env) -> ftplib.FTP:
    client = ftplib.FTP()
    client.connect("127.0.0.1", env.port, timeout=30)
    client.sock.settimeout(10)
    client.login("alice", PASSWORD)
    return client


async def usage(env) -> tuple[int, int]:
    user = await env.catalog.get_user("alice")
    return user.used_bytes, user.pending_bytes


def stor(env, name: str, size: int, rest: int | None = None) -> str:
    """STOR (REST first, if given) of ``size`` bytes; the final reply."""
    c = _client(env)
    try:
        return c.storbinary(f"STOR {name}", io.BytesIO(b"s" * size), rest=rest)
    except ftplib.error_perm as e:
        return str(e)
    finally:
        c.close()


def dele(env, name: str) -> str:
    """DELE; the reply (a refusal too)."""
    c = _client(env)
    try:
        return c.delete(name)
    except ftplib.error_perm as e:
        return str(e)
    finally:
        c.quit()


@pytest_twisted.ensureDeferred
async def test_an_aborted_upload_holds_its_bytes_until_completed_or_deleted(ftp):
    client: list = []

    def start():
        c = _client(ftp)
        c.voidcmd("TYPE I")
        conn = c.transfercmd("STOR part")
        conn.sendall(b"p" * PART)
        client.extend([c, conn])

    def abort():
        c, conn = client
        first, second = c.abort(), c.getmultiline()
        conn.close()
        size = c.size("part")
        c.quit()
        return first, second, size

    await threads.deferToThread(start)
    await until(
        lambda: any(s.received >= PART for s in ftp.transfers.sessions.values()),
        "the server to relay the bytes",
    )
    first, second, size = await threads.deferToThread(abort)
    assert (first[:3], second[:3], size) == ("426", "226", PART)  # kept, resumable

    # 600,000 pending + 600,000 more do not fit in 1 MiB.
    reply = await threads.deferToThread(stor, ftp, "other", PART)
    assert reply[:3] == "552", reply
    assert (await usage(ftp))[0] == 0
    await threads.deferToThread(dele, ftp, "other")  # what of it is left pending, if any
    assert await usage(ftp) == (0, PART)

    # Completed (REST + STOR), the pending bytes become the file's.
    reply = await threads.deferToThread(stor, ftp, "part", 100_000, PART)
    assert reply[:3] == "226", reply
    assert await usage(ftp) == (PART + 100_000, 0)
    reply = await threads.deferToThread(stor, ftp, "other", 400_000)
    assert reply[:3] == "552", reply
    await threads.deferToThread(dele, ftp, "other")

    # Deleted, nothing is held any more: the second upload goes through.
    assert (await threads.deferToThread(dele, ftp, "part"))[:3] == "250"
    assert await usage(ftp) == (0, 0)
    reply = await threads.deferToThread(stor, ftp, "other", 400_000)
    assert reply[:3] == "226", reply
    assert await usage(ftp) == (400_000, 0)
