"""FTPS against peers that misbehave around TLS, over real sockets.

A peer that connects to the implicit port (or sends AUTH TLS) and never
starts the handshake must lose its connection, and with it its slot of
``max_connections_per_address``: Twisted's TLS layer holds a reply written
before the handshake and never closes after it, so the server aborts.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.ftp_env import PASSWORD, FTPEnv
from tests.http_raw import connect
from tests.tls_support import self_signed
from wsfront.ftp.factory import FTPSettings
from wsfront.ftp.security import server_tls_options

#: How long a test waits for the server to close a connection it must close
#: (far past the short timeouts set here; the old code never closed).
CLOSE_WAIT = 15.0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


async def _start(tmp_path, certificate, **kw) -> FTPEnv:
    from twisted.internet import reactor

    implicit = kw.pop("implicit_tls", False)
    settings = FTPSettings(data_timeout=10.0, tls=server_tls_options(certificate.pem), **kw)
    return await FTPEnv(reactor, tmp_path, settings, implicit_tls=implicit).start()


async def _closed(client) -> bytes:
    """What ``client`` received before the server closed it; fails if the
    server keeps it open past CLOSE_WAIT."""
    from twisted.internet import reactor

    d = client.closed
    waiting: defer.Deferred = defer.Deferred()
    d.addBoth(lambda r: waiting.callback(r) if not waiting.called else None)
    waiting.addTimeout(CLOSE_WAIT, reactor)
    try:
        return await waiting
    except defer.TimeoutError:
        raise AssertionError("the server kept a connection it should have closed") from None


@pytest_twisted.ensureDeferred
async def test_silent_peers_on_the_implicit_port_are_refused_at_once_over_the_cap(
    tmp_path, certificate
):
    from twisted.internet import reactor

    env = await _start(
        tmp_path, certificate, implicit_tls=True, max_connections_per_address=3,
        login_timeout=300.0,
    )  # fmt: skip
    try:
        silent = [await connect(reactor, env.port) for _ in range(3)]
        over = [await connect(reactor, env.port) for _ in range(3)]
        for client in over:  # refused: closed now, not at the login timeout
            await _closed(client)
        assert all(not c.closed.called for c in silent)
    finally:
        for client in silent:
            client.close()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_silent_peers_on_the_implicit_port_go_at_the_login_timeout(tmp_path, certificate):
    from twisted.internet import reactor

    env = await _start(
        tmp_path, certificate, implicit_tls=True, max_connections_per_address=3,
        login_timeout=0.5,
    )  # fmt: skip
    try:
        silent = [await connect(reactor, env.port) for _ in range(3)]
        for client in silent:
            await _closed(client)
        # Their slots are free again: a fourth peer is admitted (it is
        # closed at the login timeout too, not at once as refused ones are).
        again = await connect(reactor, env.port)
        await _closed(again)
        assert env.factory.stats.connections == 4
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_auth_tls_without_a_client_hello_is_closed_at_the_handshake_deadline(
    tmp_path, certificate
):
    from twisted.internet import reactor

    env = await _start(tmp_path, certificate, login_timeout=0.5, idle_timeout=900.0)
    try:
        client = await connect(reactor, env.port)
        await client.until(b"220 ")
        client.send(b"AUTH TLS\r\n")
        await client.until(b"234 ")
        received = await _closed(client)
        assert b"421" not in received  # nothing in clear after the 234
        assert not env.factory.sessions
    finally:
        await env.stop()


def _tls_after_auth(port: int, certificate, before: bytes) -> list[bytes]:
    """Send ``before`` in clear, then AUTH TLS, then (over TLS) PWD, a login
    and PWD again; the reply lines to the TLS part."""
    import socket
    import ssl

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    for line in before.split(b"\r\n")[:-1]:
        sock.sendall(line + b"\r\n")
        f.readline()
    sock.sendall(b"AUTH TLS\r\n")
    assert f.readline().startswith(b"234")
    context = ssl.create_default_context(cafile=str(certificate.cert_path))
    tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
    tf = tls.makefile("rb")
    answers = []
    for line in [b"PWD", b"USER alice", b"PASS " + PASSWORD.encode(), b"PWD", b"QUIT"]:
        tls.sendall(line + b"\r\n")
        answers.append(tf.readline())
    tls.close()
    return answers


@pytest_twisted.ensureDeferred
async def test_auth_tls_after_a_login_in_clear_logs_the_user_out(tmp_path, certificate):
    """RFC 2228 3 / RFC 4217 4: after AUTH the user logs in again; the login
    made in clear does not carry over into the protected session."""
    env = await _start(tmp_path, certificate)
    try:
        before = f"USER alice\r\nPASS {PASSWORD}\r\nCWD /\r\n".encode()
        answers = await threads.deferToThread(_tls_after_auth, env.port, certificate, before)
        assert [a[:3] for a in answers] == [b"530", b"331", b"230", b"257", b"221"]
    finally:
        await env.stop()


@pytest.mark.parametrize("tls", [True, False])
@pytest_twisted.ensureDeferred
async def test_commands_pipelined_after_a_refused_auth_are_answered(tmp_path, certificate, tls):
    """Only an AUTH that starts TLS drops what was pipelined after it
    (CVE-2011-0411, test_ftps); a refused one (504, or 431 without TLS)
    leaves the next commands to run."""
    from twisted.internet import reactor

    plain = FTPEnv(reactor, tmp_path, FTPSettings())
    env = await (_start(tmp_path, certificate) if tls else plain.start())
    try:
        client = await connect(reactor, env.port)
        await client.until(b"220 ")
        client.send(
            b"AUTH GSSAPI\r\nNOOP\r\nAUTH TLS\r\nSYST\r\n" if tls else b"AUTH TLS\r\nNOOP\r\n"
        )
        received = await client.until(b"234 " if tls else b"200 ")
        codes = [line[:3] for line in received.split(b"\r\n")[1:] if line]
        assert codes == ([b"504", b"200", b"234"] if tls else [b"431", b"200"])
        client.close()
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_ccc_and_other_rfc_2228_commands_are_502_not_implemented(tmp_path, certificate):
    from twisted.internet import reactor

    env = await _start(tmp_path, certificate)
    try:
        client = await connect(reactor, env.port)
        await client.until(b"220 ")
        client.send(b"CCC\r\nADAT x\r\nMIC x\r\nCONF x\r\nENC x\r\nXYZZY\r\n")
        received = await client.until(b"500 ")
        codes = [line[:3] for line in received.split(b"\r\n")[1:] if line]
        assert codes == [b"502"] * 5 + [b"500"]
        client.close()
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_require_tls_session_reuse_refuses_data_connections_with_a_new_session(
    tmp_path, certificate
):
    """--require-tls-session-reuse (vsftpd's require_ssl_reuse): a PROT P
    data connection must resume the control connection's TLS session; one
    with a full handshake of its own (Python's ftplib) is cut, 522, and its
    upload leaves nothing behind.  A client that resumes (as FileZilla and
    lftp do) is served."""
    import ftplib
    import io
    import ssl

    from tests.test_ftps import RecordingFTP_TLS

    env = await _start(tmp_path, certificate, require_tls_session_reuse=True)
    context = ssl.create_default_context(cafile=str(certificate.cert_path))
    data = b"resumed " * 10_000

    def resuming():
        c = RecordingFTP_TLS(context=context, timeout=30)
        c.connect("127.0.0.1", env.port)
        c.login("alice", PASSWORD)
        c.prot_p()
        c.storbinary("STOR r.bin", io.BytesIO(data))
        got = io.BytesIO()
        c.retrbinary("RETR r.bin", got.write)
        names = c.nlst()
        c.quit()
        return got.getvalue(), names, c.data_connections

    def fresh():
        c = ftplib.FTP_TLS(context=context, timeout=30)
        c.connect("127.0.0.1", env.port)
        c.login("alice", PASSWORD)
        c.prot_p()
        replies = []
        for attempt in (
            lambda: c.storbinary("STOR f.bin", io.BytesIO(data)),
            lambda: c.retrbinary("RETR r.bin", lambda _: None),
            lambda: c.nlst(),
        ):
            try:
                attempt()
                replies.append("served")
            except (ssl.SSLError, OSError):  # cut in the handshake
                try:
                    replies.append(c.getresp()[:3])
                except ftplib.Error as e:
                    replies.append(str(e)[:3])
        c.quit()
        return replies

    try:
        got, names, connections = await threads.deferToThread(resuming)
        assert got == data and names == ["r.bin"]
        assert connections == [(True, True)] * 3
        assert await threads.deferToThread(fresh) == ["522"] * 3
        assert [e.name for e in await env.transfers.list_dir(env.env.user, "/", None, 10)] == [
            "r.bin"
        ]
    finally:
        await env.stop()
