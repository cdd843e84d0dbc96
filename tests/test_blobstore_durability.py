"""The blob store on a bad day: fsync order, crashes, torn tails, damaged
blocks, a full disk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.support import python_env
from tests.test_blobstore import BLOCK, fanned_out, gated_sync, pattern, read_all, write_all
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import INLINE_SUMS_MAX, BlobPaths, FormatError
from wsstorage.errors import (
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    DiskFull,
    InvalidOffset,
    StaleEpoch,
)
from wsstorage.fsops import OsFileSystem
from wsstorage.fsshims import FullDiskFileSystem, GatedFsyncFileSystem, RecordingFileSystem
from wsstorage.records import INCOMPLETE, OPEN, SEALED


def paths(store: BlobStore, blob_id: str) -> BlobPaths:
    return BlobPaths.of(store.root, blob_id)


def reopen(store: BlobStore, **kw) -> BlobStore:
    store.close()
    return fanned_out(BlobStore.open(store.root, **kw))


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


SYNCS = ("fsync", "fdatasync", "fsync_dir")


def syncs(fs: RecordingFileSystem) -> list[tuple[str, str]]:
    return [c for c in fs.calls if c[0] in SYNCS]


def same_fan_out(store: BlobStore, blob_id: str) -> str:
    """Another blob id in the same fan-out directory as ``blob_id``."""
    directory = paths(store, blob_id).directory
    return next(f"n{i}" for i in range(100_000) if paths(store, f"n{i}").directory == directory)


def test_seal_fsyncs_data_then_checksums_then_record_then_directory(tmp_path):
    """A blob synced before (it has a ``.sums`` file) seals in this order."""
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    handle = write_all(store, "b", pattern(BLOCK + 1))
    handle.sync()
    handle.write(pattern(2 * BLOCK, seed=1))
    directory = os.path.basename(paths(store, "b").directory)
    fs.calls.clear()
    handle.seal()
    calls = fs.calls

    def last(op, name):
        return max(i for i, c in enumerate(calls) if c == (op, name))

    data_synced = last("fdatasync", "b.data")
    sums_synced = last("fdatasync", "b.sums")
    record_written = calls.index(("write", "b.meta.tmp"))
    record_synced = calls.index(("fsync", "b.meta.tmp"))
    renamed = calls.index(("rename", "b.meta"))
    dir_synced = calls.index(("fsync_dir", directory))
    assert data_synced < sums_synced < record_written < record_synced < renamed < dir_synced
    assert calls[-1] == ("fsync_dir", directory)
    store.close()


def test_create_write_seal_of_a_small_blob_costs_three_syncs(tmp_path):
    """Creating syncs nothing; the seal syncs data, record and directory
    once each, in that order, and the checksums go in the sealed record (no
    ``.sums`` file).  No fsync of ``blobs/``: opening the store made every
    fan-out directory durable."""
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    directory = os.path.basename(paths(store, "b").directory)
    fs.calls.clear()
    handle = store.open_write("b", 1, 0, {"inode": 7})
    handle.write(pattern(4096))
    assert syncs(fs) == []
    handle.seal()
    # The data and the record's temp file are synced at the same time,
    # both before the rename; the directory last.
    assert sorted(syncs(fs)[:2]) == [("fdatasync", "b.data"), ("fsync", "b.meta.tmp")]
    assert syncs(fs)[2:] == [("fsync_dir", directory)]
    renamed = fs.calls.index(("rename", "b.meta"))
    assert fs.calls.index(("write", "b.meta.tmp")) < fs.calls.index(("fsync", "b.meta.tmp"))
    assert fs.calls.index(("fdatasync", "b.data")) < renamed
    assert fs.calls.index(("fsync", "b.meta.tmp")) < renamed
    assert not os.path.exists(paths(store, "b").sums)
    other = same_fan_out(store, "b")
    fs.calls.clear()
    handle = store.open_write(other, 1, 0, {"inode": 8})
    handle.write(pattern(4096, seed=1))
    handle.seal()
    assert sorted(syncs(fs)) == [
        ("fdatasync", f"{other}.data"),
        ("fsync", f"{other}.meta.tmp"),
        ("fsync_dir", directory),
    ]
    assert syncs(fs)[-1] == ("fsync_dir", directory)
    store = reopen(store)
    assert read_all(store, "b") == pattern(4096)
    assert read_all(store, other) == pattern(4096, seed=1)
    store.close()


def test_opening_makes_every_fan_out_directory_and_fsyncs_blobs_once(tmp_path):
    """Once the store's fan-out thread is done, all 256 fan-out
    directories exist and ``blobs/`` is fsync'd after they were made, so
    no blob's first record fsyncs ``blobs/``; one an operator removed is
    made again and its entry made durable again (tests/test_blobstore_fan_out.py
    has the thread's races)."""
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    blobs = tmp_path / "d" / "blobs"
    assert sorted(os.listdir(blobs)) == [f"{i:02x}" for i in range(256)]
    assert fs.calls[-1] == ("fsync_dir", "blobs")
    directory = paths(store, "b").directory
    store.close()
    os.rmdir(directory)
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    made = fs.calls.index(("mkdir", os.path.basename(directory)))
    assert ("fsync_dir", "blobs") in fs.calls[made:]
    os.rmdir(directory)  # removed while the store runs: made again, durable again
    fs.calls.clear()
    write_all(store, "b", pattern(100)).seal()
    assert ("fsync_dir", "blobs") in syncs(fs)
    store.close()


def test_sync_writes_checksums_only_after_data_is_fsynced(tmp_path):
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    directory = os.path.basename(paths(store, "b").directory)
    handle = write_all(store, "b", pattern(2 * BLOCK + 7))
    assert ("write", "b.sums") not in fs.calls
    fs.calls.clear()
    handle.sync()
    writes = [c for c in fs.calls if c[0] in (*SYNCS, "write")]
    # The first sync also gives the blob its record, so the length it
    # reports survives a crash.
    assert writes == [
        ("fdatasync", "b.data"),
        ("write", "b.sums"),  # three adjacent entries, one pwrite
        ("fdatasync", "b.sums"),
        ("write", "b.meta.tmp"),
        ("fsync", "b.meta.tmp"),
        ("fsync_dir", directory),
    ]
    handle.write(pattern(BLOCK, seed=1))
    fs.calls.clear()
    handle.sync()
    writes = [c for c in fs.calls if c[0] in (*SYNCS, "write")]
    assert writes == [("fdatasync", "b.data"), ("write", "b.sums"), ("fdatasync", "b.sums")]
    fs.calls.clear()
    handle.seal()  # every byte is durable already: only the sealed record
    assert syncs(fs) == [("fsync", "b.meta.tmp"), ("fsync_dir", directory)]
    store.close()


def test_blob_never_synced_vanishes_in_a_crash_and_a_synced_one_stays(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "fresh", pattern(BLOCK + 5))
    kept = write_all(store, "synced", pattern(2 * BLOCK, seed=2))
    assert kept.sync() == 2 * BLOCK
    kept.write(pattern(100, seed=3))
    assert store.stat("fresh").durable == 0
    assert [i.blob_id for i in store.list_blobs()] == ["synced", "fresh"]
    store = reopen(store)  # as after a crash: no record was ever written for "fresh"
    with pytest.raises(BlobNotFound):
        store.stat("fresh")
    assert not os.path.exists(paths(store, "fresh").data)
    assert not os.path.exists(paths(store, "fresh").sums)
    info = store.stat("synced")
    assert (info.state, info.durable, info.meta) == (INCOMPLETE, 2 * BLOCK, {"inode": 7})
    assert [i.blob_id for i in store.list_blobs()] == ["synced"]
    store.close()


def test_fence_of_a_blob_never_synced_makes_it_durable(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    handle = write_all(store, "b", pattern(3000))
    info = store.fence("b", 1, 2000)
    assert (info.size, info.durable, info.epoch) == (2000, 2000, 1)
    with pytest.raises(StaleEpoch):
        handle.write(b"late")
    store = reopen(store)
    info = store.stat("b")
    assert (info.state, info.size, info.durable) == (INCOMPLETE, 2000, 2000)
    assert read_all(store, "b") == pattern(2000)
    store.close()


def test_fence_of_an_empty_blob_never_synced_records_it(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    store.open_write("b", 1, 0, {})
    assert store.fence("b", 1, 0).durable == 0
    store = reopen(store)
    assert (store.stat("b").state, store.stat("b").size) == (INCOMPLETE, 0)
    store.close()


def test_fence_at_zero_of_an_absent_blob_records_it_so_older_writers_stay_refused(tmp_path):
    """A takeover fences a blob its old writer has not created yet: the
    blob is created empty at the fence's epoch, durably (the record and the
    names synced before the fence returns), so the old writer's put or
    write is refused even after a crash."""
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    fs.calls.clear()
    info = store.fence("b", 2, 0)
    assert (info.state, info.size, info.durable, info.epoch) == (OPEN, 0, 0, 2)
    assert fs.calls.index(("fsync", "b.meta.tmp")) < fs.calls.index(("rename", "b.meta"))
    assert syncs(fs)[-1][0] == "fsync_dir"
    with pytest.raises(BlobNotFound):
        store.fence("c", 2, 1)
    store = reopen(store)  # as after a crash: only what was synced is there
    info = store.stat("b")
    assert (info.state, info.size, info.epoch) == (INCOMPLETE, 0, 2)
    assert [i.blob_id for i in store.list_blobs()] == ["b"]
    with pytest.raises(StaleEpoch):
        store.open_write("b", 1, 0, {})
    handle = store.open_write("b", 2, 0, {"inode": 3})
    handle.write(b"new")
    assert (handle.seal().size, store.stat("b").meta) == (3, {"inode": 3})
    store.close()


def test_metadata_update_is_atomic_rename(tmp_path):
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    write_all(store, "b", pattern(10)).close()
    fs.calls.clear()
    store.fence("b", 9, 10)
    assert ("write", "b.meta") not in fs.calls
    assert fs.calls.index(("fsync", "b.meta.tmp")) < fs.calls.index(("rename", "b.meta"))
    store.close()


def test_unsynced_tail_is_reported_incomplete_after_restart(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(3 * BLOCK + 100)
    handle = write_all(store, "b", data[: BLOCK + 50])
    handle.sync()
    handle.write(data[BLOCK + 50 :])
    store = reopen(store)  # no sync: as after a crash that kept the page cache
    info = store.stat("b")
    assert (info.state, info.durable, info.size) == (INCOMPLETE, BLOCK + 50, len(data))
    assert read_all(store, "b", 0, BLOCK + 50) == data[: BLOCK + 50]
    with pytest.raises(ChecksumError):
        read_all(store, "b", BLOCK, 100)
    with pytest.raises(InvalidOffset):
        store.open_write("b", 1, BLOCK + 51, {})
    resumed = store.open_write("b", 1, BLOCK + 50, {})
    resumed.write(data[BLOCK + 50 :])
    assert resumed.seal().size == len(data)
    assert read_all(store, "b") == data
    store.close()


def test_torn_data_under_a_checksum_is_detected_at_restart(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(4 * BLOCK)
    write_all(store, "b", data).sync()
    store.close()
    flip_byte(paths(store, "b").data, 2 * BLOCK + 9)  # block 2 never reached the disk
    store = BlobStore.open(store.root)
    info = store.stat("b")
    assert (info.state, info.durable) == (INCOMPLETE, 2 * BLOCK)
    info = store.fence("b", 2, info.durable)
    assert (info.state, info.size, info.durable) == (OPEN, 2 * BLOCK, 2 * BLOCK)
    store = reopen(store)
    assert store.stat("b").durable == 2 * BLOCK
    assert read_all(store, "b") == data[: 2 * BLOCK]
    store.close()


def test_sealed_blob_survives_restart_intact(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(5 * BLOCK + 3)
    write_all(store, "b", data).seal()
    store = reopen(store)
    assert store.stat("b").state == SEALED
    assert read_all(store, "b") == data
    store.close()


def test_damaged_block_fails_read_with_checksum_error_after_good_bytes(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(6 * BLOCK)
    write_all(store, "b", data).seal()
    flip_byte(paths(store, "b").data, 3 * BLOCK + 77)
    reader = store.open_read("b", 10, None)
    assert reader.read(5 * BLOCK) == data[10 : 3 * BLOCK]
    with pytest.raises(ChecksumError):
        reader.read(10)
    with pytest.raises(ChecksumError):
        reader.read(10)
    reader.close()
    assert read_all(store, "b", 4 * BLOCK, BLOCK) == data[4 * BLOCK : 5 * BLOCK]
    store.close()


def test_damaged_checksum_file_fails_read(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    handle = write_all(store, "b", pattern(2 * BLOCK))
    handle.sync()  # its checksums go to .sums, not into the record
    handle.seal()
    flip_byte(paths(store, "b").sums, 8 + 6)
    with pytest.raises(ChecksumError):
        read_all(store, "b", BLOCK, 1)
    store.close()


def test_truncated_data_file_of_sealed_blob_fails_read(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(2 * BLOCK)).seal()
    os.truncate(paths(store, "b").data, BLOCK + 10)
    with pytest.raises(ChecksumError):
        read_all(store, "b")
    store.close()


def test_start_removes_temp_files_and_files_without_record(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "kept", pattern(10)).seal()
    store.close()
    orphan = paths(store, "orphan")
    os.makedirs(orphan.directory, exist_ok=True)
    for p in (orphan.data, orphan.sums, paths(store, "kept").meta + ".tmp"):
        with open(p, "wb") as f:
            f.write(b"junk")
    store = BlobStore.open(store.root)
    assert not os.path.exists(orphan.data)
    assert not os.path.exists(orphan.sums)
    assert not os.path.exists(paths(store, "kept").meta + ".tmp")
    assert [i.blob_id for i in store.list_blobs()] == ["kept"]
    store.close()


def test_list_blobs_reads_no_blob_data(tmp_path):
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    for i in range(5):
        write_all(store, f"b{i}", pattern(3 * BLOCK)).seal()
    fs.calls.clear()
    assert len(list(store.list_blobs())) == 5
    assert not [c for c in fs.calls if c[1].endswith((".data", ".sums"))]
    store.close()


def test_sigkill_mid_write_keeps_sealed_blobs_and_reports_torn_one(tmp_path):
    root = tmp_path / "d"
    script = textwrap.dedent(
        f"""
        import os, signal, hashlib
        from wsstorage.blobstore import BlobStore
        from tests.test_blobstore import pattern
        store = BlobStore.open({str(root)!r}, block_size={BLOCK})
        for i in range(3):
            h = store.open_write(f"sealed{{i}}", 1, 0, {{"i": i}})
            h.write(pattern(5 * {BLOCK} + i, seed=i))
            h.seal()
        h = store.open_write("torn", 1, 0, {{}})
        h.write(pattern(2 * {BLOCK} + 10))
        h.sync()
        h.write(pattern(3 * {BLOCK}, seed=9))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=python_env(), cwd=tmp_path)
    assert proc.returncode == -9
    store = BlobStore.open(root)
    for i in range(3):
        got = read_all(store, f"sealed{i}")
        want = pattern(5 * BLOCK + i, seed=i)
        assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    info = store.stat("torn")
    assert (info.state, info.durable) == (INCOMPLETE, 2 * BLOCK + 10)
    store.close()


def test_sigkill_before_the_first_sync_loses_only_the_blob_never_synced(tmp_path):
    root = tmp_path / "d"
    script = textwrap.dedent(
        f"""
        import os, signal
        from wsstorage.blobstore import BlobStore
        from tests.test_blobstore import pattern
        store = BlobStore.open({str(root)!r}, block_size={BLOCK})
        h = store.open_write("sealed", 1, 0, {{}})
        h.write(pattern(4096))
        h.seal()
        h = store.open_write("synced", 1, 0, {{"inode": 3}})
        h.write(pattern(3 * {BLOCK}, seed=1))
        h.sync()
        h.write(pattern(10, seed=2))
        store.open_write("fresh", 1, 0, {{}}).write(pattern(2 * {BLOCK}, seed=4))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=python_env(), cwd=tmp_path)
    assert proc.returncode == -9
    store = BlobStore.open(root)
    assert read_all(store, "sealed") == pattern(4096)
    info = store.stat("synced")
    assert (info.state, info.durable, info.meta) == (INCOMPLETE, 3 * BLOCK, {"inode": 3})
    with pytest.raises(BlobNotFound):
        store.stat("fresh")
    assert not os.path.exists(paths(store, "fresh").data)
    assert sorted(i.blob_id for i in store.list_blobs()) == ["sealed", "synced"]
    store.close()


def test_disk_full_during_write_leaves_blob_and_others_intact(tmp_path):
    fs = FullDiskFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    other = pattern(2 * BLOCK, seed=5)
    write_all(store, "other", other).seal()
    handle = write_all(store, "b", pattern(1000))
    fs.full, fs.allow = True, 300
    with pytest.raises(DiskFull):
        handle.write(pattern(5000, seed=1))
    assert handle.size == 1000
    assert os.path.getsize(paths(store, "b").data) == 1000
    fs.full = False
    handle.write(b"z" * 10)
    assert handle.seal().size == 1010
    assert read_all(store, "b") == pattern(1000) + b"z" * 10
    assert read_all(store, "other") == other
    store.close()


def test_disk_full_in_a_batch_of_pieces_accepts_none_of_them(tmp_path):
    """``write_pieces`` (one pwritev for the DATA frames of a socket read) is
    all or nothing like ``write``: a short write then ENOSPC leaves the size
    and the file as they were."""
    fs = FullDiskFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    handle = write_all(store, "b", pattern(1000))
    fs.full, fs.allow = True, 700
    with pytest.raises(DiskFull):
        handle.write_pieces([memoryview(pattern(500, seed=i)) for i in range(4)])
    assert handle.size == 1000
    assert os.path.getsize(paths(store, "b").data) == 1000
    fs.full = False
    pieces = [pattern(BLOCK // 3 + i, seed=i) for i in range(2000)]  # > IOV_MAX pieces
    handle.write_pieces([memoryview(p) for p in pieces])
    assert handle.seal().size == 1000 + sum(map(len, pieces))
    assert read_all(store, "b") == pattern(1000) + b"".join(pieces)
    store = reopen(store)
    assert read_all(store, "b") == pattern(1000) + b"".join(pieces)
    store.close()


class ShortWritesFileSystem(OsFileSystem):
    """Writes at most 1000 bytes per call, as a kernel may."""

    def pwritev(self, fd, buffers, offset):
        room, kept = 1000, []
        for b in buffers:
            if room <= 0:
                break
            kept.append(memoryview(b)[:room])
            room -= len(kept[-1])
        return super().pwritev(fd, kept, offset)


def test_pwritev_all_resumes_short_writes_mid_piece(tmp_path):
    fs = ShortWritesFileSystem()
    pieces = [pattern(n, seed=n) for n in (10, 999, 1, 2500, 0, 7)]
    fd = fs.open(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT)
    try:
        fs.pwritev_all(fd, pieces, 5)
    finally:
        fs.close(fd)
    assert (tmp_path / "f").read_bytes() == bytes(5) + b"".join(pieces)


def test_disk_full_while_sealing_keeps_blob_unsealed_and_retryable(tmp_path):
    fs = FullDiskFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    handle = write_all(store, "b", pattern(1000))
    handle.sync()
    fs.full = True
    with pytest.raises(DiskFull):
        handle.seal()
    assert store.stat("b").state == OPEN
    assert not os.path.exists(paths(store, "b").meta + ".tmp")
    fs.full = False
    assert handle.seal().state == SEALED
    store = reopen(store)
    assert read_all(store, "b") == pattern(1000)
    store.close()


def test_disk_full_before_the_first_record_leaves_no_blob(tmp_path):
    """Creating writes no byte (the record waits for the first sync or
    seal), so a full disk shows at the first write or seal, and a blob whose
    record could not be written is gone after a restart."""
    fs = FullDiskFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    fs.full = True
    handle = store.open_write("b", 1, 0, {})
    with pytest.raises(DiskFull):
        handle.write(b"x" * 10)
    with pytest.raises(DiskFull):
        handle.seal()
    assert store.stat("b").state == OPEN
    assert not os.path.exists(paths(store, "b").meta)
    fs.full = False
    store = reopen(store, fs=fs)
    assert list(store.list_blobs()) == []
    store.open_write("b", 1, 0, {}).write(b"ok")
    assert store.stat("b").size == 2
    store.close()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_real_full_disk_gives_disk_full_and_keeps_sealed_blobs(tiny_tmpfs):
    store = BlobStore.open(tiny_tmpfs / "d", block_size=BLOCK)
    kept = pattern(16 * 1024, seed=3)
    write_all(store, "kept", kept).seal()
    handle = store.open_write("big", 1, 0, {})
    with pytest.raises(DiskFull):
        for _ in range(1000):
            handle.write(pattern(8192))
    assert read_all(store, "kept") == kept
    store.delete("big")
    store.close()


def test_writes_go_on_while_a_sync_waits_for_its_fsync(tmp_path):
    fs = GatedFsyncFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    handle = write_all(store, "b", pattern(3000))
    with gated_sync(fs, handle) as outcome:
        handle.write(b"more")  # would deadlock if sync held the blob's lock
        assert store.stat("b").size == 3004
    assert outcome.durable == 3000
    assert handle.sync() == 3004
    store = reopen(store)
    assert store.stat("b").durable == 3004
    store.close()


def test_sealed_blob_refuses_fence_that_would_change_it(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(10)).seal()
    store = reopen(store)
    with pytest.raises(BlobSealed):
        store.fence("b", 3, 0)
    store.close()


def test_damaged_record_is_reported_and_does_not_stop_the_store(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "good", pattern(10)).seal()
    write_all(store, "bad", pattern(10)).seal()
    store.close()
    with open(paths(store, "bad").meta, "wb") as f:
        f.write(b"{not json")
    store = BlobStore.open(store.root)
    assert store.damaged == ["bad"]
    assert [i.blob_id for i in store.list_blobs()] == ["good"]
    with pytest.raises(FormatError):
        store.stat("bad")
    assert os.path.exists(paths(store, "bad").data)
    store.close()


def test_the_blob_count_follows_creates_deletes_and_restarts_without_reading_records(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    for name in ("a", "b", "bad"):
        write_all(store, name, pattern(10)).seal()
    synced = write_all(store, "synced", pattern(10))
    synced.sync()
    write_all(store, "never-synced", pattern(10))
    listed = lambda: sorted(i.blob_id for i in store.list_blobs())  # noqa: E731
    assert store.count_blobs() == len(listed()) == 5
    store.delete("a")
    assert store.count_blobs() == len(listed()) == 4
    store.close()
    with open(paths(store, "bad").meta, "wb") as f:
        f.write(b"{not json")
    # The restart drops the never-synced blob and cannot read "bad".
    store = BlobStore.open(store.root)
    assert listed() == ["b", "synced"]
    assert store.count_blobs() == 2
    store.close()


def test_two_deletes_of_one_sealed_blob_leave_the_count_right(tmp_path):
    """The second delete finds the blob gone (BlobNotFound) and counts
    nothing; two at once are serialised on the registered blob (below)."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    for name in ("gone", "keep"):
        write_all(store, name, pattern(10)).seal()
    store.delete("gone")
    with pytest.raises(BlobNotFound):
        store.delete("gone")
    assert [i.blob_id for i in store.list_blobs()] == ["keep"]
    assert store.count_blobs() == 1
    assert store._live == {}  # a sealed blob is registered only while deleted
    store.close()


class GatedUnlink(OsFileSystem):
    """Holds the first unlink of ``name`` by the thread named ``who`` until
    ``release`` is set (``reached`` tells the test it got there)."""

    def __init__(self, name: str, who: str) -> None:
        self.name, self.who = name, who
        self.reached = threading.Event()
        self.release = threading.Event()

    def unlink(self, path: str) -> None:
        here = os.path.basename(path) == self.name and threading.current_thread().name == self.who
        if here and not self.reached.is_set():
            self.reached.set()
            self.release.wait()
        super().unlink(path)


def test_a_delete_of_a_sealed_blob_never_removes_a_new_blob_of_the_same_id(tmp_path):
    """A delete looked a sealed blob up, then a second delete removed it and
    a writer created the id again, then the first delete went on: it
    unlinked the new blob's record and data (its writer then sealed a blob
    without data) and the count drifted.  Now a delete holds the id (the
    blob registered, its lock held) from its look-up to its end: the
    others wait, and find it deleted."""
    fs = GatedUnlink("x.meta", "first-delete")
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    write_all(store, "x", pattern(10)).seal()
    errors: list[BaseException] = []
    results: dict[str, object] = {}

    def run(f) -> None:
        try:
            f()
        except BaseException as e:  # reported by the test
            errors.append(e)

    def first_delete() -> None:
        store.delete("x")

    def second_delete_and_new_blob() -> None:
        with pytest.raises(BlobNotFound):
            store.delete("x")
        handle = store.open_write("x", 2, 0, {})
        handle.write(pattern(300, seed=5))
        handle.sync()
        results["handle"] = handle

    first = threading.Thread(target=run, args=(first_delete,), name="first-delete", daemon=True)
    first.start()
    try:
        assert fs.reached.wait(60)  # about to remove the record it looked up
        assert store._live.get("x") is not None  # the id is held meanwhile
        other = threading.Thread(target=run, args=(second_delete_and_new_blob,), daemon=True)
        other.start()
    finally:
        fs.release.set()
    first.join()
    other.join()
    assert errors == []
    results["handle"].seal()  # type: ignore[attr-defined]
    assert read_all(store, "x") == pattern(300, seed=5)
    assert [i.blob_id for i in store.list_blobs()] == ["x"]
    assert store.count_blobs() == 1
    store.close()


def test_a_delete_that_waited_for_a_blob_sealed_meanwhile_looks_it_up_again(tmp_path):
    """A delete found the blob being written (registered) and waited for
    its lock; meanwhile it was sealed (and so forgotten), deleted by
    another call and created again.  The waiting delete must not remove
    the new blob's files through the old object: it looks the id up again
    and deletes the new blob properly."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    handle = write_all(store, "x", pattern(10))
    old = store._live["x"]
    handle.seal()  # sealed and forgotten
    store.delete("x")
    new = write_all(store, "x", pattern(300, seed=5))
    new.sync()
    real_held = store._held
    looked_up = iter([(old, False)])
    store._held = lambda blob_id: next(looked_up, None) or real_held(blob_id)  # type: ignore[method-assign]
    store.delete("x")  # the delete that had looked up ``old`` goes on
    del store._held
    with pytest.raises(BlobNotFound):
        store.stat("x")
    with pytest.raises(BlobNotFound):
        new.write(b"more")
    assert store._live == {} and list(store.list_blobs()) == []
    assert store.count_blobs() == 0
    store.close()


def test_a_read_of_a_blob_deleted_after_its_look_up_is_not_found_not_damage(tmp_path):
    """A reader looked a sealed blob up; it was deleted and stored again
    (a small put: no ``.data``) before the reader opened its files: that
    is BlobNotFound, not a missing file.  A ``.data`` missing under the
    same record is damage: a ChecksumError (as for a flipped block, so the
    front end marks the replica) that names no path, and scrub reports it."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "x", pattern(10)).seal()
    stale = store._blob("x")
    store.delete("x")
    handle = store.open_put("x", 1, {}, 5)
    handle.write(b"small")
    handle.seal()
    real_blob = store._blob
    looked_up = iter([stale])
    store._blob = lambda blob_id: next(looked_up, None) or real_blob(blob_id)  # type: ignore[method-assign]
    with pytest.raises(BlobNotFound):
        store.open_read("x", 0, None)
    del store._blob
    assert read_all(store, "x") == b"small"
    write_all(store, "y", pattern(10)).seal()
    os.unlink(paths(store, "y").data)
    with pytest.raises(ChecksumError) as caught:
        store.open_read("y", 0, None)
    assert str(tmp_path) not in str(caught.value) and ".data" not in str(caught.value)
    store.close()


def test_a_blob_sealed_at_once_keeps_its_checksums_in_its_record(tmp_path):
    """No ``.sums`` file: the sealed record holds the entries, a reopened
    store reads the blob through them, and a damaged byte still fails."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(2 * BLOCK + 5)
    write_all(store, "b", data).seal()
    record = json.loads(Path(paths(store, "b").meta).read_text())
    assert record["format"] == 3 and record["state"] == "sealed"
    assert len(base64.b64decode(record["sums"])) == 3 * 8
    assert not os.path.exists(paths(store, "b").sums)
    store = reopen(store)
    assert read_all(store, "b") == data
    flip_byte(paths(store, "b").data, BLOCK + 3)
    with pytest.raises(ChecksumError):
        read_all(store, "b", BLOCK, 1)
    store.close()


def test_a_blob_of_more_blocks_than_a_record_holds_gets_a_checksum_file(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern((INLINE_SUMS_MAX + 1) * BLOCK)
    write_all(store, "b", data, chunk=BLOCK).seal()
    assert "sums" not in json.loads(Path(paths(store, "b").meta).read_text())
    assert os.path.getsize(paths(store, "b").sums) == (INLINE_SUMS_MAX + 1) * 8
    store = reopen(store)
    assert read_all(store, "b") == data
    store.close()


def _entries(*covered: int) -> str:
    return base64.b64encode(b"".join(struct.pack(">II", n, 0) for n in covered)).decode()


@pytest.mark.parametrize(
    "change",
    [
        {"sums": base64.b64encode(b"123").decode()},  # not whole entries
        {"sums": "not base64!"},
        {"sums": 17},
        {"sums": ""},  # no entry for a blob of two blocks
        {"sums": _entries(BLOCK)},  # one entry short
        {"sums": _entries(BLOCK, 9, 5)},  # one entry too many
        {"sums": _entries(BLOCK, 10)},  # the last block's bytes wrong
        {"sums": _entries(9, BLOCK)},  # a block that is not whole before the last
        {"format": 1},  # version 1 records had no inline checksums
        {"state": "open"},  # only a sealed record holds them
    ],
    ids=lambda change: ",".join(f"{k}={str(v)[:12]}" for k, v in change.items()),
)
def test_a_record_with_malformed_inline_checksums_is_damaged(tmp_path, change):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(BLOCK + 9)).seal()
    meta = paths(store, "b").meta
    record = json.loads(Path(meta).read_text())
    assert len(base64.b64decode(record["sums"])) == 16
    record.update(change)
    with open(meta, "w") as f:
        json.dump(record, f)
    store = reopen(store)
    assert store.damaged == ["b"]
    store.close()


def test_a_version_1_store_is_read_as_it_is_and_upgraded(tmp_path):
    """Version 1 wrote every blob with a ``.sums`` file and records of
    format 1: they read unchanged, and FORMAT becomes the current version
    (4) so that older code refuses the store from now on."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    handle = write_all(store, "b", pattern(3 * BLOCK))
    handle.sync()
    handle.seal()
    store.close()
    fmt = tmp_path / "d" / "FORMAT"
    fmt.write_text(json.dumps({"format": "wsfs-blobstore", "version": 1, "block_size": BLOCK}))
    meta = paths(store, "b").meta
    record = json.loads(Path(meta).read_text())
    assert "sums" not in record
    record["format"] = 1
    with open(meta, "w") as f:
        json.dump(record, f)
    store = BlobStore.open(tmp_path / "d")
    assert json.loads(fmt.read_text())["version"] == 4
    assert read_all(store, "b") == pattern(3 * BLOCK)
    store.close()


def test_reads_of_a_blob_never_synced_need_no_checksum_file(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    handle = write_all(store, "b", pattern(2 * BLOCK + 9))
    assert not os.path.exists(paths(store, "b").sums)
    assert read_all(store, "b") == pattern(2 * BLOCK + 9)
    handle.sync()  # creates .sums: reads from now on take the entries from it
    assert read_all(store, "b") == pattern(2 * BLOCK + 9)
    store.close()
