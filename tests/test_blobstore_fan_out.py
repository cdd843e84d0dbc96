"""The fan-out directories missing at open are made by a thread of the
store, then ``blobs/`` fsync'd once; a blob racing it makes its own
directory durable, ``close`` stops it, and a disk error only ends it."""

from __future__ import annotations

import array
import errno
import fcntl
import os
import threading

import pytest

from tests.test_blobstore import BLOCK, pattern, read_all, write_all
from wsstorage.blobstore import (
    _FS_IOC_GETFLAGS,
    _FS_TOPDIR_FL,
    BlobStore,
    spread_subdirectories,
)
from wsstorage.diskformat import BlobPaths
from wsstorage.fsshims import RecordingFileSystem

FAN_OUT_THREAD = "blobstore-fan-out"


class ThreadedFileSystem(RecordingFileSystem):
    """Records each mkdir and fsync_dir with the thread that made it
    (``ops``: ``(op, basename, thread name)``),
    and can hold the fan-out thread at its ``hold_at``-th mkdir (from 1) or
    at its fsync of ``blobs/`` until ``release`` is set (``held`` is set
    then), or fail those calls with EIO (``fail_mkdir``, ``fail_fsync``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str, str]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self.hold_at: int | None = None
        self.hold_fsync = False
        self.fail_mkdir = False
        self.fail_fsync = False
        self.fan_out_mkdirs = 0

    @staticmethod
    def _in_fan_out_thread() -> bool:
        return threading.current_thread().name.startswith(FAN_OUT_THREAD)

    def _hold(self) -> None:
        self.held.set()
        assert self.release.wait(30)

    def mkdir(self, path: str) -> None:
        if self._in_fan_out_thread():
            self.fan_out_mkdirs += 1
            if self.fail_mkdir:
                raise OSError(errno.EIO, "Input/output error", path)
            if self.fan_out_mkdirs == self.hold_at:
                self._hold()
        self.ops.append(("mkdir", os.path.basename(path), threading.current_thread().name))
        super().mkdir(path)

    def fsync_dir(self, path: str) -> None:
        if self._in_fan_out_thread() and os.path.basename(path) == "blobs":
            if self.fail_fsync:
                raise OSError(errno.EIO, "Input/output error", path)
            if self.hold_fsync:
                self._hold()
        self.ops.append(("fsync_dir", os.path.basename(path), threading.current_thread().name))
        super().fsync_dir(path)


def blobs_fsyncs(fs: ThreadedFileSystem, fan_out: bool) -> int:
    """fsyncs of ``blobs/`` by the fan-out thread (or by any other)."""
    return sum(
        1
        for op, name, thread in fs.ops
        if (op, name) == ("fsync_dir", "blobs") and thread.startswith(FAN_OUT_THREAD) == fan_out
    )


def fan_out_dirs(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "blobs")))


def test_a_fresh_store_is_fanned_out_by_a_thread_and_blobs_fsynced_once(tmp_path):
    fs = ThreadedFileSystem()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    assert store.wait_fanned_out(30)
    assert fan_out_dirs(store.root) == [f"{i:02x}" for i in range(256)]
    mkdirs = [thread for op, _, thread in fs.ops if op == "mkdir"]
    # blobs/ itself is made by open; every fan-out directory by the thread.
    assert len(mkdirs) == 257 and all(t.startswith(FAN_OUT_THREAD) for t in mkdirs[1:])
    assert blobs_fsyncs(fs, fan_out=True) == 1
    assert fs.calls[-1] == ("fsync_dir", "blobs")
    # Every directory is durable: a blob's first record fsyncs only its own.
    fs.calls.clear()
    write_all(store, "b", pattern(100)).seal()
    assert ("fsync_dir", "blobs") not in fs.calls
    store.close()
    # Opened again with every directory there: no mkdir, no thread, and one
    # fsync of blobs/ by open (the process that made them may have died
    # before it fsync'd them into blobs/), after one of the store's folder
    # (likewise for IDENTITY, before its id is reported).
    fs = ThreadedFileSystem()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    assert store._fan_out_thread is None
    assert [c for c in fs.calls if c[0] in ("mkdir", "fsync_dir")] == [
        ("fsync_dir", "d"),
        ("fsync_dir", "blobs"),
    ]
    assert read_all(store, "b") == pattern(100)
    store.close()


def test_a_blob_racing_the_thread_makes_its_directory_durable_itself(tmp_path):
    """The thread has made every directory but not fsync'd ``blobs/``: a
    blob's first record must fsync ``blobs/`` before it is acknowledged."""
    fs = ThreadedFileSystem()
    fs.hold_fsync = True
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    try:
        assert fs.held.wait(30)
        assert len(fan_out_dirs(store.root)) == 256
        directory = os.path.basename(BlobPaths.of(store.root, "b").directory)
        fs.calls.clear()
        write_all(store, "b", pattern(100)).seal()
        dir_ops = [c for c in fs.calls if c[0] in ("mkdir", "fsync_dir")]
        assert dir_ops == [("fsync_dir", "blobs"), ("fsync_dir", directory)]
        assert fs.calls.index(("fsync_dir", "blobs")) < fs.calls.index(("rename", "b.meta"))
    finally:
        fs.release.set()
    assert store.wait_fanned_out(30)
    store.close()


def test_a_blob_before_the_thread_made_its_directory_makes_it_itself(tmp_path):
    """Held at its first mkdir, the thread has made nothing: a blob makes
    its own directory, and fsyncs ``blobs/`` after the mkdir, before the
    record is renamed into place."""
    fs = ThreadedFileSystem()
    fs.hold_at = 1
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    try:
        assert fs.held.wait(30)
        blob_id = next(
            f"b{i}"
            for i in range(1000)
            if not BlobPaths.of(store.root, f"b{i}").directory.endswith("00")
        )
        directory = os.path.basename(BlobPaths.of(store.root, blob_id).directory)
        fs.calls.clear()
        write_all(store, blob_id, pattern(100)).seal()
        made = fs.calls.index(("mkdir", directory))
        synced = fs.calls.index(("fsync_dir", "blobs"))
        assert made < synced < fs.calls.index(("rename", f"{blob_id}.meta"))
    finally:
        fs.release.set()
    assert store.wait_fanned_out(30)
    assert len(fan_out_dirs(store.root)) == 256
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert read_all(store, blob_id) == pattern(100)
    store.close()


def test_close_stops_the_thread_between_mkdirs_and_waits_for_it(tmp_path):
    fs = ThreadedFileSystem()
    fs.hold_at = 10
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    assert fs.held.wait(30)
    closer = threading.Thread(target=store.close)
    closer.start()
    # close has asked the thread to stop and waits for it (held in a mkdir).
    assert store._fan_out_stop.wait(30)
    assert closer.is_alive()
    fs.release.set()
    closer.join(30)
    assert not closer.is_alive()
    thread = store._fan_out_thread
    assert thread is not None and not thread.is_alive()
    # The held mkdir finished; none after it, and no fsync of blobs/.
    assert fs.fan_out_mkdirs == 10
    assert len(fan_out_dirs(store.root)) == 10
    assert blobs_fsyncs(fs, fan_out=True) == 0


def test_a_disk_error_in_the_thread_leaves_blobs_working(tmp_path):
    """A failed mkdir ends the thread (logged): each blob then makes its
    own directory and makes it durable."""
    fs = ThreadedFileSystem()
    fs.fail_mkdir = True
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    assert store.wait_fanned_out(30)
    assert fs.fan_out_mkdirs == 1 and fan_out_dirs(store.root) == []
    fs.calls.clear()
    write_all(store, "b", pattern(100)).seal()
    directory = os.path.basename(BlobPaths.of(store.root, "b").directory)
    made = fs.calls.index(("mkdir", directory))
    assert made < fs.calls.index(("fsync_dir", "blobs")) < fs.calls.index(("rename", "b.meta"))
    assert read_all(store, "b") == pattern(100)
    store.close()


def test_a_failed_fsync_in_the_thread_marks_nothing_durable(tmp_path):
    """The thread made every directory but its fsync of ``blobs/`` failed:
    a blob's first record fsyncs ``blobs/`` itself."""
    fs = ThreadedFileSystem()
    fs.fail_fsync = True
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    assert store.wait_fanned_out(30)
    assert len(fan_out_dirs(store.root)) == 256
    fs.calls.clear()
    write_all(store, "b", pattern(100)).seal()
    assert fs.calls.index(("fsync_dir", "blobs")) < fs.calls.index(("rename", "b.meta"))
    assert read_all(store, "b") == pattern(100)
    store.close()


def _inode_flags(path) -> int | None:
    """The inode flags of ``path`` (``lsattr``), or None where the file
    system has none to report."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        return flags[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def test_a_new_store_asks_for_its_fan_out_directories_to_be_spread(tmp_path):
    """``blobs/`` of a new store has the top-directory flag (``chattr +T``)
    before its fan-out directories are made, so that ext4 places each in a
    block group of its own choosing, not among the inodes lately deleted
    near the store's directory (each of those made creating a file there
    cost up to 1.5 ms of kernel CPU on the VM we measure on); the store
    works the same where the file system has no such flag."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not spread_subdirectories(str(probe)):
        pytest.skip("this file system has no top-directory flag")
    assert _inode_flags(probe) & _FS_TOPDIR_FL
    store = BlobStore.open(tmp_path / "d")
    try:
        write_all(store, "a", pattern(BLOCK))
        assert read_all(store, "a") == pattern(BLOCK)
    finally:
        store.close()
    assert _inode_flags(tmp_path / "d" / "blobs") & _FS_TOPDIR_FL
    assert _inode_flags(tmp_path / "d") & _FS_TOPDIR_FL == 0  # only blobs/
    assert not spread_subdirectories(str(tmp_path / "missing"))
