"""An FTP login is confirmed with the catalog once per login-cache TTL, played
exactly on a memory reactor (``ftp_memory``).

A session logs in once, at PASS.  While its login is younger than the TTL,
commands run without a catalog query (a small STOR's commands pay none);
past it, the first command that touches files or the namespace reads the
account once (``Grant.confirm``, no scrypt) and the login is fresh again.
An account deleted, created again under the same name (a new password
hash), or whose password changed, logs the session out with 530; a catalog
that cannot tell refuses that one command (451) and the session stays.
Session-only commands (TYPE, EPSV, PWD, NOOP) never ask.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed

from tests.ftp_memory import MemoryFTP, close_data
from wsfront.auth import CachingAuthenticator, Grant
from wsfront.catalog.errors import CatalogUnavailable, NotFound
from wsfront.catalog.records import PERMISSIONS, Login, User
from wsfront.ftp.commands import COMMANDS
from wsfront.ftp.factory import FTPSettings

TTL = 30.0
ALICE = User("alice", False, "/alice", PERMISSIONS, None, None, 0, 0, 100.0)


class Accounts:
    """The two catalog calls the authenticator makes, counted; ``stored`` is
    alice's row (None: deleted), ``outage`` makes the read fail."""

    def __init__(self) -> None:
        self.stored: Login | None = Login(ALICE, "hash-1")
        self.reads = 0
        self.outage = False
        self.pending: Deferred | None = None

    def check_login(self, name: str, password: str) -> Login:
        assert self.stored is not None and password == "pw"
        return self.stored

    def get_login(self, name: str):
        self.reads += 1
        if self.pending is not None:
            return self.pending
        if self.outage:
            return fail(CatalogUnavailable("catalog down"))
        if self.stored is None:
            return fail(NotFound(f"no user {name!r}"))
        return succeed(self.stored)


def _ftp() -> tuple[MemoryFTP, Accounts]:
    """A control connection logged in as alice through a real
    ``CachingAuthenticator`` on the memory reactor's clock."""
    ftp = MemoryFTP(FTPSettings(data_timeout=10.0, passive_ports=(40000, 40000)))
    accounts = Accounts()
    auth = CachingAuthenticator(accounts, ftp.reactor, ttl=TTL)
    d = auth.grant("alice", "pw")
    grants: list[Grant] = []
    d.addCallback(grants.append)
    ftp.control.grant = grants[0]
    ftp.transfers.files["/f.bin"] = b"0123456789"
    return ftp, accounts


def test_a_fresh_login_asks_the_catalog_nothing():
    ftp, accounts = _ftp()
    ftp.reactor.advance(TTL - 1)
    ftp.send("MDTM f.bin", "MLST f.bin", "CWD /", "TYPE I", "SIZE f.bin")
    assert ftp.replies() == [213, 250, 250, 200, 213]
    assert accounts.reads == 0


def test_a_stale_login_is_confirmed_once_then_fresh_for_a_ttl():
    ftp, accounts = _ftp()
    ftp.reactor.advance(TTL)
    # The same account, its quota set meanwhile.
    accounts.stored = Login(attrs.evolve(ALICE, quota_bytes=5), "hash-1")
    ftp.send("MDTM f.bin", "TYPE I", "SIZE f.bin", "MLST f.bin")
    assert ftp.replies() == [213, 200, 213, 250]
    assert accounts.reads == 1
    assert ftp.control.user.quota_bytes == 5  # the session acts on the fresh User
    ftp.reactor.advance(TTL - 1)
    ftp.send("CWD /")
    assert ftp.replies() == [250] and accounts.reads == 1
    ftp.reactor.advance(1)
    ftp.send("CWD /")
    assert ftp.replies() == [250] and accounts.reads == 2


def test_session_only_commands_never_ask_even_when_stale():
    ftp, accounts = _ftp()
    ftp.reactor.advance(10 * TTL)
    ftp.send("TYPE I", "EPSV", "PWD", "NOOP", "REST 3", "ABOR")
    assert ftp.replies() == [200, 229, 257, 200, 350, 225]
    assert accounts.reads == 0


@pytest.mark.parametrize("change", ["deleted", "recreated", "password changed"])
def test_a_changed_account_logs_the_session_out_with_530(change):
    ftp, accounts = _ftp()
    if change == "deleted":
        accounts.stored = None
    else:  # a new hash (new salt): the same name for someone else, or a passwd
        accounts.stored = Login(attrs.evolve(ALICE, created_at=200.0), "hash-2")
    ftp.reactor.advance(TTL)
    ftp.send("TYPE I", "EPSV")
    assert ftp.replies() == [200, 229]
    ftp.send("RETR f.bin", "STOR planted.bin", "DELE f.bin", "LIST", "PWD")
    out = ftp.transport.value().decode()
    assert ftp.replies() == [530, 530, 530, 530, 530]
    assert "Login no longer valid" in out.splitlines()[0]
    assert ftp.control.user is None and ftp.control.grant is None
    assert accounts.reads == 1
    assert ftp.transfers.streams == [] and ftp.transfers.writes == []
    assert ftp.transfers.files == {"/f.bin": b"0123456789"}
    assert not ftp.closing  # the connection stays for a new login


def test_a_catalog_that_cannot_tell_refuses_the_command_and_asks_again():
    ftp, accounts = _ftp()
    ftp.reactor.advance(TTL)
    accounts.outage = True
    ftp.send("MDTM f.bin")
    assert ftp.replies() == [451]
    assert ftp.control.user is not None and accounts.reads == 1
    accounts.outage = False
    ftp.send("MDTM f.bin")
    assert ftp.replies() == [213] and accounts.reads == 2


def test_a_transfer_waits_for_the_confirmation_and_keeps_its_rest_marker():
    """RETR after REST on a stale login: the read answers later, after a
    ABOR jumped a full queue (it runs at once and takes the REST marker
    over); the RETR still resumes at 3."""
    ftp, accounts = _ftp()
    offsets: list[int] = []
    open_read = ftp.transfers.open_read

    async def recording_open_read(user, path: str, offset: int):
        offsets.append(offset)
        return await open_read(user, path, offset)

    ftp.transfers.open_read = recording_open_read
    ftp.reactor.advance(TTL)
    accounts.pending = Deferred()
    ftp.send("TYPE I", "EPSV", "REST 3", "RETR f.bin")
    assert ftp.replies() == [200, 229, 350] and accounts.reads == 1
    queued = ftp.control.settings.max_queued_commands
    ftp.send(*["NOOP"] * queued, "ABOR")
    assert ftp.replies() == [225]
    accounts.pending.callback(accounts.stored)
    channel, _transport = ftp.connect_data()
    [stream] = ftp.transfers.streams
    stream.gate.callback(None)
    close_data(channel)
    assert offsets == [3]
    assert ftp.replies() == [150, 226] + [200] * queued


def test_nothing_runs_after_a_quit_that_jumped_the_queue_during_the_check():
    """A stale login's DELE waits for the catalog; a full queue lets QUIT
    jump ahead (221, the last reply): when the read answers, the DELE must
    not run on a session that said goodbye."""
    ftp, accounts = _ftp()
    deleted: list[str] = []

    async def recording_delete(user, path: str, **_kw):
        deleted.append(path)

    ftp.transfers.delete = recording_delete
    ftp.reactor.advance(TTL)
    accounts.pending = Deferred()
    ftp.send("DELE f.bin")
    assert accounts.reads == 1
    queued = ftp.control.settings.max_queued_commands
    ftp.send(*["NOOP"] * queued, "QUIT")
    assert ftp.replies() == [221]
    accounts.pending.callback(accounts.stored)
    assert deleted == []
    assert ftp.replies() == []


def test_rnto_keeps_its_rnfr_when_an_urgent_command_runs_during_the_check():
    """RNFR then RNTO on a stale login: RNTO waits for the catalog, and a
    ABOR run meanwhile (jumping a full queue) clears the session's RNFR:
    the RNTO still renames what its RNFR named."""
    ftp, accounts = _ftp()
    renamed: list[tuple[str, str]] = []

    async def recording_rename(user, source: str, target: str, **_kw):
        renamed.append((source, target))

    ftp.transfers.rename = recording_rename
    ftp.send("RNFR f.bin")
    assert ftp.replies() == [350]
    ftp.reactor.advance(TTL)
    accounts.pending = Deferred()
    ftp.send("RNTO g.bin")
    assert accounts.reads == 1
    queued = ftp.control.settings.max_queued_commands
    ftp.send(*["NOOP"] * queued, "ABOR")
    assert ftp.replies() == [225]
    accounts.pending.callback(accounts.stored)
    assert renamed == [("/f.bin", "/g.bin")]


class WatchedTransfers:
    """The memory transfer layer, noting each of its names the session
    uses (a file, a directory, a listing, a transfer)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.used: list[str] = []

    def __getattr__(self, name: str):
        self.used.append(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize("verb", sorted(v for v, spec in COMMANDS.items() if spec.login))
def test_a_stale_login_is_confirmed_exactly_before_the_commands_that_touch_files(verb):
    """The command table's ``touches_files`` is what the session does: a
    command marked so waits for the catalog's read (never answered here)
    and nothing of it runs; any other runs at once, asks the catalog
    nothing and touches no file (the transfer layer is not used)."""
    ftp, accounts = _ftp()
    watched = ftp.control.transfers = WatchedTransfers(ftp.transfers)
    ftp.reactor.advance(TTL)
    accounts.pending = Deferred()
    ftp.send(f"{verb} f.bin" if COMMANDS[verb].needs_arg else verb)
    touches_files = COMMANDS[verb].touches_files
    assert accounts.reads == (1 if touches_files else 0)
    assert watched.used == []
    assert (ftp.transport.value() == b"") == touches_files  # an answer only if it ran


def test_only_session_commands_skip_the_login_confirmation():
    """The commands that never wait for a stale login's confirmation are
    pinned by name: a command dropped from this set waits for the catalog
    (ABOR and STAT must stay immediate), and one added to it would act on
    files for an account that may be gone (the security direction; the
    test above cannot see it for commands that fail a precondition first)."""
    session_only = {v for v, spec in COMMANDS.items() if spec.login and not spec.touches_files}
    assert session_only == {
        "TYPE", "MODE", "STRU", "ALLO", "PWD", "XPWD", "PASV", "EPSV",
        "PORT", "EPRT", "REST", "ABOR", "STAT",
    }  # fmt: skip
