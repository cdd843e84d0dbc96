"""The HTTP site of a front end: settings, routing, authentication, limits.

``make_site(reactor, transfers, authenticator, settings)`` returns a
twisted.web ``Site`` whose channel streams bodies (``request.py``).  Each
request is dispatched once its target is known: paths under ``/-/`` go to
the server's own endpoints (mounted with ``site.mount``: ``metrics``,
``status``, ``uploads`` for tus), every other path is a user's file, reached
after Basic authentication and confined to the user's root by
``wsfront.paths.resolve_http``.

Limits (``wsfront.limits``, shared with FTP): connections are admitted per
client address and in total once the address is known (behind a
PROXY-protocol balancer, the address in the PROXY header); one beyond a cap
gets a canned ``503`` with ``Retry-After`` and is closed, which costs one
write and at most ``REFUSED_LINGER`` seconds of a socket.  Failed logins are
counted per address, per user and per pair; a throttled login gets ``429``
with ``Retry-After`` before any password check (no scrypt, and no body read:
a PUT is refused before ``100 Continue``).  The same site serves HTTP and
HTTPS, so both share one set of counters.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.web import server
from twisted.web.resource import Resource

from wsfront import paths
from wsfront.auth import anonymous_user
from wsfront.catalog import errors as catalog_errors
from wsfront.http.errors_map import HttpError, http_error
from wsfront.http.request import BodyLost, StreamingChannel, StreamingRequest, canned
from wsfront.limits import ConnectionLimits, LoginThrottle
from wsfront.text import one_line

log = Logger()

#: ``handler(request, context, segments) -> Deferred | None`` for ``/-/<name>/...``.
Endpoint = Callable[[StreamingRequest, "SiteContext", list[str]], Any]


@attrs.frozen
class SiteSettings:
    """Knobs of the HTTP front end, with the defaults it runs on."""

    realm: str = "wsfs"
    idle_timeout: float = 60.0
    """Seconds a connection may stay silent (slow clients, slow-loris) before it is dropped."""
    header_timeout: float | None = 30.0
    """Seconds from a request's first byte to the end of its headers; later
    gets 408 and the connection closes (a slow-loris sending a byte or a
    header line now and then is not bounded by the idle timeout alone).
    nginx allows 60 s, Apache's mod_reqtimeout 20-40 s.  None: no limit."""
    body_min_rate: float | None = 500.0
    """Bytes a second a request body must average over every
    ``body_rate_window`` seconds the server spends reading it (time the
    server paused the client for backpressure does not count); slower gets
    408 and the connection closes.  mod_reqtimeout's MinRate default.  None:
    no floor."""
    body_rate_window: float = 30.0
    max_header_bytes: int = 16384
    """Request line plus headers, in bytes; more and the client gets 400."""
    max_headers: int = 100
    max_line_bytes: int = 8192
    """The longest request line or header line."""
    listing_page: int = 500
    """Directory entries fetched from the catalog per page of a listing."""
    max_connections_per_address: int | None = 256
    """Open connections one client address may hold; more get 503 and are closed."""
    max_connections: int | None = 4096
    """Open connections in total (HTTP and HTTPS together); more get 503."""
    connection_retry_after: int = 5
    """The Retry-After of a connection refused for a cap, in seconds."""
    login_failures_per_address: int = 10
    """Failed logins one address may make in ``login_window`` (any user names)."""
    login_failures_per_user: int = 50
    """Failed logins for one user name in ``login_window``, from any address."""
    login_window: float = 300.0
    """Seconds a failed login counts against its address and user."""
    anonymous_user: str | None = None
    """Requests without credentials act as this account, read-only (GET/HEAD)."""
    anonymous_root: str | None = None
    """Requests without credentials read (GET/HEAD) this catalog directory as
    the built-in ``anonymous`` user (what wsfront ``--anonymous`` turns on)."""
    require_tls: bool = False
    """Over plain HTTP, refuse every request that logs in (403), and answer a
    missing login with 403 instead of a challenge that would make a browser
    send a password in clear."""
    require_tls_users: frozenset[str] = frozenset()
    """These users may log in over HTTPS only (403 over plain HTTP)."""
    https_port: int | None = None
    """The HTTPS port, named in the 403 that refuses a plain-HTTP login."""
    hsts_max_age: int | None = None
    """Strict-Transport-Security max-age on HTTPS answers (None: not sent)."""


@attrs.define
class SiteContext:
    """What handlers need: the transfer layer, the reactor, the settings, and
    the counters that throttle logins and cap connections."""

    reactor: Any
    transfers: Any
    authenticator: Any
    settings: SiteSettings
    throttle: LoginThrottle = attrs.field(default=None)
    limits: ConnectionLimits = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        s = self.settings
        if self.throttle is None:
            self.throttle = LoginThrottle(
                self.reactor,
                per_address=s.login_failures_per_address,
                per_user=s.login_failures_per_user,
                window=s.login_window,
            )
        if self.limits is None:
            self.limits = ConnectionLimits(s.max_connections_per_address, s.max_connections)


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

    def buildProtocol(self, addr):
        settings = self.context.settings
        channel = super().buildProtocol(addr)
        channel.admit = self._admit
        channel.totalHeadersSize = settings.max_header_bytes
        channel.maxHeaders = settings.max_headers
        channel.MAX_LENGTH = settings.max_line_bytes
        channel.clock = self.reactor
        channel.header_timeout = settings.header_timeout
        channel.body_min_rate = settings.body_min_rate
        channel.body_rate_window = settings.body_rate_window
        return channel

    def _admit(self, channel: StreamingChannel) -> bool:
        """Count the connection against its client's address and the total,
        or answer 503 and close it."""
        host = getattr(channel.transport.getPeer(), "host", None)
        limits = self.context.limits
        reason = limits.admit(host)
        if reason is None:
            channel.on_lost = lambda: limits.release(host)
            return True
        channel.refuse(
            canned(
                b"503 Service Unavailable",
                f"too many connections {reason}; try again later",
                retry_after=self.context.settings.connection_retry_after,
            )
        )
        return False

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN over TLS: HTTP/1.1 only, even where Twisted could speak h2
        (the ``h2`` package installed), since the streaming channel can't."""
        return [b"http/1.1"]

    def mount(self, name: str, endpoint: Endpoint) -> None:
        """Serve ``/-/<name>`` and below with ``endpoint``."""
        self.endpoints[name] = endpoint

    def log(self, request) -> None:
        """Access logging is left to metrics; the default formatter is costly."""

    # -- dispatch --------------------------------------------------------------

    def dispatch(self, request: StreamingRequest) -> None:
        # The latency histogram (``metrics.HttpCounters``) measures from here.
        request.started_at = self.reactor.seconds()
        max_age = self.context.settings.hsts_max_age
        if max_age is not None and request.isSecure():
            request.setHeader(b"Strict-Transport-Security", b"max-age=%d" % max_age)
        d = maybeDeferred(self._route, request)
        d.addErrback(self._failed, request)

    def _failed(self, failure, request: StreamingRequest) -> None:
        if failure.check(BodyLost) and request.gone:
            return
        error = http_error(failure.value, target_path(request.path))
        log_error_answer(request, failure, error.status)
        if request.startedWriting:
            request.abort()
            return
        request.respond_error(error)

    def _route(self, request: StreamingRequest) -> Deferred | None:
        from wsfront.http import files

        check_method_known(request)
        raw = target_path(request.path)
        if raw == b"*":
            # RFC 9110 (9.3.7): OPTIONS * asks about the server, not a
            # resource: what any path allows, no login needed (as for
            # tus's OPTIONS).  '*' is no target for any other method.
            if request.method != b"OPTIONS":
                raise HttpError(400, "'*' is a request target for OPTIONS only")
            return files.options(request)
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


KNOWN_METHODS = frozenset(
    {
        *(b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE"),
        b"PATCH",
        *(b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK"),
    }
)
"""The methods wsfs recognises: RFC 9110's, PATCH (RFC 5789) and WebDAV's
(RFC 4918).  Where a resource does not allow one of them, it answers 405
with the Allow of that resource."""


def check_method_known(request: StreamingRequest, method: bytes | None = None) -> None:
    """501 for a method the server does not recognise (RFC 9110, 15.6.2:
    405 is for a known method the target resource does not allow), before
    anything else about the request (its login included) is looked at.
    ``method``: the one the request asks for, if not its own (tus's
    ``X-HTTP-Method-Override``).  The request is marked ``unknown_method``:
    the metrics count such refusals apart from the server's 5xx errors."""
    if (request.method if method is None else method) not in KNOWN_METHODS:
        request.unknown_method = True
        raise HttpError(501, "method not implemented")


LOGGED_TEXT_MAX = 500
"""The longest path or reason a request's error line shows (one line each)."""


def log_error_answer(request: StreamingRequest, failure, status: int) -> None:
    """Log a request that ended in an error, once, before it is answered.

    An error the protocol answers (``errors_map``: 503 with every storage
    server down, 507 over quota, 404...) is routine: one line, at warn for a
    5xx (the operator may have something to fix) and info for a 4xx.  The
    line has the error's own message, which may name blob ids and storage
    servers: the operator's to see, not the client's (the body comes from
    ``errors_map``).  Only an unexpected error (500) is worth a traceback,
    as in FTP (``wsfront.ftp.protocol``: ``reply_error``).
    """
    method = request.method.decode("latin-1")
    path = one_line(request.uri.decode("latin-1"), LOGGED_TEXT_MAX)
    if status == 500:
        log.failure("{method} {path} failed", failure, method=method, path=path)
        return
    error = failure.value
    reason = error.message if isinstance(error, HttpError) else f"{type(error).__name__}: {error}"
    log.emit(
        # 501 is the client's unknown method: nothing for the operator.
        LogLevel.warn if status >= 500 and status != 501 else LogLevel.info,
        "{method} {path}: {outcome} ({reason})",
        method=method,
        path=path,
        status=status,
        outcome=f"cut short (would be {status})" if request.startedWriting else status,
        reason=one_line(reason, LOGGED_TEXT_MAX),
    )


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


ANONYMOUS_METHODS = (b"GET", b"HEAD", b"PROPFIND", b"OPTIONS")
"""What a client without credentials may do where anonymous reading is on:
read (a WebDAV client lists with PROPFIND, after an OPTIONS)."""


def authenticate(context: SiteContext, request: StreamingRequest) -> Deferred:
    """Fire with the User of the request's Basic credentials, or fail with
    401 (wrong login), 429 (too many failed logins: ``Retry-After``, no
    password check) or 403 (a login over plain HTTP where TLS is required:
    no password check either).

    Without credentials, a reading method (``ANONYMOUS_METHODS``) acts as
    the built-in anonymous user under ``settings.anonymous_root``, or as
    ``settings.anonymous_user`` (read permission only), when one is
    configured.
    """
    settings = context.settings
    secure = request.isSecure()
    header = request.getHeader(b"Authorization")
    unauthorized = HttpError(401, "authentication required", challenge(settings))
    if header is None:
        if request.method in ANONYMOUS_METHODS:
            if settings.anonymous_root is not None:
                return succeed(anonymous_user(settings.anonymous_root))
            if settings.anonymous_user is not None:
                return maybeDeferred(
                    context.transfers.catalog.get_user, settings.anonymous_user
                ).addCallback(lambda user: attrs.evolve(user, permissions=frozenset({"read"})))
        if settings.require_tls and not secure:
            raise tls_required(settings, request)
        raise unauthorized
    if settings.require_tls and not secure:
        raise tls_required(settings, request)
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
    if name in settings.require_tls_users and not secure:
        raise tls_required(settings, request)
    host = client_host(request)
    throttle = context.throttle

    def admitted(wait):
        if wait is not None:
            raise HttpError(
                429,
                "too many failed logins; try again later",
                (("Retry-After", str(math.ceil(wait))),),
            )
        return maybeDeferred(context.authenticator.authenticate, name, password).addCallbacks(
            accepted, refused
        )

    def accepted(user):
        throttle.succeeded(name, host)
        return user

    def refused(failure):
        if not failure.check(catalog_errors.AuthFailed):
            throttle.abandoned(name, host)
            return failure
        throttle.failed(name, host)
        raise HttpError(401, "wrong user name or password", challenge(settings))

    return throttle.admit(name, host).addCallback(admitted)


def client_host(request: StreamingRequest) -> str | None:
    """The client's address: the peer's, or behind a PROXY-protocol balancer
    the one its PROXY header names."""
    return getattr(request.getClientAddress(), "host", None)


def tls_required(settings: SiteSettings, request: StreamingRequest) -> HttpError:
    """The 403 for a login (or a challenge) over plain HTTP where TLS is
    required, naming the HTTPS URL to use when the HTTPS port is known."""
    where = "https://"
    if settings.https_port is not None:
        host = (request.getHeader(b"Host") or b"").decode("latin-1").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name and all(c.isalnum() or c in ".-[]:" for c in name):
            port = "" if settings.https_port == 443 else f":{settings.https_port}"
            where = f"https://{name}{port}{request.path.decode('latin-1')}"
    return HttpError(403, f"TLS required: use {where}")


def resolve(raw: bytes) -> paths.HttpTarget:
    """The user's virtual path for a raw request path (PathError on refusal)."""
    return paths.resolve_http(raw)


def make_site(reactor, transfers, authenticator, settings: SiteSettings | None = None) -> WsSite:
    """The HTTP front end over ``transfers``; ``authenticator.authenticate(name,
    password)`` fires with a catalog User or fails with AuthFailed."""
    context = SiteContext(reactor, transfers, authenticator, settings or SiteSettings())
    return WsSite(context)
