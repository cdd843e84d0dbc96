"""An in-process FTP server over a real transfer layer, and a small async client.

``FTPEnv`` starts ``tests.transfer_env.TransferEnv`` (storage servers on
127.0.0.1, a SQLite catalog, user ``alice``) and mounts ``FTPFactory`` on a
real TCP port with the real twisted.cred portal.  ``FTPClient`` is a
Twisted client that speaks raw FTP commands over a real socket, so protocol
tests can send anything (pipelined lines, ABOR mid-transfer, garbage) and
read replies without blocking the reactor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import attrs
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.protocols.basic import LineOnlyReceiver

from tests.transfer_env import PASSWORD, TransferEnv, sha256
from wsfront.auth import CachingAuthenticator, make_portal
from wsfront.ftp.addresses import parse_epsv_reply
from wsfront.ftp.factory import FTPFactory, FTPSettings
from wsfront.ftp.security import implicit_tls_factory

__all__ = ["PASSWORD", "FTPClient", "FTPEnv", "payload", "sha256", "tick", "until"]


class FTPEnv:
    """A transfer layer plus an FTP server listening on 127.0.0.1."""

    def __init__(
        self,
        reactor,
        tmp_path,
        settings: FTPSettings | None = None,
        listen: str = "tcp:0:interface=127.0.0.1",
        *,
        implicit_tls: bool = False,
        **env_kw,
    ) -> None:
        self.reactor = reactor
        self.listen = listen
        self.implicit_tls = implicit_tls
        self.tmp_path = tmp_path
        self.settings = settings or FTPSettings(data_timeout=10.0)
        self.env_kw = env_kw
        self.clients: list[FTPClient] = []

    async def start(self) -> FTPEnv:
        self.env = await TransferEnv(self.reactor, self.tmp_path, **self.env_kw).start()
        self.catalog = self.env.catalog
        self.transfers = self.env.transfers
        auth = CachingAuthenticator(self.env.catalog, self.reactor)
        settings = self.settings
        if self.implicit_tls:
            settings = attrs.evolve(settings, implicit_tls=True)
        self.factory = FTPFactory(self.reactor, self.transfers, make_portal(auth), settings)
        listening_factory = self.factory
        if self.implicit_tls:  # as wsfront.service mounts --ftps
            listening_factory = implicit_tls_factory(self.factory)
        ep = serverFromString(self.reactor, f"{self.listen}:backlog=512")
        self.listening = await ep.listen(listening_factory)
        self.port = self.listening.getHost().port
        return self

    @property
    def url(self) -> str:
        return f"ftp://alice:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{self.port}"

    async def client(
        self, login: bool = True, host: str = "127.0.0.1", preamble: bytes = b""
    ) -> FTPClient:
        """A logged-in client; ``preamble`` is sent first (a PROXY header)."""
        ep = HostnameEndpoint(self.reactor, host, self.port)
        client = await ep.connect(_ClientFactory(self.reactor))
        self.clients.append(client)
        if preamble:
            client.transport.write(preamble)
        code, _ = await client.reply()
        assert code == 220
        if login:
            await client.login("alice", PASSWORD)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            client.transport.abortConnection()
        await self.listening.stopListening()
        for session in list(self.factory.sessions):
            session.transport.abortConnection()
        # Let pending uploads settle (commit/interrupt) before storage goes away.
        for _ in range(20):
            if not self.transfers.sessions:
                break
            await _later(self.reactor, 0.05)
        await self.env.stop()


def _later(reactor, seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


def payload(size: int) -> bytes:
    """``size`` random bytes: one random block of up to 64 KiB repeated, so
    that MiBs cost little to make and no layer can compress them away."""
    block = os.urandom(min(size, 64 * 1024) or 1)
    return (block * (size // len(block) + 1))[:size]


def tick(seconds: float = 0.01) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` of the global reactor."""
    from twisted.internet import reactor

    return _later(reactor, seconds)


async def until(predicate: Callable[[], object], what: str, rounds: int = 2000) -> None:
    """Wait, a reactor tick at a time, until ``predicate()`` is true: for
    server state (a session's counters, a transport's buffer) that no event
    announces.  Fails naming ``what`` after ``rounds`` ticks."""
    for _ in range(rounds):
        if predicate():
            return
        await tick()
    raise AssertionError(f"timed out waiting for {what}")


class _ClientFactory(protocol.Factory):
    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def buildProtocol(self, addr):
        client = FTPClient()
        client.reactor = self.reactor
        return client


class FTPClient(LineOnlyReceiver):
    """Raw FTP over one control connection: ``send``, ``reply``, ``cmd``."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self._replies: list[tuple[int, str]] = []
        self._waiting: list[defer.Deferred] = []
        self._partial: list[str] = []
        self.closed = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "surrogateescape")
        if self._partial:
            self._partial.append(text)
            if re.match(r"^\d{3} ", text) and text[:3] == self._partial[0][:3]:
                lines, self._partial = self._partial, []
                self._deliver(int(lines[0][:3]), "\n".join([lines[0][4:], *lines[1:]]))
            return
        if re.match(r"^\d{3}-", text):
            self._partial = [text]
            return
        self._deliver(int(text[:3]), text[4:])

    def _deliver(self, code: int, text: str) -> None:
        if self._waiting:
            self._waiting.pop(0).callback((code, text))
        else:
            self._replies.append((code, text))

    def connectionLost(self, reason=None) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback((0, "connection closed"))
        self.closed.callback(None)

    def send(self, line: str | bytes) -> None:
        raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
        self.transport.write(raw + b"\r\n")

    def reply(self) -> defer.Deferred:
        if self._replies:
            return defer.succeed(self._replies.pop(0))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    async def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send(line)
        return await self.reply()

    async def login(self, name: str, password: str) -> None:
        code, text = await self.cmd(f"USER {name}")
        assert code == 331, text
        code, text = await self.cmd(f"PASS {password}")
        assert code == 230, text

    async def epsv(self) -> int:
        code, text = await self.cmd("EPSV")
        assert code == 229, text
        return parse_epsv_reply(text)

    async def data_connection(self, port: int) -> DataPeer:
        host = self.transport.getPeer().host
        ep = HostnameEndpoint(self.reactor, host, port)
        return await ep.connect(protocol.Factory.forProtocol(DataPeer))

    async def retr(self, path: str, rest: int | None = None) -> bytes:
        """EPSV + [REST] + RETR; the bytes, after 150 and 226."""
        await self.cmd("TYPE I")
        port = await self.epsv()
        if rest is not None:
            code, text = await self.cmd(f"REST {rest}")
            assert code == 350, text
        peer = await self.data_connection(port)
        code, text = await self.cmd(f"RETR {path}")
        assert code == 150, (code, text)
        data = await peer.done
        code, text = await self.reply()
        assert code == 226, (code, text)
        return data

    async def stor(self, path: str, data: bytes, verb: str = "STOR") -> tuple[int, str]:
        """EPSV + STOR/APPE of ``data``; the final reply."""
        await self.cmd("TYPE I")
        port = await self.epsv()
        peer = await self.data_connection(port)
        code, text = await self.cmd(f"{verb} {path}")
        if code != 150:
            peer.transport.loseConnection()
            return code, text
        peer.transport.write(data)
        peer.transport.loseConnection()
        return await self.reply()

    async def listing(self, verb: str = "LIST", path: str = "") -> str:
        port = await self.epsv()
        peer = await self.data_connection(port)
        code, text = await self.cmd(f"{verb} {path}".rstrip())
        assert code == 150, (code, text)
        data = await peer.done
        code, text = await self.reply()
        assert code == 226, (code, text)
        return data.decode("utf-8")


class DataPeer(protocol.Protocol):
    """The client end of a data connection: collects what arrives."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.done: defer.Deferred = defer.Deferred()
        self.on_data = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if self.on_data is not None:
            self.on_data(self)

    def connectionLost(self, reason=None) -> None:
        self.done.callback(b"".join(self.chunks))
