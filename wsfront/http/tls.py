"""HTTPS for the site, and the site's settings from wsfront's options.

``listen_https`` serves the same ``WsSite`` as the plain listener inside TLS
(one site, so the login throttle and the connection caps count both
together).  TLS 1.2 is the least version offered (Twisted's default too,
stated here so a library change can't lower it); ALPN agrees on
``http/1.1`` only, so a client never negotiates HTTP/2, which the
streaming channel does not speak.  A PEM file may carry intermediate
certificates after the server's: they are sent as the chain.

ALPN (RFC 7301) is chosen by ``select_alpn``, not by Twisted: Twisted's
selection callback answers a client offering nothing it knows (``h2``
alone, ``curl --http1.0``'s ``http/1.0``, an FTPS client's ``ftp``) with
an empty choice, which OpenSSL turns into alert 80 (internal_error) and a
failed handshake.  Going on with no protocol agreed on is what RFC 7301
allows a server that would rather serve such clients, and they all speak
the one protocol the listener offers anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import serverFromString
from twisted.protocols.tls import TLSMemoryBIOFactory

from wsfront.certificate import pem_parts
from wsfront.config import FrontendConfig
from wsfront.http.site import SiteSettings

HSTS_MAX_AGE = 180 * 24 * 3600
"""Strict-Transport-Security max-age sent over HTTPS when TLS is required."""


def select_alpn(options: ssl.CertificateOptions, protocol: bytes) -> ssl.CertificateOptions:
    """``options`` with ALPN agreeing on ``protocol`` when the client offers
    it and on nothing otherwise, the handshake going on either way.

    ``CertificateOptions`` makes one OpenSSL context and keeps it for every
    connection (``getContext``); the callback replaces Twisted's on that
    context before any connection is made from it (pyOpenSSL refuses to
    change a context in use).
    """

    def choose(connection: SSL.Connection, offered: Sequence[bytes]) -> object:
        return protocol if protocol in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    options.getContext().set_alpn_select_callback(choose)
    return options


def server_tls_options(pem: bytes) -> ssl.CertificateOptions:
    """Server TLS options for HTTPS from a PEM blob (``certificate.pem_parts``)."""
    options = ssl.CertificateOptions(**pem_parts(pem), raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    return select_alpn(options, b"http/1.1")


async def listen_https(reactor, endpoint: str, site, pem: bytes):
    """Listen on ``endpoint`` (any server endpoint string, ``haproxy:tcp:...``
    too: the PROXY header comes before the TLS handshake) with ``site``
    inside TLS; fires with the listening port."""
    factory = TLSMemoryBIOFactory(server_tls_options(pem), False, site)
    return await serverFromString(reactor, endpoint).listen(factory)


def site_settings(config: FrontendConfig) -> SiteSettings:
    """The HTTP site's settings for a wsfront configuration."""
    return SiteSettings(
        max_connections_per_address=config.max_connections_per_address,
        max_connections=config.max_connections,
        login_failures_per_address=config.login_failures_per_address,
        login_failures_per_user=config.login_failures_per_user,
        login_window=config.login_window_seconds,
        header_timeout=config.http_header_timeout,
        body_min_rate=config.http_body_min_rate,
        body_rate_window=config.http_body_rate_window,
        anonymous_root=config.anonymous_root if config.anonymous else None,
        require_tls=config.require_tls,
        require_tls_users=frozenset(config.require_tls_users),
        # HSTS makes browsers use HTTPS for the host name on every port, so
        # it is sent only when plain HTTP serves no login anyway.
        hsts_max_age=HSTS_MAX_AGE if config.require_tls else None,
    )
