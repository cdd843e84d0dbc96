"""Logging users in against the catalog, for FTP, HTTP and tus alike.

FTP logs in through twisted.cred (``make_portal``); HTTP checks Basic
credentials on every request, so ``CachingAuthenticator`` remembers a
verified (name, password) pair briefly: a scrypt check costs tens of
milliseconds and must not be paid per request.  The cache keys on a keyed
hash of the password, never the password itself, and a failed check is never
cached.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from wsfront.catalog.errors import AuthFailed
from wsfront.catalog.records import User


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


class CachingAuthenticator:
    """``authenticate(name, password) -> Deferred[User]`` with a short cache."""

    def __init__(self, catalog, clock: IReactorTime, ttl: float = 30.0, max_entries: int = 10000):
        self._catalog = catalog
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._key = secrets.token_bytes(32)
        self._cache: dict[tuple[str, bytes], tuple[float, User]] = {}

    def _fingerprint(self, name: str, password: str) -> tuple[str, bytes]:
        mac = hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return name, mac.digest()

    @inlineCallbacks
    def authenticate(self, name: str, password: str):
        """Fire with the User, or fail with AuthFailed."""
        key = self._fingerprint(name, password)
        now = self._clock.seconds()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        user = yield self._catalog.authenticate(name, password)
        if len(self._cache) >= self._max:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self._max:
                self._cache.clear()
        self._cache[key] = (now + self._ttl, user)
        return user

    def forget(self, name: str) -> None:
        """Drop cached logins of ``name`` (password changed, user deleted)."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] != name}


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
