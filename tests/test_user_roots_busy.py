"""A directory that is a user's root, or holds one, stays where it is.

carol's root inside alice's tree (``/alice/shared``) is a way to share a
folder; alice moving or removing it left carol with 404 on ``/`` and 409
on every PUT.  Like a mount point (POSIX EBUSY) it is now refused, in the
catalog for every caller (an admin at ``/`` too), and over real FTP
(ftplib: 550) and HTTP (curl: 409) with a reason that names the client's
own path only.  Moving files in and out of the shared folder still works.
"""

from __future__ import annotations

import ftplib
import io
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString

from tests.catalog_race import TIMEOUT, in_tx, race, wait_until, waiting_for_a_lock
from tests.http_env import HttpEnv
from tests.transfer_env import PASSWORD
from wsfront.auth import CachingAuthenticator, make_portal
from wsfront.catalog import _accounts, _namespace, open_catalog
from wsfront.catalog.errors import NotEmpty, RootBusy
from wsfront.catalog.passwords import hash_password
from wsfront.ftp.factory import FTPFactory, FTPSettings

pytest_plugins = ["tests.catalog_fixtures"]

ALICE, CAROL = ("alice", PASSWORD), ("carol", "carol-password")


# -- the catalog, both backends -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_users_root_is_never_moved_or_removed(catalog):
    await catalog.add_user("alice", "pw")
    await catalog.add_user("carol", "pw", root="/alice/shared")
    await catalog.mkdir("/alice/team")
    await catalog.add_user("dave", "pw", root="/alice/team/dave")
    await catalog.add_user("root", "pw", admin=True, root="/", adopt_files=True)

    for src, dst in (
        ("/alice/shared", "/alice/shared2"),  # carol's root
        ("/alice/team", "/alice/team2"),  # holds dave's
        ("/alice", "/alice2"),  # alice's own, seen by the admin at /
    ):
        with pytest.raises(RootBusy, match="cannot be moved"):
            await catalog.rename(src, dst)
    with pytest.raises(RootBusy, match="cannot be removed: it is the root of user 'carol'"):
        await catalog.rmdir("/alice/shared")  # empty, but carol's /
    with pytest.raises(RootBusy, match="holds the root of user 'dave'"):
        await catalog.rmdir("/alice/team")  # not empty either: the root is the reason
    assert (await catalog.stat("/alice/shared")).kind == "dir"

    # A name sharing a prefix is not inside a root; files in it move freely.
    await catalog.mkdir("/alice/shared-not")
    await catalog.rename("/alice/shared-not", "/alice/elsewhere")
    await catalog.mkdir("/alice/shared/sub")
    await catalog.rename("/alice/shared/sub", "/alice/sub")
    await catalog.rmdir("/alice/sub")

    # Once the account is gone, its root is a directory like any other.
    await catalog.delete_user("carol")
    await catalog.rename("/alice/shared", "/alice/shared2")
    await catalog.rmdir("/alice/shared2")
    await catalog.delete_user("dave")
    with pytest.raises(NotEmpty):
        await catalog.rmdir("/alice/team")
    await catalog.rename("/alice/team", "/alice/team2")


# -- FTP and HTTP, real clients -------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    async def start():
        http = await HttpEnv(reactor, tmp_path).start()
        await http.catalog.add_user(CAROL[0], CAROL[1], root="/alice/shared")
        auth = CachingAuthenticator(http.catalog, reactor)
        factory = FTPFactory(reactor, http.transfers, make_portal(auth), FTPSettings())
        ftp = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        http.ftp_port = await ftp.listen(factory)
        return http

    async def stop(http):
        await http.ftp_port.stopListening()
        await http.stop()

    started = pytest_twisted.blockon(defer.ensureDeferred(start()))
    yield started
    pytest_twisted.blockon(defer.ensureDeferred(stop(started)))


async def curl(env, who, method: str, path: str, *extra: str) -> tuple[int, str]:
    out, err, code = await env.run(
        ["curl", "-sS", "-u", ":".join(who), "-X", method, *extra,
         "-w", "\n%{http_code}", env.url(path)]
    )  # fmt: skip
    assert code == 0, err
    body, _, status = out.decode().rpartition("\n")
    return int(status), body.rstrip("\n")


def ftp_session(env, who, *steps):
    """Run ftplib calls (name, args) as ``who``; the replies or the error texts."""

    def run():
        answers = []
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", env.ftp_port.getHost().port, timeout=10)
            ftp.login(*who)
            for name, *args in steps:
                try:
                    answers.append(getattr(ftp, name)(*args))
                except ftplib.error_perm as e:
                    answers.append(str(e))
        return answers

    return threads.deferToThread(run)


def assert_no_catalog_path(text: str) -> None:
    assert "/alice" not in text and "carol" not in text, text


@pytest_twisted.ensureDeferred
async def test_http_move_and_delete_of_another_users_root_are_409(env):
    status, body = await curl(
        env, ALICE, "MOVE", "/shared", "-H", f"Destination: {env.url('/shared2')}"
    )
    assert status == 409, body
    assert body == "/shared: directory busy: it is, or holds, another account's root"
    status, body = await curl(env, ALICE, "DELETE", "/shared")
    assert (status, body) == (
        409,
        "/shared: directory busy: it is, or holds, another account's root",
    )
    # carol's root is where it was: her listing and her PUT still work.
    assert (await curl(env, CAROL, "GET", "/"))[0] == 200
    status, body = await curl(env, CAROL, "PUT", "/mine.txt", "--data-binary", "hello")
    assert status == 201, body
    # alice still moves files in and out of the shared folder.
    status, body = await curl(
        env, ALICE, "MOVE", "/shared/mine.txt", "-H", f"Destination: {env.url('/taken.txt')}"
    )
    assert status == 201, body


@pytest_twisted.ensureDeferred
async def test_ftp_rename_and_rmd_of_another_users_root_are_550(env):
    renamed, removed, listed = await ftp_session(
        env, ALICE, ("rename", "shared", "shared2"), ("rmd", "shared"), ("nlst",)
    )
    for answer in (renamed, removed):
        assert answer == "550 Directory busy: it is, or holds, another account's root"
        assert_no_catalog_path(answer)
    assert "shared" in listed and "shared2" not in listed
    [stored] = await ftp_session(env, CAROL, ("storbinary", "STOR mine.txt", io.BytesIO(b"hi")))
    assert stored.startswith("226"), stored


# -- a root being added while a move or rmdir runs ------------------------------------------


@pytest.fixture
def two(catalog_url, clock):
    from twisted.internet import reactor

    a = open_catalog(reactor, catalog_url, clock=clock)
    b = open_catalog(reactor, catalog_url, clock=clock)
    yield a, b, catalog_url
    a.close()
    b.close()


@pytest.mark.parametrize("operation", ["rename", "rmdir"])
def test_a_move_or_rmdir_racing_a_new_root_waits_and_then_refuses(two, operation):
    """A adds carol with her root at an existing ``/alice/shared`` and has
    not committed; B moves or removes that directory meanwhile (on
    PostgreSQL it is seen waiting for A's lock); once A commits, B sees
    carol's root and is refused, so her root is still there."""
    a, b, url = two
    now = a._clock()
    setup = _accounts.add_user, now, "alice", hash_password("pw"), False, None, None, None, None
    in_tx(a, *setup)()
    in_tx(a, _namespace.mkdir, "/alice/shared", now)()
    a_added, b_started = threading.Event(), threading.Event()
    postgres = url.startswith("postgresql")
    b_pids: list[int] = []

    def a_add(tx):
        user = _accounts.add_user(
            tx, now, "carol", hash_password("pw"), False, "/alice/shared", None, None, None
        )
        a_added.set()
        assert b_started.wait(TIMEOUT)
        if postgres:
            wait_until(waiting_for_a_lock(url, b_pids), "B to wait for A's lock")
        return user

    def b_change():
        assert a_added.wait(TIMEOUT)

        def change(tx):
            if postgres:
                b_pids.append(tx.value("SELECT pg_backend_pid() AS pid"))
                b_started.set()
            if operation == "rename":
                return _namespace.rename(tx, "/alice/shared", "/alice/moved", False, now)
            return _namespace.rmdir(tx, "/alice/shared", now)

        if not postgres:  # SQLite: B's BEGIN IMMEDIATE itself waits for A
            b_started.set()
        return b._runner.run_sync(change, write=True)

    outcomes = race([lambda: a._runner.run_sync(a_add, write=True), b_change])
    assert outcomes[0].error is None, outcomes[0].error
    assert isinstance(outcomes[1].error, RootBusy), repr(outcomes[1].error)
    assert in_tx(a, _namespace.stat, "/alice/shared")().kind == "dir"
