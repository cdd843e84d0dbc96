"""wslocal's front end reads its own storage servers in process.

``LocalClusterService`` runs here on the test's reactor; curl uploads and
downloads over HTTP.  The upload goes to the storage servers over the wire
as in any deployment; the download is read straight from their stores
(``wsstorage.inprocess``): no storage server sends a read stream.
"""

from __future__ import annotations

import gc
import hashlib
import os

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.support import require_tool
from wsfront import localtap
from wsfront.local import LocalClusterService, LocalOptions
from wsstorage import server
from wsstorage.inprocess import InProcessClient


class _Quiet:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


async def curl(*args: str) -> bytes:
    out, err, code = await getProcessOutputAndValue(
        require_tool("curl"), ["-sS", "--fail", *args], env=os.environ
    )
    assert code == 0, err
    return out


@pytest_twisted.ensureDeferred
async def test_wslocal_downloads_are_read_from_its_stores_in_process(tmp_path, monkeypatch):
    options = LocalOptions()
    options.parseOptions(
        ["--data", str(tmp_path / "data"), "--ftp", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1"]
    )  # fmt: skip
    cluster = LocalClusterService(reactor, options, out=_Quiet())
    cluster.startService()
    try:
        await cluster.ready
        pool = cluster.frontend.pool
        assert all(isinstance(pool.client(n), InProcessClient) for n in pool.names())
        streams: list[int] = []
        init = server._ReadStream.__init__

        def counting(self, proto, rid, handle, length):
            streams.append(length)
            init(self, proto, rid, handle, length)

        monkeypatch.setattr(server._ReadStream, "__init__", counting)
        payload = os.urandom(5 * 1024 * 1024 + 321)
        src = tmp_path / "src.bin"
        src.write_bytes(payload)
        name, password = cluster.login
        address = cluster.frontend.address("http")
        url = f"http://{name}:{password}@127.0.0.1:{address.port}/f.bin"
        await curl("-T", str(src), url)
        got = await curl(url)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        part = await curl("-r", "100000-2200000", url)
        assert part == payload[100000:2200001]
        assert streams == []
    finally:
        await cluster.stopService()


@pytest_twisted.ensureDeferred
async def test_the_wslocal_tap_freezes_the_objects_alive_once_it_has_started(tmp_path):
    """``twistd wslocal``'s service (``wsfront.localtap``) moves what is
    alive after its start to the collector's permanent generation; the
    test gives them back (``gc.unfreeze``) so this process collects as
    before."""
    options = localtap.Options()
    options.parseOptions(
        ["--data", str(tmp_path / "data"), "--ftp", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1"]
    )  # fmt: skip
    before = gc.get_freeze_count()
    cluster = localtap.makeService(options)
    cluster.out = _Quiet()
    cluster.startService()
    try:
        assert await cluster.ready is cluster
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
        await cluster.stopService()


def test_wslocal_max_pending_uploads_per_user_is_checked():
    import pytest
    from twisted.python import usage

    for bad in ("0", "x"):
        with pytest.raises(usage.UsageError, match="--max-pending-uploads-per-user must be"):
            LocalOptions().parseOptions(["--max-pending-uploads-per-user", bad])


@pytest_twisted.ensureDeferred
async def test_wslocal_passes_max_pending_uploads_per_user_to_its_front_end(tmp_path):
    options = LocalOptions()
    options.parseOptions(
        ["--data", str(tmp_path / "data"), "--ftp", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1", "--nodes", "1", "--replicas", "1",
         "--max-pending-uploads-per-user", "3"]
    )  # fmt: skip
    cluster = LocalClusterService(reactor, options, out=_Quiet())
    cluster.startService()
    try:
        await cluster.ready
        transfers = cluster.frontend.transfers
        assert transfers.settings.max_pending_uploads_per_user == 3
        assert transfers.pending_per_user.limit == 3
    finally:
        await cluster.stopService()
