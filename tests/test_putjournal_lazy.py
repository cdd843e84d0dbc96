"""The put journal's files are made at a store's first journaled put, not
when it opens (``PutJournal._create_missing``), and opening copes with
whichever of them a crash left: none, one, a temp file, a short file, a
torn header.

Crashes are simulated as in test_putjournal.py: a copy of a live store's
data directory (what the disk holds once the page cache is written back),
then files removed or cut in the copy; one test kills a real storage
server in the middle of the creation."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.storage_procs import StorageProcess, read_sha
from tests.test_blobstore import BLOCK, pattern, read_all
from tests.test_putjournal import crash_copy, journal_entries, meta, open_store, put
from wsstorage.fsshims import RecordingFileSystem
from wsstorage.putjournal import HEADER_SIZE, JOURNAL_FILES, decode_header

#: Small journal files: the tests make many.
SIZE = 16 * HEADER_SIZE


def journal_names(root: Path | str) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith("journal-"))


class Recording(RecordingFileSystem):
    """Also records ``unlink`` (RecordingFileSystem does not)."""

    def unlink(self, path: str) -> None:
        self.calls.append(("unlink", os.path.basename(path)))
        super().unlink(path)


# -- when the files are made ------------------------------------------------


def test_opening_and_reading_a_store_writes_no_journal_file(tmp_path):
    """Open, a big blob written (not a journaled put), stat, list, read,
    close, open again: no journal file, none created; the first small put
    creates both, whole, and its entry is in the first."""
    fs = Recording()
    store = open_store(tmp_path / "d", fs=fs, journal_size=SIZE)
    handle = store.open_write("big", 1, 0, {"inode": 1})
    handle.write(pattern(3 * BLOCK))
    handle.seal()
    handle.close()
    assert [i.blob_id for i in store.list_blobs()] == ["big"]
    assert read_all(store, "big") == pattern(3 * BLOCK)
    store.checkpoint()
    store.close()
    store = open_store(tmp_path / "d", fs=fs, journal_size=SIZE)
    store.stat("big")
    assert journal_names(store.root) == []
    assert not any(name.startswith("journal-") for _, name in fs.calls)
    put(store, "x", pattern(100))
    assert journal_names(store.root) == list(JOURNAL_FILES)
    for name in JOURNAL_FILES:
        assert os.path.getsize(tmp_path / "d" / name) == SIZE
    assert [e.blob_id for e in journal_entries(store.root)] == ["x"]
    store.close()


def test_the_first_put_appends_once_the_files_and_their_names_are_durable(tmp_path):
    """Each file is written whole and fsync'd under a temp name, renamed,
    and the directory fsync'd, all before the first entry is appended; the
    second put creates nothing."""
    fs = Recording()
    store = open_store(tmp_path / "d", fs=fs, journal_size=SIZE)
    fs.calls.clear()
    put(store, "x", pattern(100))
    calls = fs.calls
    first_append = calls.index(("write", "journal-a"))
    for name in JOURNAL_FILES:
        assert (
            calls.index(("open", f"{name}.tmp"))
            < calls.index(("fsync", f"{name}.tmp"))
            < calls.index(("rename", name))
            < calls.index(("fsync_dir", "d"))
            < first_append
        )
    assert first_append < calls.index(("fdatasync", "journal-a"))
    assert not any(name.startswith("x.meta") for _, name in calls)  # resident
    fs.calls.clear()
    put(store, "y", pattern(100, seed=1))
    assert not any(name.endswith(".tmp") and name.startswith("journal") for _, name in fs.calls)
    assert [c for c in fs.calls if c[0] in ("fsync", "fdatasync", "fsync_dir")] == [
        ("fdatasync", "journal-a")
    ]
    store.close()


class GatedCreation(Recording):
    """Holds the creation's first write until ``expected`` puts have come
    to the journal's creation lock (``ArrivalLock``): the one making the
    files and every other, waiting for it, while they are being made."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.arrived = 0
        self.cond = threading.Condition()
        self.held = False

    def pwrite(self, fd: int, data, offset: int) -> int:
        if self._name(fd) == "journal-a.tmp" and not self.held:
            self.held = True
            with self.cond:
                assert self.cond.wait_for(lambda: self.arrived >= self.expected, 30)
        return super().pwrite(fd, data, offset)


class ArrivalLock:
    """The journal's creation lock, counting who comes to it (a put
    creates no file before its entry: nothing on disk says it came)."""

    def __init__(self, gate: GatedCreation) -> None:
        self.gate = gate
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.gate.cond:
            self.gate.arrived += 1
            self.gate.cond.notify_all()
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_concurrent_first_puts_create_the_files_once(tmp_path):
    """Eight threads' first puts arrive while the files are being made: one
    put makes them, the others wait for it, and none appends before the
    directory fsync that made the files durable.  Every put is in the
    journal: a crash copy without the record files gets them all back."""
    ids = [f"t{k}" for k in range(8)]
    fs = GatedCreation(len(ids))
    store = open_store(tmp_path / "d", fs=fs, journal_size=SIZE)
    store._journal._create_lock = ArrivalLock(fs)  # type: ignore[union-attr,assignment]
    fs.calls.clear()
    errors: list[BaseException] = []

    def worker(blob_id: str) -> None:
        try:
            put(store, blob_id, pattern(300, seed=len(blob_id) + ord(blob_id[-1])))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    calls = list(fs.calls)
    for name in JOURNAL_FILES:
        assert calls.count(("open", f"{name}.tmp")) == 1
        assert calls.count(("rename", name)) == 1
    made = calls.index(("fsync_dir", "d"))
    appends = [i for i, c in enumerate(calls) if c == ("write", "journal-a")]
    assert len(appends) == len(ids) and min(appends) > made
    assert sorted(e.blob_id for e in journal_entries(store.root)) == sorted(ids)
    copy = crash_copy(store, tmp_path)
    store.close()
    for blob_id in ids:
        assert not meta(copy, blob_id).exists()  # resident: no record file
    replayed = open_store(copy, journal_size=SIZE)
    try:
        for blob_id in ids:
            assert read_all(replayed, blob_id) == pattern(300, seed=len(blob_id) + ord(blob_id[-1]))
    finally:
        replayed.close()


# -- what a crash leaves --------------------------------------------------


def leave(copy: Path, case: str) -> None:
    """Make the crash copy's journal files what ``case`` says a crash
    (or a hand) left.  journal-a holds the entries of the puts."""
    a, b = copy / "journal-a", copy / "journal-b"
    if case == "only-a":  # journal-b's name never made durable
        b.unlink()
    elif case == "a-and-b-tmp":  # cut short while making journal-b
        b.unlink()
        (copy / "journal-b.tmp").write_bytes(bytes(5000))
    elif case == "a-short":  # journal-a cut after its entries, not preallocated
        end = max(e.offset for e in journal_entries(copy)) + 2000
        os.truncate(a, end)
    elif case == "a-short-b-missing":
        end = max(e.offset for e in journal_entries(copy)) + 2000
        os.truncate(a, end)
        b.unlink()
    elif case == "b-empty":  # an empty file under the name
        b.write_bytes(b"")
    elif case == "b-torn-header":
        raw = bytearray(b.read_bytes())
        raw[5] ^= 0xFF
        b.write_bytes(bytes(raw))
    else:  # pragma: no cover
        raise AssertionError(case)


CASES = ["only-a", "a-and-b-tmp", "a-short", "a-short-b-missing", "b-empty", "b-torn-header"]


@pytest.mark.parametrize("case", CASES)
def test_a_store_opens_and_replays_whatever_journal_files_a_crash_left(tmp_path, case):
    """The puts' entries are in journal-a, their record files lost; the
    other files are missing, a temp file, short, empty or torn.  The store
    opens, every put reads back, files that cannot be appended to are
    removed (durably, before the store serves), and the next put makes
    what is missing and goes through the journal again."""
    store = open_store(tmp_path / "d", journal_size=SIZE)
    blobs = {f"b{i}": pattern(1500 + i, seed=i) for i in range(3)}
    for blob_id, data in blobs.items():
        put(store, blob_id, data)
    copy = crash_copy(store, tmp_path)
    store.close()
    for blob_id in blobs:
        assert not meta(copy, blob_id).exists()  # resident: no record file
    leave(copy, case)
    fs = Recording()
    replayed = open_store(copy, fs=fs, journal_size=SIZE)
    try:
        assert replayed.damaged == []
        for blob_id, data in blobs.items():
            assert read_all(replayed, blob_id) == data
        assert replayed.journal_pending() == []
        names = journal_names(copy)
        assert not any(n.endswith(".tmp") for n in names)
        for name in names:  # kept: whole, reset
            assert os.path.getsize(copy / name) == SIZE
        removed = [i for i, c in enumerate(fs.calls) if c[0] == "unlink"]
        if removed:
            assert ("fsync_dir", copy.name) in fs.calls[max(removed) :]
        put(replayed, "after", pattern(700, seed=9))
        assert journal_names(copy) == list(JOURNAL_FILES)
        assert replayed.journal_pending() == ["after"]
        again = crash_copy(replayed, tmp_path, "again")
    finally:
        replayed.close()
    assert not meta(again, "after").exists()  # resident: no record file
    reopened = open_store(again, journal_size=SIZE)
    try:
        assert read_all(reopened, "after") == pattern(700, seed=9)
        for blob_id, data in blobs.items():
            assert read_all(reopened, blob_id) == data
    finally:
        reopened.close()


def test_a_short_journal_is_replayed_before_it_is_removed(tmp_path):
    """A short file's entries are made durable (forced rewrite, flush)
    before the file goes: the removal comes after the syncfs."""
    store = open_store(tmp_path / "d", journal_size=SIZE)
    put(store, "x", pattern(900))
    copy = crash_copy(store, tmp_path)
    store.close()
    assert not meta(copy, "x").exists()  # resident: no record file
    leave(copy, "a-short")
    fs = Recording()
    replayed = open_store(copy, fs=fs, journal_size=SIZE)
    try:
        calls = fs.calls
        assert (
            calls.index(("fsync", "x.meta.tmp"))
            < calls.index(("syncfs", copy.name))
            < calls.index(("unlink", "journal-a"))
        )
        assert read_all(replayed, "x") == pattern(900)
        assert journal_names(copy) == ["journal-b"]
    finally:
        replayed.close()


def test_a_store_without_a_journal_removes_short_and_temp_files_too(tmp_path):
    store = open_store(tmp_path / "d", journal_size=SIZE)
    put(store, "x", pattern(900))
    copy = crash_copy(store, tmp_path)
    store.close()
    assert not meta(copy, "x").exists()  # resident: no record file
    leave(copy, "a-short")
    (copy / "journal-b.tmp").write_bytes(bytes(100))
    replayed = open_store(copy, journal_size=0)
    try:
        assert read_all(replayed, "x") == pattern(900)
        assert journal_names(copy) == []
        put(replayed, "y", pattern(10))
        assert journal_names(copy) == []
    finally:
        replayed.close()


def test_reopening_resets_the_files_it_keeps(tmp_path):
    """A kept file gets a new generation at open, so a crash after a later
    delete cannot replay an entry of the deleted blob."""
    store = open_store(tmp_path / "d", journal_size=SIZE)
    put(store, "x", pattern(100))
    copy = crash_copy(store, tmp_path)
    store.close()
    before = decode_header((copy / "journal-a").read_bytes(), "a")
    replayed = open_store(copy, journal_size=SIZE)
    try:
        replayed.delete("x")
        after = decode_header((copy / "journal-a").read_bytes(), "a")
        assert after is not None and before is not None and after > before
        assert journal_entries(copy) == []
        again = crash_copy(replayed, tmp_path, "again")
    finally:
        replayed.close()
    reopened = open_store(again, journal_size=SIZE)
    try:
        assert reopened.count_blobs() == 0
    finally:
        reopened.close()


# -- a real storage server --------------------------------------------------


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_server_killed_while_creating_its_journal_starts_again(tmp_path) -> None:
    """A storage server's first small put makes the journal files; it dies
    (SIGKILL) with journal-a made and journal-b's temp file written, the
    put not acknowledged.  Restarted, it opens (the temp file removed,
    journal-a kept), its first put makes journal-b, and acknowledged puts
    survive the loss of their record files."""
    fp_log = tmp_path / "failpoints.log"
    crashing = StorageProcess(
        tmp_path,
        env={
            "WSFS_FAILPOINTS": "storage.journal.create=kill@2",
            "WSFS_FAILPOINT_LOG": str(fp_log),
        },
    ).start()
    try:
        client = crashing.client(reactor, idle_timeout=10)
        try:
            await client.put("first", 1, {"inode": 1}, pattern(2000))
            stored = True
        except Exception:  # the connection lost: which error is not the point
            stored = False
        assert not stored
        assert crashing.wait_exit() == -signal.SIGKILL
        assert "failpoint storage.journal.create fired count=2" in fp_log.read_text()
        await client.close()
    finally:
        crashing.stop()
    assert journal_names(crashing.data) == ["journal-a", "journal-b.tmp"]

    # Restarted, dying at its first checkpoint: its puts are acknowledged
    # through the journal only, their record files then removed.
    restarted = StorageProcess(
        tmp_path,
        env={
            "WSFS_FAILPOINTS": "storage.journal.checkpoint=kill",
            "WSFS_FAILPOINT_LOG": str(fp_log),
        },
    ).start()
    blobs = {f"p{i}": pattern(3000 + i, seed=i) for i in range(30)}
    acknowledged: list[str] = []
    try:
        client = restarted.client(reactor, idle_timeout=10)
        for blob_id, data in blobs.items():
            try:
                info = await client.put(blob_id, 1, {"inode": 1}, data)
            except Exception:
                break  # the checkpoint came (a second after the first put)
            assert info.sealed
            acknowledged.append(blob_id)
        assert restarted.wait_exit() == -signal.SIGKILL
        await client.close()
    finally:
        restarted.stop()
    assert acknowledged
    assert journal_names(restarted.data) == list(JOURNAL_FILES)
    for blob_id in acknowledged:
        assert not meta(restarted.data, blob_id).exists()  # resident: no record file

    again = StorageProcess(tmp_path).start()
    try:
        client = again.client(reactor)
        for blob_id in acknowledged:
            sha, n = await read_sha(client, blob_id)
            assert (sha, n) == (hashlib.sha256(blobs[blob_id]).hexdigest(), len(blobs[blob_id]))
        await client.close()
    finally:
        again.stop()
