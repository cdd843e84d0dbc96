"""A storage server SIGKILLed mid-write at an exact byte keeps every committed blob.

The server runs as ``twistd -n wsstorage`` with the failpoint
``storage.write.bytes=kill@N``: it stores exactly N bytes received for
writes (counted over the whole process) and then kills itself.  After a
restart the committed blobs read back with their sha256 and the torn blob is
reported INCOMPLETE with no more durable bytes than it received.
"""

from __future__ import annotations

import hashlib
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.storage_procs import StorageProcess, pattern, read_sha, write_blob
from wsstorage.errors import BlobNotFound, NodeUnavailable
from wsstorage.records import INCOMPLETE

MiB = 1024 * 1024
COMMITTED = {"first": pattern(1 * MiB + 17, seed=1), "second": pattern(1 * MiB + MiB // 2, seed=2)}
BEFORE_TORN = sum(len(d) for d in COMMITTED.values())
TORN_FLUSHED = 400_000  # bytes of the torn blob made durable before the crash
TORN_RECEIVED = 900_001  # bytes of the torn blob stored when the failpoint fires
KILL_AT = BEFORE_TORN + TORN_RECEIVED


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_server_killed_mid_write_keeps_committed_blobs_and_reports_the_torn_one(
    tmp_path,
) -> None:
    fp_log = tmp_path / "failpoints.log"
    crashing = StorageProcess(
        tmp_path,
        env={
            "WSFS_FAILPOINTS": f"storage.write.bytes=kill@{KILL_AT}",
            "WSFS_FAILPOINT_LOG": str(fp_log),
        },
    ).start()
    try:
        client = crashing.client(reactor, idle_timeout=10)
        for blob_id, data in COMMITTED.items():
            info = await write_blob(client, blob_id, data)
            assert info.sealed
        torn = pattern(3 * MiB, seed=3)
        w = await client.write("torn", 1, 0, {"inode": 7})
        failed = w.when_failed()
        w.write(torn[:TORN_FLUSHED])
        assert await w.flush() == TORN_FLUSHED
        for i in range(TORN_FLUSHED, len(torn), 65536):
            w.write(torn[i : i + 65536])
        with pytest.raises(NodeUnavailable):
            await failed
        assert crashing.wait_exit() == -signal.SIGKILL
        assert f"failpoint storage.write.bytes fired count={KILL_AT} " in fp_log.read_text()
        await client.close()
    finally:
        crashing.stop()

    restarted = StorageProcess(tmp_path).start()
    try:
        client = restarted.client(reactor)
        for blob_id, data in COMMITTED.items():
            sha, n = await read_sha(client, blob_id)
            assert (sha, n) == (hashlib.sha256(data).hexdigest(), len(data))
            assert (await client.stat(blob_id)).sealed
        info = await client.stat("torn")
        assert info.state == INCOMPLETE
        assert TORN_FLUSHED <= info.durable <= TORN_RECEIVED
        assert info.meta == {"inode": 7}
        sha, n = await read_sha(client, "torn", 0, info.durable)
        assert sha == hashlib.sha256(torn[: info.durable]).hexdigest()
        await client.close()
    finally:
        restarted.stop()


PUT_FIRST = pattern(200_000, seed=4)
PUT_TORN = pattern(100_000, seed=5)
PUT_KILL_AT = len(PUT_FIRST) + 60_001  # inside the second put's bytes


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_server_killed_mid_put_keeps_the_sealed_put_and_loses_the_torn_one(
    tmp_path,
) -> None:
    """``storage.write.bytes`` counts a put's bytes too and fires inside
    one at the exact byte: the put before it stays sealed, and the torn one,
    never reported durable, is gone after the restart."""
    fp_log = tmp_path / "failpoints.log"
    crashing = StorageProcess(
        tmp_path,
        env={
            "WSFS_FAILPOINTS": f"storage.write.bytes=kill@{PUT_KILL_AT}",
            "WSFS_FAILPOINT_LOG": str(fp_log),
        },
    ).start()
    try:
        client = crashing.client(reactor, idle_timeout=10)
        assert (await client.put("first", 1, {"inode": 1}, PUT_FIRST)).sealed
        with pytest.raises(NodeUnavailable):
            await client.put("torn", 1, {"inode": 2}, PUT_TORN)
        assert crashing.wait_exit() == -signal.SIGKILL
        assert f"failpoint storage.write.bytes fired count={PUT_KILL_AT} " in fp_log.read_text()
        await client.close()
    finally:
        crashing.stop()

    restarted = StorageProcess(tmp_path).start()
    try:
        client = restarted.client(reactor)
        sha, n = await read_sha(client, "first")
        assert (sha, n) == (hashlib.sha256(PUT_FIRST).hexdigest(), len(PUT_FIRST))
        with pytest.raises(BlobNotFound):
            await client.stat("torn")
        await client.close()
    finally:
        restarted.stop()
