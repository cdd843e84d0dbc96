"""The FTP control connection: framing, the command queue, login and state.

Not ``twisted.protocols.ftp.FTP``: that one pauses its transport while a
command runs, so ABOR can't be read during a transfer, and its PASV waits
for the data connection before answering.  Here the transport keeps reading;
commands queue and run one at a time in order (their replies must stay in
order), except ABOR and STAT, which act at once on the running transfer.
QUIT queues too, so a transfer command before it runs to its own reply
(226, 426, or 425 once ``data_timeout`` passes without a data connection)
before the 221: RFC 959 (4.1.1) keeps the connection open for the result
of a transfer in progress, and a client may send PASV, STOR and QUIT at
once and connect the data socket after.  Only behind a flood (a queue of
``max_queued_commands``) does QUIT jump ahead and leave at once.  Nothing
sent after a QUIT runs: its 221 is the last reply.
Data transfers run as producer/consumer pairs between the data connection
and the transfer layer (``wsfront.ftp.datacmds``); the control connection
only waits for their outcome.

State per connection: the logged-in catalog ``User`` and the login's
``Grant`` (``wsfront.auth``: confirmed with the catalog once per login-cache
TTL before a command touches files, ``CommandSpec.touches_files``), a virtual cwd
(``wsfront.paths``: the transfer layer joins the user's root, so nothing
here can leave it), TYPE, a pending REST offset, RNFR, the passive listener
or active address, and the sizes SIZE last reported (APPE resumes there,
``datacmds.SizeReported``).
"""

from __future__ import annotations

import inspect
import math
import socket
from collections import deque

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront import paths
from wsfront.auth import AccountChanged
from wsfront.catalog.errors import AuthFailed, NotADirectory, NotEmpty
from wsfront.catalog.records import User
from wsfront.ftp import addresses, datacmds, hashing, listing, replies, security
from wsfront.ftp.commands import COMMANDS, FEATURES, help_lines
from wsfront.ftp.data import DataConnectionFailed, PassiveListener, open_passive
from wsfront.ftp.errors_map import is_expected, is_outage, reply_for
from wsfront.ftp.parsing import (
    ArgumentError,
    Command,
    LineBuffer,
    LineTooLong,
    Malformed,
    format_time_value,
    names_directory,
    parse_allo,
    parse_line,
    parse_mfmt,
    parse_offset,
)
from wsfront.ftp.replies import Reply, quote_path
from wsstorage import framing

log = Logger()

#: Seconds a closing control connection may take to go: past them it is
#: aborted.  Under TLS, Twisted's loseConnection waits for the client's
#: close_notify, and a client that never sends one would otherwise keep
#: the connection (and its slot in the per-address cap) for ever.
CLOSE_DEADLINE = 10.0

OUT_OF_BAND = frozenset({"ABOR", "STAT"})
"""Commands acted on at once while a transfer runs (the rest queue behind it)."""

URGENT_WHEN_FULL = frozenset({"ABOR", "STAT", "QUIT"})
"""Commands acted on at once, ahead of the queue, once it holds
``max_queued_commands`` lines or more: a client that pipelined a flood can
still abort its transfer, ask for status, or leave (a QUIT that jumps the
queue drops the commands still queued and cuts a running transfer: the
client chose to go now)."""

NOT_IMPLEMENTED = {
    "CCC": "CCC not implemented: the control connection stays protected",
    "ADAT": "ADAT not implemented: AUTH TLS needs no security data",
    "MIC": "MIC not implemented: use AUTH TLS",
    "CONF": "CONF not implemented: use AUTH TLS",
    "ENC": "ENC not implemented: use AUTH TLS",
}
"""RFC 2228/4217 commands known and refused with 502, not 500 Unknown
command: a client that tries CCC (clearing the control connection after
login, for NAT helpers) learns the server won't, and goes on over TLS."""

KEEP_RESTART = frozenset({"PASV", "EPSV", "PORT", "EPRT", "TYPE", "ALLO"})
"""Commands that leave a REST marker for the transfer command after them.
RFC 3659 5.3 has REST immediately precede RETR/STOR/APPE; every other
command (LIST included, which can't use it) drops it, so a later STOR
does not resume, and truncate the file, at an offset meant for something
else.  The data connection setup, TYPE I and ALLO are let through: they
belong to the same transfer, and clients may send them after REST
(FileZilla, lftp, wget, curl and ftplib send TYPE, PASV/PORT, REST, then
the transfer command).  TYPE A keeps it too, as TYPE I does: the transfer
command after it refuses the marker (``take_rest``), since dropping it made
the STOR replace the file from byte 0 and the RETR send it whole, each
with 226, to a client that had been told 350 and believed it resumed."""

KEEP_ALLOCATION = KEEP_RESTART | {"REST"}
"""Commands that leave an ALLO size for the transfer command after them:
those that leave a REST marker, and REST itself (a client may send ALLO
before or after REST)."""


def socket_host(transport) -> str:
    """The local address of the socket under ``transport``: below the TLS
    and PROXY-protocol wrappers (whose ``getHost`` is the balancer's idea of
    the destination), where a passive data port can actually be opened."""
    while isinstance(transport, ProtocolWrapper) and transport.transport is not None:
        transport = transport.transport
    return getattr(transport.getHost(), "host", "")


def awaiting_proxy_header(transport, then) -> bool:
    """True when ``transport`` sits on a PROXY-protocol wrapper
    (``haproxy:`` endpoints) whose header has not arrived yet; ``then()`` is
    called once it has.  Twisted's wrapper connects the protocol before the
    header, when ``getPeer()`` is still the balancer's address, and says
    nothing when the header arrives alone, so its ``dataReceived`` is
    watched until it has parsed one."""
    while isinstance(transport, ProtocolWrapper) and not isinstance(
        transport, HAProxyProtocolWrapper
    ):
        transport = transport.transport
    if not isinstance(transport, HAProxyProtocolWrapper) or transport._proxyInfo is not None:
        return False
    wrapper, original = transport, transport.dataReceived

    def watch(data: bytes) -> None:
        original(data)
        if wrapper._proxyInfo is not None:
            del wrapper.dataReceived
            then()

    wrapper.dataReceived = watch
    return True


@implementer(IHandshakeListener)
class Deadline:
    """At most one pending call of ``action``: ``arm`` starts it unless it
    runs already, ``cancel`` stops it, and once it fired it may be armed
    again (from ``action`` too)."""

    def __init__(self, clock, action) -> None:
        self._clock = clock
        self._action = action
        self._call = None

    def arm(self, seconds: float) -> None:
        if self._call is None:
            self._call = self._clock.callLater(seconds, self._fire)

    def cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        self._action()


class FTPControl(Protocol):
    """One client's control connection.

    Every close the server decides (QUIT, timeouts, refusals) goes through
    ``close``: before a TLS handshake has completed (on the implicit port,
    or after AUTH TLS) Twisted's TLS layer holds the farewell reply until
    the handshake and never closes, so such a connection is aborted.  A
    handshake gets ``login_timeout`` seconds (``_arm_handshake_timer``): a
    peer that connects and sends nothing must not keep its slot of
    ``max_connections_per_address``.
    """

    def __init__(self, factory) -> None:
        self.factory = factory
        self.reactor = factory.reactor
        self.transfers = factory.transfers
        self.settings = factory.settings
        self.stats = factory.stats
        self._lines = LineBuffer()
        self._queue: deque = deque()
        self._busy = False
        self._paused_reading = False
        self._queued_bytes = 0
        self._idle_call = None
        self._login_deadline = Deadline(self.reactor, self._login_expired)
        self._tls_switching = False
        # Set by QUIT: nothing read or queued after it runs, and no reply
        # follows its 221.
        self._quitting = False
        self._said_goodbye = False
        self._handshake_deadline = Deadline(self.reactor, self._handshake_expired)
        self._admitted = False
        # A balancer sends its PROXY header at once; a peer that doesn't goes.
        self._header_deadline = Deadline(self.reactor, self._header_expired)
        self._close_deadline = Deadline(self.reactor, self._close_expired)
        self._started = False
        self.peer_host = ""
        self._hashing = None
        self.connected_ = False
        # Session state.
        #: What the login holds of its account (``wsfront.auth.Grant``),
        #: confirmed past the TTL; None with no login.  ``user`` is its User.
        self.grant = None
        self._login_name: str | None = None
        self._login_failures = 0
        self.cwd = "/"
        self.binary = False
        self.rest: int | None = None
        self.restart: int | None = None
        #: ``ALLO n`` for the next transfer command (``allocation``), and
        #: the one the command running now took (``allocated``), as REST's
        #: marker goes.
        self.allocation: int | None = None
        self.allocated: int | None = None
        self.rnfr: str | None = None
        self.passive: PassiveListener | None = None
        self.parked: PassiveListener | None = None
        self.active: addresses.HostPort | None = None
        #: The last PASV/EPSV's port was closed unreached (``_unreached``):
        #: a transfer command before the next one says so in its 425.
        self.passive_unreached = False
        self.epsv_all = False
        self.sizes: dict[str, datacmds.SizeReported] = {}
        self.mlst_facts: tuple[str, ...] = listing.MLST_FACTS
        self.hash_algorithm = hashing.DEFAULT
        self.transfer: datacmds.Transfer | None = None
        tls = self.settings.tls is not None
        implicit = tls and self.settings.implicit_tls
        self.protection = security.Protection.implicit() if implicit else security.Protection(tls)
        #: A TLS handshake is under way (the implicit port from the first
        #: byte, AUTH TLS once answered 234) and has not completed.
        self.handshaking = implicit

    # -- connection ---------------------------------------------------

    def connectionMade(self) -> None:
        if awaiting_proxy_header(self.transport, self._start_session):
            self._header_deadline.arm(self.settings.data_timeout)
            return
        self._start_session()

    def _start_session(self) -> None:
        """Admit the client and greet it, knowing its real address (behind
        a PROXY-protocol balancer, the one its header names)."""
        if self._started:
            return
        self._started = True
        self._header_deadline.cancel()
        self.peer_host = getattr(self.transport.getPeer(), "host", "")
        refused = self.factory.connections.admit(self.peer_host)
        if refused is not None:
            self.transport.write(replies.reply(421, f"Too many connections {refused}"))
            self.close()
            return
        self._admitted = True
        self.connected_ = True
        self.stats.connections += 1
        self.factory.sessions.add(self)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not a TCP transport (tests)
        self._urgent_inline(not self.protection.active)
        self.local_host = socket_host(self.transport)
        self._arm_idle()
        self._arm_login_timer()
        if self.handshaking:
            self._arm_handshake_timer()
        self.reply(220, self.settings.banner)

    def _header_expired(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:
        self._header_deadline.cancel()
        self._close_deadline.cancel()
        if not self._admitted:
            return
        self._admitted = False
        self.factory.connections.release(self.peer_host)
        self.connected_ = False
        self.factory.sessions.discard(self)
        self._cancel_idle()
        self._login_deadline.cancel()
        self._handshake_deadline.cancel()
        self._queue.clear()
        if self._hashing is not None:
            self._hashing.stopProducing()
        if self.transfer is not None:
            self.transfer.control_lost(self.reactor, self.settings.data_timeout)
        self._close_data_setup()

    def close(self) -> None:
        """Close the connection after the replies written so far; abort it
        while a TLS handshake is pending, when they can never be sent."""
        if self.handshaking:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
            if self.connected_:  # a client gone during a PASS check needs no timer
                self._close_deadline.arm(CLOSE_DEADLINE)

    def _close_expired(self) -> None:
        """A close still not done after ``CLOSE_DEADLINE``: a TLS client
        that never answered our close_notify.  Nothing more can reach it."""
        if self.connected_:
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS layer under this connection (implicit
        port, or AUTH TLS) finished its handshake."""
        self.handshaking = False
        self._handshake_deadline.cancel()

    def _arm_handshake_timer(self) -> None:
        if self.settings.login_timeout > 0:
            self._handshake_deadline.arm(self.settings.login_timeout)

    def _handshake_expired(self) -> None:
        if self.handshaking and self.connected_:
            self.transport.abortConnection()

    def _urgent_inline(self, inline: bool) -> None:
        """Keep TCP urgent data in the control stream (RFC 6093 says to).

        Clients send ABOR's last byte as urgent data: ftplib the LF of
        ``ABOR\\r\\n``, lftp the telnet DM.  Without SO_OOBINLINE the kernel
        takes that byte out of the stream, and ftplib's ABOR never ends its
        line.  Under TLS (implicit, or once AUTH TLS starts) it is left off:
        clients send no urgent data inside TLS, and a stray raw byte is
        better dropped by the kernel than fed to the TLS layer."""
        raw = self.transport
        if isinstance(raw, ProtocolWrapper) and not isinstance(raw, HAProxyProtocolWrapper):
            return  # TLS: the socket is not ours to change
        while isinstance(raw, ProtocolWrapper) and raw.transport is not None:
            raw = raw.transport
        try:
            raw.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, int(inline))
        except (AttributeError, OSError):
            pass  # not a socket (tests)

    def dataReceived(self, data: bytes) -> None:
        if not self._started:
            # Behind a PROXY wrapper: its header was parsed just now, and a
            # command arrived in the same read.
            self._start_session()
        if self._tls_switching:
            return  # plain text after AUTH TLS: never run (CVE-2011-0411)
        if self.handshaking:
            # Bytes after AUTH TLS come decrypted, so the handshake is done.
            # Behind a PROXY wrapper the TLS layer wraps the wrapper, which
            # does not pass its handshakeCompleted on to us.
            self.handshakeCompleted()
        self._arm_idle()
        for line in self._lines.feed(data):
            if not self.connected_:
                return
            if self._quitting:
                break
            parsed = line if isinstance(line, LineTooLong) else parse_line(line)
            if isinstance(parsed, Command) and self._urgent(parsed):
                self._run(parsed)
                continue
            size = len(line) + 2 if isinstance(line, bytes) else 0
            self._queue.append((parsed, size))
            self._queued_bytes += size
            if isinstance(parsed, Command) and self._auth_accepted(parsed):
                # What follows an AUTH TLS that will start TLS was sent in
                # plain text: dropped, never run once TLS is up.
                self._tls_switching = True
                self._lines = LineBuffer()
                break
        if (
            len(self._queue) > self.settings.max_queued_lines
            or self._queued_bytes > self.settings.max_queued_bytes
        ) and not self._paused_reading:
            self._paused_reading = True
            self.transport.pauseProducing()
        self._pump()

    def _auth_accepted(self, command: Command) -> bool:
        """Whether ``command`` is an AUTH that will start TLS when it runs.
        A refused one (504 for an unknown mechanism, 431, 503) leaves the
        lines after it to run: only queued commands run before it, and
        none of them changes what AUTH accepts."""
        if command.verb != "AUTH" or not command.argument.strip(" "):
            return False
        try:
            self.protection.check_auth(command.argument)
        except Reply:
            return False
        return True

    def _urgent(self, command: Command) -> bool:
        """Whether ``command`` acts now, ahead of the queued ones."""
        if self.user is None:
            return False
        if command.verb in OUT_OF_BAND and self.transfer is not None:
            return True
        full = len(self._queue) >= self.settings.max_queued_commands
        return full and command.verb in URGENT_WHEN_FULL

    def _pump(self) -> None:
        while self._queue and not self._busy and self.connected_ and not self._quitting:
            parsed, size = self._queue.popleft()
            self._queued_bytes -= size
            d = self._run(parsed)
            if d is not None and not d.called:
                self._busy = True
                d.addBoth(self._command_done)
                return
        if self._paused_reading and not self._queue and self.connected_:
            self._paused_reading = False
            self.transport.resumeProducing()

    def _command_done(self, _result) -> None:
        self._busy = False
        self._pump()

    # -- replies ------------------------------------------------------

    def reply(self, code: int, text: str) -> None:
        """Send a one-line reply, or a multi-line one if ``text`` has newlines.

        Straight into an idle plain-TCP socket (``framing.send_now``): the
        client sends nothing until it has the reply, and a transport write
        waits for the reactor's next turn to send it, which a small STOR's
        four replies (TYPE, PASV, 150, 226) paid each."""
        if self.connected_ and not self._said_goodbye:
            framing.send_now(self.transport, replies.reply(code, text))

    def reply_lines(self, code: int, lines: list[str]) -> None:
        """A reply of several lines; middle lines are sent as given (FEAT's
        and HELP's start with a space), and ``replies`` keeps any from
        looking like the end."""
        if self.connected_ and not self._said_goodbye:
            framing.send_now(self.transport, replies.reply(code, lines))

    def reply_error(self, error: BaseException) -> None:
        if isinstance(error, Reply):
            self.reply(error.code, error.text)
            return
        if isinstance(error, addresses.AddressError):
            self.reply(error.code, str(error))
            return
        if isinstance(error, ArgumentError):
            self.reply(501, str(error))
            return
        if isinstance(error, DataConnectionFailed):
            self.reply(425, str(error))
            return
        if not is_expected(error):
            log.failure(
                "FTP command failed unexpectedly", Failure(error, type(error), error.__traceback__)
            )
        elif is_outage(error):
            log.warn("FTP command refused: {error}", error=f"{type(error).__name__}: {error}")
        self.reply(*reply_for(error))

    # -- dispatch -----------------------------------------------------

    def _run(self, parsed) -> Deferred | None:
        """Run one parsed line; a Deferred while the command is still going."""
        self.restart, self.rest = self.rest, None
        self.allocated, self.allocation = self.allocation, None
        if isinstance(parsed, Command) and parsed.verb in KEEP_RESTART:
            self.rest = self.restart
        if isinstance(parsed, Command) and parsed.verb in KEEP_ALLOCATION:
            self.allocation = self.allocated
        if isinstance(parsed, LineTooLong):
            self.reply(500, f"Command line too long ({parsed.length} bytes)")
            return None
        if isinstance(parsed, Malformed):
            self.reply(parsed.code, f"Syntax error: {parsed.reason}")
            return None
        spec = COMMANDS.get(parsed.verb)
        if spec is None and parsed.verb in NOT_IMPLEMENTED:
            self.reply(502, NOT_IMPLEMENTED[parsed.verb])
            return None
        if spec is None:
            self.reply(500, f"Unknown command {parsed.verb}")
            return None
        if spec.login and self.user is None:
            self.reply(530, "Please log in with USER and PASS first")
            return None
        if spec.needs_arg and not parsed.argument.strip(" "):
            self.reply(501, f"Syntax error: {parsed.verb} needs an argument")
            return None
        if parsed.verb not in ("RNFR", "RNTO"):
            self.rnfr = None  # RNTO must follow RNFR directly
        if spec.login and spec.touches_files and not self._login_fresh():
            return self._confirm_then(parsed.verb, parsed.argument)
        return self._dispatch(parsed.verb, parsed.argument)

    def _dispatch(self, verb: str, argument: str) -> Deferred | None:
        """Run the handler of ``verb``; a Deferred while it is still going."""
        handler = getattr(self, "ftp_" + verb)
        try:
            result = handler(argument)
        except Exception as e:
            self.reply_error(e)
            return None
        if inspect.iscoroutine(result):
            d = Deferred.fromCoroutine(result)
            return d.addErrback(lambda f: self.reply_error(f.value))
        return None

    # -- the login's account ------------------------------------------

    @property
    def user(self) -> User | None:
        """The logged-in account (the grant's, renewed with it); None
        before a login."""
        return self.grant.user if self.grant is not None else None

    def _login_fresh(self) -> bool:
        """Whether the login may act without asking the catalog: its account
        was seen unchanged within the TTL (a clock read, no query)."""
        return self.grant is not None and self.grant.fresh()

    def _confirm_then(self, verb: str, argument: str) -> Deferred:
        """Confirm the login with the catalog (one read, no scrypt), then
        run the command on the renewed login (its User fresh: quota,
        permissions).  An account that changed logs the session out (530,
        ``_account_changed``); a catalog that could not tell refuses this
        command only (its outage reply), and the next one asks again.
        The REST marker, ALLO size and RNFR source the command took are
        kept for it: an urgent command run meanwhile (STAT, ABOR) would
        take them.  Nothing runs once QUIT was read (it may have jumped
        the queue while the read was out): its 221 was the last word."""
        grant, restart, allocated, rnfr = self.grant, self.restart, self.allocated, self.rnfr

        def confirmed(renewed) -> Deferred | None:
            if not self.connected_ or self._quitting or self.grant is not grant:
                return None
            self.grant = renewed
            self.restart, self.allocated, self.rnfr = restart, allocated, rnfr
            return self._dispatch(verb, argument)

        def refused(failure: Failure) -> None:
            if not self.connected_ or self._quitting or self.grant is not grant:
                return
            if failure.check(AccountChanged):
                self._account_changed(failure.value)
                return
            self.reply_error(failure.value)

        return grant.confirm().addCallbacks(confirmed, refused)

    def _account_changed(self, error: AccountChanged) -> None:
        """The session's account is gone or is another's now: log out (530),
        and leave the connection to a new USER/PASS within the login
        timeout, as USER does.  A transfer started before is not this
        check's to cut (docs: it was confirmed at its start)."""
        log.info("FTP session from {peer} logged out: {why}", peer=self.peer_host, why=str(error))
        self.grant = None
        self.cwd = "/"
        self.sizes.clear()
        self._arm_login_timer()
        self.reply(530, "Login no longer valid (account deleted or password changed); log in again")

    # -- idle timeout -------------------------------------------------

    def _arm_idle(self) -> None:
        """(Re)start the idle timer: at every read of the control connection.

        A running timer is moved (``reset``: a later time is only noted,
        the reactor's heap of calls is left alone), not cancelled and
        replaced: a small STOR's three command reads paid a callLater and
        a cancel each."""
        timeout = self.settings.idle_timeout
        call = self._idle_call
        if timeout > 0 and self.connected_ and call is not None and call.active():
            call.reset(timeout)
            return
        self._cancel_idle()
        if timeout > 0 and self.connected_:
            self._idle_call = self.reactor.callLater(timeout, self._idle)

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle(self) -> None:
        self._idle_call = None
        if self.transfer is not None:
            self._arm_idle()  # a long transfer is not idleness
            return
        self.reply(421, "Idle timeout, closing the control connection")
        self.close()

    def _arm_login_timer(self) -> None:
        """Start the pre-login deadline (at the greeting, and when USER
        logs a session out), unless it runs already."""
        if self.settings.login_timeout > 0:
            self._login_deadline.arm(self.settings.login_timeout)

    def _login_expired(self) -> None:
        """Not logged in ``login_timeout`` seconds after the greeting: 421.
        A PASS still being decided (throttle, password hash) gets its
        answer first: the check is made again once it is."""
        if self.user is not None or not self.connected_:
            return
        if self._busy:
            self._login_deadline.arm(1.0)
            return
        self.reply(421, "Login timeout, closing the control connection")
        self.close()

    # -- helpers for commands -----------------------------------------

    def path(self, argument: str) -> str:
        """The virtual path ``argument`` names from the cwd (PathError if bad)."""
        return paths.resolve(self.cwd, argument)

    def file_path(self, argument: str) -> str:
        """``path`` for a command that acts on a file without a lookup of
        its own (RETR, STOR, APPE, HASH): a name ending in '/' is refused."""
        if names_directory(argument):
            raise Reply(550, "A name ending in '/' is a directory, not a file")
        return self.path(argument)

    def take_rest(self) -> int:
        """The REST offset for the command running now: the marker that
        ``_run`` took (every command but those of ``KEEP_RESTART`` drops
        it, whether it succeeds or not), 0 if none.  In ASCII mode a marker
        is refused (503), and so dropped: an offset counts bytes of the
        file, which ASCII mode's line endings don't map to (REST itself is
        refused there, but TYPE A may come between it and the transfer)."""
        restart = self.restart or 0
        if restart and not self.binary:
            raise Reply(
                503,
                f"REST is not valid in ASCII mode: the marker ({restart}) is dropped; "
                "send TYPE I, then REST again",
            )
        return restart

    def need_write(self) -> None:
        if "write" not in self.user.permissions:
            raise Reply(550, "Permission denied")

    # -- login --------------------------------------------------------

    def tls_required(self, name: str) -> bool:
        """Whether ``name`` may log in only over a TLS control connection."""
        if self.protection.active:
            return False
        return self.settings.require_tls or name in self.settings.require_tls_users

    def ftp_USER(self, argument: str) -> None:
        if self.user is not None:
            self._arm_login_timer()  # logged out: log in again in time
        self.grant = None
        self._login_name = None
        if self.tls_required(argument):
            raise Reply(530, "TLS required: send AUTH TLS before logging in")
        self._login_name = argument
        if argument.lower() in ("anonymous", "ftp") and self.settings.anonymous:
            self.reply(331, "Anonymous login ok, send your e-mail address as password")
        else:
            self.reply(331, f"Password required for {argument}")

    async def ftp_PASS(self, argument: str) -> None:
        if self._login_name is None:
            raise Reply(503, "Log in with USER first")
        name, self._login_name = self._login_name, None
        throttle = self.factory.throttle
        # Counted as an attempt until decided: parallel connections can't
        # slip more guesses past the limit while scrypt runs.
        wait = await throttle.admit(name, self.peer_host)
        if wait is not None:
            self.reply(421, f"Too many failed logins, try again in {math.ceil(wait)} seconds")
            self.close()
            return
        try:
            grant = await self.factory.login(name, argument)
        except AuthFailed:
            throttle.failed(name, self.peer_host)
            self._login_failures += 1
            if self._login_failures >= self.settings.max_login_failures:
                self.reply(421, "Too many failed logins, closing the control connection")
                self.close()
                return
            raise Reply(530, "Login incorrect") from None
        except BaseException:
            throttle.abandoned(name, self.peer_host)  # the check itself failed
            raise
        throttle.succeeded(name, self.peer_host)
        self._login_deadline.cancel()
        self.grant = grant
        user = grant.user
        self.cwd = "/"
        # Sizes SIZE reported name another user's files (USER logs one
        # session out and another in): APPE would resume this user's at them.
        self.sizes.clear()
        self.stats.logins += 1
        self.reply(230, f"User {user.name} logged in")

    def ftp_QUIT(self, argument: str) -> None:
        """221 and close.  The commands still queued (only when this QUIT
        jumped a flood) or sent after it never run: a reply after the 221,
        or a DELE run as the connection closes, is nothing the client
        asked for once it said goodbye."""
        self._quitting = True
        self._queue.clear()
        self._queued_bytes = 0
        self._cancel_idle()
        self._login_deadline.cancel()
        self.reply(221, "Goodbye")
        # The 221 is the last reply: a transfer QUIT cut short (it jumped
        # a flood) or a timer firing before the close completes says
        # nothing more.
        self._said_goodbye = True
        self.close()

    # -- session settings ---------------------------------------------

    def ftp_NOOP(self, argument: str) -> None:
        self.reply(200, "NOOP ok")

    def ftp_SYST(self, argument: str) -> None:
        self.reply(215, "UNIX Type: L8")

    def ftp_TYPE(self, argument: str) -> None:
        words = argument.upper().split()
        if words in (["I"], ["L", "8"]):
            self.binary = True
            self.reply(200, "Type set to I")
        elif words in (["A"], ["A", "N"]):
            self.binary = False
            self.reply(200, "Type set to A")
        else:
            raise Reply(504, f"TYPE {argument} not supported")

    def ftp_MODE(self, argument: str) -> None:
        if argument.strip(" ").upper() != "S":
            raise Reply(504, "Only MODE S (stream) is supported")
        self.reply(200, "Mode set to S")

    def ftp_STRU(self, argument: str) -> None:
        if argument.strip(" ").upper() != "F":
            raise Reply(504, "Only STRU F (file) is supported")
        self.reply(200, "Structure set to F")

    def ftp_OPTS(self, argument: str) -> None:
        option, _, value = argument.strip(" ").partition(" ")
        option = option.upper()
        if option == "UTF8":
            if value.strip(" ").upper() in ("ON", ""):
                self.reply(200, "UTF8 mode is always on")
                return
            raise Reply(504, "UTF8 cannot be turned off")
        if option == "MLST":
            self.mlst_facts = listing.parse_opts_mlst(value)
            self.reply(200, listing.opts_mlst_reply_text(self.mlst_facts))
            return
        if option == "HASH":
            if value.strip(" "):
                try:
                    self.hash_algorithm = hashing.select(value)
                except hashing.UnknownAlgorithm as e:
                    raise Reply(501, str(e)) from None
            self.reply(200, self.hash_algorithm)
            return
        raise Reply(501, f"Unknown option {option}")

    def feature_lines(self) -> list[str]:
        """What FEAT lists: FEATURES with MLST and HASH expanded, and the
        FTPS lines when a certificate is configured."""
        lines = []
        for feature in FEATURES:
            if feature == "MLST":
                lines.append(listing.feat_mlst_line(self.mlst_facts))
            elif feature == "HASH":
                lines.append(hashing.feat_line(self.hash_algorithm))
            else:
                lines.append(feature)
        if self.protection.available:
            lines.extend(security.FEAT_LINES)
        return sorted(lines)

    def ftp_FEAT(self, argument: str) -> None:
        lines = ["Features:", *(" " + line for line in self.feature_lines()), "End"]
        self.reply_lines(211, lines)

    def ftp_HELP(self, argument: str) -> None:
        verb = argument.strip(" ").upper()
        if verb:
            spec = COMMANDS.get(verb)
            if spec is None:
                raise Reply(502, f"Unknown command {verb}")
            self.reply(214, f"Syntax: {verb} {spec.help}".rstrip())
            return
        first, *rows, last = help_lines()
        self.reply_lines(214, [first, *(" " + row for row in rows), last])

    def ftp_ALLO(self, argument: str) -> None:
        """202 (RFC 959: superfluous here) for ``ALLO n [R m]``; a size that
        is no number gets 501, as REST's does, not a 202 that accepts it.
        ``n``, the size the file will have, goes with the STOR or APPE that
        follows: its blob is placed only where that fits, and with no room
        anywhere the STOR is 452 before its 150 (``Transfers.open_write``'s
        ``expected_size``)."""
        self.allocation = parse_allo(argument)
        self.reply(202, "No storage allocation necessary")

    def ftp_ACCT(self, argument: str) -> None:
        self.reply(202, "ACCT not needed, superfluous at this site")

    # -- FTPS (wsfront.ftp.security) ------------------------------------

    def ftp_AUTH(self, argument: str) -> None:
        try:
            self.protection.check_auth(argument)
        except Reply:
            self._tls_switching = False
            raise
        # RFC 4217 4 (and RFC 2228 3): a USER sent before AUTH does not
        # count after it, and a login in clear neither: log in again.
        self._login_name = None
        if self.user is not None:
            self.grant = None
            self.cwd = "/"
            self._arm_login_timer()
        self.reply(234, f"AUTH {argument.strip(' ').upper()} ok, start the TLS handshake")
        self._urgent_inline(False)
        self.handshaking = True
        self._arm_handshake_timer()
        self.transport.startTLS(self.settings.tls)
        self.protection.started()
        self._tls_switching = False

    def ftp_PBSZ(self, argument: str) -> None:
        self.reply(200, self.protection.set_pbsz(argument))

    def ftp_PROT(self, argument: str) -> None:
        self.reply(200, self.protection.set_prot(argument))

    def need_protection(self) -> None:
        """Refuse a data transfer in clear when TLS is required (521)."""
        if self.protection.private:
            return
        if self.settings.require_tls or self.user.name in self.settings.require_tls_users:
            raise Reply(521, "PROT P required: data connections must use TLS")

    # -- SITE -------------------------------------------------------------

    SITE_HELP = {"CHMOD": "<mode> <path> (accepted, no effect: wsfs keeps no modes)",
                 "HELP": "(this list)"}  # fmt: skip

    async def ftp_SITE(self, argument: str) -> None:
        """SITE HELP and SITE CHMOD.  The path of CHMOD is what follows the
        mode's space, kept as sent: stripped, ``lftp mirror -R`` of a
        directory ``trail `` got 550 for the chmod it sends after MKD."""
        sub, _, rest = argument.lstrip(" ").partition(" ")
        sub = sub.upper()
        if sub == "HELP":
            rows = [f" {verb} {text}" for verb, text in sorted(self.SITE_HELP.items())]
            self.reply_lines(214, ["SITE commands:", *rows, "End"])
            return
        if sub == "CHMOD":
            mode, _, name = rest.lstrip(" ").partition(" ")
            if not mode or not name or not all(c in "01234567" for c in mode) or len(mode) > 4:
                raise Reply(501, "Syntax: SITE CHMOD <octal mode> <path>")
            await self.transfers.stat(self.user, self.path(name))
            self.reply(200, "SITE CHMOD ok (no effect: wsfs keeps no file modes)")
            return
        raise Reply(504, f"SITE {sub[:20]} not supported; see SITE HELP")

    # -- navigation ---------------------------------------------------

    def ftp_PWD(self, argument: str) -> None:
        self.reply(257, f"{quote_path(self.cwd)} is the current directory")

    async def _change_dir(self, target: str) -> None:
        info = await self.transfers.stat(self.user, target)
        if not info.is_dir:
            raise Reply(550, "Not a directory")
        self.cwd = target
        self.reply(250, f"Directory changed to {target}")

    def ftp_CWD(self, argument: str):
        return self._change_dir(self.path(argument))

    def ftp_CDUP(self, argument: str):
        return self._change_dir(paths.resolve(self.cwd, "..", clamp_at_root=True))

    # -- namespace ----------------------------------------------------

    async def ftp_MKD(self, argument: str) -> None:
        target = self.path(argument)
        if target == "/":
            raise Reply(550, "File exists")
        await self.transfers.mkdir(self.user, target)
        self.reply(257, f"{quote_path(target)} created")

    async def ftp_RMD(self, argument: str) -> None:
        target = self.path(argument)
        if target == "/" or target == self.cwd:
            raise Reply(550, "Cannot remove the current or root directory")
        try:
            await self.transfers.rmdir(self.user, target)
        except NotEmpty:
            if await self._holds_uploads_only(target):
                raise Reply(
                    550,
                    "Directory not empty: an upload in progress is in it "
                    "(listed once it is committed)",
                ) from None
            raise
        self.reply(250, "Directory removed")

    async def _holds_uploads_only(self, directory: str) -> bool:
        """Whether ``directory``, found not empty, lists nothing: what is in
        it are pending uploads (LIST shows committed files only), and a bare
        "Directory not empty" contradicted the empty LIST the client just
        saw.  Asked only once RMD was refused; a listing that fails says
        nothing (False)."""
        try:
            return not await self.transfers.list_dir(self.user, directory, None, 1)
        except Exception:
            return False

    async def ftp_DELE(self, argument: str) -> None:
        target = self.path(argument)
        info = await self.transfers.stat(self.user, target)
        datacmds.check_directory_name(argument, info)
        if info.is_dir:
            raise Reply(550, "Is a directory (use RMD)")
        await self.transfers.delete(self.user, target)
        self.sizes.pop(target, None)
        self.reply(250, "File deleted")

    async def ftp_RNFR(self, argument: str) -> None:
        self.rnfr = None
        source = self.path(argument)
        if source == "/":
            raise Reply(550, "Cannot rename the root directory")
        datacmds.check_directory_name(argument, await self.transfers.stat(self.user, source))
        self.rnfr = source
        self.reply(350, "Ready for the destination name (RNTO)")

    async def ftp_RNTO(self, argument: str) -> None:
        source, self.rnfr = self.rnfr, None
        if source is None:
            raise Reply(503, "RNFR required first")
        target = self.path(argument)
        if target == "/":
            raise Reply(553, "Cannot rename onto the root directory")
        if names_directory(argument):
            datacmds.check_directory_name(argument, await self.transfers.stat(self.user, source))
        try:
            await self.transfers.rename(self.user, source, target)
        except NotADirectory:
            if target.startswith(source.rstrip("/") + "/"):
                # RNFR k1.bin, RNTO k1.bin/x: the file RNFR named would be
                # the destination's directory.  The user's own path, never
                # the catalog's (which names the user's root).
                raise Reply(550, f"{source} is not a directory") from None
            raise
        self._forget_sizes(source, target)
        self.reply(250, "Rename successful")

    def _forget_sizes(self, *moved: str) -> None:
        """Drop what SIZE reported for ``moved`` and anything under them:
        another file now stands there (a rename over it, or of a directory
        that held it), and APPE must not resume it at the old file's size
        (a 20-byte file renamed over a 10-byte one was cut to 10 bytes by
        the APPE after it)."""
        for path in list(self.sizes):
            if any(path == p or path.startswith(p.rstrip("/") + "/") for p in moved):
                del self.sizes[path]

    # RFC 775's names of the same commands (``wsfront.ftp.commands``).
    ftp_XPWD = ftp_PWD
    ftp_XCWD = ftp_CWD
    ftp_XCUP = ftp_CDUP
    ftp_XMKD = ftp_MKD
    ftp_XRMD = ftp_RMD

    # -- file facts ---------------------------------------------------

    async def ftp_SIZE(self, argument: str) -> None:
        if not self.binary:
            raise Reply(501, "SIZE not allowed in ASCII mode (send TYPE I)")
        target = self.path(argument)
        # A SIZE that fails told the client there is no such file: an APPE
        # after it must not resume at what an earlier SIZE said.
        self.sizes.pop(target, None)
        info = await self.transfers.stat(self.user, target)
        datacmds.check_directory_name(argument, info)
        if info.is_dir:
            raise Reply(550, "Not a regular file")
        self.sizes[target] = datacmds.SizeReported.of(info)
        self.reply(213, str(info.size))

    async def ftp_MDTM(self, argument: str) -> None:
        target = self.path(argument)
        info = await self.transfers.stat(self.user, target)
        datacmds.check_directory_name(argument, info)
        if info.is_dir:
            raise Reply(550, "Not a regular file")
        self.reply(213, format_time_value(info.mtime))

    async def ftp_MFMT(self, argument: str) -> None:
        """MFMT (draft-somers-ftp-mfxx): set a file's modification time, so
        ``lftp mirror -R`` finds it unchanged next time."""
        self.need_write()
        mtime, name = parse_mfmt(argument)
        target = self.path(name)
        info = await self.transfers.stat(self.user, target)
        datacmds.check_directory_name(name, info)
        if info.is_dir:
            raise Reply(550, "Not a regular file")
        if info.pending:
            # The owner's pending upload, whether or not a committed version
            # lies under it: its commit will set the time anyway.
            raise Reply(550, "File has an upload pending: set its time once it is committed")
        full = self.transfers.full_path(self.user, target)
        entry = await self.transfers.catalog.set_mtime(full, mtime)
        self.reply(213, f"Modify={format_time_value(entry.mtime)}; {name}")

    async def ftp_HASH(self, argument: str) -> None:
        """HASH (wsfront.ftp.hashing): the digest of the committed version."""
        target = self.file_path(argument)
        algorithm = self.hash_algorithm

        def started(stream):
            self._hashing = stream

        try:
            size, digest = await hashing.file_digest(
                self.transfers, self.user, target, algorithm, on_stream=started
            )
        finally:
            self._hashing = None
        self.reply(213, hashing.reply_text(algorithm, size, digest, argument))

    async def ftp_MLST(self, argument: str) -> None:
        target = self.path(argument) if argument.strip(" ") else self.cwd
        self.sizes.pop(target, None)
        info = await self.transfers.stat(self.user, target)
        datacmds.check_directory_name(argument, info)
        entry = datacmds.listing_entry(self.user, paths.basename(target) or "/", info)
        if info.pending:
            self.sizes[target] = datacmds.SizeReported.of(info)
        facts = listing.mlst_facts(entry, self.mlst_facts, name=target)
        self.reply_lines(250, [f"Listing {target}", " " + facts, "End"])

    # -- data connection setup ----------------------------------------

    PARK_SECONDS = 5.0
    """How long the passive port of a finished transfer stays open (refusing
    connections) for this client's next PASV/EPSV to reuse."""

    def _close_data_setup(self) -> None:
        if self.passive is not None:
            self.passive.close()
            self.passive = None
        if self.parked is not None:
            self.stats.refused_data_connections += self.parked.refused
            self.parked.close()
            self.parked = None
        self.active = None

    def park_passive(self, listener: PassiveListener) -> None:
        """The transfer has its data connection from ``listener``: keep the
        port for the next PASV/EPSV if it may stay open, else close it."""
        if self.parked is not None and self.parked is not listener:
            self.stats.refused_data_connections += self.parked.refused
            self.parked.close()
            self.parked = None
        if self.connected_ and listener.park(self.reactor, self.PARK_SECONDS):
            self.parked = listener
        else:
            listener.stop_listening()

    def _open_passive(self) -> PassiveListener:
        """A listener for the next transfer.  An unused one from an earlier
        PASV/EPSV is kept: a PASV flood then holds one port, not a range.
        The port of the last transfer is reused when it is still open.
        Whichever it is, no data connection within ``data_timeout`` closes
        it (``PassiveListener.expect``)."""
        self.passive_unreached = False
        current = self.passive
        if current is not None and current.port is not None and current.channel is None:
            self.active = None
            return self._handed_out(current)
        parked, self.parked = self.parked, None
        self._close_data_setup()
        if parked is not None:
            self.stats.refused_data_connections += parked.refused  # while parked
        if parked is not None and parked.rearm():
            self.passive = parked
            return self._handed_out(parked)
        share = self.factory.passive_share
        if share is not None:
            refusal = share.refusal(self.peer_host)
            if refusal is not None:
                self.stats.passive_ports_refused += 1
                raise Reply(425, refusal)
        listener = open_passive(
            self.reactor, self.local_host, self.peer_host, self.settings.passive_ports
        )
        if share is not None:
            listener.on_closed = share.hold(self.peer_host)
        self.passive = listener
        return self._handed_out(listener)

    def _handed_out(self, listener: PassiveListener) -> PassiveListener:
        """``listener``, handed out again: closed if no data connection
        reaches it within ``data_timeout`` while no command runs."""
        listener.expect(self.reactor, self.settings.data_timeout, self._unreached, self._running)
        return listener

    def _running(self) -> bool:
        """Whether a command is running (its passive port's deadline waits
        for it: ``PassiveListener.expect``)."""
        return self._busy

    def _unreached(self, listener: PassiveListener) -> None:
        """``listener``'s port closed: no data connection reached it within
        ``data_timeout`` of the PASV/EPSV that handed it out."""
        self.stats.passive_ports_unreached += 1
        if self.passive is listener:
            self.passive = None
            self.passive_unreached = True

    def ftp_PASV(self, argument: str) -> None:
        if self.epsv_all:
            raise Reply(503, "Only EPSV is allowed after EPSV ALL")
        advertised = self.settings.public_address or self.local_host
        try:
            addresses.format_pasv(advertised, 1024)
        except addresses.AddressError:
            raise Reply(425, "PASV needs IPv4; use EPSV") from None
        listener = self._open_passive()
        self.reply(227, addresses.pasv_reply_text(advertised, listener.port_number))

    def _unsupported_protocol(self) -> Reply:
        """522 for EPSV/EPRT naming a protocol this connection can't use:
        RFC 2428 has it list the ones it can, which is this connection's."""
        return Reply(522, f"Network protocol not supported, use ({self._protocol()})")

    def _protocol(self) -> int:
        return addresses.protocol_number(self.local_host)

    def ftp_EPSV(self, argument: str) -> None:
        try:
            request = addresses.parse_epsv(argument)
        except addresses.UnsupportedFamily:
            raise self._unsupported_protocol() from None
        if request.all:
            self.epsv_all = True
            self.reply(200, "EPSV ALL ok")
            return
        wanted = request.family
        if wanted is not None and (1 if wanted == 4 else 2) != self._protocol():
            raise self._unsupported_protocol()
        listener = self._open_passive()
        self.reply(229, addresses.epsv_reply_text(listener.port_number))

    def _set_active(self, target: addresses.HostPort) -> None:
        if self.epsv_all:
            raise Reply(503, "Only EPSV is allowed after EPSV ALL")
        addresses.check_active_target(target, self.peer_host)
        self._close_data_setup()
        self.passive_unreached = False
        self.active = target

    def ftp_PORT(self, argument: str) -> None:
        self._set_active(addresses.parse_port(argument))
        self.reply(200, "PORT command successful")

    def ftp_EPRT(self, argument: str) -> None:
        try:
            target = addresses.parse_eprt(argument)
        except addresses.UnsupportedFamily:
            raise self._unsupported_protocol() from None
        self._set_active(target)
        self.reply(200, "EPRT command successful")

    def ftp_REST(self, argument: str) -> None:
        offset = parse_offset(argument)
        if not self.binary and offset:
            raise Reply(501, "REST not allowed in ASCII mode (send TYPE I)")
        self.rest = offset
        self.reply(350, f"Restarting at {offset}; send STOR, APPE or RETR")

    # -- transfers (wsfront.ftp.datacmds) -----------------------------

    def ftp_RETR(self, argument: str):
        self.need_protection()
        return datacmds.retrieve(self, self.file_path(argument), self.take_rest())

    def ftp_STOR(self, argument: str):
        self.need_write()
        self.need_protection()
        return datacmds.store(
            self, self.file_path(argument), self.take_rest(), expected_size=self.allocated
        )

    def ftp_APPE(self, argument: str):
        """APPE: at the size SIZE last told this connection, else at the
        end.  After REST n (n > 0) it acts as STOR at n, as RFC 3659 5.3
        requires of a server that lets APPE complete a restart: the client
        resumes at the marker it set.  It ignored the marker and appended
        at the end, with 226 to a client told 350 (and did so after TYPE A
        too, where ``take_rest`` refuses the marker, 503)."""
        self.need_write()
        self.need_protection()
        target = self.file_path(argument)
        restart = self.take_rest()
        if restart:
            return datacmds.store(self, target, restart, expected_size=self.allocated)
        seen = self.sizes.get(target)
        if seen is None:
            return datacmds.store(self, target, None, append=True, expected_size=self.allocated)
        return datacmds.store(
            self, target, seen.size, append=True, check=seen.check(target),
            expected_size=self.allocated,
        )  # fmt: skip

    def ftp_STOU(self, argument: str):
        """STOU (``datacmds.store_unique``).  A REST marker before it is
        refused (503), as ProFTPD refuses it ("STOU incompatible with
        REST"): a new file has no bytes to resume after, and RFC 3659 5.3
        leaves STOU after REST undefined.  STOU ignored it, so a client
        that meant to resume was told 226 for a file stored whole under a
        new name.  The marker is dropped either way (``_run``).  Checked
        after the user's rights and the protection level: a user who may
        not write gets 550 whatever came before."""
        self.need_write()
        self.need_protection()
        if self.restart:
            raise Reply(
                503,
                "STOU is not valid after REST: a new file has nothing to resume; "
                f"the marker ({self.restart}) is dropped",
            )
        return datacmds.store_unique(self, argument)

    def ftp_LIST(self, argument: str):
        self.need_protection()
        return datacmds.list_dir(self, argument, "LIST")

    def ftp_NLST(self, argument: str):
        self.need_protection()
        return datacmds.list_dir(self, argument, "NLST")

    def ftp_MLSD(self, argument: str):
        self.need_protection()
        return datacmds.list_dir(self, argument, "MLSD")

    def ftp_ABOR(self, argument: str):
        """426 for the transfer, then 226 for the ABOR, both before the
        reply of any command queued behind the transfer.  The 226 is tied
        to the transfer's end before the abort: a transfer still waiting
        for its data connection ends within ``abort``, and the queue moves
        on at once (a queued QUIT's 221, or a NOOP's 200, came first)."""
        transfer = self.transfer
        if transfer is None:
            self.reply(225, "No transfer to abort")
            return None

        def answered(_):
            self.reply(226, "ABOR successful")

        done = transfer.done_deferred().addCallback(answered)
        transfer.abort()
        return done

    def ftp_STAT(self, argument: str) -> None:
        transfer = self.transfer
        if argument.strip(" "):
            raise Reply(504, "STAT with an argument is not supported; use LIST")
        lines = [
            "wsfs FTP server status:",
            f" Connected from {self.peer_host}",
            f" Logged in as {self.user.name}",
            f" TYPE: {'BINARY' if self.binary else 'ASCII'}, STRUcture: File, MODE: Stream",
        ]
        if transfer is not None:
            lines.append(f" {transfer.verb} in progress, {transfer.bytes_moved()} bytes moved")
        else:
            lines.append(" No data connection")
        lines.append("End of status")
        self.reply_lines(211, lines)
