"""Logging users in against the catalog, for FTP, HTTP and tus alike.

FTP logs in through twisted.cred (``make_portal``); HTTP checks Basic
credentials on every request, so ``CachingAuthenticator`` remembers a
verified (name, password) pair briefly: a scrypt check costs tens of
milliseconds and must not be paid per request.  The cache keys on a keyed
hash of the password, never the password itself, and a failed check is never
cached.

Nor is a check paid once per concurrent request: requests that arrive with
the same credentials while their check runs wait for that one check.  A
scrypt check also holds 16 MiB (128 * r * N bytes) while it runs, so 200
downloads starting together after the cache entry expired ran one check per
catalog reader thread at a time, 200 in all: the front end's RSS rose by 64
MB and its CPU by 200 checks' worth, for one answer.

Nor is the check paid again each time the entry expires: the entry keeps a
keyed digest of the stored password hash the password was verified against,
and an expired entry is renewed by reading the account (one query, no
scrypt) while its stored hash is still that one.  A password changed or an
account deleted on any front end changes or removes the stored hash, so it
is noticed within the TTL as before; the renewed entry carries the fresh
User (quota, usage, permissions).  In a steady GET workload that outlasts
the TTL (bench/http.py --workloads small --small 40000) the scrypt check at
each expiry had raised the front end's peak RSS from 71 to 87 MB; renewed,
it stays at 71.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from wsfront.catalog.errors import AuthFailed, NotFound
from wsfront.catalog.records import Login, User


class IUser(Interface):
    """The avatar interface: the avatar is the catalog's ``User`` record."""


def anonymous_user(root: str) -> User:
    """The built-in ``anonymous`` user: read-only, confined to ``root``, no
    quota to write with (FTP's anonymous login and HTTP requests without
    credentials, when anonymous access is on)."""
    return User(
        name="anonymous",
        admin=False,
        root=root,
        permissions=frozenset({"read"}),
        quota_bytes=0,
        quota_files=0,
        used_bytes=0,
        used_files=0,
        created_at=0.0,
    )


@attrs.frozen
class _Entry:
    """A verified login: until ``expires`` it answers without a query; after,
    it is renewed while the account's stored password hash is still the one
    the password was verified against (``stamp``, a keyed digest of it: the
    cache keeps neither the password nor the hash)."""

    expires: float
    user: User
    stamp: bytes


class CachingAuthenticator:
    """``authenticate(name, password) -> Deferred[User]`` with a short cache."""

    def __init__(self, catalog, clock: IReactorTime, ttl: float = 30.0, max_entries: int = 10000):
        self._catalog = catalog
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._key = secrets.token_bytes(32)
        self._cache: dict[tuple[str, bytes], _Entry] = {}
        #: Checks running now, by the same key, with the callers waiting on each.
        self._running: dict[tuple[str, bytes], list[Deferred]] = {}

    def _fingerprint(self, name: str, password: str) -> tuple[str, bytes]:
        mac = hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return name, mac.digest()

    def _stamp(self, password_hash: str) -> bytes:
        return hmac.new(self._key, password_hash.encode("utf-8"), hashlib.sha256).digest()

    def authenticate(self, name: str, password: str) -> Deferred:
        """Fire with the User, or fail with AuthFailed."""
        key = self._fingerprint(name, password)
        hit = self._cache.get(key)
        if hit is not None and hit.expires > self._clock.seconds():
            return succeed(hit.user)
        d: Deferred = Deferred()
        waiting = self._running.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        # Listed before the check starts: a check that answers at once
        # answers this caller too.
        waiting = self._running[key] = [d]
        if hit is None:
            check = self._check(name, password)
        else:
            check = self._renew(name, password, hit.stamp)
        check.addBoth(self._answer, key, waiting)
        return d

    def _check(self, name: str, password: str) -> Deferred:
        """The full check: scrypt, in the catalog's thread."""
        return maybeDeferred(self._catalog.check_login, name, password)

    def _renew(self, name: str, password: str, stamp: bytes) -> Deferred:
        """Renew an expired login with one read of the account, no scrypt:
        the password was verified against the stored hash ``stamp`` stands
        for, so while the stored hash is that one the password is still
        right, on whichever front end it was (or was not) changed.  The
        User read is fresh (quota, usage, permissions).  A changed hash
        means a full check; a deleted account is refused."""

        def read(login: Login) -> Login | Deferred:
            if hmac.compare_digest(self._stamp(login.password_hash), stamp):
                return login
            return self._check(name, password)

        def gone(failure: Failure) -> None:
            failure.trap(NotFound)
            raise AuthFailed("unknown user or wrong password")

        return maybeDeferred(self._catalog.get_login, name).addCallbacks(read, gone)

    def _answer(self, result, key: tuple[str, bytes], waiting: list[Deferred]) -> None:
        """Hand one check's answer to every caller that waited for it, and
        cache a success unless ``forget`` dropped the check meanwhile (a
        refusal drops the expired entry the check may have renewed)."""
        failed = isinstance(result, Failure)
        if self._running.get(key) is waiting:
            del self._running[key]
            if not failed:
                self._remember(key, result)
            elif result.check(AuthFailed):
                self._cache.pop(key, None)
        for d in waiting:
            if d.called:
                continue  # cancelled by its caller: the others still want the answer
            if failed:
                d.errback(result)
            else:
                d.callback(result.user)

    def _remember(self, key: tuple[str, bytes], login: Login) -> None:
        now = self._clock.seconds()
        if len(self._cache) >= self._max:
            self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
            if len(self._cache) >= self._max:
                self._cache.clear()
        self._cache[key] = _Entry(now + self._ttl, login.user, self._stamp(login.password_hash))

    def forget(self, name: str) -> None:
        """Drop cached logins of ``name`` (password changed, user deleted),
        and its checks running now: they answer their callers but are not
        cached, and a later login checks again."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] != name}
        self._running = {k: v for k, v in self._running.items() if k[0] != name}


@implementer(ICredentialsChecker)
class CatalogChecker:
    """twisted.cred checker: username/password against the catalog."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, authenticator: CachingAuthenticator) -> None:
        self._auth = authenticator

    def requestAvatarId(self, creds) -> Deferred:
        name = (
            creds.username.decode("utf-8", "replace")
            if isinstance(creds.username, bytes)
            else creds.username
        )
        password = (
            creds.password.decode("utf-8", "replace")
            if isinstance(creds.password, bytes)
            else creds.password
        )
        d = self._auth.authenticate(name, password)

        def refused(failure):
            failure.trap(AuthFailed)
            raise error.UnauthorizedLogin("login incorrect")

        return d.addCallbacks(lambda user: user, refused)


@implementer(portal.IRealm)
class CatalogRealm:
    """The avatar id handed over by ``CatalogChecker`` is already the User."""

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IUser not in interfaces:
            raise NotImplementedError("wsfs only provides IUser avatars")
        return IUser, avatarId, lambda: None


def make_portal(authenticator: CachingAuthenticator) -> portal.Portal:
    """A Portal whose ``login(UsernamePassword(...), None, IUser)`` fires
    with ``(IUser, User, logout)`` or fails with UnauthorizedLogin."""
    return portal.Portal(CatalogRealm(), [CatalogChecker(authenticator)])
