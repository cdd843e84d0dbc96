"""The storage server's local blob store: layout, writes, reads, epochs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import pytest

from wsstorage.blobstore import BlobStore, BlobWriteHandle, FormatError
from wsstorage.diskformat import StoreIdentity
from wsstorage.errors import (
    NO_SPACE_ERRNOS,
    BadRequest,
    BlobNotFound,
    BlobSealed,
    InvalidOffset,
    StaleEpoch,
)
from wsstorage.fsops import OsFileSystem
from wsstorage.fsshims import FullDiskFileSystem, GatedFsyncFileSystem, NoRoomFileSystem
from wsstorage.putjournal import JOURNAL_SIZE
from wsstorage.records import OPEN, SEALED

BLOCK = 4096


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ from block to block (so a swapped block shows)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def write_all(store: BlobStore, blob_id: str, data: bytes, chunk: int = 1000, epoch: int = 1):
    """Write ``data`` into a new blob in chunks; return the open handle."""
    handle = store.open_write(blob_id, epoch, 0, {"inode": 7})
    for i in range(0, len(data), chunk):
        handle.write(data[i : i + chunk])
    return handle


def read_all(store: BlobStore, blob_id: str, offset: int = 0, length: int | None = None, n=1500):
    reader = store.open_read(blob_id, offset, length)
    try:
        parts = []
        while chunk := reader.read(n):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        reader.close()


@attrs.define
class SyncOutcome:
    """What a gated ``handle.sync()`` came to: its durable length, or the
    error it raised (both None until the sync is done)."""

    durable: int | None = None
    error: BaseException | None = None


@contextmanager
def gated_sync(fs: GatedFsyncFileSystem, handle: BlobWriteHandle) -> Iterator[SyncOutcome]:
    """Run ``handle.sync()`` in a thread and hold it in its first fsync of
    a ``.data`` file (the blob's lock released there) while the body of the
    ``with`` runs; then let it go on, wait for it, and fill the outcome."""
    outcome = SyncOutcome()

    def sync() -> None:
        try:
            outcome.durable = handle.sync()
        except BaseException as e:  # reported through the outcome
            outcome.error = e

    fs.armed = True
    syncer = threading.Thread(target=sync, daemon=True)
    syncer.start()
    try:
        assert fs.entered.wait(30)  # in its fdatasync, lock released
        yield outcome
    finally:
        fs.release.set()
        syncer.join(30)
    assert not syncer.is_alive()


def fanned_out(store: BlobStore) -> BlobStore:
    """``store`` once its fan-out thread has made every fan-out directory
    and fsync'd ``blobs/``: for tests that count a blob's syncs or look
    at the tree (a blob racing the thread pays an fsync of ``blobs/``)."""
    assert store.wait_fanned_out(30)
    return store


@pytest.fixture
def store(tmp_path):
    s = BlobStore.open(tmp_path / "data", block_size=BLOCK)
    yield s
    s.close()


def test_open_creates_layout_with_format_version(tmp_path):
    store = BlobStore.open(tmp_path / "d")
    store.close()
    record = json.loads((tmp_path / "d" / "FORMAT").read_text())
    assert record == {"format": "wsfs-blobstore", "version": 4, "block_size": 65536}
    assert (tmp_path / "d" / "blobs").is_dir()
    # No put journal: its files are made at the first small put.
    assert sorted(os.listdir(tmp_path / "d")) == ["FORMAT", "IDENTITY", "LOCK", "blobs"]


def sealed(store: BlobStore, blob_id: str, data: bytes) -> None:
    handle = write_all(store, blob_id, data)
    handle.seal()
    handle.close()


def test_a_new_store_gets_an_identity_that_it_keeps(tmp_path):
    """IDENTITY: a random id and when it was made, written with the store;
    every later open reads the same one (health reports it, so front ends
    notice a server back on another data directory)."""
    before = time.time()
    store = BlobStore.open(tmp_path / "d")
    store.close()
    record = json.loads((tmp_path / "d" / "IDENTITY").read_text())
    assert sorted(record) == ["created", "store_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", record["store_id"])
    assert before <= record["created"] <= time.time()
    assert store.identity == StoreIdentity(record["store_id"], record["created"])
    again = BlobStore.open(tmp_path / "d")
    again.close()
    assert again.identity == store.identity
    other = BlobStore.open(tmp_path / "other")
    other.close()
    assert other.identity.store_id != store.identity.store_id


def test_a_wiped_directory_starts_a_store_of_another_identity(tmp_path):
    store = BlobStore.open(tmp_path / "d")
    sealed(store, "b", pattern(100))
    store.close()
    shutil.rmtree(tmp_path / "d")
    (tmp_path / "d").mkdir()
    fresh = BlobStore.open(tmp_path / "d")
    assert list(fresh.list_blobs()) == []
    fresh.close()
    assert fresh.identity.store_id != store.identity.store_id


@pytest.mark.parametrize("journal_size", [0, JOURNAL_SIZE])
def test_a_store_made_before_identities_gets_one_once_and_keeps_its_blobs(tmp_path, journal_size):
    """A store without IDENTITY (made by older code) gets one when opened,
    written atomically, and keeps it from then on; its blobs and FORMAT
    are as they were (no new format version: older code ignores the file,
    so a version-3 store opened without a journal stays at 3)."""
    store = BlobStore.open(tmp_path / "d")
    sealed(store, "b", pattern(3 * BLOCK))
    store.close()
    fmt = tmp_path / "d" / "FORMAT"
    fmt.write_text(json.dumps({"format": "wsfs-blobstore", "version": 3, "block_size": 65536}))
    os.unlink(tmp_path / "d" / "IDENTITY")
    upgraded = BlobStore.open(tmp_path / "d", journal_size=journal_size)
    assert read_all(upgraded, "b") == pattern(3 * BLOCK)
    upgraded.close()
    assert json.loads(fmt.read_text())["version"] == (3 if journal_size == 0 else 4)
    assert not (tmp_path / "d" / "IDENTITY.tmp").exists()
    given = json.loads((tmp_path / "d" / "IDENTITY").read_text())["store_id"]
    assert upgraded.identity.store_id == given != store.identity.store_id
    again = BlobStore.open(tmp_path / "d")
    again.close()
    assert again.identity == upgraded.identity


@pytest.mark.parametrize(
    "damage", [b"", b"{", b'{"store_id": "zz", "created": 1}', b'{"created": 1}']
)
def test_a_damaged_identity_is_refused_not_replaced(tmp_path, damage):
    """A new id would make every front end take the store's blobs for lost:
    an IDENTITY that does not parse stops the store, and stays as it is."""
    BlobStore.open(tmp_path / "d").close()
    ident = tmp_path / "d" / "IDENTITY"
    ident.write_bytes(damage)
    with pytest.raises(FormatError, match="IDENTITY"):
        BlobStore.open(tmp_path / "d")
    assert ident.read_bytes() == damage


class LogEvents:
    """The formatted text of the store's log events while attached."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, event: dict) -> None:
        from twisted.logger import formatEvent

        if event.get("log_namespace", "").startswith("wsstorage"):
            self.lines.append((event["log_level"].name, formatEvent(event)))


@pytest.fixture
def store_logs():
    from twisted.logger import globalLogPublisher

    events = LogEvents()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)


def older_store(root, blobs: dict[str, bytes]) -> None:
    """A store as code from before identities left it: no IDENTITY."""
    store = BlobStore.open(root)
    for blob_id, data in blobs.items():
        sealed(store, blob_id, data)
    store.close()
    os.unlink(root / "IDENTITY")


@pytest.mark.parametrize("journal_size", [0, JOURNAL_SIZE])
def test_an_older_store_on_a_full_disk_serves_without_an_id_until_it_can_write_one(
    tmp_path, journal_size, store_logs
):
    """Its IDENTITY cannot be written (ENOSPC): the store opens anyway, with
    no identity, says why once, and serves reads and deletes; each
    ``identify`` (every health answer) tries again, silently while the
    disk is still full, and once there is room writes it, says so once,
    and keeps it (the next open reads the same id)."""
    root = tmp_path / "d"
    older_store(root, {"a": pattern(3 * BLOCK), "b": pattern(5000, seed=1)})
    fs = NoRoomFileSystem()
    fs.full = True
    store = BlobStore.open(root, fs=fs, journal_size=journal_size)
    try:
        assert store.identity is None
        [(level, line)] = store_logs.lines
        assert level == "warn"
        assert "no IDENTITY file yet" in line and "disk is full (No space left" in line
        assert read_all(store, "a") == pattern(3 * BLOCK)
        store.delete("b")
        assert [i.blob_id for i in store.list_blobs()] == ["a"]
        for _ in range(3):
            assert store.identify() is None
        assert not (root / "IDENTITY").exists() and not (root / "IDENTITY.tmp").exists()
        assert len(store_logs.lines) == 1  # no line per try
        fs.full = False  # room again (the delete's, an operator's)
        identity = store.identify()
        assert identity is not None and store.identity is identity
        on_disk = json.loads((root / "IDENTITY").read_text())
        assert identity == StoreIdentity(on_disk["store_id"], on_disk["created"])
        assert store.identify() is identity
        assert [level for level, _ in store_logs.lines] == ["warn", "info"]
        assert identity.store_id in store_logs.lines[1][1]
    finally:
        store.close()
    again = BlobStore.open(root)
    again.close()
    assert again.identity == identity


@pytest.mark.parametrize("failing", ["fsync_dir", "rename"])
def test_an_identity_whose_write_failed_late_is_removed_not_reported(tmp_path, failing):
    """A full disk can fail the rename (a directory block) or the fsync of
    the directory after it: the IDENTITY it may have renamed is not known
    durable, so it is removed and no id reported (a crash could otherwise
    take back an id front ends recorded)."""

    class LateFull(OsFileSystem):
        full = True

        def fsync_dir(self, path: str) -> None:
            if self.full and failing == "fsync_dir" and os.path.exists(root / "IDENTITY"):
                raise OSError(NO_SPACE_ERRNOS[0], "No space left on device")
            super().fsync_dir(path)

        def rename(self, src: str, dst: str) -> None:
            if self.full and failing == "rename":
                raise OSError(NO_SPACE_ERRNOS[0], "No space left on device")
            super().rename(src, dst)

    root = tmp_path / "d"
    older_store(root, {"a": pattern(1000)})
    fs = LateFull()
    store = BlobStore.open(root, fs=fs)
    try:
        assert store.identity is None and store.identify() is None
        assert sorted(os.listdir(root)) == ["FORMAT", "LOCK", "blobs"]
        fs.full = False
        assert store.identify() is not None
    finally:
        store.close()


def test_an_identity_a_stat_cannot_see_is_read_not_replaced(tmp_path):
    """A sick disk whose ``stat`` of IDENTITY fails (``os.path.exists`` says
    False for EIO as for ENOENT) while it is also full: the IDENTITY there
    is read and kept, never removed for the write that failed and then
    replaced by a new id (which every front end would take for a wiped
    store, marking all its replicas lost)."""

    class SickAndFull(OsFileSystem):
        def exists(self, path: str) -> bool:
            return False if path.endswith("IDENTITY") else super().exists(path)

        def open(self, path: str, flags: int, mode: int = 0o644) -> int:
            if path.endswith("IDENTITY.tmp"):
                raise OSError(NO_SPACE_ERRNOS[0], "No space left on device")
            return super().open(path, flags, mode)

    root = tmp_path / "d"
    first = BlobStore.open(root)
    first.close()
    store = BlobStore.open(root, fs=SickAndFull())
    try:
        assert store.identity == first.identity
        assert store.identify() == first.identity
    finally:
        store.close()
    assert json.loads((root / "IDENTITY").read_text())["store_id"] == first.identity.store_id


def test_an_identity_that_cannot_be_written_for_another_cause_still_stops_the_store(tmp_path):
    """Only a full disk is served around: an I/O error writing IDENTITY
    stops the open as before (the disk is failing, not full)."""

    class Broken(OsFileSystem):
        def fsync(self, fd: int) -> None:
            raise OSError(5, "Input/output error")

    root = tmp_path / "d"
    older_store(root, {"a": pattern(1000)})
    with pytest.raises(OSError, match="Input/output error"):
        BlobStore.open(root, fs=Broken(), journal_size=0)
    assert not (root / "IDENTITY").exists()


def test_a_new_store_on_a_full_disk_still_fails_to_open(tmp_path):
    """A new store has nothing to serve: no room for its IDENTITY (written
    before FORMAT) fails its open as before, and leaves no FORMAT, so the
    next open, with room, creates it whole."""
    fs = FullDiskFileSystem()
    fs.full = True
    with pytest.raises(OSError) as e:
        BlobStore.open(tmp_path / "d", fs=fs)
    assert e.value.errno in NO_SPACE_ERRNOS
    assert not (tmp_path / "d" / "FORMAT").exists()
    fs.full = False
    store = BlobStore.open(tmp_path / "d", fs=fs)
    store.close()
    assert store.identity is not None


@pytest.mark.parametrize("old", [1, 2, 3])
def test_an_older_store_is_upgraded_to_4_unless_a_version_3_one_has_no_journal(tmp_path, old):
    """Version 4 only says that puts may be durable through the put journal
    alone: a version-3 store opened without a journal stays at 3 (older
    code still reads it), even after a small put; versions 1 and 2 need at
    least 3 (inline checksums and data) and go to 4.  With a journal every
    one goes to 4."""
    BlobStore.open(tmp_path / "d").close()
    fmt = tmp_path / "d" / "FORMAT"

    def version() -> int:
        return json.loads(fmt.read_text())["version"]

    fmt.write_text(json.dumps({"format": "wsfs-blobstore", "version": old, "block_size": 65536}))
    store = BlobStore.open(tmp_path / "d", journal_size=0)
    handle = store.open_put("x", 1, {}, 100)
    handle.write(pattern(100))
    handle.seal()
    handle.close()
    store.close()
    assert version() == (3 if old == 3 else 4)
    BlobStore.open(tmp_path / "d").close()
    assert version() == 4


def test_unknown_format_version_is_refused(tmp_path):
    BlobStore.open(tmp_path / "d").close()
    fmt = tmp_path / "d" / "FORMAT"
    fmt.write_text(json.dumps({"format": "wsfs-blobstore", "version": 99, "block_size": 65536}))
    with pytest.raises(FormatError, match="version 99 is not supported"):
        BlobStore.open(tmp_path / "d")


def test_blobs_without_format_file_are_refused(tmp_path):
    (tmp_path / "d" / "blobs" / "ab").mkdir(parents=True)
    with pytest.raises(FormatError, match="no FORMAT"):
        BlobStore.open(tmp_path / "d")
    assert not (tmp_path / "d" / "FORMAT").exists()


def test_a_first_open_cut_short_before_its_format_file_is_finished(tmp_path):
    """A crash between making blobs/ and writing FORMAT left an empty blobs/:
    the next start completes the store instead of refusing it forever."""
    (tmp_path / "d" / "blobs").mkdir(parents=True)
    store = BlobStore.open(tmp_path / "d", block_size=131072)
    store.close()
    assert store.block_size == 131072
    again = BlobStore.open(tmp_path / "d")
    again.close()
    assert again.block_size == 131072


def test_second_store_on_same_directory_is_refused(store):
    with pytest.raises(FormatError, match="in use"):
        BlobStore.open(store.root)


def test_existing_store_keeps_its_block_size(tmp_path):
    BlobStore.open(tmp_path / "d", block_size=BLOCK).close()
    store = BlobStore.open(tmp_path / "d", block_size=65536)
    try:
        assert store.block_size == BLOCK
    finally:
        store.close()


def test_write_seal_read_roundtrip_keeps_bytes_and_meta(store):
    data = pattern(5 * BLOCK + 123)
    handle = write_all(store, "b1", data, chunk=777)
    assert handle.size == len(data)
    info = handle.seal()
    assert (info.size, info.durable, info.state, info.epoch) == (len(data), len(data), SEALED, 1)
    assert info.meta == {"inode": 7}
    got = read_all(store, "b1")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert store.stat("b1") == info


def test_sync_reports_durable_length(store):
    handle = write_all(store, "b", pattern(3000))
    assert store.stat("b").durable == 0
    assert handle.sync() == 3000
    handle.write(b"x" * 100)
    info = store.stat("b")
    assert (info.size, info.durable, info.state) == (3100, 3000, OPEN)


def test_read_range_within_and_across_blocks(store):
    data = pattern(4 * BLOCK)
    write_all(store, "b", data).seal()
    assert read_all(store, "b", BLOCK - 10, 20) == data[BLOCK - 10 : BLOCK + 10]
    assert read_all(store, "b", 3 * BLOCK + 5, None, n=7) == data[3 * BLOCK + 5 :]
    assert read_all(store, "b", len(data), 0) == b""


def test_read_past_end_is_invalid_offset(store):
    write_all(store, "b", pattern(1000)).seal()
    with pytest.raises(InvalidOffset):
        store.open_read("b", 900, 101)
    with pytest.raises(InvalidOffset):
        store.open_read("b", 1001, None)


def test_unsealed_blob_reads_up_to_its_size_including_unsynced_bytes(store):
    data = pattern(2 * BLOCK + 50)
    handle = write_all(store, "b", data[: BLOCK + 10])
    handle.sync()
    handle.write(data[BLOCK + 10 :])
    assert read_all(store, "b") == data


def test_rewrite_at_smaller_offset_truncates_first(store):
    first = pattern(3 * BLOCK, seed=1)
    handle = write_all(store, "b", first)
    handle.sync()
    handle.close()
    again = store.open_write("b", 1, BLOCK + 5, {"inode": 7})
    assert again.size == BLOCK + 5
    tail = pattern(100, seed=2)
    again.write(tail)
    info = again.seal()
    assert info.size == BLOCK + 105
    assert read_all(store, "b") == first[: BLOCK + 5] + tail


def test_write_beyond_end_is_invalid_offset(store):
    write_all(store, "b", pattern(100)).close()
    with pytest.raises(InvalidOffset):
        store.open_write("b", 1, 101, {})
    with pytest.raises(InvalidOffset):
        store.open_write("new", 1, 1, {})
    with pytest.raises(BlobNotFound):
        store.stat("new")


def test_sealed_blob_refuses_writes(store):
    write_all(store, "b", pattern(100)).seal()
    with pytest.raises(BlobSealed):
        store.open_write("b", 1, 100, {})
    with pytest.raises(BlobSealed):
        store.open_write("b", 5, 0, {})


def test_older_epoch_is_refused_and_newer_is_adopted_durably(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(100), epoch=3).close()
    with pytest.raises(StaleEpoch):
        store.open_write("b", 2, 100, {})
    store.open_write("b", 4, 100, {"inode": 8}).close()
    store.close()
    reopened = BlobStore.open(tmp_path / "d")
    try:
        info = reopened.stat("b")
        assert (info.epoch, info.meta) == (4, {"inode": 8})
    finally:
        reopened.close()


def test_fence_with_newer_epoch_makes_old_handle_fail(store):
    handle = write_all(store, "b", pattern(3000))
    handle.sync()
    info = store.fence("b", 2, 2000)
    assert (info.size, info.durable, info.epoch) == (2000, 2000, 2)
    with pytest.raises(StaleEpoch):
        handle.write(b"late")
    with pytest.raises(StaleEpoch):
        handle.sync()
    with pytest.raises(StaleEpoch):
        handle.seal()
    assert store.stat("b").size == 2000


def test_fence_rules(store):
    handle = write_all(store, "b", pattern(3000), epoch=2)
    handle.sync()
    with pytest.raises(StaleEpoch):
        store.fence("b", 1, 100)
    with pytest.raises(InvalidOffset):
        store.fence("b", 2, 3001)
    assert store.fence("b", 3, 2500).size == 2500
    assert store.fence("b", 3, 2500) == store.stat("b")  # a retry changes nothing


def test_fence_makes_unsynced_bytes_durable(store):
    handle = write_all(store, "b", pattern(3000))
    info = store.fence("b", 2, 2500)
    assert (info.size, info.durable) == (2500, 2500)
    assert read_all(store, "b") == pattern(3000)[:2500]
    del handle


def test_fence_of_sealed_blob_allows_only_a_no_op(store):
    sealed = write_all(store, "b", pattern(300)).seal()
    assert store.fence("b", 5, 300) == sealed
    with pytest.raises(BlobSealed):
        store.fence("b", 5, 200)
    with pytest.raises(StaleEpoch):
        store.fence("b", 0, 300)


def test_new_writer_supersedes_old_handle(store):
    old = write_all(store, "b", pattern(100))
    new = store.open_write("b", 1, 100, {})
    with pytest.raises(StaleEpoch):
        old.write(b"x")
    new.write(b"y")
    assert store.stat("b").size == 101


def test_commit_without_stream_seals_current_size(store):
    handle = write_all(store, "b", pattern(1500))
    handle.sync()
    handle.close()
    with pytest.raises(StaleEpoch):
        store.commit("b", 0)
    info = store.commit("b", 2)
    assert (info.state, info.size, info.epoch) == (SEALED, 1500, 2)
    assert store.commit("b", 2) == info
    assert read_all(store, "b") == pattern(1500)
    with pytest.raises(BlobSealed):
        store.open_write("b", 2, 1500, {})


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 129, ".hidden", "a b", None, 5])
def test_bad_blob_ids_are_refused_before_touching_disk(store, bad):
    fanned_out(store)  # its thread's mkdirs are not the calls' doing
    before = sorted(os.walk(store.root))
    for call in (
        lambda: store.open_write(bad, 1, 0, {}),
        lambda: store.open_read(bad, 0, 0),
        lambda: store.stat(bad),
        lambda: store.fence(bad, 1, 0),
        lambda: store.commit(bad, 1),
        lambda: store.delete(bad),
    ):
        with pytest.raises(BadRequest):
            call()
    assert sorted(os.walk(store.root)) == before


def test_bad_epoch_offset_and_meta_are_bad_requests(store):
    with pytest.raises(BadRequest):
        store.open_write("b", -1, 0, {})
    with pytest.raises(BadRequest):
        store.open_write("b", 1, -5, {})
    with pytest.raises(BadRequest):
        store.open_write("b", 1, 0, {"x": object()})
    with pytest.raises(BadRequest):
        store.open_write("b", 1, 0, ["not", "a", "dict"])
    with pytest.raises(BlobNotFound):
        store.stat("b")


def test_delete_removes_blob_and_its_files(store):
    write_all(store, "b", pattern(100)).seal()
    handle = write_all(store, "c", pattern(100))
    store.delete("b")
    store.delete("c")
    with pytest.raises(BlobNotFound):
        store.stat("b")
    with pytest.raises(BlobNotFound):
        store.delete("b")
    with pytest.raises(BlobNotFound):
        handle.write(b"x")
    leftovers = [f for _, _, files in os.walk(os.path.join(store.root, "blobs")) for f in files]
    assert leftovers == []


def test_a_fan_out_directory_removed_empty_is_made_again_for_the_next_blob(store):
    """The store remembers the fan-out directories it made (one mkdir per
    directory, not per blob); one an operator removed empty is made again
    when a blob goes there, and the blob is durable as before."""
    from wsstorage.diskformat import BlobPaths

    write_all(store, "b", pattern(100)).seal()
    directory = BlobPaths.of(store.root, "b").directory
    store.delete("b")
    os.rmdir(directory)
    data = pattern(5000, seed=3)
    info = write_all(store, "b", data).seal()
    assert (info.size, info.state) == (len(data), SEALED)
    assert read_all(store, "b") == data


def test_list_blobs_reports_every_blob(store):
    write_all(store, "sealed1", pattern(10)).seal()
    write_all(store, "open1", pattern(20)).sync()
    infos = {i.blob_id: i for i in store.list_blobs()}
    assert set(infos) == {"sealed1", "open1"}
    assert infos["sealed1"].state == SEALED
    assert (infos["open1"].state, infos["open1"].durable) == (OPEN, 20)


def test_free_space_reports_free_and_total(store):
    free, total = store.free_space()
    assert 0 < free <= total
