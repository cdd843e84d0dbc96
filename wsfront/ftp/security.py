"""FTPS (RFC 4217): AUTH TLS, PBSZ and PROT, and the TLS options they use.

One ``CertificateOptions`` per front end serves the control connections and
every data connection: it caches one OpenSSL context, and OpenSSL's session
cache lives in that context, so a client that resumes its control session
on a data connection (FileZilla and lftp do, Python 3.11's ftplib does
not; vsftpd's ``require_ssl_reuse`` insists on it) finds the session there.  Session
caching and session tickets are on for that reason.

FTPS speaks TLS 1.2 only (ECDHE with AEAD ciphers, Twisted's defaults).
TLS 1.3 sends its session tickets *after* the handshake: a client that
uploads over a data connection and closes it without reading them (lftp
with GnuTLS does) makes its kernel answer with a reset, and the reset
throws away upload bytes still waiting in the server's socket buffer; a
2 MiB ``put`` was stored as 212992 bytes about half the time.  OpenSSL
avoids that with ``SSL_set_num_tickets(ssl, 0)`` on data connections, but
pyOpenSSL does not expose it; in TLS 1.2 tickets travel inside the
handshake, so nothing is left unread.

``Protection`` is one control connection's state machine:

- ``AUTH TLS`` (also ``TLS-C`` and the old synonym ``SSL``): 234, then the
  control connection speaks TLS.  Anything the client pipelined after the
  AUTH line in plain text is dropped, never run as if it had come over TLS
  (the STARTTLS command-injection flaw, CVE-2011-0411).
- ``PBSZ 0``: only after AUTH (503 before); any size is answered ``PBSZ=0``.
- ``PROT P``: only after PBSZ (503); ``PROT C`` after AUTH alone (it is the
  default, and ftplib's ``prot_c`` sends no PBSZ); ``S`` and ``E`` are 536.
- Implicit FTPS starts with TLS, PBSZ 0 and PROT P already in force, as
  clients of port 990-style servers expect.
"""

from __future__ import annotations

import attrs
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory

from wsfront.certificate import pem_parts
from wsfront.ftp.replies import Reply

AUTH_MECHANISMS = frozenset({"TLS", "TLS-C", "SSL"})
FEAT_LINES = ("AUTH TLS", "PBSZ", "PROT")


def server_tls_options(pem: bytes) -> CertificateOptions:
    """TLS server options from a PEM blob holding the certificate, any
    intermediates (sent as the chain) and the key (``FrontendConfig.tls_pem()``),
    shared by control and data connections.  The PEM is read as HTTPS reads
    it (``wsfront.certificate.pem_parts``); only the TLS settings differ.
    ALPN agrees on ``ftp`` (RFC 7639) when a client offers it and on nothing
    otherwise, never failing the handshake over it (``select_alpn``)."""
    from wsfront.http.tls import select_alpn

    options = CertificateOptions(
        **pem_parts(pem),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
        enableSessions=True,
        enableSessionTickets=True,
    )
    return select_alpn(options, b"ftp")


def implicit_tls_factory(ftp_factory) -> TLSMemoryBIOFactory:
    """What an implicit FTPS port listens with: TLS from the first byte
    around ``ftp_factory``, whose settings must say ``implicit_tls`` (so
    its connections start with PROT P) and carry the TLS options."""
    settings = ftp_factory.settings
    if settings.tls is None or not settings.implicit_tls:
        raise ValueError("implicit FTPS needs settings with tls and implicit_tls=True")
    return TLSMemoryBIOFactory(settings.tls, False, ftp_factory)


@attrs.define
class Protection:
    """AUTH/PBSZ/PROT state of one control connection."""

    available: bool
    active: bool = False
    pbsz: bool = False
    private: bool = False

    @classmethod
    def implicit(cls) -> Protection:
        """TLS from the first byte, data connections protected by default."""
        return cls(available=True, active=True, pbsz=True, private=True)

    def check_auth(self, argument: str) -> None:
        """Whether AUTH ``argument`` may start TLS now (raises Reply if not)."""
        mechanism = argument.strip(" ").upper()
        if not self.available:
            raise Reply(431, "TLS is not configured on this server")
        if mechanism not in AUTH_MECHANISMS:
            raise Reply(504, f"AUTH {argument[:20]} not supported; use AUTH TLS")
        if self.active:
            raise Reply(503, "TLS is already active on this connection")

    def started(self) -> None:
        self.active = True
        self.pbsz = False
        self.private = False

    def set_pbsz(self, argument: str) -> str:
        """The 200 text for PBSZ (always 0 for TLS, RFC 4217 9)."""
        text = argument.strip(" ")
        if not self.active:
            raise Reply(503, "PBSZ needs AUTH TLS first")
        if not text.isascii() or not text.isdigit():
            raise Reply(501, "PBSZ needs a decimal buffer size (0)")
        self.pbsz = True
        return "PBSZ=0"

    def set_prot(self, argument: str) -> str:
        """The 200 text for PROT C or PROT P."""
        level = argument.strip(" ").upper()
        if not self.active:
            raise Reply(503, "PROT needs AUTH TLS first")
        if level == "P" and not self.pbsz:
            raise Reply(503, "PROT P needs PBSZ first")
        if level in ("S", "E"):
            raise Reply(536, f"PROT {level} not supported; use C or P")
        if level not in ("C", "P"):
            raise Reply(504, "PROT takes C or P")
        self.private = level == "P"
        return f"Protection level set to {level}"
