"""Drop-behind: the store drops the page cache of data it has synced, and only that.

The advice is recorded through ``RecordingFileSystem`` (its place among the
syncs and its range); one test checks real page residency with ``mincore``
so the advice is seen to free the synced pages and keep the unsynced ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import pytest

from tests.storage_loopback import Rig
from tests.test_storage_server import read_all, write_blob
from wsstorage.blobstore import BlobStore
from wsstorage.fsops import OsFileSystem
from wsstorage.fsshims import RecordingFileSystem

MIB = 1 << 20
#: The least run these tests turn drop-behind on with (off by default).
RUN = MIB
PAGE = mmap.PAGESIZE


def data(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (n // 256) + b"z" * (n % 256)


def open_store(tmp_path, **kw) -> tuple[BlobStore, RecordingFileSystem]:
    kw.setdefault("drop_behind", RUN)
    fs = RecordingFileSystem()
    return BlobStore.open(tmp_path / "d", fs=fs, **kw), fs


def read_blob(store: BlobStore, blob_id: str) -> bytes:
    handle = store.open_read(blob_id, 0, None)
    try:
        out = []
        while piece := handle.read(MIB):
            out.append(piece)
        return b"".join(out)
    finally:
        handle.close()


def test_sync_drops_the_cache_of_synced_whole_pages_only(tmp_path) -> None:
    store, fs = open_store(tmp_path)
    first, second = data(3 * MIB + 100), data(2 * MIB, seed=1)
    w = store.open_write("b", 1, 0, {})
    w.write(first)
    assert fs.drops == []  # written, not synced: nothing advised
    assert w.sync() == len(first)
    # Up to the last whole synced page: the next one may take new bytes.
    assert fs.drops == [("b.data", 0, 3 * MIB)]
    data_calls = [c for c in fs.calls if c[1] in ("b.data", "b.sums")]
    drop_at = data_calls.index(("drop", "b.data"))
    assert data_calls.index(("fdatasync", "b.data")) < drop_at
    assert data_calls.index(("fdatasync", "b.sums")) < drop_at
    w.write(second)
    assert len(fs.drops) == 1  # the unsynced 2 MiB are left alone
    w.sync()
    end = (len(first) + len(second)) // PAGE * PAGE
    assert fs.drops[1:] == [("b.data", 3 * MIB, end - 3 * MIB)]
    info = w.seal()
    assert fs.drops[2:] == [("b.data", end, info.size - end)]  # sealed: the rest
    assert read_blob(store, "b") == first + second
    store.close()


def test_no_advice_ever_covers_bytes_not_yet_synced(tmp_path) -> None:
    store, fs = open_store(tmp_path)
    w = store.open_write("b", 1, 0, {})
    durable = 0
    for k in range(6):
        w.write(data(700 * 1024 + k, seed=k))
        if k % 2:
            durable = w.sync()
        for _, offset, length in fs.drops:
            assert offset + length <= durable
    w.write(data(5 * MIB))
    w.close()  # abandoned unsynced: nothing more advised
    assert sum(length for _, _, length in fs.drops) <= durable
    assert fs.drops, "the synced megabytes were advised"
    store.close()


def test_a_run_below_the_threshold_waits_for_more(tmp_path) -> None:
    store, fs = open_store(tmp_path, drop_behind=2 * MIB)
    w = store.open_write("b", 1, 0, {})
    w.write(data(MIB))
    w.sync()
    assert fs.drops == []
    w.write(data(MIB + 10))
    w.sync()
    assert fs.drops == [("b.data", 0, 2 * MIB)]
    store.close()


def test_a_blob_smaller_than_the_threshold_keeps_its_cache(tmp_path) -> None:
    store, fs = open_store(tmp_path)
    for blob_id, n in (("inline", 200 * 1024), ("synced", RUN - 1)):
        w = store.open_write(blob_id, 1, 0, {})
        w.write(data(n))
        if blob_id == "synced":
            w.sync()
        w.seal()
    assert fs.drops == []
    assert read_blob(store, "synced") == data(RUN - 1)
    store.close()


def test_a_blob_written_and_sealed_at_once_drops_it_all_at_seal(tmp_path) -> None:
    store, fs = open_store(tmp_path)
    body = data(2 * MIB + 5)
    w = store.open_write("b", 1, 0, {})
    w.write(body)
    w.seal()
    assert fs.drops == [("b.data", 0, len(body))]
    assert fs.calls.index(("fdatasync", "b.data")) < fs.calls.index(("drop", "b.data"))
    assert fs.calls.index(("rename", "b.meta")) < fs.calls.index(("drop", "b.data"))
    assert read_blob(store, "b") == body
    store.close()


def test_drop_behind_off_gives_no_advice(tmp_path) -> None:
    store, fs = open_store(tmp_path, drop_behind=0)
    w = store.open_write("b", 1, 0, {})
    w.write(data(3 * MIB))
    w.sync()
    w.write(data(3 * MIB))
    w.seal()
    assert fs.drops == [] and ("drop", "b.data") not in fs.calls
    store.close()


def test_negative_drop_behind_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError):
        BlobStore.open(tmp_path / "d", drop_behind=-1)
    BlobStore.open(tmp_path / "d").close()  # the failed open released the lock


def test_truncate_below_the_dropped_range_drops_the_new_bytes_again(tmp_path) -> None:
    store, fs = open_store(tmp_path)
    w = store.open_write("b", 1, 0, {})
    w.write(data(3 * MIB))
    w.sync()
    w.close()
    w = store.open_write("b", 2, MIB, {})  # cut to 1 MiB, then append
    w.write(data(2 * MIB, seed=3))
    w.sync()
    assert fs.drops[1:] == [("b.data", MIB, 2 * MIB)]
    w.seal()
    assert read_blob(store, "b") == data(3 * MIB)[:MIB] + data(2 * MIB, seed=3)
    store.close()


def test_storage_server_stream_flush_commit_and_copy_drop_behind(tmp_path) -> None:
    """Through the server: a write stream's checkpoint and commit, a put,
    and a repair copy from a peer all take the same path."""
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs, drop_behind=RUN)
    rig = Rig(store=store)
    body = data(4 * MIB + 3)
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    w.write(body[: 3 * MIB])
    rig.result(w.flush())
    assert fs.drops == [("b1.data", 0, 3 * MIB)]
    w.write(body[3 * MIB :])
    rig.result(w.commit())
    assert fs.drops[1:] == [("b1.data", 3 * MIB, MIB + 3)]
    assert read_all(rig, "b1") == body

    peer = Rig()
    write_blob(peer, "b2", body, epoch=2)
    rig.factory._peer_client = lambda endpoint: peer.client
    d = rig.client.copy_from("b2", "tcp:127.0.0.1:1")
    for _ in range(200):
        rig.flush()
        peer.flush()
    rig.result(d)
    assert [(offset, length) for name, offset, length in fs.drops if name == "b2.data"] == [
        (0, len(body))
    ]
    assert read_all(rig, "b2") == body
    store.close()


def _resident_pages(path: str) -> list[bool]:
    """Which pages of ``path`` are in the page cache (``mincore`` of a
    shared read-only mapping, which faults nothing in)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    vec = (ctypes.c_ubyte * -(-size // PAGE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            pytest.skip(f"mmap failed: {os.strerror(ctypes.get_errno())}")
        try:
            if libc.mincore(addr, size, vec) != 0:
                pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return [bool(v & 1) for v in vec]


def advice_frees_pages_here(directory) -> bool:
    """Whether DONTNEED frees synced pages on this file system (not on tmpfs)."""
    path = os.path.join(directory, "probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, b"p" * 16 * PAGE, 0)
        os.fdatasync(fd)
        OsFileSystem().drop_cache(fd, 0, 0)
    finally:
        os.close(fd)
    gone = not any(_resident_pages(path))
    os.unlink(path)
    return gone


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise")
def test_synced_pages_leave_the_page_cache_and_unsynced_ones_stay(tmp_path) -> None:
    if not advice_frees_pages_here(tmp_path):
        pytest.skip("this file system keeps pages despite DONTNEED (tmpfs?)")
    store = BlobStore.open(tmp_path / "d", drop_behind=RUN)
    w = store.open_write("b", 1, 0, {})
    w.write(data(2 * MIB))
    w.sync()
    w.write(data(MIB, seed=2))  # dirty: must stay cached
    path = store._blob("b").paths.data
    resident = _resident_pages(path)
    synced_pages = 2 * MIB // PAGE
    assert not any(resident[:synced_pages])
    assert all(resident[synced_pages:])
    w.seal()
    assert not any(_resident_pages(path))
    assert read_blob(store, "b") == data(2 * MIB) + data(MIB, seed=2)
    store.close()
