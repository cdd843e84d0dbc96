"""The pre-login timeout of the FTP control connection, on a Clock.

A connection that has not logged in gets ``login_timeout`` seconds from its
greeting, chatty or not; a logged-in one only the (longer) idle timeout.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from wsfront.ftp.factory import FTPFactory, FTPSettings

EXPIRED = b"421 Login timeout, closing the control connection\r\n"


def connect(settings: FTPSettings):
    clock = Clock()
    factory = FTPFactory(clock, None, None, settings)
    control = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    control.makeConnection(transport)
    assert transport.value().startswith(b"220 ")
    transport.clear()
    return clock, control, transport


def test_a_silent_connection_that_never_logs_in_is_closed_after_the_login_timeout():
    clock, _control, transport = connect(FTPSettings(login_timeout=60, idle_timeout=900))
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.value() == EXPIRED
    assert transport.disconnecting


def test_commands_without_a_login_do_not_extend_the_login_timeout():
    clock, control, transport = connect(FTPSettings(login_timeout=60, idle_timeout=900))
    for _ in range(6):
        control.dataReceived(b"NOOP\r\n")
        clock.advance(10)
    assert transport.value().endswith(EXPIRED)
    assert transport.disconnecting


def test_a_logged_in_connection_has_only_the_idle_timeout():
    settings = FTPSettings(login_timeout=60, idle_timeout=900, anonymous=True)
    clock, control, transport = connect(settings)
    control.dataReceived(b"USER anonymous\r\nPASS me@example.org\r\n")
    assert b"230 " in transport.value()
    clock.advance(899)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.value().endswith(b"421 Idle timeout, closing the control connection\r\n")


def test_user_after_a_login_starts_the_login_timeout_again():
    settings = FTPSettings(login_timeout=60, idle_timeout=900, anonymous=True)
    clock, control, transport = connect(settings)
    control.dataReceived(b"USER anonymous\r\nPASS me@example.org\r\n")
    clock.advance(100)
    control.dataReceived(b"USER someone\r\n")
    clock.advance(60)
    assert transport.value().endswith(EXPIRED)
    assert transport.disconnecting


def test_a_login_timeout_of_zero_is_off():
    clock, _control, transport = connect(FTPSettings(login_timeout=0, idle_timeout=900))
    clock.advance(899)
    assert not transport.disconnecting


def test_a_deadline_runs_once_per_arming_and_not_once_cancelled():
    """``Deadline``, the control connection's login, TLS handshake and
    PROXY header timers: arming a running one leaves it be, a cancelled one
    never fires, and its action may arm it again."""
    from wsfront.ftp.protocol import Deadline

    clock, fired = Clock(), []

    def action() -> None:
        fired.append(clock.seconds())
        if len(fired) == 1:
            deadline.arm(1.0)  # as a login decided meanwhile asks again

    deadline = Deadline(clock, action)
    deadline.arm(10.0)
    clock.advance(5.0)
    deadline.arm(10.0)  # runs already: still due at 10
    clock.advance(5.0)
    assert fired == [10.0]
    clock.advance(1.0)
    assert fired == [10.0, 11.0] and not clock.getDelayedCalls()
    deadline.arm(3.0)
    deadline.cancel()
    deadline.cancel()
    clock.advance(10.0)
    assert fired == [10.0, 11.0] and not clock.getDelayedCalls()
