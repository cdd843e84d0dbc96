"""The HTTP site of a front end: settings, routing, authentication.

``make_site(reactor, transfers, authenticator, settings)`` returns a
twisted.web ``Site`` whose channel streams bodies (``request.py``).  Each
request is dispatched once its target is known: paths under ``/-/`` go to
the server's own endpoints (mounted with ``site.mount``: ``metrics``,
``status``, ``uploads`` for tus), every other path is a user's file, reached
after Basic authentication and confined to the user's root by
``wsfront.paths.resolve_http``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.http.errors_map import HttpError, http_error
from wsfront.http.request import BodyLost, StreamingChannel, StreamingRequest

log = Logger()

#: ``handler(request, context, segments) -> Deferred | None`` for ``/-/<name>/...``.
Endpoint = Callable[[StreamingRequest, "SiteContext", list[str]], Any]


@attrs.frozen
class SiteSettings:
    """Knobs of the HTTP front end, with the defaults it runs on."""

    realm: str = "wsfs"
    idle_timeout: float = 60.0
    """Seconds a connection may stay silent (slow clients, slow-loris) before it is dropped."""
    max_header_bytes: int = 16384
    """Request line plus headers, in bytes; more and the client gets 400."""
    max_headers: int = 100
    max_line_bytes: int = 8192
    """The longest request line or header line."""
    listing_page: int = 500
    """Directory entries fetched from the catalog per page of a listing."""
    max_connections_per_address: int | None = 256
    """Open connections one client address may hold; more are closed at once."""
    anonymous_user: str | None = None
    """Requests without credentials act as this account, read-only (GET/HEAD)."""


@attrs.define
class SiteContext:
    """What handlers need: the transfer layer, the reactor, the settings."""

    reactor: Any
    transfers: Any
    authenticator: Any
    settings: SiteSettings


class WsSite(server.Site):
    """A Site that routes requests itself instead of walking a resource tree."""

    protocol = StreamingChannel
    requestFactory = StreamingRequest

    def __init__(self, context: SiteContext) -> None:
        super().__init__(
            Resource(),
            requestFactory=StreamingRequest,
            timeout=context.settings.idle_timeout,
            reactor=context.reactor,
        )
        self.context = context
        self.endpoints: dict[str, Endpoint] = {}
        self.connections: dict[str, int] = {}

    def buildProtocol(self, addr):
        settings = self.context.settings
        host = getattr(addr, "host", None)
        limit = settings.max_connections_per_address
        if host is not None and limit is not None:
            if self.connections.get(host, 0) >= limit:
                return None
            self.connections[host] = self.connections.get(host, 0) + 1
        channel = super().buildProtocol(addr)
        if host is not None and limit is not None:
            channel.on_lost = lambda: self._release(host)
        channel.totalHeadersSize = settings.max_header_bytes
        channel.maxHeaders = settings.max_headers
        channel.MAX_LENGTH = settings.max_line_bytes
        return channel

    def _release(self, host: str) -> None:
        left = self.connections.get(host, 0) - 1
        if left > 0:
            self.connections[host] = left
        else:
            self.connections.pop(host, None)

    def mount(self, name: str, endpoint: Endpoint) -> None:
        """Serve ``/-/<name>`` and below with ``endpoint``."""
        self.endpoints[name] = endpoint

    def log(self, request) -> None:
        """Access logging is left to metrics; the default formatter is costly."""

    # -- dispatch --------------------------------------------------------------

    def dispatch(self, request: StreamingRequest) -> None:
        d = maybeDeferred(self._route, request)
        d.addErrback(self._failed, request)

    def _failed(self, failure, request: StreamingRequest) -> None:
        if failure.check(BodyLost) and request.gone:
            return
        error = http_error(failure.value)
        if error.status >= 500:
            log.failure("{method} {uri} failed", failure, method=request.method, uri=request.uri)
        if request.startedWriting:
            request.abort()
            return
        request.respond_error(error)

    def _route(self, request: StreamingRequest) -> Deferred | None:
        from wsfront.http import files

        raw = target_path(request.path)
        if raw == b"/-" or raw.startswith(b"/-/"):
            return self._endpoint(request, raw)
        d = authenticate(self.context, request)
        d.addCallback(lambda user: files.handle(self.context, request, user, raw))
        return d

    def _endpoint(self, request: StreamingRequest, raw: bytes):
        segments = raw.decode("latin-1").split("/")[2:]
        name = segments[0] if segments else ""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise HttpError(404, "no such server endpoint")
        return endpoint(request, self.context, segments[1:])


def target_path(raw: bytes) -> bytes:
    """The path of a request target, absolute-form (``http://host/p``) included."""
    lower = raw[:8].lower()
    if lower.startswith((b"http://", b"https://")):
        rest = raw.split(b"://", 1)[1]
        slash = rest.find(b"/")
        return b"/" if slash < 0 else rest[slash:]
    return raw


def challenge(settings: SiteSettings) -> tuple[tuple[str, str], ...]:
    return (("WWW-Authenticate", f'Basic realm="{settings.realm}", charset="UTF-8"'),)


def authenticate(context: SiteContext, request: StreamingRequest) -> Deferred:
    """Fire with the User of the request's Basic credentials, or fail with 401.

    Without credentials, a GET or HEAD acts as ``settings.anonymous_user``
    (read permission only) when one is configured.
    """
    header = request.getHeader(b"Authorization")
    unauthorized = HttpError(401, "authentication required", challenge(context.settings))
    if header is None:
        anonymous = context.settings.anonymous_user
        if anonymous is not None and request.method in (b"GET", b"HEAD"):
            return maybeDeferred(context.transfers.catalog.get_user, anonymous).addCallback(
                lambda user: attrs.evolve(user, permissions=frozenset({"read"}))
            )
        raise unauthorized
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic":
        raise unauthorized
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise HttpError(400, "malformed Basic credentials") from None
    name, colon, password = decoded.partition(":")
    if not colon:
        raise HttpError(400, "malformed Basic credentials")

    def refused(failure):
        failure.trap(catalog_errors.AuthFailed)
        raise HttpError(401, "wrong user name or password", challenge(context.settings))

    return maybeDeferred(context.authenticator.authenticate, name, password).addErrback(refused)


def resolve(raw: bytes) -> paths.HttpTarget:
    """The user's virtual path for a raw request path (PathError on refusal)."""
    return paths.resolve_http(raw)


def make_site(reactor, transfers, authenticator, settings: SiteSettings | None = None) -> WsSite:
    """The HTTP front end over ``transfers``; ``authenticator.authenticate(name,
    password)`` fires with a catalog User or fails with AuthFailed."""
    context = SiteContext(reactor, transfers, authenticator, settings or SiteSettings())
    return WsSite(context)
