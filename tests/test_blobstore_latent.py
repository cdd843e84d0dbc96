"""Latent faults of the blob store found by review: records re-encoded
without their bytes, stale ``damaged`` entries, damaged blobs that cannot
be deleted, readers of a blob replaced under them, and file descriptors
closed under a sync running in a thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.defer import ensureDeferred

from tests.test_blobstore import BLOCK, gated_sync, pattern, read_all, write_all
from tests.test_blobstore_put_inline import put
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import RECORD_HEAD, BlobPaths, FormatError, MetaRecord
from wsstorage.errors import BlobNotFound, ChecksumError, StorageError
from wsstorage.fsops import OsFileSystem
from wsstorage.fsshims import GatedFsyncFileSystem
from wsstorage.scrub import Scrubber, inline


def meta_path(store: BlobStore, blob_id: str) -> Path:
    return Path(BlobPaths.of(store.root, blob_id).meta)


def listed(store: BlobStore) -> list[str]:
    return sorted(i.blob_id for i in store.list_blobs())


# -- 1. a record read without its bytes ---------------------------------


def test_a_record_read_without_its_inline_bytes_refuses_to_be_encoded(tmp_path):
    """A format-3 record read by its JSON line alone (``RECORD_HEAD``) has
    ``data`` None but ``data_size`` set.  Encoding it used to write a
    record without ``data_size``: a sealed blob that claims a ``.data``
    file it never had, its bytes lost.  Now it is refused; the whole
    record still encodes to the same bytes."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    put(store, "b", pattern(5000))
    store.checkpoint()  # its record file is written
    raw = meta_path(store, "b").read_bytes()
    assert len(raw) > RECORD_HEAD  # the head alone is not the whole record
    head = MetaRecord.decode(raw[:RECORD_HEAD], total=len(raw))
    assert head.data is None and head.data_size == 5000
    with pytest.raises(ValueError):
        head.encode()
    assert MetaRecord.decode(raw).encode() == raw
    store.close()


def test_every_record_writer_leaves_a_reopened_inline_blob_as_it_was(tmp_path):
    """No path re-writes the record of a sealed blob: a no-op fence, a
    commit, a write or a fence at a newer epoch after a restart (the blob
    then known from its JSON line only) leave the record byte for byte."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(5000)
    put(store, "b", data)
    store.checkpoint()  # its record file is written
    raw = meta_path(store, "b").read_bytes()
    store.close()
    store = BlobStore.open(tmp_path / "d")
    store.fence("b", 1, len(data))
    store.commit("b", 2)
    for attempt in (
        lambda: store.open_write("b", 3, 0, {"inode": 1}),
        lambda: store.fence("b", 4, 0),
    ):
        with pytest.raises(Exception):  # noqa: B017 (BlobSealed, either)
            attempt()
    assert meta_path(store, "b").read_bytes() == raw
    assert read_all(store, "b") == data
    store.close()


# -- 2. stale ``damaged`` entries -------------------------------------------


def damage(store: BlobStore, blob_id: str) -> bytes:
    """Make ``blob_id``'s record undecodable; return its good bytes."""
    path = meta_path(store, blob_id)
    good = path.read_bytes()
    path.write_bytes(b"{not json")
    with pytest.raises(FormatError):
        store.stat(blob_id)
    assert blob_id in store.damaged
    return good


def test_a_damaged_record_that_reads_again_leaves_damaged_and_is_counted(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "a", pattern(10)).seal()
    write_all(store, "b", pattern(10)).seal()
    good = damage(store, "b")
    assert store.count_blobs() == len(listed(store)) == 1
    meta_path(store, "b").write_bytes(good)  # restored from a backup
    assert store.stat("b").size == 10
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 2
    store.close()


def test_a_damaged_record_removed_by_hand_leaves_damaged_at_the_next_scrub(tmp_path):
    """The store cannot tell a record removed by hand from one scrub is
    quarantining (its count must not move twice): scrub, finding it gone,
    drops it from ``damaged``."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(10)).seal()
    damage(store, "b")
    paths = BlobPaths.of(store.root, "b")
    for path in (paths.meta, paths.data):
        os.unlink(path)
    scrubber = Scrubber(None, store, run_blocking=inline)
    result = ensureDeferred(scrubber.scrub_pass())
    assert result.called  # inline: no clock, no wait
    assert store.damaged == []
    assert scrubber.damaged == []
    assert store.count_blobs() == len(listed(store)) == 0
    store.close()


def test_a_new_blob_of_a_damaged_id_gone_by_hand_is_counted_once(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(10)).seal()
    damage(store, "b")
    for path in (BlobPaths.of(store.root, "b").meta, BlobPaths.of(store.root, "b").data):
        os.unlink(path)
    write_all(store, "b", pattern(20)).seal()
    assert store.stat("b").size == 20
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 1
    store.close()


# -- 3. deleting a damaged blob --------------------------------------------


def test_a_blob_whose_record_is_damaged_can_be_deleted(tmp_path):
    """An operator (or GC) deleting a blob whose record does not decode
    got FormatError and could not remove it.  Now its files go, it leaves
    ``damaged``, and the id can be stored again."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "keep", pattern(10)).seal()
    write_all(store, "b", pattern(10)).seal()
    damage(store, "b")
    store.delete("b")
    directory = BlobPaths.of(store.root, "b").directory
    assert not [n for n in os.listdir(directory) if n.startswith("b.")]
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 1
    with pytest.raises(BlobNotFound):
        store.delete("b")
    write_all(store, "b", pattern(30)).seal()
    assert store.count_blobs() == len(listed(store)) == 2
    store.close()


def test_a_damaged_blob_found_at_start_can_be_deleted(tmp_path):
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(10)).seal()
    store.close()
    meta_path(store, "b").write_bytes(b"{not json")
    store = BlobStore.open(tmp_path / "d")
    assert store.damaged == ["b"]
    store.delete("b")
    assert store.damaged == [] and store.count_blobs() == 0
    store.close()


# -- 4. a reader of a blob replaced under it ----------------------------------


class ReplaceBeforeOpen(OsFileSystem):
    """Runs ``hook`` once, just before the next read-only open of ``name``:
    the blob is deleted and stored again between its look-up and the
    opening of its files."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hook = None

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        hook = self.hook
        readonly = flags & os.O_ACCMODE == os.O_RDONLY
        if hook is not None and readonly and os.path.basename(path) == self.name:
            self.hook = None
            hook()
        return super().open(path, flags, mode)


def test_a_blob_replaced_between_its_look_up_and_its_open_is_gone_not_damaged(tmp_path):
    """open_read read the record (checksums inline), then the blob was
    deleted and stored again with other bytes, then ``.data`` was opened:
    the new bytes failed the old checksums, a ChecksumError that makes the
    front end mark a good replica stale.  It is BlobNotFound now (read
    another replica); real damage is still a ChecksumError."""
    fs = ReplaceBeforeOpen("b.data")
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    write_all(store, "b", pattern(10_000)).seal()

    seeds = iter(range(1, 100))

    def replace() -> None:
        store.delete("b")
        write_all(store, "b", pattern(10_000, seed=next(seeds))).seal()

    fs.hook = replace
    with pytest.raises(BlobNotFound):
        read_all(store, "b")
    assert fs.hook is None  # it ran
    buffer = memoryview(bytearray(BLOCK))
    fs.hook = replace
    reader = store.open_read("b", 0, None)
    try:
        with pytest.raises(BlobNotFound):
            reader.read_into(buffer)
    finally:
        reader.close()
    # Damage in place is still damage.
    with open(BlobPaths.of(store.root, "b").data, "r+b") as f:
        f.seek(5)
        f.write(b"\xff\xfe")
    with pytest.raises(ChecksumError):
        read_all(store, "b")
    store.close()


def test_damage_of_a_blob_being_written_is_still_a_checksum_error(tmp_path):
    """The replaced-under-the-reader check must not hide real damage of an
    open blob, whose record on disk lags its size."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    handle = write_all(store, "b", pattern(3 * BLOCK))
    handle.sync()
    handle.write(pattern(BLOCK, seed=2))
    with open(BlobPaths.of(store.root, "b").data, "r+b") as f:
        f.write(b"\xff\xfe")
    with pytest.raises(ChecksumError):
        read_all(store, "b")
    handle.close()
    store.close()


# -- 5. a delete while a sync runs in a thread -------------------------------


class GatedRecording(GatedFsyncFileSystem):
    """``GatedFsyncFileSystem`` that records which file every sync and
    cache drop reached (by the path its fd was opened with)."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: list[str] = []

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self.touched.append(self.paths.get(fd, "?"))

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self.touched.append(self.paths.get(fd, "?"))

    def drop_cache(self, fd: int, offset: int, length: int) -> None:
        self.touched.append(self.paths.get(fd, "?"))
        super().drop_cache(fd, offset, length)


@pytest.mark.parametrize("closer", ["delete", "commit", "close"])
def test_a_sync_in_a_thread_never_touches_a_descriptor_closed_under_it(tmp_path, closer):
    """A sync takes the blob's descriptors, lets go of its lock and
    fdatasyncs them; a delete (or a commit, or the store's close) closed
    them meanwhile.  The sync then failed with EBADF, or, when the numbers
    had been reused by another open, synced (and dropped the cache of) an
    unrelated file.  Now the descriptors stay open until the sync is done:
    it ends with the blob's own error, or succeeds, on the blob's files."""
    fs = GatedRecording()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs, drop_behind=BLOCK)
    handle = write_all(store, "b", pattern(3 * BLOCK))
    victims: list[int] = []
    with gated_sync(fs, handle) as outcome:
        if closer == "delete":
            store.delete("b")
        elif closer == "commit":
            store.commit("b", 2)
        else:
            store.close()
        # Take the lowest free descriptor numbers: the blob's, if closed.
        for i in range(4):
            victims.append(fs.open(str(tmp_path / f"victim{i}"), os.O_RDWR | os.O_CREAT))
    for fd in victims:
        fs.close(fd)
    assert not any("victim" in path for path in fs.touched), fs.touched
    error = outcome.error
    assert not isinstance(error, OSError), error
    if closer == "delete":
        assert isinstance(error, BlobNotFound)
    if closer == "commit":
        assert error is not None and not isinstance(error, OSError)
    if closer != "close":
        store.close()


# -- review of the fixes above ------------------------------------------------


def corrupt_first_block(store: BlobStore, blob_id: str) -> None:
    with open(BlobPaths.of(store.root, blob_id).data, "r+b") as f:
        f.seek(5)
        f.write(b"\xff\xfe")


def test_a_checksum_failure_in_a_nowait_read_is_judged_off_the_reactor(tmp_path, monkeypatch):
    """``read_into(nowait=True)`` runs in a storage server's reactor thread
    and must never wait for the disk; telling damage from a replaced blob
    stats the files and reads the record.  A failing block there is handed
    to the threaded read (BlockingIOError), which says ChecksumError."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(4 * BLOCK)).seal()
    corrupt_first_block(store, "b")
    looked: list[str] = []
    real = BlobStore._same_record

    def same_record(self, blob):
        looked.append(blob.blob_id)
        return real(self, blob)

    monkeypatch.setattr(BlobStore, "_same_record", same_record)
    reader = store.open_read("b", 0, None)
    try:
        reader.read(BLOCK)  # puts the blocks in the page cache (and fails)
    except ChecksumError:
        pass
    looked.clear()
    buffer = memoryview(bytearray(BLOCK))
    try:
        with pytest.raises(BlockingIOError):
            reader.read_into(buffer, nowait=True)
        assert looked == []
        with pytest.raises(ChecksumError):
            reader.read_into(buffer)
        assert looked == ["b"]
    finally:
        reader.close()
    store.close()


def test_a_disk_that_cannot_say_whether_a_blob_was_replaced_leaves_the_checksum_error(
    tmp_path, monkeypatch
):
    """Real damage stays a ChecksumError (which makes the front end report
    it and repair run) when the look at the disk fails itself (EIO)."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    write_all(store, "b", pattern(4 * BLOCK)).seal()
    corrupt_first_block(store, "b")

    def failing(self, blob):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(BlobStore, "_same_record", failing)
    with pytest.raises(ChecksumError):
        read_all(store, "b")
    store.close()


class FailingClose(GatedRecording):
    """Closing the first descriptor given back after a sync raises EIO."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_close = False
        self.closed: list[int] = []

    def close(self, fd: int) -> None:
        if self.fail_next_close:
            self.fail_next_close = False
            super().close(fd)
            raise OSError(5, "Input/output error")
        self.closed.append(fd)
        super().close(fd)


def test_a_failing_close_after_a_sync_neither_hides_its_outcome_nor_leaks(tmp_path):
    """The descriptors a sync borrowed are closed when it gives them back,
    in a ``finally``: an EIO from one close used to replace the sync's own
    outcome and leave the other descriptor open."""
    fs = FailingClose()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    handle = write_all(store, "b", pattern(3 * BLOCK))
    with gated_sync(fs, handle) as outcome:
        store.delete("b")  # the blob's descriptors are retired, not closed
        retired = list(handle._blob.retired)
        fs.fail_next_close = True
    assert len(retired) == 2
    assert isinstance(outcome.error, BlobNotFound), outcome
    for fd in retired:  # both closed, the second despite the first's EIO
        with pytest.raises(OSError):
            os.fstat(fd)
    store.close()


# -- a store used after its close ----------------------------------------------


def open_under(root: str) -> list[str]:
    """The files under ``root`` this process holds open (an exact count of
    all descriptors could move as the GC closes some other test's file)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith(str(root) + os.sep):
            held.append(target)
    return held


def test_a_write_handle_used_after_the_store_closed_fails_without_leaking(tmp_path):
    """``store.close()`` closes every blob's descriptors; a write handle
    used after it (a request still in the thread pool when the server
    stopped) reopened the blob's files, and nothing ever closed them again
    (nor was the data directory's lock held any more).  Now every call of
    the handle, and of the store, says the store is closed, and no
    descriptor is opened."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    synced = write_all(store, "synced", pattern(3 * BLOCK))
    synced.sync()
    fresh = write_all(store, "fresh", pattern(10))
    store.close()
    assert open_under(store.root) == []
    calls = [
        lambda: synced.write(b"more"),
        synced.sync,
        synced.seal,
        lambda: fresh.write_pieces([b"a", b"b"]),
        fresh.sync,
        fresh.seal,
        lambda: store.open_write("new", 1, 0, {}),
        lambda: store.fence("fresh", 2, 0),
        lambda: put(store, "small", b"x"),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="closed"):
            call()
    assert open_under(store.root) == []


# -- deleting a damaged blob without stalling the store --------------------------


class HookedUnlink(OsFileSystem):
    """Runs ``hook`` once, just before the first unlink of a file whose
    name starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hook = None

    def unlink(self, path: str) -> None:
        hook = self.hook
        if hook is not None and os.path.basename(path).startswith(self.prefix):
            self.hook = None
            hook()
        super().unlink(path)


def test_a_damaged_blobs_data_is_unlinked_outside_the_registry_lock(tmp_path):
    """A delete of a damaged blob unlinked its files under the store-wide
    registry lock, so every open, stat and create waited for the unlink of
    a ``.data`` that may be gigabytes.  Now its files are renamed to temp
    names under the lock and unlinked after it: the store goes on
    meanwhile, and a new blob of the same id created then keeps its
    files.  A crash between leaves temp files, which the next start
    removes."""
    fs = HookedUnlink("b.data")
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    write_all(store, "keep", pattern(10)).seal()
    write_all(store, "b", pattern(3 * BLOCK)).seal()
    damage(store, "b")
    new = pattern(2 * BLOCK, seed=3)
    seen: dict[str, object] = {}

    def during_the_unlink() -> None:
        free = store._registry_lock.acquire(blocking=False)
        seen["lock free"] = free
        if free:
            store._registry_lock.release()
            seen["keep"] = store.stat("keep").size
            write_all(store, "b", new).seal()

    fs.hook = during_the_unlink
    store.delete("b")
    assert fs.hook is None  # it ran
    assert seen == {"lock free": True, "keep": 10}
    assert read_all(store, "b") == new
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 2
    directory = BlobPaths.of(store.root, "b").directory
    assert sorted(n for n in os.listdir(directory) if n.startswith("b.")) == ["b.data", "b.meta"]
    store.close()


def test_the_temp_names_of_a_damaged_blob_cut_short_are_removed_at_start(tmp_path):
    fs = HookedUnlink("b.")
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    write_all(store, "b", pattern(3 * BLOCK)).seal()
    damage(store, "b")

    def crash() -> None:
        raise KeyboardInterrupt("the process dies here")

    fs.hook = crash
    with pytest.raises(KeyboardInterrupt):
        store.delete("b")
    store.close()
    directory = BlobPaths.of(store.root, "b").directory
    assert [n for n in os.listdir(directory) if n.startswith("b.")]  # left behind
    store = BlobStore.open(tmp_path / "d")
    assert [n for n in os.listdir(directory) if n.startswith("b.")] == []
    assert store.damaged == [] and store.count_blobs() == 0
    store.close()
