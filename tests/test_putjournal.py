"""The put journal (``wsstorage.putjournal``): a small put is durable by one
fdatasync of a preallocated journal; its record file is made durable by a
later checkpoint, and a replay at open restores what a power loss took.

A power loss is simulated by copying the data directory of a live store
(what the disk would hold had the page cache been written back) and then
removing or damaging, in the copy, the record files a power loss may lose:
those written since the last checkpoint."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.storage_procs import StorageProcess, read_sha
from tests.test_blobstore import BLOCK, pattern, read_all
from tests.test_blobstore_durability import GatedUnlink
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import BlobPaths, FormatError
from wsstorage.errors import BlobNotFound, BlobSealed, DiskFull, StorageError
from wsstorage.fsshims import RecordingFileSystem
from wsstorage.putjournal import (
    ENTRY_CRC,
    ENTRY_HEAD,
    HEADER,
    HEADER_CRC,
    HEADER_MAGIC,
    HEADER_SIZE,
    JOURNAL_FILES,
    Entry,
    decode_header,
    encode_entry,
    encode_header,
    readable_after,
    scan,
)
from wsstorage.records import SEALED


def put(store: BlobStore, blob_id: str, data: bytes, epoch: int = 1):
    handle = store.open_put(blob_id, epoch, {"inode": 3}, len(data))
    try:
        handle.write(data)
        return handle.seal()
    finally:
        handle.close()


def open_store(path: Path, **kw) -> BlobStore:
    """A store whose checkpoints come only when asked (or half full, or at
    close), so a test decides what is still in the journal."""
    kw.setdefault("checkpoint_after", None)
    store = BlobStore.open(path, block_size=BLOCK, **kw)
    assert store.wait_fanned_out(30)  # its syncs are not counted as a put's
    return store


def crash_copy(store: BlobStore, tmp_path: Path, name: str = "copy") -> Path:
    """The data directory as a crash would leave it (page cache written
    back): a copy, without the lock."""
    target = tmp_path / name
    for _ in range(20):
        try:
            shutil.copytree(store.root, target)
            return target
        except shutil.Error as e:
            # A checkpoint still running in the background renamed or
            # removed a file between the listing and its copy: take the
            # picture again (only a vanished file is retried).
            if not all("No such file or directory" in str(err[2]) for err in e.args[0]):
                raise
            shutil.rmtree(target)
    raise AssertionError("the store's files kept changing under the copy")


def meta(root: Path | str, blob_id: str) -> Path:
    return Path(BlobPaths.of(str(root), blob_id).meta)


def journal_entries(root: Path | str) -> list[Entry]:
    out: list[Entry] = []
    for name in JOURNAL_FILES:
        raw = (Path(root) / name).read_bytes()
        generation = decode_header(raw, name)
        assert generation is not None
        out += scan(raw, generation)[0]
    return out


def journal_entries_of(path: Path) -> list[Entry]:
    raw = path.read_bytes()
    generation = decode_header(raw, path.name)
    return [] if generation is None else scan(raw, generation)[0]


# -- entries -------------------------------------------------------------


def journal_image(entries: list[bytes], generation: int = 7, size: int = 64 * 1024) -> bytearray:
    raw = bytearray(size)
    raw[: HEADER.size + HEADER_CRC.size] = encode_header(generation, size)
    offset = HEADER_SIZE
    for entry in entries:
        raw[offset : offset + len(entry)] = entry
        offset += len(entry)
    return raw


def test_entries_round_trip_and_a_scan_stops_at_the_zeros_after_them():
    entries = [encode_entry(7, f"b{i}", pattern(100 * i + 1, seed=i)) for i in range(5)]
    raw = journal_image(entries)
    found, end = scan(raw, 7)
    starts = [HEADER_SIZE + sum(len(e) for e in entries[:i]) for i in range(5)]
    assert found == [Entry(f"b{i}", pattern(100 * i + 1, seed=i), starts[i]) for i in range(5)]
    assert end == HEADER_SIZE + sum(len(e) for e in entries)
    assert decode_header(bytes(raw), "j") == 7


def test_a_scan_stops_at_a_torn_entry():
    entries = [encode_entry(7, f"b{i}", pattern(500, seed=i)) for i in range(3)]
    raw = journal_image(entries)
    tail = HEADER_SIZE + len(entries[0]) + len(entries[1])
    raw[tail + len(entries[2]) - 10 : tail + len(entries[2])] = bytes(10)  # not all written
    assert [e.blob_id for e in scan(raw, 7)[0]] == ["b0", "b1"]


def test_a_scan_stops_at_an_entry_that_fails_its_crc():
    entries = [encode_entry(7, f"b{i}", pattern(500, seed=i)) for i in range(3)]
    raw = journal_image(entries)
    raw[HEADER_SIZE + len(entries[0]) + 200] ^= 1
    assert [e.blob_id for e in scan(raw, 7)[0]] == ["b0"]


def test_a_scan_ignores_the_stale_entries_of_an_older_generation():
    """After a reset (a new header generation) the old entries are still in
    the file: the first one after the new ones ends the scan."""
    old = [encode_entry(6, f"old{i}", pattern(300, seed=i)) for i in range(4)]
    raw = journal_image(old, generation=6)
    raw[: HEADER.size + HEADER_CRC.size] = encode_header(7, len(raw))
    assert scan(raw, 7)[0] == []
    new = encode_entry(7, "new", pattern(300, seed=9))  # same length as an old one
    raw[HEADER_SIZE : HEADER_SIZE + len(new)] = new
    assert [e.blob_id for e in scan(raw, 7)[0]] == ["new"]


def test_a_full_journal_scans_to_its_last_byte():
    record = pattern(1000)
    size = ENTRY_HEAD.size + ENTRY_CRC.size + 2 + len(record)
    entries = [encode_entry(7, f"b{i}", record) for i in range(10)]
    raw = journal_image(entries, size=HEADER_SIZE + 10 * size)
    found, end = scan(raw, 7)
    assert len(found) == 10 and end == len(raw)


def test_a_header_of_a_newer_version_is_refused_and_a_torn_one_is_no_header():
    raw = bytearray(encode_header(3, 8192))
    assert decode_header(bytes(raw), "j") == 3
    raw[3] ^= 1
    assert decode_header(bytes(raw), "j") is None
    newer = HEADER.pack(HEADER_MAGIC, 2, 3, 8192)
    with pytest.raises(FormatError, match="put journal version 2"):
        decode_header(newer + HEADER_CRC.pack(__import__("crc32c").crc32c(newer)), "j")


def test_whole_entries_past_a_damaged_one_are_counted_not_past_a_torn_tail():
    """A scan stops at a damaged entry as at a torn one; what lies past it
    tells them apart: whole entries of the same generation (acknowledged
    puts the replay cannot bring back) or nothing of it (zeros, or an
    older generation's stale entries)."""
    entries = [encode_entry(7, f"b{i}", pattern(500, seed=i)) for i in range(5)]
    raw = journal_image(entries)
    second = HEADER_SIZE + len(entries[0])
    raw[second + 200] ^= 1
    found, stop = scan(raw, 7)
    assert [e.blob_id for e in found] == ["b0"] and stop == second
    assert readable_after(raw, 7, stop) == (3, second + len(entries[1]))
    # Damage in an entry's header, its magic included: the same.
    raw[second + 200] ^= 1
    raw[second] ^= 0xFF
    assert readable_after(raw, 7, scan(raw, 7)[1]) == (3, second + len(entries[1]))

    torn = journal_image(entries)
    tail = HEADER_SIZE + sum(len(e) for e in entries[:4])
    torn[tail + len(entries[4]) - 10 : tail + len(entries[4])] = bytes(10)
    assert readable_after(torn, 7, scan(torn, 7)[1]) == (0, -1)

    stale = journal_image([encode_entry(6, f"old{i}", pattern(500, seed=i)) for i in range(4)])
    new = encode_entry(7, "new", pattern(500, seed=9))
    stale[HEADER_SIZE : HEADER_SIZE + len(new)] = new
    assert readable_after(stale, 7, scan(stale, 7)[1]) == (0, -1)


def test_a_replay_that_stops_at_a_damaged_entry_says_what_it_could_not_replay(tmp_path):
    """A chaos run damaged entries in the middle of a crashed server's
    journals: the store opened saying nothing, and fsck later found 24
    acknowledged blobs missing on it.  The replay still stops at the
    damage, and now warns with the count of whole entries past it."""
    from twisted.logger import globalLogPublisher

    store = open_store(tmp_path / "d")
    for i in range(6):
        put(store, f"b{i}", pattern(3000, seed=i))
    copy = crash_copy(store, tmp_path)
    store.close()
    entries = journal_entries(copy)
    assert len(entries) == 6
    # Damage the second entry of whichever file holds it (its record).
    victim = entries[1]
    [path] = [copy / n for n in JOURNAL_FILES if victim in journal_entries_of(copy / n)]
    raw = bytearray(path.read_bytes())
    raw[victim.offset + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert victim not in journal_entries_of(path)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        replayed = open_store(copy)
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        warned = [e for e in events if "damaged" in e.get("log_format", "")]
        assert len(warned) == 1
        assert warned[0]["lost"] >= 1 and warned[0]["stop"] == victim.offset
        assert "wsfs fsck" in warned[0]["log_format"]
        assert replayed.count_blobs() == 6 - 1 - warned[0]["lost"]
    finally:
        replayed.close()


# -- the store -------------------------------------------------------------


def test_a_crash_before_the_checkpoint_replays_lost_and_torn_records(tmp_path):
    """Records of puts since the last checkpoint are resident (no file
    yet), and a power loss during a checkpoint may leave their files
    missing, empty, torn in their data, or cut short: each is written
    again from the journal at open, before the scan: the blobs read back
    whole and none is reported damaged."""
    store = open_store(tmp_path / "d")
    blobs = {f"b{i}": pattern(3000 + i, seed=i) for i in range(5)}
    for blob_id, data in blobs.items():
        assert put(store, blob_id, data).state == SEALED
    assert store.journal_pending() == sorted(blobs)
    copy = crash_copy(store, tmp_path)
    assert not any(meta(copy, blob_id).exists() for blob_id in blobs)
    records = {e.blob_id: e.record for e in journal_entries(copy)}
    meta(copy, "b1").write_bytes(b"")
    raw = records["b2"]
    meta(copy, "b2").write_bytes(raw[:-100] + bytes(100))
    meta(copy, "b3").write_bytes(raw[:40])
    store.close()
    replayed = open_store(copy)
    try:
        assert replayed.damaged == []
        assert replayed.count_blobs() == len(blobs)
        for blob_id, data in blobs.items():
            assert read_all(replayed, blob_id) == data
        assert replayed.journal_pending() == []
    finally:
        replayed.close()
    assert journal_entries(copy) == []


def test_a_record_replaced_by_a_later_blob_is_kept(tmp_path):
    """A record that decodes with another JSON line than its entry is a
    later blob of that id (possible only after a failed put whose entry
    could not be voided): replay leaves it."""
    store = open_store(tmp_path / "d")
    put(store, "x", pattern(100))
    copy = crash_copy(store, tmp_path)
    store.close()
    other = open_store(tmp_path / "other", journal_size=0)
    put(other, "x", pattern(200, seed=5), epoch=9)
    meta(copy, "x").parent.mkdir(exist_ok=True)
    other.close()
    shutil.copy(meta(tmp_path / "other", "x"), meta(copy, "x"))
    replayed = open_store(copy)
    try:
        assert read_all(replayed, "x") == pattern(200, seed=5)
    finally:
        replayed.close()


@pytest.mark.parametrize("how", ["delete", "quarantine"])
def test_removing_a_blob_with_a_pending_entry_checkpoints_first(tmp_path, how):
    """Otherwise the replay after a crash would bring the removed blob back.
    (A blob with a pending entry is resident, found in memory, never read
    from disk: never ``damaged``.  ``_delete_damaged`` settles all the
    same.)"""
    fs = RecordingFileSystem()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    put(store, "y", pattern(100, seed=1))
    if how == "quarantine":
        # Scrub finds a blob through list_blobs, resident or not.
        assert "x" in [i.blob_id for i in store.list_blobs()]
    fs.calls.clear()
    if how == "quarantine":
        moved = store.quarantine("x", lambda path: os.unlink(path))
        assert moved == [str(meta(store.root, "x"))]
    else:
        store.delete("x")
    assert ("syncfs", "d") in fs.calls
    assert store.journal_pending() == []
    copy = crash_copy(store, tmp_path)
    store.close()
    replayed = open_store(copy)
    try:
        with pytest.raises(BlobNotFound):
            replayed.stat("x")
        assert read_all(replayed, "y") == pattern(100, seed=1)
    finally:
        replayed.close()


def test_a_delete_of_a_blob_without_a_pending_entry_does_not_checkpoint(tmp_path):
    fs = RecordingFileSystem()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    store.checkpoint()
    put(store, "y", pattern(100))
    fs.calls.clear()
    store.delete("x")
    assert ("syncfs", "d") not in fs.calls
    assert store.journal_pending() == ["y"]
    store.close()


def test_close_checkpoints_and_resets_the_journal(tmp_path):
    fs = RecordingFileSystem()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    assert [e.blob_id for e in journal_entries(store.root)] == ["x"]
    fs.calls.clear()
    store.close()
    assert fs.calls.index(("syncfs", "d")) < fs.calls.index(("fdatasync", "journal-a"))
    assert journal_entries(tmp_path / "d") == []
    reopened = open_store(tmp_path / "d")
    assert read_all(reopened, "x") == pattern(100)
    reopened.close()


def test_the_background_checkpoint_makes_the_records_durable(tmp_path):
    """With a time trigger the store checkpoints by itself: waited for
    through the journal's own state, not a sleep."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, checkpoint_after=0.01)
    put(store, "x", pattern(100))
    journal = store._journal
    assert journal is not None
    with journal._idle:
        while any(side.pending for side in journal._sides):
            assert journal._idle.wait(30)
    assert journal_entries(store.root) == []
    store.close()


class NoSpaceForJournals(RecordingFileSystem):
    """ENOSPC on any write to a journal file being created."""

    def pwrite(self, fd: int, data, offset: int) -> int:
        if self._name(fd).startswith("journal-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().pwrite(fd, data, offset)


def test_a_journal_that_cannot_be_created_leaves_puts_on_their_own_syncs(tmp_path):
    fs = NoSpaceForJournals()
    store = open_store(tmp_path / "d", fs=fs)
    assert not any(n.startswith("journal-") for n in os.listdir(tmp_path / "d"))
    fs.calls.clear()
    put(store, "x", pattern(100))
    syncs = [c[0] for c in fs.calls if c[0] in ("fsync", "fdatasync", "fsync_dir")]
    assert syncs == ["fsync", "fsync_dir"]
    assert store.journal_pending() == []
    fs.calls.clear()
    put(store, "y", pattern(100, seed=1))  # the journal stays off: not tried again
    assert not any(c[1].startswith("journal-") for c in fs.calls if c[0] == "open")
    store.close()
    reopened = open_store(tmp_path / "d")
    assert read_all(reopened, "x") == pattern(100)
    put(reopened, "z", pattern(100, seed=2))  # the next start tries again
    assert sorted(n for n in os.listdir(tmp_path / "d") if n.startswith("journal-")) == list(
        JOURNAL_FILES
    )
    assert reopened.journal_pending() == ["z"]
    reopened.close()


def test_a_journal_of_a_newer_version_is_refused(tmp_path):
    store = BlobStore.open(tmp_path / "d")
    put(store, "x", pattern(100))
    store.close()
    path = tmp_path / "d" / "journal-a"
    raw = bytearray(path.read_bytes())
    head = HEADER.pack(HEADER_MAGIC, 2, 99, len(raw))
    raw[: len(head) + 4] = head + HEADER_CRC.pack(__import__("crc32c").crc32c(head))
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="put journal version 2"):
        BlobStore.open(tmp_path / "d")
    path.unlink()  # made again, empty, at the next first put
    store = BlobStore.open(tmp_path / "d")
    assert not path.exists()
    put(store, "y", pattern(100))
    store.close()
    assert len(path.read_bytes()) == len(raw)


def test_a_store_opened_without_a_journal_replays_it_then_removes_it(tmp_path):
    store = open_store(tmp_path / "d")
    put(store, "x", pattern(100))
    copy = crash_copy(store, tmp_path)
    store.close()
    assert not meta(copy, "x").exists()  # resident: its entry is all there is
    replayed = open_store(copy, journal_size=0)
    try:
        assert read_all(replayed, "x") == pattern(100)
        assert not any(n.startswith("journal-") for n in os.listdir(copy))
    finally:
        replayed.close()


def test_concurrent_puts_are_all_in_the_journal_when_acknowledged(tmp_path):
    """Eight threads put at once (their fdatasyncs overlap): every put that
    returned has its entry in the valid prefix, so that a crash copy,
    where no record has a file (all resident), gets them all back."""
    store = open_store(tmp_path / "d")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(40):
                put(store, f"t{k}-{i}", pattern(700 + i, seed=k * 100 + i))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    copy = crash_copy(store, tmp_path)
    store.close()
    for k in range(8):
        for i in range(40):
            assert not meta(copy, f"t{k}-{i}").exists()
    replayed = open_store(copy)
    try:
        assert replayed.count_blobs() == 8 * 40
        for k in range(8):
            for i in range(40):
                assert read_all(replayed, f"t{k}-{i}") == pattern(700 + i, seed=k * 100 + i)
    finally:
        replayed.close()


class HeldSyncfs(RecordingFileSystem):
    """A syncfs that waits for ``release`` once ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def syncfs(self, path: str, fd: int | None = None) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(30)
        super().syncfs(path, fd)


def test_puts_fall_back_to_their_own_syncs_while_both_journals_are_full(tmp_path):
    """At half full the active journal is checkpointed in the background;
    while that checkpoint is held, the other journal fills up, and a put
    that finds no room syncs its record itself (no wait)."""
    fs = HeldSyncfs()
    store = open_store(tmp_path / "d", fs=fs, journal_size=4 * HEADER_SIZE)
    fs.armed = True
    data = {f"b{i:02}": pattern(2000, seed=i) for i in range(20)}
    names = list(data)
    try:
        for blob_id in names[:3]:  # 3 entries of ~2.4 KiB: half of 12 KiB
            put(store, blob_id, data[blob_id])
        assert fs.entered.wait(30)  # switched to the other journal, flushing
        assert store.journal_pending() == names[:3]
        for blob_id in names[3:]:
            fs.calls.clear()
            put(store, blob_id, data[blob_id])
        assert ("fsync", "b19.meta.tmp") in fs.calls  # no room: its own syncs
        assert ("fdatasync", "journal-b") not in fs.calls
        assert names[3] in store.journal_pending()
    finally:
        fs.release.set()
    copy = crash_copy(store, tmp_path)
    store.close()
    replayed = open_store(copy)
    try:
        for blob_id, blob in data.items():
            assert read_all(replayed, blob_id) == blob
    finally:
        replayed.close()


# -- a real storage server ------------------------------------------------


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_server_killed_after_acknowledging_puts_keeps_them(tmp_path) -> None:
    """A storage server acknowledges small puts through the journal, then
    dies (SIGKILL) at its first checkpoint, before it wrote any record
    file: every acknowledged put was resident, its record in memory and
    its entry in the journal only.  Restarted, the server replays its
    journal and every acknowledged blob reads back with its sha256."""
    fp_log = tmp_path / "failpoints.log"
    crashing = StorageProcess(
        tmp_path,
        env={
            "WSFS_FAILPOINTS": "storage.journal.checkpoint=kill",
            "WSFS_FAILPOINT_LOG": str(fp_log),
        },
    ).start()
    blobs = {f"p{i}": pattern(4096 + i, seed=i) for i in range(30)}
    acknowledged: list[str] = []
    try:
        client = crashing.client(reactor, idle_timeout=10)
        for blob_id, data in blobs.items():
            try:
                info = await client.put(blob_id, 1, {"inode": 1}, data)
            except Exception:
                break  # the checkpoint came (a second after the first put)
            assert info.sealed
            acknowledged.append(blob_id)
        assert crashing.wait_exit() == -signal.SIGKILL
        assert "failpoint storage.journal.checkpoint fired" in fp_log.read_text()
        await client.close()
    finally:
        crashing.stop()
    assert acknowledged
    for blob_id in acknowledged:
        assert not meta(crashing.data, blob_id).exists()

    restarted = StorageProcess(tmp_path).start()
    try:
        client = restarted.client(reactor)
        for blob_id in acknowledged:
            sha, n = await read_sha(client, blob_id)
            assert (sha, n) == (hashlib.sha256(blobs[blob_id]).hexdigest(), len(blobs[blob_id]))
        await client.close()
    finally:
        restarted.stop()


class FailingJournalSync(RecordingFileSystem):
    """EIO on a journal file's fdatasync, once ``fail`` is set."""

    fail = False

    def fdatasync(self, fd: int) -> None:
        if self.fail and self._name(fd).startswith("journal-"):
            self.fail = False
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)


def test_a_put_that_fails_after_its_entry_voids_it_with_a_checkpoint(tmp_path):
    """Its entry is in the file when its fdatasync fails: replayed, it
    would create a blob the caller was told was not stored.  The failure
    checkpoints (the entry is reset away) before it is reported; the blob
    put before, resident, gets its record file from that checkpoint and
    stays."""
    fs = FailingJournalSync()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "a", pattern(100))
    fs.fail = True
    with pytest.raises(OSError):
        put(store, "b", pattern(100, seed=1))
    assert store.journal_pending() == []
    assert ("syncfs", "d") in fs.calls
    assert store.count_blobs() == 1
    assert meta(store.root, "a").exists() and not meta(store.root, "b").exists()
    copy = crash_copy(store, tmp_path)
    store.close()
    replayed = open_store(copy)
    try:
        with pytest.raises(BlobNotFound):
            replayed.stat("b")
        assert read_all(replayed, "a") == pattern(100)
    finally:
        replayed.close()


def test_a_record_of_the_same_epoch_is_stale_and_replaced_by_its_entry(tmp_path):
    """A different record of no later epoch than the entry is a blob's
    stale record (one removed before this put, its removal not durable when
    the power went), not a later blob: the acknowledged put wins."""
    store = open_store(tmp_path / "d")
    put(store, "x", pattern(100))
    copy = crash_copy(store, tmp_path)
    store.close()
    other = open_store(tmp_path / "other", journal_size=0)
    put(other, "x", pattern(200, seed=5), epoch=1)
    other.close()
    shutil.copy(meta(tmp_path / "other", "x"), meta(copy, "x"))
    replayed = open_store(copy)
    try:
        assert read_all(replayed, "x") == pattern(100)
    finally:
        replayed.close()


class SyncfsFailsOnce(RecordingFileSystem):
    """A syncfs that flushes, then reports EIO once ``fail`` is set, as one
    that met a write-back error does; records the descriptors it gets."""

    fail = False

    def __init__(self) -> None:
        super().__init__()
        self.descriptors: list[int | None] = []

    def syncfs(self, path: str, fd: int | None = None) -> None:
        self.descriptors.append(fd)
        super().syncfs(path, fd)
        if self.fail:
            self.fail = False
            raise OSError(errno.EIO, "Input/output error")


def test_a_failed_checkpoint_writes_each_record_again_and_turns_the_journal_off(tmp_path):
    """After a failed flush the page cache may hold a record whose
    write-back failed (Linux marks it clean): it reads back right, so the
    retry must write it to a new file and fsync it, not compare and skip.
    The journal's own syncs are not trusted again: later puts sync their
    records themselves."""
    fs = SyncfsFailsOnce()
    store = open_store(tmp_path / "d", fs=fs)
    try:
        put(store, "x", pattern(100))
        fs.fail = True
        with pytest.raises(OSError):
            store.checkpoint()
        assert store.journal_pending() == ["x"]
        fs.calls.clear()
        put(store, "y", pattern(100, seed=2))
        assert ("fsync", "y.meta.tmp") in fs.calls  # its own syncs
        assert not any(name.startswith("journal-") for op, name in fs.calls if op == "write")
        fs.calls.clear()
        store.checkpoint()
        assert ("fsync", "x.meta.tmp") in fs.calls  # written again, and synced
        assert store.journal_pending() == []
        assert read_all(store, "x") == pattern(100)
        # Every flush went through the one descriptor the store keeps open.
        assert fs.descriptors and len(set(fs.descriptors)) == 1 and None not in fs.descriptors
    finally:
        store.close()


class JournalFlushFails(RecordingFileSystem):
    """The first fdatasync of a journal file waits for ``release`` and then
    fails with EIO; ``appended`` is set at the journal's second append."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        #: Journal appends are counted from when the test arms it (the
        #: files' creation writes them too, at offsets above 0).
        self.counting = False
        self.appends = 0
        self.flushing = threading.Event()
        self.release = threading.Event()
        self.appended = threading.Event()

    def pwrite(self, fd: int, data, offset: int) -> int:
        n = super().pwrite(fd, data, offset)
        if self.counting and self._name(fd) in JOURNAL_FILES and offset:
            self.appends += 1
            if self.appends == 2:
                self.appended.set()
        return n

    def fdatasync(self, fd: int) -> None:
        if self.armed and self._name(fd).startswith("journal-"):
            self.armed = False
            self.flushing.set()
            assert self.release.wait(30)
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)


def test_a_put_whose_entry_a_failed_flush_may_have_lost_is_not_acknowledged(tmp_path):
    """Two puts append; the first one's fdatasync fails.  Linux reports the
    error to one flush only, so the second put's own fdatasync would
    succeed although its entry may be lost: it must fail too, and later
    puts sync their own records."""
    fs = JournalFlushFails()
    store = open_store(tmp_path / "d", fs=fs)
    errors: dict[str, BaseException | None] = {}

    def putter(blob_id: str) -> None:
        try:
            put(store, blob_id, pattern(300, seed=len(blob_id)))
            errors[blob_id] = None
        except BaseException as e:
            errors[blob_id] = e

    try:
        fs.armed = fs.counting = True
        first = threading.Thread(target=putter, args=("a",))
        first.start()
        assert fs.flushing.wait(30)
        second = threading.Thread(target=putter, args=("bb",))
        second.start()
        assert fs.appended.wait(30)  # its entry is in the file, not flushed
        fs.release.set()
        first.join(30)
        second.join(30)
        assert isinstance(errors["a"], OSError)
        assert isinstance(errors["bb"], (OSError, StorageError)), errors["bb"]
        for blob_id in ("a", "bb"):
            with pytest.raises(BlobNotFound):
                store.stat(blob_id)
        fs.calls.clear()
        put(store, "c", pattern(100))
        assert ("fsync", "c.meta.tmp") in fs.calls
    finally:
        store.close()


def test_the_journal_refuses_a_checkpoint_once_closed(tmp_path):
    """A removal that passed the store's open check before ``close`` may
    still settle: the journal must refuse, not write a header through a
    closed descriptor number another file may have taken since."""
    store = open_store(tmp_path / "d")
    put(store, "x", pattern(100))
    journal = store._journal
    store.close()
    with pytest.raises(StorageError):
        journal.checkpoint()


# -- resident records ------------------------------------------------------


def test_a_journaled_put_is_resident_until_its_checkpoint(tmp_path):
    """A journaled put creates no file: its blob is found in memory by
    every look-up (stat, read, list, count, fence, commit, a second put)
    until the checkpoint writes its record file, with the entry's exact
    bytes, and lets go of it."""
    store = open_store(tmp_path / "d")
    try:
        write_all_sealed = store.open_write("ondisk", 1, 0, {})
        write_all_sealed.write(pattern(10))
        write_all_sealed.seal()
        data = pattern(3 * BLOCK + 5, seed=4)
        info = put(store, "x", data)
        assert (info.state, info.size, info.durable) == (SEALED, len(data), len(data))
        directory = meta(store.root, "x").parent
        assert [n for n in os.listdir(directory) if n.startswith("x.")] == []
        assert store._residents.keys() == {"x"} and "x" in store._live
        assert store.stat("x").sealed and store.stat("x").size == len(data)
        assert read_all(store, "x") == data
        assert sorted(i.blob_id for i in store.list_blobs()) == ["ondisk", "x"]
        assert store.count_blobs() == 2
        assert store.fence("x", 1, len(data)).state == SEALED  # a no-op fence
        with pytest.raises(BlobSealed):
            store.fence("x", 2, 0)
        assert store.commit("x", 1).size == len(data)
        with pytest.raises(BlobSealed):
            put(store, "x", pattern(10))
        assert read_all(store, "x") == data
        store.checkpoint()
        assert meta(store.root, "x").read_bytes() == journal_entry_of(store, "x")
        assert store._residents == {} and store._live == {}
        assert read_all(store, "x") == data
        assert sorted(i.blob_id for i in store.list_blobs()) == ["ondisk", "x"]
        assert store.count_blobs() == 2
    finally:
        store.close()


def journal_entry_of(store: BlobStore, blob_id: str) -> bytes:
    """The record a put's entry holds (checkpointed or not: a reset leaves
    the bytes, under an older generation), read from the journal files."""
    for name in JOURNAL_FILES:
        raw = (Path(store.root) / name).read_bytes()
        for generation in range(1, 64):
            for entry in scan(raw, generation)[0]:
                if entry.blob_id == blob_id:
                    return entry.record
    raise AssertionError(f"no entry of {blob_id}")


def test_a_listing_under_way_lists_a_resident_blob_once(tmp_path):
    """Whether its checkpoint writes its record file before or after the
    listing reaches its directory, a resident blob is listed once."""
    store = open_store(tmp_path / "d")
    try:
        for name in ("00", "zz"):  # one in a directory before x's, one after
            handle = store.open_write(name, 1, 0, {})
            handle.write(pattern(10))
            handle.seal()
        put(store, "x", pattern(100))
        assert not meta(store.root, "x").exists()
        listing = store.list_blobs()
        first = next(listing)
        store.checkpoint()  # x gets its file while the listing goes on
        names = [first.blob_id] + [i.blob_id for i in listing]
        assert sorted(names) == ["00", "x", "zz"]
    finally:
        store.close()


def test_a_deleted_resident_blob_is_made_durable_then_removed_for_good(tmp_path):
    """A delete checkpoints first (the entry would bring the blob back),
    which writes the record the delete then removes; the blob stays
    deleted after a restart, and nothing of it is left in memory."""
    fs = RecordingFileSystem()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    put(store, "y", pattern(100, seed=1))
    assert not meta(store.root, "x").exists()
    fs.calls.clear()
    store.delete("x")
    assert ("rename", "x.meta") in fs.calls and ("syncfs", "d") in fs.calls
    assert not meta(store.root, "x").exists()
    with pytest.raises(BlobNotFound):
        store.stat("x")
    with pytest.raises(BlobNotFound):
        store.delete("x")
    assert [i.blob_id for i in store.list_blobs()] == ["y"]
    assert store.count_blobs() == 1
    assert store._residents == {} and store._live == {}
    put(store, "x", pattern(50, seed=7))  # the id is free again
    assert read_all(store, "x") == pattern(50, seed=7)
    store.delete("x")
    store.close()
    reopened = open_store(tmp_path / "d")
    try:
        with pytest.raises(BlobNotFound):
            reopened.stat("x")
        assert read_all(reopened, "y") == pattern(100, seed=1)
        assert reopened.count_blobs() == 1
    finally:
        reopened.close()


def test_close_writes_the_resident_records(tmp_path):
    """Close checkpoints: each resident record gets its file (the entry's
    bytes), durable, and the reopened store reads it from disk."""
    fs = RecordingFileSystem()
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    assert not meta(store.root, "x").exists()
    entry = journal_entry_of(store, "x")
    fs.calls.clear()
    store.close()
    assert fs.calls.index(("rename", "x.meta")) < fs.calls.index(("syncfs", "d"))
    assert meta(tmp_path / "d", "x").read_bytes() == entry
    reopened = open_store(tmp_path / "d")
    try:
        assert reopened._residents == {}
        assert read_all(reopened, "x") == pattern(100)
    finally:
        reopened.close()


class NoSpaceForRecords(RecordingFileSystem):
    """ENOSPC on a write of a record's temp file, while ``full`` is set."""

    full = False

    def pwrite(self, fd: int, data, offset: int) -> int:
        if self.full and self._name(fd).endswith(".meta.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().pwrite(fd, data, offset)


def test_a_checkpoint_that_cannot_write_a_resident_record_keeps_it(tmp_path):
    """A full disk when the checkpoint writes a resident record: the
    checkpoint fails (the journal stays on: nothing it flushed is in
    doubt), the blob is still found in memory and its entry still in the
    journal; the next checkpoint writes it, makes it durable with its
    syncfs (no record rewritten and fsync'd one by one: that is for a
    failed flush), and only then lets go of it."""
    fs = NoSpaceForRecords()
    store = open_store(tmp_path / "d", fs=fs)
    try:
        put(store, "x", pattern(100))
        fs.full = True
        with pytest.raises(DiskFull):
            store.checkpoint()
        assert store.journal_pending() == ["x"]
        assert not meta(store.root, "x").exists()
        assert read_all(store, "x") == pattern(100)
        assert [i.blob_id for i in store.list_blobs()] == ["x"]
        with pytest.raises(DiskFull):
            store.delete("x")  # its checkpoint cannot write it either
        assert read_all(store, "x") == pattern(100)
        assert store._journal.broken is None
        fs.full = False
        fs.calls.clear()
        store.checkpoint()
        assert ("syncfs", "d") in fs.calls
        assert ("fsync", "x.meta.tmp") not in fs.calls
        assert store.journal_pending() == [] and store._residents == {}
        assert store._admitted == 0 and store._admitted_bytes == 0
        put(store, "y", pattern(10))
        assert store.journal_pending() == ["y"]  # still journaled
        assert read_all(store, "x") == pattern(100)
    finally:
        store.close()
    reopened = open_store(tmp_path / "d")
    try:
        assert read_all(reopened, "x") == pattern(100)
    finally:
        reopened.close()


def test_a_delete_holds_a_resident_blob_against_its_checkpoint(tmp_path):
    """The delete's own checkpoint writes the resident record and would let
    go of the blob; it must stay registered until the delete's unlinks are
    done, or a put of the id meanwhile would create a blob among them (its
    record then removed under it).  The put waits, then stores the id."""
    fs = GatedUnlink("x.meta", "resident-delete")
    store = open_store(tmp_path / "d", fs=fs)
    put(store, "x", pattern(100))
    errors: list[BaseException] = []

    def run(f) -> None:
        try:
            f()
        except BaseException as e:  # reported by the test
            errors.append(e)

    first = threading.Thread(
        target=run, args=(lambda: store.delete("x"),), name="resident-delete", daemon=True
    )
    first.start()
    try:
        assert fs.reached.wait(60)  # checkpointed, about to remove the record
        assert store._residents == {}  # let go of by the checkpoint ...
        assert store._live.get("x") is not None  # ... but the id is held
        other = threading.Thread(
            target=run, args=(lambda: put(store, "x", pattern(300, seed=5)),), daemon=True
        )
        other.start()
    finally:
        fs.release.set()
    first.join(60)
    other.join(60)
    assert errors == []
    assert read_all(store, "x") == pattern(300, seed=5)
    assert [i.blob_id for i in store.list_blobs()] == ["x"]
    assert store.count_blobs() == 1
    store.close()
    reopened = open_store(tmp_path / "d")
    try:
        assert read_all(reopened, "x") == pattern(300, seed=5)
    finally:
        reopened.close()
