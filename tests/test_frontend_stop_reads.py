"""A front end that stops while downloads stream (Ctrl-C, SIGTERM) cuts
them without taking its own closing storage connections for dead servers:
no "storage server marked down", no failover round, no 503 in the log.

Real storage servers and a front end in this process, on real TCP sockets;
a raw HTTP client that asks for a file and reads nothing, so its download
is paused mid-stream when the front end stops."""

from __future__ import annotations

import base64

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.http_raw import connect
from wsfront.config import FrontendConfig
from wsfront.service import FrontendService
from wsstorage.service import start_storage_server

SECRET = b"stop-reads-secret-0123456789abcdef"
MiB = 1 << 20


@pytest_twisted.ensureDeferred
async def test_stopping_mid_download_marks_no_storage_server_down(tmp_path) -> None:
    servers = [
        await start_storage_server(
            reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / name), name, SECRET
        )
        for name in ("s1", "s2")
    ]
    config = FrontendConfig(
        name="fe", catalog=f"sqlite:///{tmp_path / 'catalog.sqlite'}", replicas=2,
        secret=SECRET, http="tcp:0:interface=127.0.0.1",
        storage=tuple((f"s{i}", s.client_endpoint) for i, s in enumerate(servers, 1)),
    )  # fmt: skip
    fe = FrontendService(reactor, config)
    fe.startService()
    events: list[dict] = []
    try:
        await fe.ready
        await fe.catalog.add_user("ann", "pw-123456")
        port = fe.address("http").port
        data = bytes(range(256)) * (64 * MiB // 256)  # far past the socket buffers
        put = await treq.put(
            f"http://127.0.0.1:{port}/big.bin", data=data, auth=("ann", "pw-123456")
        )
        assert put.code == 201, await put.text()
        client = await connect(reactor, port)
        token = base64.b64encode(b"ann:pw-123456")
        client.send(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n\r\n" % token)
        await client.until(b"\r\n\r\n")  # streaming; the client reads no more
        client.transport.pauseProducing()
        globalLogPublisher.addObserver(events.append)
        await fe.stopService()
        client.transport.resumeProducing()
        await client.closed  # cut short: the download ended with the front end
    finally:
        globalLogPublisher.removeObserver(events.append)
        if fe.running:
            await fe.stopService()
        for server in servers:
            await server.stop()
    loud = [
        formatEvent(e)
        for e in events
        if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
    ]
    assert loud == []
    assert not any("fails over" in formatEvent(e) for e in events)
