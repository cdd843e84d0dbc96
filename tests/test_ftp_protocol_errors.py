"""Each error a command can meet becomes its FTP reply code, and an idle
control connection is closed with 421."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.catalog_outage import fill, make_writes_wait_briefly, tmpfs, write_locked
from tests.ftp_env import FTPEnv
from tests.transfer_env import PASSWORD
from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.ftp.errors_map import UNEXPECTED, is_expected, reply_for
from wsfront.ftp.factory import FTPSettings
from wsfront.transfer import errors as transfer_errors
from wsfront.transfer.service import PermissionDenied


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (transfer_errors.UploadBusy("x"), 450),
        (transfer_errors.OffsetTooLarge("offset 9 is beyond the size 3"), 554),
        (transfer_errors.QuotaExceeded("x"), 552),
        (transfer_errors.SessionFenced("x"), 451),
        (transfer_errors.NoReplicasAvailable("x"), 451),
        (transfer_errors.StorageFull("x"), 452),
        (transfer_errors.SessionFailed("x"), 451),
        (transfer_errors.TransferAborted("x"), 426),
        (catalog_errors.NotFound("/alice/secret"), 550),
        (PermissionDenied("alice may not write"), 550),
        (catalog_errors.Exists(), 550),
        (catalog_errors.NotEmpty(), 550),
        (catalog_errors.IsADirectory(), 550),
        (catalog_errors.NotADirectory(), 550),
        (catalog_errors.InvalidName(), 553),
        (catalog_errors.PendingUploadExists(), 450),
        (catalog_errors.EpochConflict(), 451),
        (catalog_errors.InvalidOffset(), 554),
        (catalog_errors.QuotaExceeded(), 552),
        (catalog_errors.CatalogUnavailable("postgresql: server closed the connection"), 451),
        (catalog_errors.CatalogFull("sqlite: database or disk is full"), 452),
        (paths.PathError(paths.PathErrorKind.OUTSIDE_ROOT, "outside"), 550),
        (paths.PathError(paths.PathErrorKind.INVALID_NAME, "bad"), 553),
    ],
)
def test_errors_map_to_their_reply_codes(error, code):
    assert reply_for(error)[0] == code
    assert is_expected(error)


def test_catalog_messages_do_not_leak_storage_paths_but_transfer_details_show():
    assert "/alice" not in reply_for(catalog_errors.NotFound("/alice/secret"))[1]
    assert "beyond the size 3" in reply_for(transfer_errors.OffsetTooLarge("beyond the size 3"))[1]


def test_unexpected_errors_are_451_without_details():
    assert reply_for(RuntimeError("internal detail")) == UNEXPECTED
    assert not is_expected(RuntimeError())


@pytest_twisted.ensureDeferred
async def test_each_command_restarts_the_idle_timeout(tmp_path):
    """Commands keep the control connection open past the idle timeout
    (each read moves the timer on); once they stop, the 421 comes a whole
    timeout after the last one, not after the first."""
    from twisted.internet import reactor, task

    timeout = 1.0
    env = await FTPEnv(reactor, tmp_path, FTPSettings(idle_timeout=timeout)).start()
    try:
        c = await env.client()
        start = reactor.seconds()
        while reactor.seconds() - start < 2 * timeout:
            assert await c.cmd("NOOP") == (200, "NOOP ok")
            await task.deferLater(reactor, timeout / 5, lambda: None)
        last = reactor.seconds()
        assert await c.cmd("NOOP") == (200, "NOOP ok")
        assert await c.reply() == (421, "Idle timeout, closing the control connection")
        assert reactor.seconds() - last >= timeout
        await c.closed
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_idle_control_connection_is_closed_with_421(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(idle_timeout=0.3)).start()
    try:
        c = await env.client()
        assert await c.reply() == (421, "Idle timeout, closing the control connection")
        await c.closed
    finally:
        await env.stop()


# -- the catalog out of service ----------------------------------------------------------


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


async def _refused_writes(c) -> list[tuple[str, tuple[int, str]]]:
    """Each write command's reply (RNFR only reads: it is answered 350)."""
    replies = [
        ("STOR", await c.stor("/new", b"new")),
        ("APPE", await c.stor("/kept", b"+", "APPE")),
    ]
    for line in ("MKD /dir", "DELE /kept", "RNFR /kept", "RNTO /moved"):
        replies.append((line, await c.cmd(line)))
    assert replies.pop(-2)[1][0] == 350
    return replies


def _outage_lines(events: list[dict]) -> list[str]:
    """What the FTP server logged: one warn line per refusal, nothing severe."""
    mine = [e for e in events if e.get("log_namespace") == "wsfront.ftp.protocol"]
    assert all("log_failure" not in e for e in mine), [formatEvent(e) for e in mine]
    assert all(e["log_level"] is LogLevel.warn for e in mine)
    severe = [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert severe == [], [formatEvent(e) for e in severe]
    return [formatEvent(e) for e in mine]


@pytest_twisted.ensureDeferred
async def test_a_full_catalog_disk_is_452_and_one_warn_line(tmp_path, events):
    from twisted.internet import reactor

    with tmpfs(tmp_path / "catalog") as where:
        env = await FTPEnv(reactor, tmp_path, catalog_dir=where).start()
        try:
            c = await env.client()
            assert (await c.stor("/kept", b"kept"))[0] == 226
            filler = fill(where)
            del events[:]
            for line, reply in await _refused_writes(c):
                assert reply == (452, "Insufficient storage: the catalog is full"), line
            lines = _outage_lines(events)
            assert len(lines) == 5 and all("CatalogFull" in line for line in lines), lines
            assert await c.retr("/kept") == b"kept"  # reads still work
            filler.unlink()
            assert (await c.stor("/new", b"new"))[0] == 226
        finally:
            await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_locked_catalog_is_451_try_again_and_one_warn_line(tmp_path, events):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path).start()
    try:
        c = await env.client()
        assert (await c.stor("/kept", b"kept"))[0] == 226
        await make_writes_wait_briefly(env.catalog)
        with write_locked(tmp_path / "catalog.sqlite"):
            del events[:]
            for line, reply in await _refused_writes(c):
                assert reply == (451, "Catalog unavailable, try again later"), line
        lines = _outage_lines(events)
        assert len(lines) == 5 and all("CatalogUnavailable" in line for line in lines), lines
        assert (await c.stor("/new", b"new"))[0] == 226
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_stor_with_every_replica_full_is_452_insufficient_storage(tmp_path):
    from contextlib import ExitStack

    from twisted.internet import reactor

    with ExitStack() as disks:
        for name in ("s1", "s2", "s3"):
            disks.enter_context(tmpfs(tmp_path / name, "2m"))
        env = await FTPEnv(reactor, tmp_path).start()
        try:
            c = await env.client()
            for verb in ("STOR", "APPE"):
                assert await c.stor("/big", b"x" * (4 << 20), verb) == (452, "Insufficient storage")
        finally:
            await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_login_during_a_catalog_outage_is_451_not_login_incorrect(tmp_path, monkeypatch):
    """The catalog could not check the password: the client is told to try
    again, and the attempt counts as no failed login (that 530 would have)."""
    from twisted.internet import defer, reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(max_login_failures=1)).start()
    try:
        real = env.catalog.check_login
        monkeypatch.setattr(
            env.catalog,
            "check_login",
            lambda *a: defer.fail(catalog_errors.CatalogUnavailable("postgresql: connection lost")),
        )
        c = await env.client(login=False)
        assert (await c.cmd("USER alice"))[0] == 331
        assert await c.cmd("PASS secret") == (451, "Catalog unavailable, try again later")
        monkeypatch.setattr(env.catalog, "check_login", real)
        await c.login("alice", PASSWORD)
    finally:
        await env.stop()
