"""HTTPS: the same site inside TLS, TLS 1.2 at least, no HTTP/2, and logins
refused over plain HTTP where TLS is required; anonymous reads.

In-process: ``HttpEnv``'s site listens a second time through
``wsfront.http.tls.listen_https`` with a certificate made for the test; the
clients are treq (with that certificate as its trust root) and Python's
``ssl`` module in a thread (to see the negotiated version and ALPN).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, threads
from twisted.internet.ssl import Certificate
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from tests.http_env import HttpEnv, payload
from tests.http_raw import connect, head_of
from tests.security_support import BOB_PASSWORD
from tests.support import require_tool
from tests.test_security_auth import count_password_checks
from tests.tls_support import make_certificate
from tests.transfer_env import PASSWORD, sha256
from wsfront.catalog.errors import NotFound
from wsfront.config import FrontendConfig
from wsfront.http.site import SiteSettings
from wsfront.http.tls import HSTS_MAX_AGE, listen_https, site_settings


class TlsEnv:
    """An ``HttpEnv`` whose site also listens with TLS, and an HTTPS client."""

    def __init__(self, reactor, tmp_path, settings: SiteSettings) -> None:
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.http = HttpEnv(reactor, tmp_path, settings)

    async def start(self) -> TlsEnv:
        await self.http.start()
        self.cert, key = make_certificate(self.tmp_path)
        pem = self.cert.read_bytes() + key.read_bytes()
        self.tls_port = await listen_https(
            self.reactor, "tcp:0:interface=127.0.0.1", self.http.site, pem
        )
        self.port = self.tls_port.getHost().port
        self.http.site.context.settings = attrs.evolve(
            self.http.site.context.settings, https_port=self.port
        )
        trust = Certificate.loadPEM(self.cert.read_bytes())
        policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
        self.client = HTTPClient(Agent(self.reactor, contextFactory=policy))
        return self

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        await self.tls_port.stopListening()
        await self.http.stop()


@pytest.fixture
def tls(tmp_path):
    from twisted.internet import reactor

    settings = SiteSettings(require_tls_users=frozenset({"bob"}))
    env = pytest_twisted.blockon(defer.ensureDeferred(TlsEnv(reactor, tmp_path, settings).start()))
    pytest_twisted.blockon(defer.ensureDeferred(env.http.catalog.add_user("bob", BOB_PASSWORD)))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


def _handshake(port: int, cafile: str, **options) -> tuple[str, str | None]:
    """(TLS version, ALPN protocol) a Python client negotiates (in a thread)."""
    context = ssl.create_default_context(cafile=cafile)
    if "maximum_version" in options:
        context.maximum_version = options["maximum_version"]
    if options.get("seclevel0"):
        # OpenSSL 3 refuses TLS 1.1 itself at the default security level:
        # lower it, so that only the server can be what refuses.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version(), tls.selected_alpn_protocol()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
@pytest_twisted.ensureDeferred
async def test_https_serves_the_same_files_with_tls_1_2_at_least_and_no_http2(tls):
    data = payload(3 << 20)
    response = await tls.client.put(tls.url("/s.bin"), data=data, auth=("alice", PASSWORD))
    await response.content()
    assert response.code == 201
    response = await tls.client.get(tls.url("/s.bin"), auth=("alice", PASSWORD), unbuffered=True)
    assert sha256(await response.content()) == sha256(data)
    assert not response.headers.hasHeader(b"Strict-Transport-Security")  # TLS not required
    plain = await tls.http.request("GET", "/s.bin")  # the same file over plain HTTP
    assert sha256(await plain.content()) == sha256(data)
    cafile = str(tls.cert)
    version, alpn = await threads.deferToThread(_handshake, tls.port, cafile)
    assert (version, alpn) == ("TLSv1.3", "http/1.1")  # h2 is never agreed on
    version, _ = await threads.deferToThread(
        _handshake, tls.port, cafile, maximum_version=ssl.TLSVersion.TLSv1_2
    )
    assert version == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        await threads.deferToThread(
            _handshake, tls.port, cafile, maximum_version=ssl.TLSVersion.TLSv1_1, seclevel0=True
        )


def _get_with_alpn(port: int, cafile: str, offer: list[str]) -> tuple[str | None, bytes]:
    """(ALPN protocol agreed on, status line) of an HTTP/1.1 GET / as alice
    from a client offering ``offer`` over ALPN (in a thread)."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(offer)
    token = base64.b64encode(f"alice:{PASSWORD}".encode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Basic " + token + b"\r\n\r\n"
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return tls.selected_alpn_protocol(), answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("offer", "agreed"),
    [
        (["h2"], None),
        (["foo"], None),
        (["http/1.1"], "http/1.1"),
        (["h2", "http/1.1"], "http/1.1"),
        (["ftp"], None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_alpn_offer_without_http_1_1_still_gets_http_1_1(tls, offer, agreed):
    """A client offering no protocol the site speaks (h2 alone, a made-up
    one) gets a handshake with no protocol agreed on, RFC 7301's choice
    when the server would rather go on, and HTTP/1.1 then: Twisted's own
    selection callback answered it with alert 80 (internal_error)."""
    got = await threads.deferToThread(_get_with_alpn, tls.port, str(tls.cert), offer)
    assert got == (agreed, b"HTTP/1.1 200 OK")


@pytest_twisted.ensureDeferred
async def test_curl_http_1_0_over_https(tls):
    """curl --http1.0 offers ALPN http/1.0 alone; the handshake goes on."""
    curl = require_tool("curl")
    out, err, code = await getProcessOutputAndValue(
        curl,
        ["-sS", "--http1.0", "--cacert", str(tls.cert), "-u", f"alice:{PASSWORD}",
         "-o", os.devnull, "-w", "%{http_version} %{http_code}", tls.url("/")],
        env=dict(os.environ),
    )  # fmt: skip
    assert (out, code) == (b"1 200", 0), err  # curl writes HTTP/1.0 as "1"


@pytest_twisted.ensureDeferred
async def test_an_answer_before_the_body_reaches_the_client_over_https(tls):
    for _ in range(3):
        response = await tls.client.put(
            tls.url("/x.bin"), data=payload(1 << 20), auth=("alice", "wrong")
        )
        assert response.code == 401
        assert b"wrong user name or password" in await response.content()
    with pytest.raises(NotFound):
        await tls.http.transfers.stat(tls.http.user, "/x.bin")


@pytest_twisted.ensureDeferred
async def test_a_user_who_must_use_tls_is_refused_over_plain_http_without_a_password_check(tls):
    checks = count_password_checks(tls.http)
    response = await tls.http.http.get(
        tls.http.url("/"), auth=("bob", BOB_PASSWORD), unbuffered=True
    )
    body = await response.content()
    assert response.code == 403
    assert body == f"TLS required: use https://127.0.0.1:{tls.port}/\n".encode()
    assert checks == []
    response = await tls.client.get(tls.url("/"), auth=("bob", BOB_PASSWORD), unbuffered=True)
    await response.content()
    assert response.code == 200 and checks == ["bob"]
    response = await tls.http.request("GET", "/")  # alice may use plain HTTP
    await response.content()
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_tls_required_globally_refuses_every_plain_login_and_sends_hsts(tmp_path):
    from twisted.internet import reactor

    settings = SiteSettings(require_tls=True, hsts_max_age=HSTS_MAX_AGE)
    env = await TlsEnv(reactor, tmp_path, settings).start()
    try:
        checks = count_password_checks(env.http)
        response = await env.http.request("GET", "/")
        assert response.code == 403 and b"TLS required" in await response.content()
        response = await env.http.request("GET", "/", auth=False)
        await response.content()
        # No challenge: a browser would answer it with the password in clear.
        assert response.code == 403 and not response.headers.hasHeader(b"WWW-Authenticate")
        c = await connect(reactor, env.http.port.getHost().port)
        token = base64.b64encode(f"alice:{PASSWORD}".encode())
        c.send(
            b"PUT /p.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + token
            + b"\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
        )  # fmt: skip
        answer = await c.closed.addTimeout(10, reactor)
        assert b"100 Continue" not in answer and head_of(answer)[0] == 403
        assert checks == []
        response = await env.client.get(env.url("/"), auth=("alice", PASSWORD), unbuffered=True)
        await response.content()
        assert response.code == 200
        assert response.headers.getRawHeaders(b"Strict-Transport-Security") == [
            b"max-age=%d" % HSTS_MAX_AGE
        ]
        response = await env.client.get(env.url("/nothing"), unbuffered=True)
        await response.content()
        assert response.code == 401  # over HTTPS, the challenge is fine
        assert response.headers.hasHeader(b"Strict-Transport-Security")
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_http_and_https_share_one_connection_cap_and_https_gets_its_503(tmp_path):
    from twisted.internet import reactor

    env = await TlsEnv(reactor, tmp_path, SiteSettings(max_connections=1)).start()
    try:
        held = await connect(reactor, env.http.port.getHost().port)  # plain HTTP, idle
        response = await env.client.get(env.url("/"), auth=("alice", PASSWORD), unbuffered=True)
        body = await response.content()
        assert response.code == 503 and b"too many connections in total" in body
        assert response.headers.getRawHeaders(b"Retry-After") == [b"5"]
        held.close()
        await held.closed
        for _ in range(100):  # the server sees the close on its next reactor turn
            response = await env.client.get(env.url("/"), auth=("alice", PASSWORD), unbuffered=True)
            await response.content()
            if response.code != 503:
                break
        assert response.code == 200
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_anonymous_requests_read_the_anonymous_root_and_nothing_else(tmp_path):
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path, SiteSettings(anonymous_root="/pub")).start()
    try:
        admin_view = attrs.evolve(env.user, root="/")
        await env.transfers.mkdir(admin_view, "/pub")
        await env.transfer.upload("/hello.txt", b"hello all")  # as alice: in her root
        session = await env.transfers.open_write(admin_view, "/pub/open.txt", 0)
        session.write(b"for everyone")
        await session.finish()
        response = await env.request("GET", "/open.txt", auth=False)
        assert (response.code, await response.content()) == (200, b"for everyone")
        response = await env.request("GET", "/hello.txt", auth=False)
        await response.content()
        assert response.code == 404  # alice's files are not under /pub
        for method in ("PUT", "DELETE"):
            response = await env.request(method, "/open.txt", auth=False, data=b"defaced")
            await response.content()
            assert response.code == 401
        response = await env.request("GET", "/open.txt", auth=False)
        assert await response.content() == b"for everyone"
        response = await env.request("GET", "/hello.txt")  # alice still logs in
        assert await response.content() == b"hello all"
    finally:
        await env.stop()


def test_the_server_context_disables_every_version_below_tls_1_2(tmp_path):
    """What the live TLS 1.1 refusal can't show alone (OpenSSL 3 may refuse
    TLS 1.1 at its default security level whatever wsfront asks)."""
    from OpenSSL import SSL

    from wsfront.http.tls import server_tls_options

    cert, key = make_certificate(tmp_path)
    context = server_tls_options(cert.read_bytes() + key.read_bytes()).getContext()
    options = context.set_options(0)  # returns the options in force
    for old in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
        assert options & old
    assert not options & SSL.OP_NO_TLSv1_2 and not options & SSL.OP_NO_TLSv1_3


def test_the_site_offers_http_1_1_only_even_where_twisted_could_speak_h2(monkeypatch):
    from twisted.web import http

    from wsfront.http.site import make_site

    monkeypatch.setattr(http, "H2_ENABLED", True)
    assert make_site(None, None, None).acceptableProtocols() == [b"http/1.1"]


def test_site_settings_follow_the_front_end_options():
    config = FrontendConfig(
        name="fe",
        catalog="sqlite:///x",
        storage=(),
        replicas=1,
        secret=b"s" * 32,
        anonymous=True,
        anonymous_root="/public",
        require_tls_users=("bob",),
        max_connections_per_address=7,
        max_connections=70,
        login_failures_per_address=3,
        login_failures_per_user=9,
        login_window_seconds=60.0,
    )
    settings = site_settings(config)
    assert (settings.anonymous_root, settings.require_tls_users) == ("/public", {"bob"})
    assert (settings.max_connections_per_address, settings.max_connections) == (7, 70)
    assert (settings.login_failures_per_address, settings.login_failures_per_user) == (3, 9)
    assert settings.login_window == 60.0
    assert not settings.require_tls and settings.hsts_max_age is None
    assert site_settings(attrs.evolve(config, anonymous=False)).anonymous_root is None
    strict = site_settings(attrs.evolve(config, require_tls=True))
    assert strict.require_tls and strict.hsts_max_age == HSTS_MAX_AGE


@pytest_twisted.ensureDeferred
async def test_the_status_page_sends_no_plain_http_challenge_where_tls_is_required(tmp_path):
    """Administrators log in to /-/status too: over plain HTTP with TLS
    required they get the 403 naming the HTTPS URL, never a challenge their
    browser would answer in clear; over HTTPS the challenge is fine."""
    from twisted.internet import reactor

    from wsfront.metrics_catalog import CatalogSnapshot
    from wsfront.status import status_endpoint

    env = await TlsEnv(reactor, tmp_path, SiteSettings(require_tls=True)).start()
    page = status_endpoint(reactor, env.http.transfers, CatalogSnapshot(reactor, env.http.catalog))
    env.http.site.mount("status", page)
    try:
        response = await env.http.request("GET", "/-/status/", auth=False)
        body = await response.content()
        assert response.code == 403 and b"TLS required: use https://" in body
        assert not response.headers.hasHeader(b"WWW-Authenticate")
        response = await env.client.get(env.url("/-/status/"), unbuffered=True)
        await response.content()
        assert response.code == 401 and response.headers.hasHeader(b"WWW-Authenticate")
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_move_over_https_takes_an_https_destination_and_refuses_an_http_one(tls):
    auth = ("alice", PASSWORD)
    response = await tls.client.put(tls.url("/m.txt"), data=b"moved", auth=auth)
    await response.content()
    assert response.code == 201
    for destination, code in ((tls.http.url("/plain.txt"), 502), (tls.url("/tls.txt"), 201)):
        response = await tls.client.request(
            "MOVE", tls.url("/m.txt"), headers={"Destination": destination}, auth=auth
        )
        await response.content()
        assert response.code == code, destination
    response = await tls.client.get(tls.url("/tls.txt"), auth=auth)
    assert (response.code, await response.content()) == (200, b"moved")
