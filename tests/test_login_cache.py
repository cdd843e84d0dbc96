"""The HTTP login cache (``wsfront.auth.CachingAuthenticator``) over a real
SQLite catalog: concurrent requests with the same credentials share one
scrypt check (each holds 16 MiB while it runs), the answer of a wrong
password is shared but never cached, and ``forget`` keeps a check that was
running from being cached.  An expired entry is renewed with one read of the
account and no scrypt while the stored password hash is the one the password
was verified against; a password changed or an account deleted elsewhere
(another front end: no ``forget`` here) is refused once the entry expires.
The grant an FTP session keeps is as old as the entry it came from, and its
confirmation (one read, no scrypt) refuses an account deleted, added again
under the same name, or whose password changed."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from wsfront.auth import AccountChanged, CachingAuthenticator, Grant
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog import open_catalog, passwords


class CountingCatalog:
    """The real catalog, counting the password checks it is asked for."""

    def __init__(self, catalog) -> None:
        self._catalog = catalog
        self.checks = 0
        self.reads = 0

    def check_login(self, name: str, password: str):
        self.checks += 1
        return self._catalog.check_login(name, password)

    def get_login(self, name: str):
        self.reads += 1
        return self._catalog.get_login(name)

    def __getattr__(self, name: str):
        return getattr(self._catalog, name)  # the admin calls another front end would make


@pytest.fixture
def catalog(tmp_path):
    from twisted.internet import reactor

    catalog = open_catalog(reactor, f"sqlite:///{tmp_path}/catalog.sqlite")
    pytest_twisted.blockon(catalog.add_user("alice", "right password"))
    yield CountingCatalog(catalog)
    pytest_twisted.blockon(catalog.close())


@pytest.fixture
def scrypts(monkeypatch) -> list[None]:
    """One item per scrypt derivation (hashing or checking a password)."""
    calls: list[None] = []
    derive = passwords._derive

    def counting(*args):
        calls.append(None)  # called in the catalog's threads: append is atomic
        return derive(*args)

    monkeypatch.setattr(passwords, "_derive", counting)
    return calls


def _authenticator(catalog) -> CachingAuthenticator:
    from twisted.internet import reactor

    return CachingAuthenticator(catalog, reactor)


@pytest_twisted.ensureDeferred
async def test_concurrent_logins_with_the_same_credentials_share_one_check(catalog):
    auth = _authenticator(catalog)
    users = await defer.gatherResults(
        [auth.authenticate("alice", "right password") for _ in range(50)]
    )
    assert catalog.checks == 1
    assert {user.name for user in users} == {"alice"}
    # Cached now: no further check.
    await auth.authenticate("alice", "right password")
    assert catalog.checks == 1


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_fails_every_waiter_and_is_checked_again_later(catalog):
    auth = _authenticator(catalog)
    attempts = [auth.authenticate("alice", "wrong password") for _ in range(10)]
    results = await defer.DeferredList(attempts, consumeErrors=True)
    assert catalog.checks == 1
    assert all(not ok and f.check(catalog_errors.AuthFailed) for ok, f in results)
    with pytest.raises(catalog_errors.AuthFailed):
        await auth.authenticate("alice", "wrong password")
    assert catalog.checks == 2


@pytest_twisted.ensureDeferred
async def test_different_passwords_do_not_share_a_check(catalog):
    auth = _authenticator(catalog)
    right = auth.authenticate("alice", "right password")
    wrong = auth.authenticate("alice", "wrong password")
    assert (await right).name == "alice"
    with pytest.raises(catalog_errors.AuthFailed):
        await wrong
    assert catalog.checks == 2


@pytest_twisted.ensureDeferred
async def test_a_check_running_when_the_user_is_forgotten_is_not_cached(catalog):
    auth = _authenticator(catalog)
    running = auth.authenticate("alice", "right password")
    auth.forget("alice")
    # A login after forget starts its own check rather than waiting on the
    # one that began before the password may have changed.
    after = auth.authenticate("alice", "right password")
    assert (await running).name == "alice"
    assert (await after).name == "alice"
    assert catalog.checks == 2
    await auth.authenticate("alice", "right password")
    assert catalog.checks == 2  # the second check's answer was cached


@pytest_twisted.ensureDeferred
async def test_a_caller_that_cancels_leaves_the_shared_check_to_the_others(catalog):
    auth = _authenticator(catalog)
    gone = auth.authenticate("alice", "right password")
    staying = auth.authenticate("alice", "right password")
    gone.cancel()
    assert (await staying).name == "alice"
    with pytest.raises(defer.CancelledError):
        await gone
    assert catalog.checks == 1


TTL = 30.0


async def _logged_in(catalog, scrypts) -> tuple[CachingAuthenticator, Clock]:
    """An authenticator on a Clock with alice's login cached by one check."""
    clock = Clock()
    auth = CachingAuthenticator(catalog, clock, ttl=TTL)
    await auth.authenticate("alice", "right password")
    assert (catalog.checks, len(scrypts)) == (1, 1)
    return auth, clock


@pytest_twisted.ensureDeferred
async def test_an_expired_login_is_renewed_with_a_fresh_user_and_no_scrypt(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    await catalog.set_quota("alice", 1000, 7)
    clock.advance(TTL + 1)
    user = await auth.authenticate("alice", "right password")
    assert (user.quota_bytes, user.quota_files) == (1000, 7)
    assert (catalog.checks, catalog.reads, len(scrypts)) == (1, 1, 1)
    # Renewed for another TTL: no read until it expires again.
    clock.advance(TTL - 1)
    await auth.authenticate("alice", "right password")
    assert catalog.reads == 1
    clock.advance(2)
    await auth.authenticate("alice", "right password")
    assert (catalog.checks, catalog.reads, len(scrypts)) == (1, 2, 1)


@pytest_twisted.ensureDeferred
async def test_a_password_changed_elsewhere_is_refused_once_the_entry_expires(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    await catalog.set_password("alice", "new password")  # on another front end
    clock.advance(TTL + 1)
    with pytest.raises(catalog_errors.AuthFailed):
        await auth.authenticate("alice", "right password")
    assert catalog.checks == 2  # the stored hash changed: a full check
    # The refused entry is gone: the next try is a full check, not a renewal.
    with pytest.raises(catalog_errors.AuthFailed):
        await auth.authenticate("alice", "right password")
    assert (catalog.checks, catalog.reads) == (3, 1)
    assert (await auth.authenticate("alice", "new password")).name == "alice"


@pytest_twisted.ensureDeferred
async def test_the_same_password_set_again_is_checked_in_full(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    await catalog.set_password("alice", "right password")  # a new salt, a new hash
    clock.advance(TTL + 1)
    before = len(scrypts)
    assert (await auth.authenticate("alice", "right password")).name == "alice"
    assert (catalog.checks, catalog.reads, len(scrypts) - before) == (2, 1, 1)


@pytest_twisted.ensureDeferred
async def test_a_user_deleted_elsewhere_is_refused_once_the_entry_expires(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    await catalog.delete_user("alice")  # on another front end
    clock.advance(TTL - 1)
    await auth.authenticate("alice", "right password")  # still cached: the TTL's promise
    clock.advance(2)
    with pytest.raises(catalog_errors.AuthFailed):
        await auth.authenticate("alice", "right password")
    with pytest.raises(catalog_errors.AuthFailed):
        await auth.authenticate("alice", "right password")
    assert (catalog.checks, catalog.reads) == (2, 1)


@pytest_twisted.ensureDeferred
async def test_concurrent_logins_after_expiry_share_one_renewal(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    clock.advance(TTL + 1)
    users = await defer.gatherResults(
        [auth.authenticate("alice", "right password") for _ in range(50)]
    )
    assert {user.name for user in users} == {"alice"}
    assert (catalog.checks, catalog.reads, len(scrypts)) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_after_expiry_is_not_renewed(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    clock.advance(TTL + 1)
    with pytest.raises(catalog_errors.AuthFailed):
        await auth.authenticate("alice", "wrong password")
    assert (await auth.authenticate("alice", "right password")).name == "alice"
    assert (catalog.checks, catalog.reads) == (2, 1)


@pytest_twisted.ensureDeferred
async def test_a_forgotten_login_is_checked_in_full_not_renewed(catalog, scrypts):
    auth, clock = await _logged_in(catalog, scrypts)
    clock.advance(TTL + 1)
    auth.forget("alice")
    assert (await auth.authenticate("alice", "right password")).name == "alice"
    assert (catalog.checks, catalog.reads, len(scrypts)) == (2, 0, 2)


# -- the grants FTP sessions keep (wsfront.auth.Grant) -------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_grant_from_the_cache_is_as_old_as_the_entry(catalog, scrypts):
    """A session that logs in on a 25 s old cache entry confirms its login
    5 s later, not 30: the account was last read when the entry was."""
    auth, clock = await _logged_in(catalog, scrypts)
    clock.advance(25)
    grant = await auth.grant("alice", "right password")
    assert catalog.checks == 1 and grant.fresh()
    clock.advance(4.9)
    assert grant.fresh()
    clock.advance(0.1)
    assert not grant.fresh()
    renewed = await grant.confirm()
    assert renewed.fresh() and renewed.user.name == "alice"
    assert (catalog.checks, catalog.reads, len(scrypts)) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_a_grant_is_refused_once_its_account_changed(catalog, scrypts):
    """Deleted; deleted and added again (the same name and even the same
    password: a new salt, another account); password changed: each is
    AccountChanged, with one read and no scrypt.  An unchanged account's
    grant is renewed with the fresh User."""
    auth, _clock = await _logged_in(catalog, scrypts)
    grant = await auth.grant("alice", "right password")
    await catalog.set_quota("alice", 1000, 7)
    renewed = await grant.confirm()
    assert renewed.user.quota_bytes == 1000 and renewed.stamp == grant.stamp

    await catalog.set_password("alice", "new password")
    with pytest.raises(AccountChanged, match="password was changed"):
        await grant.confirm()
    after_passwd = await auth.grant("alice", "new password")
    await catalog.delete_user("alice")
    with pytest.raises(AccountChanged, match="was deleted"):
        await after_passwd.confirm()
    await catalog.add_user("alice", "new password")
    with pytest.raises(AccountChanged, match="deleted and created again"):
        await after_passwd.confirm()
    assert catalog.checks == 2  # the grant after the passwd; confirmations read only


def test_a_grant_is_stale_once_the_clock_went_back():
    """A wall clock set back must not keep a login fresh for longer."""
    clock = Clock()
    clock.advance(1000)
    auth = CachingAuthenticator(None, clock, ttl=TTL)
    grant = Grant(None, b"", clock.seconds(), auth)
    assert grant.fresh()
    clock.rightNow -= 1
    assert not grant.fresh()
    assert Grant.unchecked(None).fresh()  # anonymous: nothing to confirm
