"""wslocal's stores refuse a new write stream on a full disk when it is
opened (``wsstorage.inprocess_write``), before the upload's session
exists: a PUT that announces a total past ``put_limit`` (Content-Range
``bytes 0-.../L``) opens its streams at its start.  Every refusal being
for room, that is StorageFull (507), not "storage unavailable, try again
later" (503); a new upload is discarded, not left interrupted at 0, and a
resume keeps its upload as it was.

The stores' folder is a tmpfs filled behind the front end's back (its
health probes stopped), the catalog on another disk; curl is the client.
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.catalog_outage import fill, tmpfs
from tests.support import require_tool
from tests.test_local_sockets import options, started
from wsfront.catalog.records import INTERRUPTED

KiB = 1 << 10
MiB = 1 << 20


async def put(cluster, tmp_path, path: str, data: bytes, content_range: str) -> str:
    """curl -T of ``data`` with that Content-Range; the status code."""
    src = tmp_path / "body.bin"
    src.write_bytes(data)
    url = f"http://127.0.0.1:{cluster.frontend.address('http').port}{path}"
    out, err, code = await getProcessOutputAndValue(
        require_tool("curl"),
        ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", ":".join(cluster.login),
         "-T", str(src), "-H", f"Content-Range: {content_range}", url],
        env=os.environ,
    )  # fmt: skip
    assert code == 0, err
    return out.decode()


def fill_behind_its_back(cluster, disk) -> None:
    """Fill the stores' disk but 32 KiB, below their reserve (1 %): they
    refuse new blobs, while a fence still has its few blocks."""
    cluster.frontend.pool.stop()
    filler = fill(disk)
    with open(filler, "r+b") as f:
        f.truncate(os.path.getsize(filler) - 32 * KiB)


@pytest_twisted.ensureDeferred
async def test_a_new_put_refused_at_its_streams_open_is_507_and_leaves_nothing(tmp_path):
    with tmpfs(tmp_path / "data" / "storage", "32m") as disk:
        cluster = await started(options(tmp_path / "data"))
        try:
            fill_behind_its_back(cluster, disk)
            code = await put(
                cluster, tmp_path, "/new.bin", os.urandom(MiB), f"bytes 0-{MiB - 1}/{MiB}"
            )
            assert code == "507"
            assert await cluster.frontend.catalog.list_uploads() == []
        finally:
            await cluster.stopService()


@pytest_twisted.ensureDeferred
async def test_a_resume_refused_at_its_streams_open_is_507_and_keeps_its_upload(tmp_path):
    with tmpfs(tmp_path / "data" / "storage", "32m") as disk:
        cluster = await started(options(tmp_path / "data"))
        try:
            first = 32 * KiB
            code = await put(
                cluster, tmp_path, "/part.bin", os.urandom(first), f"bytes 0-{first - 1}/{MiB}"
            )
            assert code == "202"
            [before] = await cluster.frontend.catalog.list_uploads()
            fill_behind_its_back(cluster, disk)
            rest = os.urandom(MiB - first)
            code = await put(cluster, tmp_path, "/part.bin", rest, f"bytes {first}-{MiB - 1}/*")
            assert code == "507"
            [after] = await cluster.frontend.catalog.list_uploads()
            assert (after.upload_id, after.state, after.checkpoint) == (
                before.upload_id, INTERRUPTED, first,
            )  # fmt: skip
        finally:
            await cluster.stopService()
