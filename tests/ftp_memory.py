"""An FTP control connection on a ``MemoryReactorClock``, for protocol unit tests.

``MemoryFTP`` builds a real ``FTPControl`` on a ``StringTransport``, logged
in (the user set directly, no portal), over ``MemoryTransfers``: just the
part of the transfer layer that STOR, RETR, LIST and NLST call, keeping
files in a dict.  Data connections are the real ``DataChannel`` of the
passive port the control connection opened (``reactor.tcpServers``), each
on its own ``StringTransport``; the test decides when bytes arrive, when a
connection closes and when time passes (``clock.advance``), so every
ordering of QUIT, data and timeouts can be played exactly.  Without a
``passive_ports`` range, the reactor hands out ports from 50000 up for port
0, as the system would hand out ephemeral ones.
"""

from __future__ import annotations

import attrs
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.auth import Grant
from wsfront.catalog.records import PERMISSIONS, User
from wsfront.ftp.data import DataChannel
from wsfront.ftp.factory import FTPFactory, FTPSettings
from wsfront.transfer.errors import TransferAborted
from wsfront.transfer.service import FileInfo, PathView

CLIENT = "192.0.2.7"


@attrs.frozen
class Version:
    size: int


class MemoryWrite:
    """An upload session: bytes kept in memory, committed by ``finish``."""

    def __init__(self, files: dict[str, bytes], path: str) -> None:
        self._files = files
        self.path = path
        self.offset = 0
        self.epoch = 1
        self.upload_id = "u1"
        self.received = 0
        self.state = "open"
        #: Never refused for room here (``WriteSession.discarded``).
        self.discarded = False
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        self._data += data
        self.received += len(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def when_failed(self) -> Deferred:
        return Deferred()  # never fails here

    def when_recorded(self) -> Deferred:
        return succeed(None)  # nothing to record in a catalog here

    async def finish(self) -> Version:
        self._files[self.path] = bytes(self._data)
        self.state = "committed"
        return Version(len(self._data))

    async def interrupt(self) -> None:
        self.state = "interrupted"

    async def abort(self) -> None:
        self.state = "abandoned"


@implementer(IPushProducer)
class GatedStream:
    """A download that writes ``data`` in two halves, the second once
    ``gate`` fires: a test can act while the bytes flow.  Stopped (its
    data connection lost) it fails as ``ReadStream`` does."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)
        self.gate: Deferred = Deferred()

    async def start(self, consumer) -> None:
        consumer.registerProducer(self, True)
        half = self.length // 2
        consumer.write(self.data[:half])
        try:
            await self.gate
        except CancelledError:
            raise TransferAborted("consumer stopped the read") from None
        consumer.write(self.data[half:])
        consumer.unregisterProducer()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.gate.cancel()


class _Catalog:
    async def abort_upload(self, upload_id: str, epoch: int) -> None:
        pass


class MemoryTransfers:
    """What the FTP transfer commands ask of ``Transfers``, in memory."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.writes: list[MemoryWrite] = []
        self.streams: list[GatedStream] = []
        self.catalog = _Catalog()

    async def open_write(self, user, path: str, offset: int, **_kw) -> MemoryWrite:
        session = MemoryWrite(self.files, path)
        self.writes.append(session)
        return session

    async def open_read(self, user, path: str, offset: int):
        stream = GatedStream(self.files[path])
        self.streams.append(stream)
        return attrs.make_class("Handle", ["stream"])(stream)

    def _info(self, path: str) -> FileInfo:
        if path == "/":
            return FileInfo(path, True, 0, 0.0, None, 1)
        return FileInfo(path, False, len(self.files[path]), 0.0, "e", 2)

    async def view(self, user, path: str) -> PathView:
        return PathView(committed=self._info(path))

    async def stat(self, user, path: str) -> FileInfo:
        return self._info(path)

    async def list_dir(self, user, path: str, after, limit: int):
        names = sorted(n.lstrip("/") for n in self.files)
        return [
            attrs.make_class("E", ["name", "is_dir", "size", "mtime", "inode"])(
                n, False, len(self.files["/" + n]), 0.0, 3
            )
            for n in names
            if after is None or n > after
        ][:limit]


class PortsReactor(MemoryReactorClock):
    """A memory reactor whose ``listenTCP`` on port 0 gets a port of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._next_port = 50000

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 0:
            port, self._next_port = self._next_port, self._next_port + 1
        return super().listenTCP(port, factory, backlog, interface)


class MemoryFTP:
    """One logged-in control connection and its data connections.

    ``factory``: another MemoryFTP's (``.factory``), for a second control
    connection to the same server (its reactor, files and limits);
    ``client``: the address this one comes from."""

    def __init__(
        self,
        settings: FTPSettings | None = None,
        *,
        factory: FTPFactory | None = None,
        client: str = CLIENT,
    ) -> None:
        if factory is None:
            factory = FTPFactory(PortsReactor(), MemoryTransfers(), None, settings or FTPSettings())
        self.factory = factory
        self.reactor = factory.reactor
        self.transfers = factory.transfers
        self.client = client
        self.control = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
        self.control.makeConnection(self.transport)
        user = User("alice", False, "/alice", PERMISSIONS, None, None, 0, 0, 0.0)
        # Logged in as PASS does it, with nothing in a catalog to confirm.
        self.control.grant = Grant.unchecked(user)
        self.replies()  # the greeting

    def send(self, *lines: str) -> None:
        """``lines`` in one read of the control connection."""
        self.control.dataReceived(b"".join(line.encode() + b"\r\n" for line in lines))

    def replies(self) -> list[int]:
        """The codes of the replies sent since the last call."""
        return [code for code, _text in self.reply_texts()]

    def reply_texts(self) -> list[tuple[int, str]]:
        """The (code, text) of the replies sent since the last call."""
        out = self.transport.value().decode()
        self.transport.clear()
        return [(int(line[:3]), line[4:]) for line in out.split("\r\n") if line[3:4] == " "]

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting

    def connect_data(self) -> tuple[DataChannel, StringTransport]:
        """The client connects to this connection's passive port (the last
        one opened, when it has none now)."""
        servers = self.reactor.tcpServers
        mine = [f for _p, f, _b, _i in servers if f._listener is self.control.passive]
        factory = mine[-1] if mine else servers[-1][1]
        channel = factory.buildProtocol(IPv4Address("TCP", self.client, 50000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport


def close_data(channel: DataChannel, reason: Exception | None = None) -> None:
    """The data connection ends: a FIN (ConnectionDone) unless ``reason``.
    As a TCP transport does, its producer is stopped first."""
    transport = channel.transport
    if transport.producer is not None:
        producer, transport.producer = transport.producer, None
        producer.stopProducing()
    channel.connectionLost(Failure(reason or net_error.ConnectionDone()))
