"""Each error a command can meet becomes its FTP reply code, and an idle
control connection is closed with 421."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.ftp_env import FTPEnv
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
