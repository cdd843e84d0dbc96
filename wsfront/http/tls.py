"""HTTPS for the site, and the site's settings from wsfront's options.

``listen_https`` serves the same ``WsSite`` as the plain listener inside TLS
(one site, so the login throttle and the connection caps count both
together).  TLS 1.2 is the least version offered (Twisted's default too,
stated here so a library change can't lower it); ALPN offers
``http/1.1`` only (``WsSite.acceptableProtocols``), so a client never
negotiates HTTP/2, which the streaming channel does not speak.  A PEM file
may carry intermediate certificates after the server's: they are sent as
the chain.
"""

from __future__ import annotations

import re

from twisted.internet import ssl
from twisted.internet.endpoints import serverFromString
from twisted.protocols.tls import TLSMemoryBIOFactory

from wsfront.config import FrontendConfig
from wsfront.http.site import SiteSettings

HSTS_MAX_AGE = 180 * 24 * 3600
"""Strict-Transport-Security max-age sent over HTTPS when TLS is required."""

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def server_tls_options(pem: bytes) -> ssl.CertificateOptions:
    """Server TLS options for a PEM blob holding the certificate, its chain
    and the private key (``FrontendConfig.tls_pem()``)."""
    server = ssl.PrivateCertificate.loadPEM(pem)
    chain = [
        ssl.Certificate.loadPEM(c).original.to_cryptography() for c in _CERTIFICATE.findall(pem)[1:]
    ]
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original.to_cryptography_key(),
        certificate=server.original.to_cryptography(),
        extraCertChain=chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


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
