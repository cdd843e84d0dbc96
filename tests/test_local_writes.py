"""wslocal's uploads go straight into its stores (``wsstorage.inprocess_write``):
no storage server of the process opens a write stream on a socket, and
the file is whole, on both replicas, sealed."""

from __future__ import annotations

import hashlib
import os

import pytest_twisted

from tests.test_local_sockets import curl, options, started
from wsfront.local import InProcessWriteClient
from wsstorage import server


@pytest_twisted.ensureDeferred
async def test_wslocal_uploads_are_written_to_its_stores_in_process(tmp_path, monkeypatch):
    opened: list[str] = []
    init = server._WriteStream.__init__

    def counting(self, rid, blob_id, handle):
        opened.append(blob_id)
        init(self, rid, blob_id, handle)

    monkeypatch.setattr(server._WriteStream, "__init__", counting)
    cluster = await started(options(tmp_path / "data", "--storage-sockets", "tcp"))
    try:
        pool = cluster.frontend.pool
        assert all(isinstance(pool.client(n), InProcessWriteClient) for n in pool.names())
        login = ":".join(cluster.login)
        url = f"http://127.0.0.1:{cluster.frontend.address('http').port}/big.bin"
        payload = os.urandom(5 << 20)
        (tmp_path / "big.bin").write_bytes(payload)
        await curl("-u", login, "-T", str(tmp_path / "big.bin"), url)
        assert opened == [], "a write stream went over a socket"
        sealed = []
        for store in cluster.stores.values():
            sealed += [b for b in store.list_blobs() if b.size == len(payload)]
        assert len(sealed) == 2 and all(b.state == "sealed" for b in sealed), sealed
        got = await curl("-u", login, url)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        factories = cluster.factories.values()
        assert not any(f.in_process_reads or f.in_process_writes for f in factories)
    finally:
        await cluster.stopService()
