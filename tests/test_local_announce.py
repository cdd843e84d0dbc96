"""The URLs wslocal prints when it is ready are URLs clients can use: an
IPv6 address in brackets (``ftp://demo:pw@[::1]:PORT/``), with the login."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest_twisted
from twisted.application import service
from twisted.internet import reactor

from tests.test_storage_ipv6 import require_ipv6_loopback
from wsfront.local import LocalClusterService, LocalOptions


class Lines:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_the_ready_lines_give_ipv6_addresses_in_brackets():
    require_ipv6_loopback()
    data = Path(tempfile.mkdtemp(prefix="wsl-"))  # short: a UNIX socket path
    opts = LocalOptions()
    opts.parseOptions(
        ["--data", str(data), "--ftp", r"tcp6:0:interface=\:\:1",
         "--http", r"tcp6:0:interface=\:\:1"]
    )  # fmt: skip
    out = Lines()
    cluster = LocalClusterService(reactor, opts, out=out)
    service.MultiService.startService(cluster)
    try:
        await cluster._start()
        name, password = cluster.login
        urls = {
            line.split()[0].rstrip(":"): urlsplit(line.split()[1])
            for line in out.text.splitlines()
            if line.strip().startswith(("FTP:", "HTTP:"))
        }
        assert set(urls) == {"FTP", "HTTP"}, out.text
        for proto, url in urls.items():
            port = cluster.frontend.address(proto.lower()).port
            assert (url.hostname, url.port) == ("::1", port), url
            assert (url.username, url.password) == (name, password)
    finally:
        await cluster.stopService()
