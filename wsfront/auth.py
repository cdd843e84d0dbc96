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

An FTP session logs in once, at PASS, and then acts for its account for
hours: it holds a ``Grant`` (the twisted.cred avatar), which names the
account by the stored password hash its password was verified against
(the same keyed ``stamp``), not by its name.  Past the TTL after that
verification, the session has its grant confirmed (``Grant.confirm``: one
read, no scrypt) before it touches files again: a deleted account, or a
name deleted and created again for someone else (a new hash, a new salt),
or a password changed, no longer matches, and the session is logged out.
So the login cache's promise holds for FTP too: an account change is
noticed within the TTL.  Like Django's session auth hash, a password
change ends the sessions made with the old password: it is how an
administrator locks out someone who learnt it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

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
    """The avatar interface: the avatar is a ``Grant``, the catalog's
    ``User`` record and the credentials it was verified with."""


class AccountChanged(AuthFailed):
    """A session's account is gone, or is no longer the one it logged in
    to: deleted, deleted and created again, or its password changed."""


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


@attrs.frozen
class Grant:
    """A login a session holds: the account's ``User`` as of ``verified_at``
    and ``stamp``, the keyed digest of the stored password hash the
    password was verified against.  The stamp is the account's identity
    for the session: a name deleted and created again has a new hash (a
    new salt), and so does a changed password.

    ``fresh()`` is true for the TTL after ``verified_at``; past it,
    ``confirm()`` reads the account once and fires with a renewed Grant
    (the fresh User: quota, permissions) or fails with AccountChanged.
    ``authority`` None is a login with nothing in the catalog to confirm
    (the built-in anonymous account): always fresh."""

    user: User
    stamp: bytes = attrs.field(repr=False)
    verified_at: float
    authority: CachingAuthenticator | None = attrs.field(default=None, repr=False, eq=False)

    @classmethod
    def unchecked(cls, user: User) -> Grant:
        """A login of an account that is not in the catalog (anonymous)."""
        return cls(user, b"", 0.0, None)

    def fresh(self) -> bool:
        """Whether the account was seen unchanged within the TTL (no query)."""
        return self.authority is None or self.authority.is_fresh(self)

    def confirm(self) -> Deferred:
        """Fire with this login renewed, or fail with AccountChanged (or
        the catalog's error, when it could not tell)."""
        if self.authority is None:
            return succeed(self)
        return self.authority.confirm(self)


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
        return self._login(name, password, key, hit).addCallback(lambda grant: grant.user)

    def grant(self, name: str, password: str) -> Deferred:
        """``authenticate``, firing with the ``Grant`` a session keeps: a
        cached login's grant was verified when the entry was, so a
        session's first confirmation comes at most a TTL after the
        account was last read, whatever the entry's age."""
        key = self._fingerprint(name, password)
        hit = self._cache.get(key)
        if hit is not None and hit.expires > self._clock.seconds():
            return succeed(self._grant(hit.user, hit.stamp, hit.expires - self._ttl))
        return self._login(name, password, key, hit)

    def _grant(self, user: User, stamp: bytes, verified_at: float) -> Grant:
        return Grant(user, stamp, verified_at, self)

    def _login(self, name: str, password: str, key: tuple[str, bytes], hit) -> Deferred:
        """The check (or renewal) behind a cache miss, shared with the
        callers that ask for the same login meanwhile; fires with a Grant."""
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
        return self._read_login(
            name,
            stamp,
            changed=lambda login: self._check(name, password),
            deleted=AuthFailed("unknown user or wrong password"),
        )

    def _read_login(
        self, name: str, stamp: bytes, changed: Callable[[Login], Any], deleted: Exception
    ) -> Deferred:
        """Read the account ``name`` once (no scrypt) and fire with its
        Login while its stored hash is the one ``stamp`` stands for; else
        with what ``changed(login)`` returns (or fail with what it raises).
        An account that is gone fails with ``deleted``."""

        def read(login: Login) -> Login | Deferred:
            if hmac.compare_digest(self._stamp(login.password_hash), stamp):
                return login
            return changed(login)

        def gone(failure: Failure) -> None:
            failure.trap(NotFound)
            raise deleted

        return maybeDeferred(self._catalog.get_login, name).addCallbacks(read, gone)

    def _answer(self, result, key: tuple[str, bytes], waiting: list[Deferred]) -> None:
        """Hand one check's answer to every caller that waited for it, and
        cache a success unless ``forget`` dropped the check meanwhile (a
        refusal drops the expired entry the check may have renewed)."""
        failed = isinstance(result, Failure)
        if not failed:
            grant = self._grant(
                result.user, self._stamp(result.password_hash), self._clock.seconds()
            )
        if self._running.get(key) is waiting:
            del self._running[key]
            if not failed:
                self._remember(key, grant)
            elif result.check(AuthFailed):
                self._cache.pop(key, None)
        for d in waiting:
            if d.called:
                continue  # cancelled by its caller: the others still want the answer
            if failed:
                d.errback(result)
            else:
                d.callback(grant)

    def _remember(self, key: tuple[str, bytes], grant: Grant) -> None:
        now = grant.verified_at
        if len(self._cache) >= self._max:
            self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
            if len(self._cache) >= self._max:
                self._cache.clear()
        self._cache[key] = _Entry(now + self._ttl, grant.user, grant.stamp)

    def is_fresh(self, grant: Grant) -> bool:
        """Whether ``grant`` was verified less than the TTL ago (a clock
        that went back since counts as stale: confirmed, not trusted)."""
        age = self._clock.seconds() - grant.verified_at
        return 0.0 <= age < self._ttl

    def confirm(self, grant: Grant) -> Deferred:
        """Read the account of ``grant`` once (no scrypt): fire with a
        renewed Grant while its stored hash is the one the session's
        password was verified against, or fail with AccountChanged."""
        name = grant.user.name

        def changed(login: Login) -> None:
            raise AccountChanged(
                f"the account {name!r} changed: its password was changed, "
                "or it was deleted and created again"
            )

        now = self._clock.seconds()
        read = self._read_login(
            name, grant.stamp, changed, AccountChanged(f"the account {name!r} was deleted")
        )
        return read.addCallback(lambda login: self._grant(login.user, grant.stamp, now))

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
        d = self._auth.grant(name, password)

        def refused(failure):
            failure.trap(AuthFailed)
            raise error.UnauthorizedLogin("login incorrect")

        return d.addCallbacks(lambda grant: grant, refused)


@implementer(portal.IRealm)
class CatalogRealm:
    """The avatar id handed over by ``CatalogChecker`` is already the
    avatar: the ``Grant``."""

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IUser not in interfaces:
            raise NotImplementedError("wsfs only provides IUser avatars")
        return IUser, avatarId, lambda: None


def make_portal(authenticator: CachingAuthenticator) -> portal.Portal:
    """A Portal whose ``login(UsernamePassword(...), None, IUser)`` fires
    with ``(IUser, Grant, logout)`` or fails with UnauthorizedLogin."""
    return portal.Portal(CatalogRealm(), [CatalogChecker(authenticator)])
