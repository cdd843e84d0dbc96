"""A small ``put`` keeps its bytes in its sealed record (format 3): one file,
two syncs, and every other operation of the store handles such a blob."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tests.test_blobstore import BLOCK, fanned_out, pattern, read_all, write_all
from wsstorage.blobstore import BlobPutHandle, BlobStore, BlobWriteHandle
from wsstorage.diskformat import INLINE_DATA_MAX, BlobPaths
from wsstorage.errors import (
    BadRequest,
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    DiskFull,
    StaleEpoch,
)
from wsstorage.fsshims import FullDiskFileSystem, RecordingFileSystem
from wsstorage.records import SEALED

SYNCS = ("fsync", "fdatasync", "fsync_dir")


def put(store: BlobStore, blob_id: str, data: bytes, epoch: int = 1):
    handle = store.open_put(blob_id, epoch, {"inode": 9}, len(data))
    try:
        for i in range(0, len(data), 1000):
            handle.write(data[i : i + 1000])
        return handle.seal()
    finally:
        handle.close()


def record_of(store: BlobStore, blob_id: str) -> tuple[dict, bytes]:
    """A record's JSON line and the raw bytes after it (its inline data)."""
    raw = Path(BlobPaths.of(store.root, blob_id).meta).read_bytes()
    header, _, trailer = raw.partition(b"\n")
    return json.loads(header), trailer


def rewrite_record(store: BlobStore, blob_id: str, header: dict, trailer: bytes) -> None:
    Path(BlobPaths.of(store.root, blob_id).meta).write_bytes(
        json.dumps(header).encode() + b"\n" + trailer
    )


def files_of(store: BlobStore, blob_id: str) -> list[str]:
    directory = BlobPaths.of(store.root, blob_id).directory
    return sorted(n for n in os.listdir(directory) if n.startswith(blob_id + "."))


def test_a_small_put_is_one_journal_fdatasync_and_no_file(tmp_path):
    """Through the put journal: its entry appended and fdatasync'd, and
    nothing else: no file is created, the record stays in memory
    (resident).  The checkpoint writes the record file (temp file,
    rename: a record under its final name always has a durable entry),
    then syncs: one syncfs, then the journal's reset.  (The store's first
    put creates the journal files: not this one.)"""
    fs = RecordingFileSystem()
    store = fanned_out(
        BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs, checkpoint_after=None)
    )
    put(store, "a", pattern(10))
    data = pattern(2 * BLOCK + 7)
    fs.calls.clear()
    info = put(store, "b", data)
    assert (info.state, info.size, info.durable) == (SEALED, len(data), len(data))
    assert [c for c in fs.calls if c[0] != "close"] == [
        ("write", "journal-a"),
        ("fdatasync", "journal-a"),
    ]
    assert files_of(store, "b") == []
    assert read_all(store, "b") == data
    assert store.journal_pending() == ["a", "b"]
    fs.calls.clear()
    store.checkpoint()
    assert [c for c in fs.calls if c[0] in SYNCS + ("syncfs", "rename")] == [
        ("rename", "a.meta"),
        ("rename", "b.meta"),
        ("syncfs", "d"),
        ("fdatasync", "journal-a"),
    ]
    assert store.journal_pending() == []
    assert files_of(store, "b") == ["b.meta"]
    record, trailer = record_of(store, "b")
    assert record["format"] == 3 and record["data_size"] == len(data) and trailer == data
    store.close()


def test_a_small_put_is_one_record_synced_then_its_directory(tmp_path):
    """Without the journal (``journal_size=0``), or when it is full."""
    fs = RecordingFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs, journal_size=0))
    directory = os.path.basename(BlobPaths.of(store.root, "b").directory)
    data = pattern(2 * BLOCK + 7)
    fs.calls.clear()
    info = put(store, "b", data)
    assert (info.state, info.size, info.durable, info.meta) == (
        SEALED,
        len(data),
        len(data),
        {"inode": 9},
    )
    assert [c for c in fs.calls if c[0] in SYNCS] == [
        ("fsync", "b.meta.tmp"),
        ("fsync_dir", directory),
    ]
    assert fs.calls.index(("fsync", "b.meta.tmp")) < fs.calls.index(("rename", "b.meta"))
    assert files_of(store, "b") == ["b.meta"]
    record, trailer = record_of(store, "b")
    assert record["format"] == 3 and record["data_size"] == len(data) and trailer == data
    assert len(base64.b64decode(record["sums"])) == 3 * 8
    assert read_all(store, "b") == data
    assert read_all(store, "b", BLOCK + 3, 10) == data[BLOCK + 3 : BLOCK + 13]
    store.close()


def test_an_inline_blob_reads_in_place_lists_counts_and_survives_a_restart(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(3 * BLOCK)
    put(store, "b", data)
    put(store, "empty", b"")
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert store.count_blobs() == 2
    assert {i.blob_id: i.size for i in store.list_blobs()} == {"b": len(data), "empty": 0}
    assert read_all(store, "b") == data
    assert read_all(store, "empty") == b""
    reader = store.open_read("b", BLOCK, None)
    buffer = memoryview(bytearray(2 * BLOCK))
    assert reader.read_into(buffer, nowait=True) == 2 * BLOCK
    assert bytes(buffer) == data[BLOCK:]
    assert reader.read_into(buffer) == 0
    reader.close()
    assert store.fence("b", 1, len(data)).state == SEALED  # a no-op fence
    assert store.commit("b", 1).size == len(data)  # an idempotent commit
    with pytest.raises(BlobSealed):
        store.open_write("b", 2, 0, {})
    store.delete("b")
    assert files_of(store, "b") == []
    assert store.count_blobs() == 1
    with pytest.raises(BlobNotFound):
        store.stat("b")
    store.close()


def test_a_damaged_byte_of_inline_data_fails_its_checksum(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(2 * BLOCK)
    put(store, "b", data)
    store.checkpoint()  # its record file is written (and it is read from it)
    meta = BlobPaths.of(store.root, "b").meta
    # One bit rots on disk, in place: the data sits raw after the record's
    # JSON, so the record still decodes and the read finds the damage.
    offset = os.path.getsize(meta) - len(data) + BLOCK + 1
    with open(meta, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    assert store.stat("b").sealed
    assert read_all(store, "b", 0, BLOCK) == data[:BLOCK]
    with pytest.raises(ChecksumError):
        read_all(store, "b", BLOCK, 1)
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert store.damaged == [] and store.count_blobs() == 1
    with pytest.raises(ChecksumError):
        read_all(store, "b", BLOCK, 1)
    store.close()


@pytest.mark.parametrize(
    "change,cut",
    [
        ({"format": 2}, 0),  # version 2 records had no inline data
        ({"data_size": 5}, 0),  # not the bytes that follow
        ({"data_size": "17"}, 0),
        ({}, 1),  # a record cut short
        ({"size": 5, "data_size": 5}, BLOCK + 4),  # not the sealed size's checksums
        ({"state": "open"}, 0),
    ],
    ids=lambda v: str(v)[:20],
)
def test_a_record_with_malformed_inline_data_is_damaged(tmp_path, change, cut):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    put(store, "b", pattern(BLOCK + 9))
    store.checkpoint()  # its record file is written
    record, trailer = record_of(store, "b")
    record.update(change)
    rewrite_record(store, "b", record, trailer[: len(trailer) - cut])
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert store.damaged == ["b"]
    store.close()


def test_a_record_with_inline_data_but_no_checksums_is_damaged(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    put(store, "b", pattern(100))
    store.checkpoint()  # its record file is written
    record, trailer = record_of(store, "b")
    del record["sums"]
    rewrite_record(store, "b", record, trailer)
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert store.damaged == ["b"]
    store.close()


def test_a_put_onto_a_blob_that_exists_is_refused_or_written_as_before(tmp_path):
    """A fence with a newer epoch came first: StaleEpoch; a sealed blob:
    BlobSealed; an unsealed blob at an older or equal epoch: superseded and
    sealed through its data file, as ``open_write`` at 0 does."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    store.fence("fenced", 5, 0)
    with pytest.raises(StaleEpoch):
        put(store, "fenced", b"late", epoch=4)
    put(store, "sealed", b"first")
    with pytest.raises(BlobSealed):
        put(store, "sealed", b"again")
    assert read_all(store, "sealed") == b"first"
    write_all(store, "open", pattern(500)).sync()
    info = put(store, "open", pattern(300, seed=2), epoch=2)
    assert (info.state, info.size, info.epoch) == (SEALED, 300, 2)
    assert read_all(store, "open") == pattern(300, seed=2)
    assert "open.data" in files_of(store, "open")
    store.close()


def test_a_put_never_sealed_leaves_nothing_and_a_big_one_uses_a_data_file(tmp_path):
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK))
    handle = store.open_put("b", 1, {}, 100)
    assert isinstance(handle, BlobPutHandle)
    handle.write(pattern(100))
    handle.close()  # as a crash before the seal: nothing was ever on disk
    assert files_of(store, "b") == []
    with pytest.raises(BlobNotFound):
        store.stat("b")
    big = store.open_put("big", 1, {}, INLINE_DATA_MAX + 1)
    assert isinstance(big, BlobWriteHandle)
    big.write(pattern(INLINE_DATA_MAX + 1))
    big.seal()
    assert "big.data" in files_of(store, "big")
    assert read_all(store, "big") == pattern(INLINE_DATA_MAX + 1)
    store.close()


def test_a_put_of_more_blocks_than_a_record_holds_uses_a_data_file(tmp_path):
    """With 512-byte blocks a 40000-byte put is 79 blocks, more checksum
    entries than a record may hold (INLINE_SUMS_MAX): it must go through a
    ``.data`` and ``.sums`` file, and read back after a restart, not be
    acknowledged as a record that no longer decodes."""
    store = BlobStore.open(tmp_path / "d", block_size=512)
    data = pattern(40000)
    handle = store.open_put("b", 1, {}, len(data))
    assert isinstance(handle, BlobWriteHandle)
    handle.write(data)
    assert handle.seal().durable == len(data)
    # put_inline itself falls back too (a caller that skipped open_put).
    assert store.put_inline("c", 1, {}, data).durable == len(data)
    assert read_all(store, "b") == data == read_all(store, "c")
    assert "c.data" in files_of(store, "c") and "c.sums" in files_of(store, "c")
    store.close()
    store = BlobStore.open(tmp_path / "d")
    assert store.damaged == []
    assert read_all(store, "b") == data == read_all(store, "c")
    assert store.count_blobs() == 2
    store.close()


def test_a_record_without_inline_data_has_nothing_after_its_json(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(100)).seal()
    meta = BlobPaths.of(store.root, "b").meta
    with open(meta, "ab") as f:
        f.write(b"stray")
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert store.damaged == ["b"]
    store.close()


class CountingReads(RecordingFileSystem):
    """Counts the bytes read from each file (basename)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_bytes: dict[str, int] = {}

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        got = super().pread(fd, length, offset)
        name = self._name(fd)
        self.read_bytes[name] = self.read_bytes.get(name, 0) + len(got)
        return got


def test_stat_list_and_open_read_a_record_s_json_line_not_its_data(tmp_path):
    """Listing or opening a store of small blobs costs what it does for
    blobs with a ``.data`` file: the bytes after the JSON line are read
    only by a reader."""
    data = pattern(INLINE_DATA_MAX)
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    put(store, "b", data)
    store.close()
    fs = CountingReads()
    store = fanned_out(BlobStore.open(tmp_path / "d", fs=fs))
    assert store.stat("b").size == len(data)
    assert [i.blob_id for i in store.list_blobs()] == ["b"]
    assert fs.read_bytes["b.meta"] <= 3 * 4096  # open, stat, list: the JSON line each
    assert read_all(store, "b") == data
    store.close()


def test_a_reader_of_a_record_replaced_or_damaged_under_it(tmp_path):
    """The data is read when a reader opens: a blob deleted and stored
    again since it was looked up is gone (BlobNotFound); a record damaged
    since is a ChecksumError (read another replica), not FormatError."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    put(store, "b", pattern(5000))
    store.checkpoint()  # looked up from its record file, not in memory
    looked_up = store._blob("b")
    store.delete("b")
    put(store, "b", pattern(5000, seed=3))
    store.checkpoint()
    with pytest.raises(BlobNotFound):
        looked_up.inline_bytes()
    looked_up = store._blob("b")
    meta = BlobPaths.of(store.root, "b").meta
    os.truncate(meta, os.path.getsize(meta) - 1)
    with pytest.raises(ChecksumError):
        looked_up.inline_bytes()
    store.close()


def test_a_put_seal_that_failed_can_be_retried_and_a_short_put_is_refused(tmp_path):
    """A seal that hit a full disk keeps the bytes: the next seal stores
    them all (it used to store a sealed empty blob).  A put that got fewer
    bytes than it announced is never sealed short."""
    fs = FullDiskFileSystem()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs))
    data = pattern(5000)
    handle = store.open_put("b", 1, {}, len(data))
    handle.write(data)
    fs.full = True
    with pytest.raises(DiskFull):
        handle.seal()
    fs.full = False
    assert handle.seal().size == len(data)
    assert read_all(store, "b") == data
    short = store.open_put("short", 1, {}, 100)
    short.write(pattern(60))
    with pytest.raises(BadRequest):
        short.seal()
    with pytest.raises(BlobNotFound):
        store.stat("short")
    short.close()
    store.close()


class FailingDirSync(RecordingFileSystem):
    fail = False

    def fsync_dir(self, path: str) -> None:
        if self.fail:
            self.fail = False
            raise OSError(5, "EIO")
        super().fsync_dir(path)


@pytest.mark.parametrize("when", ["fsync_dir", "fsync"])
def test_a_put_that_fails_keeps_the_count_exact(tmp_path, when):
    """A put that fails after its rename (the directory fsync) left its
    record, listed: it is counted.  One that fails before leaves nothing."""
    fs = FailingDirSync()
    store = fanned_out(BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs, journal_size=0))
    if when == "fsync_dir":
        fs.fail = True
    else:
        fs.fsync = lambda fd: (_ for _ in ()).throw(OSError(5, "EIO"))  # type: ignore[method-assign]
    with pytest.raises(OSError):
        put(store, "b", pattern(100))
    listed = [i.blob_id for i in store.list_blobs()]
    assert listed == (["b"] if when == "fsync_dir" else [])
    assert store.count_blobs() == len(listed)
    store.close()


def test_a_puts_record_file_is_sorted_json_then_its_bytes(tmp_path):
    """The record a checkpoint writes for a put is, byte for byte, the
    format's: its JSON line as ``json.dumps(..., sort_keys=True)`` writes
    it (the store encodes with one encoder made once), then the data."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, checkpoint_after=None)
    data = pattern(BLOCK + 3)
    handle = store.open_put(
        "a", 4, {"owner": "u", "inode": 9, "x": [1, {"b": 2, "a": 1}]}, len(data)
    )
    handle.write(data)
    handle.seal()
    store.checkpoint()
    raw = Path(BlobPaths.of(store.root, "a").meta).read_bytes()
    header, trailer = record_of(store, "a")
    assert header["meta"] == {"inode": 9, "owner": "u", "x": [1, {"a": 1, "b": 2}]}
    assert raw == json.dumps(header, sort_keys=True).encode() + b"\n" + data
    assert trailer == data
    store.close()
