"""The FTP server factory: settings, login, and one control protocol per client.

``FTPFactory(reactor, transfers, portal, settings)`` is what a twistd
service mounts on an endpoint (with an explicit backlog, see
``wsfront.service.with_backlog``).  Everything a control connection needs
from outside comes through here: the reactor (never imported globally), the
transfer layer, the twisted.cred portal that checks passwords against the
catalog, and the settings.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.cred import credentials
from twisted.cred.error import LoginFailed
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ServerFactory

from wsfront.auth import Grant, IUser, anonymous_user
from wsfront.catalog.errors import AuthFailed
from wsfront.catalog.records import User
from wsfront.ftp.passive_share import PassivePortShare
from wsfront.limits import ConnectionLimits, LoginThrottle
from wsfront.transfer.service import Transfers

ANONYMOUS_NAMES = frozenset({"anonymous", "ftp"})


@attrs.frozen
class FTPSettings:
    """Knobs of the FTP front end.

    ``passive_ports`` is an inclusive (low, high) range (None: any free
    port); ``public_address`` is the IPv4 address PASV advertises (None: the
    address the client connected to, right on a LAN, wrong behind NAT).
    With a range, one client address may hold at most
    ``passive_ports_per_address`` of its ports at once (None: half the
    range, at least one; ``wsfront.ftp.passive_share``); without one there
    is no such share.  A passive port no data connection reaches within
    ``data_timeout`` seconds (and no transfer waits on) is closed.
    ``anonymous_root`` is the catalog directory anonymous users see,
    read-only, when ``anonymous`` is on.

    The control connection's queue: once ``max_queued_commands`` lines wait,
    ABOR, STAT and QUIT jump it; reading pauses past ``max_queued_lines`` or
    ``max_queued_bytes`` (memory per client stays bounded).

    FTPS: ``tls`` is the one TLS server options object
    (``security.server_tls_options``) for control and data connections, None
    for no FTPS; ``implicit_tls`` marks a factory mounted behind TLS from
    the first byte; ``require_tls`` refuses logins (and data transfers)
    without TLS, ``require_tls_users`` does so for the named users;
    ``require_tls_session_reuse`` refuses (522) a PROT P data connection
    whose handshake does not resume the control connection's TLS session
    (vsftpd's ``require_ssl_reuse``; off by default: Python's ftplib does
    not resume sessions, FileZilla and lftp do).  ``strict_tls_upload_eof``
    commits a PROT P upload only after the client's TLS close_notify (a
    bare FIN is then 426, the upload kept pending), as vsftpd's
    ``strict_ssl_read_eof``; off by default, as there, since some clients
    close without one.  A reset is 426 either way.

    Timeouts: ``idle_timeout`` seconds of silence close a logged-in control
    connection (421); one not logged in within ``login_timeout`` seconds of
    its greeting is closed too, however chatty (ProFTPD's TimeoutLogin):
    a connection that never logs in holds a connection slot for nothing.
    0 turns either off.  ``data_timeout`` bounds the wait for a data
    connection (425), a data connection on which nothing moves (426), and
    how long a passive port nobody connects to stays open.

    Limits (``wsfront.limits``, one of each per factory): failed logins per
    address and per user within ``login_window`` seconds, then 421 before
    any password is checked; open connections per address and in total.
    """

    passive_ports: tuple[int, int] | None = None
    passive_ports_per_address: int | None = None
    public_address: str | None = None
    anonymous: bool = False
    anonymous_root: str = "/pub"
    banner: str = "wsfs FTP server ready"
    idle_timeout: float = 900.0
    login_timeout: float = 60.0
    data_timeout: float = 30.0
    max_login_failures: int = 3
    max_queued_commands: int = 64
    max_queued_lines: int = 1024
    max_queued_bytes: int = 64 * 1024
    listing_page: int = 1000
    tls: Any = None
    implicit_tls: bool = False
    require_tls: bool = False
    require_tls_users: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    require_tls_session_reuse: bool = False
    strict_tls_upload_eof: bool = False
    login_failures_per_address: int = 10
    login_failures_per_user: int = 50
    login_window: float = 300.0
    max_connections_per_address: int | None = 256
    max_connections: int | None = 4096


def settings_of(cfg) -> FTPSettings:
    """The FTP settings of a front end's ``wsfront.config.FrontendConfig``
    (the FTP and implicit FTPS listeners share them)."""
    from wsfront.ftp.security import server_tls_options

    pem = cfg.tls_pem()
    return FTPSettings(
        passive_ports=cfg.passive_ports,
        passive_ports_per_address=cfg.passive_ports_per_address,
        public_address=cfg.public_address,
        anonymous=cfg.anonymous,
        anonymous_root=cfg.anonymous_root,
        tls=server_tls_options(pem) if pem else None,
        require_tls=cfg.require_tls,
        require_tls_users=frozenset(cfg.require_tls_users),
        require_tls_session_reuse=cfg.require_tls_session_reuse,
        strict_tls_upload_eof=cfg.strict_tls_upload_eof,
        login_failures_per_address=cfg.login_failures_per_address,
        login_failures_per_user=cfg.login_failures_per_user,
        login_window=cfg.login_window_seconds,
        max_connections_per_address=cfg.max_connections_per_address,
        max_connections=cfg.max_connections,
    )


@attrs.define
class FTPStats:
    """Counters of one factory, for tests, the benchmark and metrics."""

    connections: int = 0
    logins: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    uploads_committed: int = 0
    downloads_completed: int = 0
    transfers_aborted: int = 0
    refused_data_connections: int = 0
    #: Passive ports closed because no data connection reached them in time.
    passive_ports_unreached: int = 0
    #: PASV/EPSV refused because the address held its share of the range.
    passive_ports_refused: int = 0


class FTPFactory(ServerFactory):
    """Builds one ``FTPControl`` per control connection."""

    def __init__(
        self,
        reactor,
        transfers: Transfers,
        portal: Portal | None,
        settings: FTPSettings | None = None,
        *,
        share_limits_with: FTPFactory | None = None,
    ) -> None:
        """``share_limits_with``: another factory of the same front end (the
        implicit FTPS port beside the FTP port) whose login throttle and
        connection counts this one uses too, so a second port doubles
        neither the guesses nor the connections an address gets (nor the
        passive ports of the range both use)."""
        self.reactor = reactor
        self.transfers = transfers
        self.portal = portal
        self.settings = settings or FTPSettings()
        self.stats = FTPStats()
        self.sessions: set = set()
        if share_limits_with is not None:
            self.throttle = share_limits_with.throttle
            self.connections = share_limits_with.connections
            self.passive_share = share_limits_with.passive_share
            return
        s = self.settings
        self.passive_share: PassivePortShare | None = None
        if s.passive_ports is not None:
            self.passive_share = PassivePortShare(s.passive_ports, s.passive_ports_per_address)
        self.throttle = LoginThrottle(
            reactor,
            per_address=s.login_failures_per_address,
            per_user=s.login_failures_per_user,
            window=s.login_window,
        )
        self.connections = ConnectionLimits(s.max_connections_per_address, s.max_connections)

    def buildProtocol(self, addr):
        from wsfront.ftp.protocol import FTPControl

        protocol = FTPControl(self)
        protocol.factory = self
        return protocol

    def login(self, name: str, password: str) -> Deferred:
        """Fire with the ``Grant`` of (name, password): the catalog ``User``
        and what the session confirms it by later (``wsfront.auth``), or
        fail with AuthFailed (or the catalog's error, when it could not
        tell: an outage is no wrong password).  Anonymous names get the
        read-only anonymous user, with nothing to confirm, when anonymous
        access is on."""
        if name.lower() in ANONYMOUS_NAMES:
            if not self.settings.anonymous:
                return fail(AuthFailed("anonymous access is off"))
            return succeed(Grant.unchecked(self.anonymous_user()))
        if self.portal is None:
            return fail(AuthFailed("no authentication configured"))
        creds = credentials.UsernamePassword(
            name.encode("utf-8", "surrogateescape"), password.encode("utf-8", "surrogateescape")
        )
        d = self.portal.login(creds, None, IUser)

        def avatar(result) -> Grant:
            _interface, grant, _logout = result
            return grant

        def refused(failure):
            # Only a refused login: a catalog outage stays itself (FTP 451,
            # not a "Login incorrect" counted against the user).
            failure.trap(LoginFailed)
            raise AuthFailed("login incorrect")

        return d.addCallbacks(avatar, refused)

    def anonymous_user(self) -> User:
        """A read-only user confined to ``anonymous_root`` (the same built-in
        account HTTP gives requests without credentials)."""
        return anonymous_user(self.settings.anonymous_root)
