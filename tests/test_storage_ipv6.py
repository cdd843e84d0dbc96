"""A storage server listening on an IPv6 address is reached through the
endpoint string ``client_endpoint`` makes of its port (what wslocal and
the tests register in the catalog): ``:`` separates an endpoint string's
arguments, so the address's colons are escaped."""

from __future__ import annotations

import hashlib
import socket

import pytest_twisted
from twisted.internet import reactor

from tests.storage_procs import pattern, read_sha, write_blob
from tests.support import missing
from wsfront.config import endpoint_problem
from wsstorage.client import StorageClient
from wsstorage.service import start_storage_server

SECRET = b"ipv6-test-secret-0123456789abcde"


def require_ipv6_loopback() -> None:
    """Skip (fail under CI) where this machine cannot bind ``::1``."""
    if not socket.has_ipv6:
        missing("this Python has no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        missing(f"no IPv6 loopback: cannot bind ::1 ({e})")


@pytest_twisted.ensureDeferred
async def test_a_server_on_the_ipv6_loopback_is_reached_through_its_client_endpoint(tmp_path):
    require_ipv6_loopback()
    running = await start_storage_server(
        reactor, r"tcp6:0:interface=\:\:1", str(tmp_path / "data"), "s1", SECRET
    )
    try:
        endpoint = running.client_endpoint
        port = running.port.getHost().port
        assert endpoint == rf"tcp:\:\:1:{port}"
        assert endpoint_problem(endpoint, client=True) is None
        client = StorageClient(reactor, "s1", endpoint, SECRET, idle_timeout=10)
        try:
            data = pattern(300_000)
            info = await write_blob(client, "v6", data)
            assert info.size == len(data) and info.sealed
            assert await read_sha(client, "v6") == (hashlib.sha256(data).hexdigest(), len(data))
            peers = [conn.transport.getPeer() for conn in running.factory.connections]
            assert peers and all(p.host == "::1" for p in peers), peers
        finally:
            await client.close()
    finally:
        await running.stop()
