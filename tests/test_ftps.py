"""FTPS (RFC 4217): explicit AUTH TLS and implicit TLS, with real clients.

A certificate is made on the fly (``tests.tls_support``).  ftplib's FTP_TLS
runs in a thread (PROT P transfers checked with sha256, TLS session reuse
on data connections checked from the client's side), curl and lftp run as
subprocesses; raw clients check the reply codes of AUTH/PBSZ/PROT in every
order, the require-TLS policy, and hostile handshakes.
"""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
import struct
import time
import warnings

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue

from tests.ftp_env import PASSWORD, FTPEnv, sha256, until
from tests.support import require_tool
from tests.tls_support import self_signed
from wsfront.catalog.errors import NotFound
from wsfront.ftp.factory import FTPSettings
from wsfront.ftp.security import server_tls_options

MiB = 1 << 20


def payload(size: int) -> bytes:
    block = os.urandom(min(size, 64 * 1024) or 1)
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


def _settings(certificate, **kw) -> FTPSettings:
    return FTPSettings(data_timeout=10.0, tls=server_tls_options(certificate.pem), **kw)


async def _start(tmp_path, settings, **kw) -> FTPEnv:
    from twisted.internet import reactor

    return await FTPEnv(reactor, tmp_path, settings, **kw).start()


@pytest.fixture
def ftps(tmp_path, certificate):
    env = pytest_twisted.blockon(defer.ensureDeferred(_start(tmp_path, _settings(certificate))))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


def _context(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate.cert_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class RecordingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that offers the control connection's TLS session on each data
    connection, as FileZilla and lftp do (Python 3.11's ftplib does not),
    and notes per data connection whether it was TLS and whether the
    server resumed that session."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.data_connections: list[tuple[bool, bool]] = []
        self.data_alpn: list[str | None] = []  # the ALPN protocol agreed on

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        tls = isinstance(conn, ssl.SSLSocket)
        self.data_connections.append((tls, tls and conn.session_reused))
        self.data_alpn.append(conn.selected_alpn_protocol() if tls else None)
        return conn, size


class ImplicitFTP_TLS(RecordingFTP_TLS):
    """Implicit FTPS: the control socket speaks TLS from its first byte."""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        self.sock = socket.create_connection((host, port), self.timeout)
        self.af = self.sock.family
        self.sock = self.context.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


# -- ftplib ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ftplib_prot_p_round_trip_resumes_the_control_session(ftps, certificate):
    data = payload(2 * MiB + 3)
    context = _context(certificate)

    def session():
        c = RecordingFTP_TLS(context=context, timeout=30)
        c.connect("127.0.0.1", ftps.port)
        c.login("alice", PASSWORD)  # AUTH TLS first: FTP_TLS.login does it
        assert c.sock.version() == "TLSv1.2"  # see wsfront.ftp.security
        c.prot_p()
        c.storbinary("STOR secret.bin", io.BytesIO(data))
        got = io.BytesIO()
        c.retrbinary("RETR secret.bin", got.write)
        names = c.nlst()
        c.quit()
        return got.getvalue(), names, c.data_connections

    got, names, connections = await threads.deferToThread(session)
    assert sha256(got) == sha256(data)
    assert names == ["secret.bin"]
    assert [tls for tls, _ in connections] == [True, True, True]
    assert all(reused for _, reused in connections), connections
    assert ftps.factory.stats.uploads_committed == 1


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict-tls-upload-eof"])
@pytest.mark.parametrize("ending", ["close_notify", "no close_notify", "reset"])
@pytest_twisted.ensureDeferred
async def test_a_protected_upload_commits_on_close_notify_and_never_on_a_reset(
    tmp_path, certificate, ending, strict
):
    """Under PROT P a reset below TLS is 426 and the upload stays pending,
    resumable with REST + STOR; Twisted's TLS layer reported it as the same
    ConnectionLost as a clean end, and it was committed.  A TCP close
    without the client's close_notify commits by default (some clients
    never send one) and is 426 with ``strict_tls_upload_eof`` (vsftpd's
    ``strict_ssl_read_eof``, off by default there too)."""
    env = await _start(tmp_path, _settings(certificate, strict_tls_upload_eof=strict))
    data = payload(100_000)
    context = _context(certificate)

    def session():
        c = ftplib.FTP_TLS(context=context, timeout=30)
        c.connect("127.0.0.1", env.port)
        c.login("alice", PASSWORD)
        c.prot_p()
        c.voidcmd("TYPE I")
        conn = c.transfercmd("STOR e.bin")
        conn.sendall(data)
        if ending == "close_notify":
            conn = conn.unwrap()
        elif ending == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        try:
            reply = c.getresp()
        except ftplib.Error as e:
            reply = str(e)
        if reply.startswith("426"):  # resume where the server got to
            kept = c.size("e.bin")
            c.storbinary("STOR e.bin", io.BytesIO(data[kept:]), rest=kept)
        c.quit()
        return reply

    try:
        reply = await threads.deferToThread(session)
        if ending == "close_notify" or (ending == "no close_notify" and not strict):
            assert reply.startswith("226"), reply
        else:
            assert reply.startswith("426") and "kept" in reply, reply
        assert env.factory.stats.uploads_committed == 1  # the upload, or its resume
        got, _ = await env.env.download("/e.bin")
        assert sha256(got) == sha256(data)
    finally:
        await env.stop()


@pytest.mark.parametrize(
    ("verb", "size"),
    [("RETR", 0), ("RETR", 10), ("RETR", 5000), ("RETR", 300_000), ("LIST", 0), ("NLST", 0)],
)
@pytest_twisted.ensureDeferred
async def test_a_protected_download_is_226_once_our_close_notify_is_sent(
    ftps, certificate, verb, size
):
    """A client that reads to the server's close_notify and waits for the
    reply before closing its end gets 226 at once: the server does not
    wait for the client's close_notify (it got 426 at the stall timeout).
    Small answers too, whose bytes were written before the data handshake
    and so left the TLS layer only after ``close`` had looked."""
    data = payload(size)
    await ftps.env.upload("/d.bin", data)
    context = _context(certificate)
    command = "RETR d.bin" if verb == "RETR" else verb

    def session():
        c = ftplib.FTP_TLS(context=context, timeout=30)
        c.connect("127.0.0.1", ftps.port)
        c.login("alice", PASSWORD)
        c.prot_p()
        c.voidcmd("TYPE I" if verb == "RETR" else "TYPE A")
        conn = c.transfercmd(command)
        got = bytearray()
        while chunk := conn.recv(65536):  # b"" at the server's close_notify
            got += chunk
        c.sock.settimeout(5)  # far below the stall timeout (10 s)
        try:
            reply = c.getresp()
        except (ftplib.Error, OSError) as e:
            reply = repr(e)
        conn.close()
        c.sock.settimeout(30)
        c.quit()
        return bytes(got), reply

    got, reply = await threads.deferToThread(session)
    if verb == "RETR":
        assert sha256(got) == sha256(data)
    else:
        assert b"d.bin" in got
    assert reply.startswith("226"), reply


@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused(ftps, certificate):
    def handshake():
        context = _context(certificate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is, rightly
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        c = ftplib.FTP_TLS(context=context, timeout=30)
        c.connect("127.0.0.1", ftps.port)
        try:
            c.auth()
        except (ssl.SSLError, OSError) as e:
            return e
        finally:
            c.close()
        return None

    assert await threads.deferToThread(handshake) is not None


@pytest_twisted.ensureDeferred
async def test_ftplib_prot_c_after_auth_tls_transfers_in_clear(ftps, certificate):
    def session():
        c = RecordingFTP_TLS(context=_context(certificate), timeout=30)
        c.connect("127.0.0.1", ftps.port)
        c.login("alice", PASSWORD)
        c.prot_c()
        c.storbinary("STOR clear.txt", io.BytesIO(b"in clear"))
        got = io.BytesIO()
        c.retrbinary("RETR clear.txt", got.write)
        c.quit()
        return got.getvalue(), c.data_connections

    got, connections = await threads.deferToThread(session)
    assert got == b"in clear"
    assert connections == [(False, False), (False, False)]


@pytest_twisted.ensureDeferred
async def test_implicit_ftps_with_ftplib(tmp_path, certificate):
    env = await _start(tmp_path, _settings(certificate), implicit_tls=True)
    data = payload(MiB + 1)
    try:

        def session():
            c = ImplicitFTP_TLS(context=_context(certificate), timeout=30)
            c.connect("127.0.0.1", env.port)
            c.login("alice", PASSWORD)  # no AUTH: TLS is already on
            c._prot_p = True  # PROT P is the default on an implicit port
            c.storbinary("STOR i.bin", io.BytesIO(data))
            got = io.BytesIO()
            c.retrbinary("RETR i.bin", got.write)
            auth = c.sendcmd("PBSZ 0")
            c.quit()
            return got.getvalue(), c.data_connections, auth

        got, connections, pbsz = await threads.deferToThread(session)
        assert sha256(got) == sha256(data)
        assert [tls for tls, _ in connections] == [True, True]
        assert pbsz.startswith("200")
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_plain_client_on_the_implicit_port_gets_nothing_and_others_are_served(
    tmp_path, certificate
):
    from twisted.internet import reactor

    from tests.http_raw import connect

    env = await _start(tmp_path, _settings(certificate), implicit_tls=True)
    try:
        plain = await connect(reactor, env.port)
        plain.send(b"USER alice\r\n")
        assert b"220" not in await plain.closed  # no plain greeting, dropped

        def session():
            c = ImplicitFTP_TLS(context=_context(certificate), timeout=30)
            c.connect("127.0.0.1", env.port)
            c.login("alice", PASSWORD)
            pwd = c.pwd()
            c.quit()
            return pwd

        assert await threads.deferToThread(session) == "/"
    finally:
        await env.stop()


@pytest.mark.parametrize(
    ("offer", "agreed"),
    [(["ftp"], "ftp"), (["h2", "ftp"], "ftp"), (["h2"], None), (["foo"], None)],
)
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest_twisted.ensureDeferred
async def test_clients_offering_alpn_are_served_ftp_agreed_on_when_offered(
    tmp_path, certificate, implicit, offer, agreed
):
    """RFC 7639 registers ``ftp`` for ALPN: it is agreed on when offered;
    any other offer gets a handshake with no protocol agreed on.  Twisted's
    own selection callback failed every handshake offering ALPN at all with
    alert 80 (internal_error), control and data connections alike."""
    env = await _start(tmp_path, _settings(certificate), implicit_tls=implicit)
    data = payload(100_000)
    try:

        def session():
            context = _context(certificate)
            context.set_alpn_protocols(offer)
            c = (ImplicitFTP_TLS if implicit else RecordingFTP_TLS)(context=context, timeout=30)
            c.connect("127.0.0.1", env.port)
            c.login("alice", PASSWORD)
            if not implicit:
                c.prot_p()
            c._prot_p = True  # PROT P is the default on an implicit port
            c.storbinary("STOR alpn.bin", io.BytesIO(data))
            got = io.BytesIO()
            c.retrbinary("RETR alpn.bin", got.write)
            control = c.sock.selected_alpn_protocol()
            c.quit()
            return got.getvalue(), control, c.data_alpn

        got, control, data_alpn = await threads.deferToThread(session)
        assert sha256(got) == sha256(data)
        assert (control, data_alpn) == (agreed, [agreed, agreed])
    finally:
        await env.stop()


# -- the AUTH / PBSZ / PROT state machine ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_pbsz_and_prot_need_auth_first_and_feat_lists_tls(ftps):
    c = await ftps.client(login=False)
    feat = [line.strip() for line in (await c.cmd("FEAT"))[1].split("\n")]
    assert {"AUTH TLS", "PBSZ", "PROT"} <= set(feat)
    assert (await c.cmd("PBSZ 0"))[0] == 503
    assert (await c.cmd("PROT P"))[0] == 503
    assert (await c.cmd("AUTH KERBEROS"))[0] == 504
    assert (await c.cmd("AUTH"))[0] == 501
    await c.login("alice", PASSWORD)
    assert (await c.cmd("PROT P"))[0] == 503  # still no TLS


@pytest_twisted.ensureDeferred
async def test_prot_levels_over_tls(ftps, certificate):
    def session():
        c = ftplib.FTP_TLS(context=_context(certificate), timeout=30)
        c.connect("127.0.0.1", ftps.port)
        c.auth()
        codes = []
        for line in ["PROT P", "PBSZ x", "PBSZ 0", "PROT S", "PROT E", "PROT Q", "PROT C",
                     "PROT P", "AUTH TLS"]:  # fmt: skip
            try:
                codes.append(c.sendcmd(line)[:3])
            except ftplib.Error as e:
                codes.append(str(e)[:3])
        c.login("alice", PASSWORD)
        c.quit()
        return codes

    codes = await threads.deferToThread(session)
    assert codes == ["503", "501", "200", "536", "536", "504", "200", "200", "503"]


@pytest_twisted.ensureDeferred
async def test_auth_tls_without_a_certificate_is_431_and_feat_does_not_list_it(tmp_path):
    env = await _start(tmp_path, FTPSettings())
    try:
        c = await env.client(login=False)
        feat = (await c.cmd("FEAT"))[1]
        assert "AUTH" not in feat and "PROT" not in feat
        assert (await c.cmd("AUTH TLS"))[0] == 431
        await c.login("alice", PASSWORD)  # the session goes on in clear
        assert (await c.cmd("PWD"))[0] == 257
    finally:
        await env.stop()


# -- require TLS -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_require_tls_refuses_plain_logins_and_clear_data(tmp_path, certificate):
    env = await _start(tmp_path, _settings(certificate, require_tls=True))
    try:
        c = await env.client(login=False)
        code, text = await c.cmd("USER alice")
        assert code == 530 and "TLS required" in text
        assert (await c.cmd(f"PASS {PASSWORD}"))[0] == 503  # no USER was taken

        def session():
            c = ftplib.FTP_TLS(context=_context(certificate), timeout=30)
            c.connect("127.0.0.1", env.port)
            c.login("alice", PASSWORD)
            try:
                c.nlst()
            except ftplib.Error as e:
                clear = str(e)
            c.prot_p()
            c.storbinary("STOR ok.txt", io.BytesIO(b"protected"))
            names = c.nlst()
            c.quit()
            return clear, names

        clear, names = await threads.deferToThread(session)
        assert clear.startswith("521") and "PROT P required" in clear
        assert names == ["ok.txt"]
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_require_tls_for_listed_users_only(tmp_path, certificate):
    env = await _start(tmp_path, _settings(certificate, require_tls_users=frozenset({"alice"})))
    try:
        await env.catalog.add_user("bob", "bob password")
        c = await env.client(login=False)
        assert (await c.cmd("USER alice"))[0] == 530
        await c.login("bob", "bob password")  # bob may use plain FTP
        assert (await c.stor("/b.txt", b"bob"))[0] == 226
    finally:
        await env.stop()


# -- hostile handshakes ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_garbage_instead_of_a_handshake_is_dropped_and_others_are_served(ftps, certificate):
    c = await ftps.client(login=False)
    assert (await c.cmd("AUTH TLS"))[0] == 234
    c.send(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(300))
    await c.closed  # the TLS layer refuses it and the connection goes

    def session():
        good = ftplib.FTP_TLS(context=_context(certificate), timeout=30)
        good.connect("127.0.0.1", ftps.port)
        good.login("alice", PASSWORD)
        pwd = good.pwd()
        good.quit()
        return pwd

    assert await threads.deferToThread(session) == "/"


@pytest_twisted.ensureDeferred
async def test_commands_pipelined_after_auth_tls_in_clear_are_never_run(ftps, certificate):
    """CVE-2011-0411 (STARTTLS command injection): a line sent in clear right
    behind AUTH TLS must not run once TLS is up."""
    sock = socket.create_connection(("127.0.0.1", ftps.port), timeout=30)

    def session():
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"AUTH TLS\r\nMKD /injected\r\n")
        assert f.readline().startswith(b"234")
        tls = _context(certificate).wrap_socket(sock, server_hostname="127.0.0.1")
        tf = tls.makefile("rb")
        tls.sendall(b"NOOP\r\n")
        first = tf.readline()
        tls.sendall(b"QUIT\r\n")
        tf.readline()
        tls.close()
        return first

    first = await threads.deferToThread(session)
    assert first.startswith(b"200")  # the NOOP's answer, not the MKD's
    with pytest.raises(NotFound):
        await ftps.catalog.stat(ftps.env.user.root + "/injected")


# -- curl and lftp -------------------------------------------------------------------


async def _run(tool: str, *args: str, cwd=None) -> tuple[str, str]:
    exe = require_tool(tool)
    out, err, code = await getProcessOutputAndValue(
        exe, list(args), env=dict(os.environ), path=str(cwd) if cwd else None
    )
    text_out, text_err = out.decode(errors="replace"), err.decode(errors="replace")
    assert code == 0, f"{tool} {' '.join(args)} exited {code}: {text_err[-2000:]}"
    return text_out, text_err


@pytest_twisted.ensureDeferred
async def test_curl_ssl_reqd_upload_and_download(ftps, certificate, tmp_path):
    data = payload(3 * MiB + 7)
    src, dst = tmp_path / "up.bin", tmp_path / "down.bin"
    src.write_bytes(data)
    url = f"ftp://127.0.0.1:{ftps.port}/curl.bin"
    auth = f"alice:{PASSWORD}"
    common = ["--ssl-reqd", "--cacert", str(certificate.cert_path), "-u", auth, "-sS"]
    await _run("curl", *common, "-T", str(src), url)
    await _run("curl", *common, "-o", str(dst), url)
    assert sha256(dst.read_bytes()) == sha256(data)
    # Without a certificate on the server, --ssl-reqd refuses to go on in clear.


@pytest_twisted.ensureDeferred
async def test_curl_ssl_reqd_refuses_a_server_without_tls(tmp_path):
    env = await _start(tmp_path, FTPSettings())
    try:
        exe = require_tool("curl")
        _out, _err, code = await getProcessOutputAndValue(
            exe, ["--ssl-reqd", "-sS", "-u", f"alice:{PASSWORD}", f"ftp://127.0.0.1:{env.port}/"]
        )
        assert code != 0  # 64: "Requested SSL level failed"
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_lftp_over_tls_put_and_get(ftps, certificate, tmp_path):
    data = payload(2 * MiB + 9)
    work = tmp_path / "lftp"
    work.mkdir()
    (work / "l.bin").write_bytes(data)
    script = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; "
        f"set ssl:ca-file {certificate.cert_path}; set ssl:check-hostname no; "
        "set net:max-retries 1; set net:timeout 20; "
        "put l.bin -o l.bin; get l.bin -o back.bin; bye"
    )
    await _run(
        "lftp", "-u", f"alice,{PASSWORD}", "-p", str(ftps.port), "127.0.0.1", "-e", script,
        cwd=work,
    )  # fmt: skip
    stored = await ftps.catalog.stat(ftps.env.user.root + "/l.bin")
    assert stored.size == len(data)
    back = (work / "back.bin").read_bytes()
    assert (len(back), sha256(back)) == (len(data), sha256(data))
    assert ftps.factory.stats.uploads_committed == 1


@pytest_twisted.ensureDeferred
async def test_active_mode_prot_p_and_abor_of_a_protected_download(ftps, certificate):
    """PORT/EPRT with PROT P: the server opens the TCP connection but is the
    TLS server on it.  ABOR stops a protected download and the session
    goes on."""
    data = payload(300_000)
    big = payload(32 * MiB)
    await ftps.env.upload("/big.bin", big)

    def session():
        c = RecordingFTP_TLS(context=_context(certificate), timeout=30)
        c.connect("127.0.0.1", ftps.port)
        c.login("alice", PASSWORD)
        c.prot_p()
        c.set_pasv(False)
        c.storbinary("STOR a.bin", io.BytesIO(data))
        got = io.BytesIO()
        c.retrbinary("RETR a.bin", got.write)
        c.set_pasv(True)
        conn = c.transfercmd("RETR big.bin")
        first = conn.recv(65536)
        answer = c.abort()  # ABOR on the TLS control connection: 426 ...
        answer += " / " + c.getmultiline()  # ... then 226 for the ABOR itself
        conn.close()
        pwd = c.pwd()
        c.quit()
        return got.getvalue(), c.data_connections, len(first), answer, pwd

    got, connections, first, answer, pwd = await threads.deferToThread(session)
    assert got == data
    assert connections[:2] == [(True, True), (True, True)]
    assert first > 0
    assert answer[:3] == "426" and answer.split(" / ")[1][:3] == "226"
    assert pwd == "/"
    assert ftps.factory.stats.transfers_aborted == 1


@pytest_twisted.ensureDeferred
async def test_lftp_implicit_ftps_url(tmp_path, certificate):
    env = await _start(tmp_path / "srv", _settings(certificate), implicit_tls=True)
    try:
        data = payload(MiB + 5)
        work = tmp_path / "lftp"
        work.mkdir()
        (work / "i.bin").write_bytes(data)
        script = (
            f"set ssl:ca-file {certificate.cert_path}; set ssl:check-hostname no; "
            "set net:max-retries 1; set net:timeout 20; "
            "put i.bin; get i.bin -o back.bin; bye"
        )
        await _run(
            "lftp", "-u", f"alice,{PASSWORD}", "-e", script, f"ftps://127.0.0.1:{env.port}",
            cwd=work,
        )  # fmt: skip
        assert sha256((work / "back.bin").read_bytes()) == sha256(data)
    finally:
        await env.stop()


class ProxiedImplicitFTP_TLS(ImplicitFTP_TLS):
    """Implicit FTPS through a PROXY-protocol balancer: the header, then TLS."""

    proxy_header = b""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), self.timeout)
        self.af = self.sock.family
        self.sock.sendall(self.proxy_header)
        self.sock = self.context.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


@pytest_twisted.ensureDeferred
async def test_implicit_ftps_behind_a_proxy_protocol_balancer(tmp_path, certificate):
    env = await _start(
        tmp_path, _settings(certificate), listen="haproxy:tcp:0:interface=127.0.0.1",
        implicit_tls=True,
    )  # fmt: skip
    try:

        def session():
            c = ProxiedImplicitFTP_TLS(context=_context(certificate), timeout=30)
            c.proxy_header = f"PROXY TCP4 127.0.0.2 192.0.2.1 4000 {env.port}\r\n".encode()
            c.connect("127.0.0.1", env.port)
            c.login("alice", PASSWORD)
            status = c.sendcmd("STAT")
            c.quit()
            return status

        status = await threads.deferToThread(session)
        assert "Connected from 127.0.0.2" in status
    finally:
        await env.stop()


class ProxiedFTP_TLS(RecordingFTP_TLS):
    """Explicit FTPS (AUTH TLS) through a PROXY-protocol balancer."""

    proxy_header = b""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), self.timeout)
        self.af = self.sock.family
        self.sock.sendall(self.proxy_header)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


@pytest_twisted.ensureDeferred
async def test_explicit_ftps_behind_a_proxy_protocol_balancer_outlives_the_login_timeout(
    tmp_path, certificate
):
    """After AUTH TLS the TLS layer sits under the PROXY wrapper, whose
    handshake notice never reached the session: it took the handshake for
    pending and aborted the connection when the handshake deadline (the
    login timeout) came, mid-session.  A session used for longer than that
    deadline keeps going and ends with its 221."""
    env = await _start(
        tmp_path, _settings(certificate, login_timeout=1.0, idle_timeout=30.0),
        listen="haproxy:tcp:0:interface=127.0.0.1",
    )  # fmt: skip
    try:

        def session():
            c = ProxiedFTP_TLS(context=_context(certificate), timeout=30)
            c.proxy_header = f"PROXY TCP4 127.0.0.2 192.0.2.1 4000 {env.port}\r\n".encode()
            c.connect("127.0.0.1", env.port)
            c.login("alice", PASSWORD)
            started = time.monotonic()
            replies = []
            while time.monotonic() - started < 2.5:  # past the 1 s deadline
                replies.append(c.voidcmd("NOOP"))
                time.sleep(0.25)  # a client's pace, not synchronisation
            status = c.sendcmd("STAT")
            return replies, status, c.quit()

        replies, status, bye = await threads.deferToThread(session)
        assert replies and all(r.startswith("200") for r in replies)
        assert "Connected from 127.0.0.2" in status
        assert bye.startswith("221")
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_tls_client_that_never_answers_close_notify_is_cut_after_the_close_deadline(
    ftps, certificate, monkeypatch
):
    """After QUIT over TLS our close waits for the client's close_notify
    (Twisted's TLS layer); one that never sends it, and never closes,
    would hold its connection and its per-address slot for ever: the
    close deadline aborts it."""
    import wsfront.ftp.protocol as control

    monkeypatch.setattr(control, "CLOSE_DEADLINE", 0.5)
    context = _context(certificate)

    def quit_and_stay():
        raw = socket.create_connection(("127.0.0.1", ftps.port), timeout=30)
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220")
        raw.sendall(b"AUTH TLS\r\n")
        assert f.readline().startswith(b"234")
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        g = tls.makefile("rb")
        for line, code in ((b"USER alice", b"331"), (b"PASS " + PASSWORD.encode(), b"230")):
            tls.sendall(line + b"\r\n")
            assert g.readline().startswith(code)
        tls.sendall(b"QUIT\r\n")
        assert g.readline().startswith(b"221")
        return tls  # kept open, no close_notify sent

    tls = await threads.deferToThread(quit_and_stay)
    try:
        assert len(ftps.factory.sessions) == 1
        await until(lambda: not ftps.factory.sessions, "the closing session to be aborted")
    finally:
        tls.close()
