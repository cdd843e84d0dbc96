"""The HTTP login cache (``wsfront.auth.CachingAuthenticator``) over a real
SQLite catalog: concurrent requests with the same credentials share one
scrypt check (each holds 16 MiB while it runs), the answer of a wrong
password is shared but never cached, and ``forget`` keeps a check that was
running from being cached."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from wsfront.auth import CachingAuthenticator
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog import open_catalog


class CountingCatalog:
    """The real catalog, counting the password checks it is asked for."""

    def __init__(self, catalog) -> None:
        self._catalog = catalog
        self.checks = 0

    def authenticate(self, name: str, password: str):
        self.checks += 1
        return self._catalog.authenticate(name, password)


@pytest.fixture
def catalog(tmp_path):
    from twisted.internet import reactor

    catalog = open_catalog(reactor, f"sqlite:///{tmp_path}/catalog.sqlite")
    pytest_twisted.blockon(catalog.add_user("alice", "right password"))
    yield CountingCatalog(catalog)
    pytest_twisted.blockon(catalog.close())


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
