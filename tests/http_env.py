"""An in-process wsfront HTTP site on 127.0.0.1 over ``TransferEnv``.

``HttpEnv`` adds to the transfer environment (real storage servers, real
SQLite catalog, user ``alice``) a listening ``make_site`` and what the HTTP
tests need: the base URL, Basic credentials, a treq client, and helpers to
run outside clients (curl, wget, aria2c) as subprocesses without blocking
the reactor.
"""

from __future__ import annotations

import base64
import os

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import Agent, HTTPConnectionPool

from tests.transfer_env import PASSWORD, TransferEnv
from wsfront.auth import CachingAuthenticator
from wsfront.http.site import SiteSettings, make_site

USER = "alice"
MiB = 1 << 20


def payload(size: int) -> bytes:
    """``size`` bytes that differ everywhere (a repeated random block)."""
    if not size:
        return b""
    block = os.urandom(min(size, 256 * 1024))
    return (block * (size // len(block) + 1))[:size]


class HttpEnv:
    """TransferEnv plus a listening HTTP site."""

    def __init__(
        self,
        reactor,
        tmp_path,
        settings: SiteSettings | None = None,
        listen: str = "tcp:0:interface=127.0.0.1",
        **transfer_kw,
    ):
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.listen = listen
        self.transfer = TransferEnv(reactor, tmp_path, **transfer_kw)
        self.site_settings = settings or SiteSettings()
        self.port = None

    async def start(self) -> HttpEnv:
        await self.transfer.start()
        self.authenticator = CachingAuthenticator(self.transfer.catalog, self.reactor)
        self.site = make_site(
            self.reactor, self.transfer.transfers, self.authenticator, self.site_settings
        )
        ep = serverFromString(self.reactor, self.listen)
        self.port = await ep.listen(self.site)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.http = HTTPClient(Agent(self.reactor, pool=self.pool))
        return self

    @property
    def transfers(self):
        return self.transfer.transfers

    @property
    def catalog(self):
        return self.transfer.catalog

    @property
    def user(self):
        return self.transfer.user

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def auth(self) -> tuple[str, str]:
        return (USER, PASSWORD)

    @property
    def auth_header(self) -> dict[bytes, list[bytes]]:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return {b"Authorization": [f"Basic {token}".encode()]}

    def request(self, method: str, path: str, *, auth=True, **kw):
        """A treq request (unbuffered) with alice's credentials."""
        headers = dict(kw.pop("headers", {}) or {})
        if auth:
            headers.update(self.auth_header)
        kw.setdefault("allow_redirects", False)
        return self.http.request(method, self.url(path), headers=headers, unbuffered=True, **kw)

    def upload(self, vpath: str, data: bytes):
        return self.transfer.upload(vpath, data)

    async def run(self, argv: list[str], cwd=None) -> tuple[bytes, bytes, int]:
        """Run an outside client; (stdout, stderr, exit code), the reactor free meanwhile."""
        return await getProcessOutputAndValue(
            argv[0], argv[1:], env=dict(os.environ), path=str(cwd or self.tmp_path)
        )

    async def stop(self) -> None:
        await self.pool.closeCachedConnections()
        if self.port is not None:
            await self.port.stopListening()
        await self.transfer.stop()


def another_put_first(env: HttpEnv, monkeypatch, method: str) -> list:
    """Make the catalog's ``method`` (the second transaction of a checked
    request) first let another client's PUT of b"theirs" to /race commit,
    once: the race between a request's look and its action, made certain.
    Returns a list that then holds that PUT's response."""
    real = getattr(env.catalog, method)
    theirs: list = []
    started: list = []

    async def their_put():
        r = await env.request("PUT", "/race", data=b"theirs")
        await r.content()
        return r

    def after_another_put(*args, **kwargs):
        if started:
            return real(*args, **kwargs)
        started.append(True)
        d = defer.ensureDeferred(their_put())
        d.addCallback(theirs.append)
        d.addCallback(lambda _: real(*args, **kwargs))
        return d

    monkeypatch.setattr(env.catalog, method, after_another_put)
    return theirs
