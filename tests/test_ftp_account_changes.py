"""An FTP session stops acting for an account deleted, recreated or whose
password changed, within the login cache's TTL; real ftplib and curl.

The chaos report: frank logged in over FTP; the admin deleted frank
(``--purge``) and added a *different* frank; the new frank uploaded
secret.txt over HTTP; past the 30 s login cache the old FTP session still
read secret.txt (226), stored planted.txt charged to the new frank (226),
and deleted files (250): FTP checked the password once, at PASS, and named
the account by its name only.  Now the session's login is confirmed with
the catalog once per TTL before it touches files, by the stored password
hash it was verified against, and the old session gets 530 and is logged
out; the new frank logs in and finds only their own files.

The FTP login cache runs on a ``task.Clock`` the test advances: no sleep.
"""

from __future__ import annotations

import ftplib
import io

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import serverFromString

from tests.http_env import HttpEnv
from wsfront.auth import CachingAuthenticator, make_portal
from wsfront.ftp.factory import FTPFactory, FTPSettings

TTL = 30.0
OLD, NEW = ("frank", "old-password"), ("frank", "new-password")
CAROL = ("carol", "carol-password")


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    async def start():
        http = await HttpEnv(reactor, tmp_path).start()
        http.auth_clock = task.Clock()
        auth = CachingAuthenticator(http.catalog, http.auth_clock, ttl=TTL)
        factory = FTPFactory(reactor, http.transfers, make_portal(auth), FTPSettings())
        http.ftp_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        return http

    async def stop(http):
        await http.ftp_port.stopListening()
        await http.stop()

    started = pytest_twisted.blockon(defer.ensureDeferred(start()))
    yield started
    pytest_twisted.blockon(defer.ensureDeferred(stop(started)))


class Session:
    """One ftplib control connection kept open across the test's steps;
    each step runs in a thread (ftplib blocks) while the reactor serves."""

    def __init__(self, env) -> None:
        self.port = env.ftp_port.getHost().port
        self.ftp = ftplib.FTP()

    def _step(self, fn, *args) -> defer.Deferred:
        def run():
            try:
                return fn(*args)
            except ftplib.error_perm as e:
                return f"refused: {e}"

        return threads.deferToThread(run)

    def open(self, who) -> defer.Deferred:
        def go():
            self.ftp.connect("127.0.0.1", self.port, timeout=10)
            return self.ftp.login(*who)

        return self._step(go)

    def login(self, who) -> defer.Deferred:
        return self._step(self.ftp.login, *who)

    def retr(self, name: str) -> defer.Deferred:
        def go():
            out = io.BytesIO()
            self.ftp.retrbinary(f"RETR {name}", out.write)
            return out.getvalue()

        return self._step(go)

    def stor(self, name: str, data: bytes) -> defer.Deferred:
        return self._step(self.ftp.storbinary, f"STOR {name}", io.BytesIO(data))

    def dele(self, name: str) -> defer.Deferred:
        return self._step(self.ftp.delete, name)

    def names(self) -> defer.Deferred:
        return self._step(self.ftp.nlst)

    def listing(self) -> defer.Deferred:
        def go():
            lines: list[str] = []
            self.ftp.retrlines("LIST", lines.append)
            return lines

        return self._step(go)

    def close(self) -> defer.Deferred:
        return self._step(self.ftp.close)


async def put(env, who, path: str, data: bytes) -> int:
    """PUT ``data`` over the HTTP front end with curl, as ``who``."""
    source = env.tmp_path / "put.bin"
    source.write_bytes(data)
    out, err, code = await env.run(
        ["curl", "-sS", "-u", ":".join(who), "-T", str(source), "-o", str(env.tmp_path / "put.out"),
         "-w", "%{http_code}", env.url(path)]
    )  # fmt: skip
    assert code == 0, err
    return int(out)


@pytest_twisted.ensureDeferred
async def test_a_session_of_a_deleted_and_recreated_user_is_logged_out(env):
    await env.catalog.add_user(*OLD)
    await env.catalog.add_user(*CAROL)
    old, bystander = Session(env), Session(env)
    try:
        assert (await old.open(OLD)).startswith("230")
        assert (await bystander.open(CAROL)).startswith("230")
        assert (await old.stor("mine.txt", b"old frank's")).startswith("226")

        await env.catalog.delete_user("frank", files="purge")
        await env.catalog.add_user(*NEW)  # someone else, the same name
        assert await put(env, NEW, "/secret.txt", b"the new frank's secret") == 201

        env.auth_clock.advance(TTL + 5)
        answer = await old.retr("secret.txt")  # was 226 with the new frank's bytes
        assert isinstance(answer, str), answer
        assert answer.startswith("refused: 530 Login no longer valid"), answer
        # One at a time: the three share one control connection.
        for step in (
            lambda: old.stor("planted.txt", b"planted"),
            lambda: old.dele("secret.txt"),
            old.listing,
        ):
            answer = await step()
            assert isinstance(answer, str) and answer.startswith("refused: 530"), answer

        # The new frank's files are untouched and charged to them alone.
        user = await env.catalog.get_user("frank")
        assert (user.used_files, user.used_bytes) == (1, len(b"the new frank's secret"))
        # Another account's session goes on past the TTL (its login confirmed).
        assert (await bystander.stor("c.txt", b"carol's")).startswith("226")

        # The old connection may log in again, as the new frank, and so may a new one.
        assert (await old.login(NEW)).startswith("230")
        assert await old.names() == ["secret.txt"]
        fresh = Session(env)
        assert (await fresh.open(NEW)).startswith("230")
        assert await fresh.retr("secret.txt") == b"the new frank's secret"
        await fresh.close()
    finally:
        await old.close()
        await bystander.close()


@pytest_twisted.ensureDeferred
async def test_a_session_made_with_a_changed_password_is_logged_out(env):
    await env.catalog.add_user(*OLD)
    old = Session(env)
    try:
        assert (await old.open(OLD)).startswith("230")
        assert (await old.stor("a.txt", b"a")).startswith("226")
        await env.catalog.set_password("frank", NEW[1])
        env.auth_clock.advance(TTL)
        answer = await old.dele("a.txt")
        assert answer.startswith("refused: 530 Login no longer valid"), answer
        assert (await old.login(OLD)).startswith("refused: 530 Login incorrect")
        assert (await old.login(NEW)).startswith("230")
        assert await old.names() == ["a.txt"]
    finally:
        await old.close()
