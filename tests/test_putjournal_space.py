"""What a resident put may cost the store (``BlobStore._admit``): the disk
room its record file will need at the checkpoint, and memory.

A resident put is acknowledged before its record file exists, so a full
disk must refuse it before (DiskFull), not fail its checkpoint after; a
checkpoint that finds no room all the same keeps the journal on and is
retried; a store whose replay finds no room fails to open with a message
that says what to do; and a store keeps at most ``RESIDENT_MAX`` residents.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_blobstore import pattern, read_all
from tests.test_putjournal import NoSpaceForRecords, meta, open_store, put
from wsstorage import blobstore
from wsstorage.blobstore import BlobStore
from wsstorage.errors import DiskFull
from wsstorage.fsops import UNCOUNTED_INODES, OsFileSystem
from wsstorage.fsshims import RecordingFileSystem
from wsstorage.putjournal import JOURNAL_SIZE

#: A disk with room to spare, as ``RecordingFileSystem.room`` reports it.
ROOMY = (1 << 40, 1 << 20)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` (state a background thread changes) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class AlwaysFull(NoSpaceForRecords):
    full = True


class RefusingRecords(NoSpaceForRecords):
    """``NoSpaceForRecords`` that says when it has refused a record."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = threading.Event()

    def pwrite(self, fd: int, data, offset: int) -> int:
        try:
            return super().pwrite(fd, data, offset)
        except OSError:
            self.refused.set()
            raise


def test_a_put_on_a_full_disk_is_refused_not_acknowledged(tmp_path):
    """The disk has no room for its record file: the put takes the old
    path (its own record, synced) and the full disk refuses it, DiskFull,
    before it is acknowledged; nothing is left resident or journaled."""
    fs = NoSpaceForRecords()
    store = open_store(tmp_path / "d", fs=fs)
    try:
        put(store, "warm", pattern(10))  # the journal files exist
        fs.full = True
        fs.free = (0, 0)
        with pytest.raises(DiskFull):
            put(store, "x", pattern(100))
        assert "x" not in store._residents
        assert store.journal_pending() == ["warm"]
        assert store._admitted == 1
        assert store._journal.broken is None
    finally:
        fs.full = False
        store.close()


@pytest.mark.parametrize(
    "free",
    [
        (JOURNAL_SIZE + 4096 - 1, 1 << 20),  # bytes: less than a journal file to spare
        (1 << 40, blobstore.RESIDENT_INODE_MARGIN),  # inodes: none beyond the margin
    ],
    ids=["bytes", "inodes"],
)
def test_a_put_the_disk_cannot_afford_writes_its_own_record(tmp_path, free):
    """Too little free space (or inodes) for the residents' record files,
    this one's and a margin: the put syncs its own record, at once; with
    room again, puts are resident."""
    fs = RecordingFileSystem()
    store = open_store(tmp_path / "d", fs=fs)
    try:
        fs.free = free
        put(store, "x", pattern(100))
        assert meta(store.root, "x").exists()
        assert store.journal_pending() == [] and store._residents == {}
        fs.free = ROOMY
        put(store, "y", pattern(100))
        assert not meta(store.root, "y").exists()
        assert store.journal_pending() == ["y"] and list(store._residents) == ["y"]
        assert store._admitted == 1 and store._admitted_bytes == 4096
        fs.free = (free[0] + 4096, free[1] + 1)
        put(store, "z", pattern(100))
        assert meta(store.root, "z").exists() and list(store._residents) == ["y"]
        assert read_all(store, "x") == read_all(store, "y") == pattern(100)
    finally:
        store.close()
    assert store._admitted == 0


def test_the_checkpoint_thread_retries_until_the_records_fit(tmp_path):
    """The disk fills between the put and its checkpoint (another writer):
    the checkpoint fails, the journal stays on, the blob is served from
    memory, and the checkpoint thread tries again, with nothing asking it
    to, until the disk has room: then the record is on disk and durable."""
    fs = RefusingRecords()
    store = open_store(tmp_path / "d", fs=fs, checkpoint_after=0.05)
    try:
        fs.full = True
        put(store, "x", pattern(100))
        journal = store._journal
        assert fs.refused.wait(30)  # the timed checkpoint failed
        assert journal.broken is None
        assert store.journal_pending() == ["x"]
        assert read_all(store, "x") == pattern(100)
        fs.full = False
        wait_for(lambda: store.journal_pending() == [], "the retried checkpoint")
        wait_for(lambda: not store._residents, "the residents let go of")
        assert journal.broken is None
        assert meta(store.root, "x").exists()
        assert read_all(store, "x") == pattern(100)
    finally:
        fs.full = False
        store.close()


def test_a_store_whose_replay_finds_the_disk_full_says_so(tmp_path):
    """Acknowledged puts still only in the journal, and the disk full at
    the next start: opening fails DiskFull, naming the data directory and
    what to do, and keeps the journal; with room again it opens, the blob
    there."""
    fs = NoSpaceForRecords()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    fs.full = True
    store.close()  # its checkpoint fails: logged, the entry kept
    root = str(Path(tmp_path / "d").resolve())
    with pytest.raises(DiskFull) as raised:
        BlobStore.open(tmp_path / "d", block_size=4096, fs=AlwaysFull(), checkpoint_after=None)
    message = str(raised.value)
    assert root in message and "free space" in message and "start" in message
    reopened = open_store(tmp_path / "d")
    try:
        assert read_all(reopened, "x") == pattern(100)
    finally:
        reopened.close()


class GatedSyncfs(RecordingFileSystem):
    """Holds the first ``syncfs`` (a checkpoint's flush) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def syncfs(self, path: str, fd: int | None = None) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        super().syncfs(path, fd)


def test_residents_are_capped_and_a_checkpoint_hurried_at_half(tmp_path, monkeypatch):
    """At half of ``RESIDENT_MAX`` a checkpoint starts (none is otherwise
    due); while it runs, puts stay resident up to the cap, and the one past
    it writes and syncs its own record."""
    monkeypatch.setattr(blobstore, "RESIDENT_MAX", 4)
    fs = GatedSyncfs()
    store = open_store(tmp_path / "d", fs=fs)
    try:
        put(store, "a", pattern(10))
        put(store, "b", pattern(10))  # half the cap: hurried
        assert fs.entered.wait(30)  # the checkpoint of a and b, held in its syncfs
        put(store, "c", pattern(10))
        put(store, "d", pattern(10))
        assert sorted(store._residents) == ["a", "b", "c", "d"]
        put(store, "e", pattern(10))
        assert meta(store.root, "e").exists() and "e" not in store._residents
        assert not meta(store.root, "c").exists()
        fs.release.set()
        # (c and d hurried a checkpoint of their own: they go too.)
        wait_for(lambda: not store._residents, "the residents let go of")
        assert store._admitted == 0
        for name in "abcde":
            assert read_all(store, name) == pattern(10)
    finally:
        fs.release.set()
        store.close()


def test_many_tiny_puts_never_hold_more_than_the_cap(tmp_path):
    """Thousands of 1-byte puts, no timed checkpoint, journal files with
    room for all of them: never more than ``RESIDENT_MAX`` residents."""
    store = open_store(tmp_path / "d", journal_size=16 << 20)
    try:
        most = 0
        for i in range(3 * blobstore.RESIDENT_MAX):
            put(store, f"b{i:06d}", b"x")
            most = max(most, len(store._residents))
        assert 0 < most <= blobstore.RESIDENT_MAX
        assert store._admitted <= blobstore.RESIDENT_MAX
    finally:
        store.close()


def test_room_reads_statvfs_and_a_file_system_without_inode_counts_has_room(tmp_path, monkeypatch):
    """``room`` is what an unprivileged user may use (``f_bavail``,
    ``f_favail``); btrfs reports no inode counts at all (``f_files`` 0),
    which must not read as no inode free, or no put there is resident."""
    real = os.statvfs(tmp_path)
    free, _, unit = OsFileSystem().room(str(tmp_path))
    assert unit == real.f_frsize and free % unit == 0 and free > 0
    fake = os.statvfs_result((4096, 4096, 100, 50, 40, 0, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: fake)
    assert OsFileSystem().room(str(tmp_path)) == (40 * 4096, UNCOUNTED_INODES, 4096)
    fake = os.statvfs_result((4096, 4096, 100, 50, 40, 1000, 7, 5, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: fake)
    assert OsFileSystem().room(str(tmp_path)) == (40 * 4096, 5, 4096)


def test_a_delete_between_a_checkpoints_flush_and_its_let_go_gives_the_admission_back(tmp_path):
    """A delete can reach a resident blob after its checkpoint flushed it
    (no entry pending, so the delete does not checkpoint) and before that
    checkpoint lets go of it: the delete drops it, and the admission it
    held is given back exactly once, or the count would creep up to
    RESIDENT_MAX and every later put would take the slow path."""
    store = open_store(tmp_path / "s")
    try:
        put(store, "b" * 32, b"x" * 100)
        assert store._admitted == 1
        materialize = store._materialize
        deleted = []

        def then_delete(blob_ids):
            release = materialize(blob_ids)

            def delete_first() -> None:
                store.delete("b" * 32)  # the entry is no longer pending
                deleted.append(True)
                release()

            return delete_first

        store._journal._materialize = then_delete
        store.checkpoint()
        assert deleted == [True]
        assert store._admitted == 0 and store._admitted_bytes == 0
        assert not store._residents and store.count_blobs() == 0
    finally:
        store.close()
