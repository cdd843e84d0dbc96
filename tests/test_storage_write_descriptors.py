"""A blob nobody writes holds no descriptor on its storage server.

An upload whose client went away stays pending for a day, resumable from
its durable offset, and its blob stays unsealed all that time.  The store
kept the blob's ``.data`` and ``.sums`` open from its writer's first write
until a seal or delete, so every interrupted upload held two descriptors
per replica until it expired.  Now the files are closed as soon as no
writer has them: the stream ended (abort, or its connection lost), or a
fence took the blob from its writer; a writer that resumes the blob opens
them again.  Checked on a real ``twistd -n wsstorage`` child over TCP
(its ``/proc/PID/fd``), and on a BlobStore in this process.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.storage_procs import StorageProcess, pattern, read_sha
from wsstorage.blobstore import BlobStore
from wsstorage.errors import StaleEpoch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

#: Streams ended per test: each held two descriptors before.
N = 12


def blob_files(pid: int | str, data) -> list[str]:
    """The blob files under ``data`` that process ``pid`` holds open (not
    the store's lock file)."""
    fd_dir = f"/proc/{pid}/fd"
    found = []
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith(os.path.join(str(data), "blobs") + os.sep):
            found.append(target)
    return found


async def wait_no_blob_files(pid: int, data, timeout: float = 30.0) -> None:
    """Wait, the reactor running, until ``pid`` holds no file under
    ``data`` (a lost connection reaches the server's reactor when it gets
    there: nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while blob_files(pid, data):
        if time.monotonic() > deadline:
            left = blob_files(pid, data)
            raise AssertionError(f"{len(left)} blob files still open, e.g. {left[:4]}")
        await deferLater(reactor, 0.02, lambda: None)  # polling, not a synchronisation


@pytest.fixture
def storage(tmp_path):
    server = StorageProcess(tmp_path).start()
    client = server.client(reactor, idle_timeout=30)
    yield server, client
    pytest_twisted.blockon(client.close())
    server.stop()


async def resume_and_check(client, blob_id: str, epoch: int, durable: int, data: bytes) -> None:
    """Write the rest of ``data`` from ``durable`` and seal; the blob reads
    back whole."""
    w = await client.write(blob_id, epoch, durable, {"resumed": True})
    w.write(data[durable:])
    info = await w.commit()
    assert (info.size, info.sealed) == (len(data), True)
    sha, n = await read_sha(client, blob_id)
    assert (sha, n) == (hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_an_aborted_stream_leaves_its_blob_files_closed_and_resumable(storage) -> None:
    server, client = storage
    pid = server.proc.pid
    blobs = {f"aborted{i}": pattern(100_000 + i, seed=i) for i in range(N)}
    durable = {}
    for blob_id, data in blobs.items():
        w = await client.write(blob_id, 1, 0, {"inode": 1})
        w.write(data[: len(data) // 2])
        durable[blob_id] = await w.flush()
        await w.abort()
        # The server closes the handle before it answers the abort.
        assert blob_files(pid, server.data) == [], blob_id
    for blob_id, data in blobs.items():
        assert durable[blob_id] == len(data) // 2
        await resume_and_check(client, blob_id, 1, durable[blob_id], data)
    # The last read's handle is closed by the server after its last bytes
    # went out: the client cannot see when, so this one is waited for.
    await wait_no_blob_files(pid, server.data)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_lost_writer_connection_closes_its_blob_files(storage) -> None:
    server, client = storage
    pid = server.proc.pid
    blobs = {f"lost{i}": pattern(70_000 + i, seed=50 + i) for i in range(N)}
    durable = {}
    for blob_id, data in blobs.items():
        w = await client.write(blob_id, 1, 0, {"inode": 2})
        w.write(data[: len(data) // 3])
        durable[blob_id] = await w.flush()
        w.conn.transport.abortConnection()  # the front end died
    await wait_no_blob_files(pid, server.data)
    for blob_id, data in blobs.items():
        await resume_and_check(client, blob_id, 1, durable[blob_id], data)
    # The last read's handle is closed by the server after its last bytes
    # went out: the client cannot see when, so this one is waited for.
    await wait_no_blob_files(pid, server.data)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_fence_leaves_the_blob_files_closed(storage) -> None:
    """A takeover fences the blob: its old writer (here still connected)
    is refused from then on, and the files are closed though that writer
    never ended its stream."""
    server, client = storage
    pid = server.proc.pid
    data = pattern(90_000, seed=99)
    w = await client.write("fenced", 1, 0, {"inode": 3})
    w.write(data[:40_000])
    assert await w.flush() == 40_000
    info = await client.fence("fenced", 2, 30_000)
    assert (info.size, info.epoch) == (30_000, 2)
    assert blob_files(pid, server.data) == []
    w.write(data[40_000:50_000])
    with pytest.raises(StaleEpoch):
        await w.flush()
    await w.abort()
    assert blob_files(pid, server.data) == []
    await resume_and_check(client, "fenced", 2, 30_000, data)


def test_a_superseded_handle_closing_leaves_the_new_writers_files(tmp_path) -> None:
    """Only the blob's current writer closes its files: an older handle
    closed late (its stream's connection lost after a takeover on the same
    server) must not take them from the new one."""
    store = BlobStore.open(str(tmp_path / "d"))
    try:
        data = pattern(200_000, seed=7)
        old = store.open_write("b" + "0" * 32, 1, 0, {})
        old.write(data[:50_000])
        old.sync()
        new = store.open_write("b" + "0" * 32, 2, 50_000, {})
        old.close()
        assert blob_files("self", tmp_path / "d"), "the new writer's files stay open"
        new.write(data[50_000:])
        info = new.seal()
        assert info.size == len(data)
        new.close()
        assert blob_files("self", tmp_path / "d") == []
        handle = store.open_read("b" + "0" * 32, 0, None)
        try:
            assert handle.read(len(data)) == data
        finally:
            handle.close()
    finally:
        store.close()


def test_a_closed_writer_leaves_nothing_open_and_the_next_one_syncs_its_bytes(tmp_path) -> None:
    """Bytes written but not synced when a writer lets go stay in the
    file (their checksums in memory); the next writer reopens the files
    and makes them durable."""
    store = BlobStore.open(str(tmp_path / "d"))
    try:
        blob_id = "b" + "1" * 32
        w = store.open_write(blob_id, 1, 0, {})
        w.write(b"a" * 70_000)
        assert w.sync() == 70_000
        w.write(b"b" * 5_000)  # not synced
        w.close()
        assert blob_files("self", tmp_path / "d") == []
        again = store.open_write(blob_id, 1, 75_000, {})
        assert again.sync() == 75_000
        again.write(b"c" * 10)
        info = again.seal()
        assert info.size == 75_010
        assert blob_files("self", tmp_path / "d") == []
        handle = store.open_read(blob_id, 0, None)
        try:
            assert handle.read(75_010) == b"a" * 70_000 + b"b" * 5_000 + b"c" * 10
        finally:
            handle.close()
    finally:
        store.close()


def test_a_close_does_not_wait_for_a_busy_blob_lock_and_still_lets_go(tmp_path) -> None:
    """The storage server closes a writer's handle in its reactor thread;
    a fence or seal in a thread may hold the blob's lock over its fsyncs.
    The close returns at once and the files are let go of once the lock
    is free."""
    import threading

    store = BlobStore.open(str(tmp_path / "d"))
    try:
        w = store.open_write("b" + "2" * 32, 1, 0, {})
        w.write(b"x" * 10_000)
        lock = w._blob.lock
        held, release = threading.Event(), threading.Event()

        def holder() -> None:
            with lock:
                held.set()
                release.wait(30)

        t = threading.Thread(target=holder)
        t.start()
        try:
            assert held.wait(30)
            w.close()  # would block here until ``release`` on the old code
            assert blob_files("self", tmp_path / "d"), "the holder still has them"
        finally:
            release.set()
            t.join()
        deadline = time.monotonic() + 30
        while blob_files("self", tmp_path / "d") and time.monotonic() < deadline:
            time.sleep(0.01)  # polling interval for the closer thread
        assert blob_files("self", tmp_path / "d") == []
    finally:
        store.close()
