"""The put journal: one fdatasync of a preallocated log per small ``put``.

A small ``put`` (``BlobStore.put_inline``) used to make its record file
durable on its own: fsync of the file, then of its directory, two journal
commits of the file system per replica.  With this journal the record's
bytes are appended to a preallocated journal file, and one fdatasync of
that file is what the put waits for.  Since the file is preallocated
(every byte written and fsync'd when it was created), an append changes
neither its size nor its block map: the fdatasync is a pure data flush,
and concurrent puts share it.  The put creates no file at all: its record
stays in the store's memory (the blob is *resident*: the store's
``_residents``), where every look-up finds it, until a *checkpoint*
writes the record files of all the puts since the last one (temp file,
rename, unsynced), makes them durable at once (one ``syncfs``), resets
the journal file and only then lets go of them.  Creating a file cost
0.05-0.9 ms of kernel CPU on the VM we measure on, most of what a small
STOR's replica spent between the data's end and its acknowledgement;
written by a checkpoint, in a background thread, it leaves the put's
critical path.  Until the checkpoint the journal is what survives a
power loss, and opening the store replays it (``PutJournal.open``),
writing every record file from its entry.

Memory: a resident record is the journal entry's bytes (the small blob's
data and its JSON line, at most ``INLINE_DATA_MAX`` plus a few hundred
bytes), held once more by the blob (its inline data).  Residents are let
go of when the checkpoint of their file is done, and a put finding no
room in the active file is not journaled (it writes its own record
file), so their bytes are never more than what the two journal files
hold (8 MiB with the defaults), or twice that counting each blob's own
copy of its data (16 MiB).  Each resident also costs about 3.0 KB of
Python objects (its ``_Blob``, measured): the store keeps at most
``RESIDENT_MAX`` (1024) of them, hurrying a checkpoint from half of that
(``hurry``), and a put past that, or one whose record file the disk
could not hold at the checkpoint, is not made resident either
(``BlobStore._admit``).

Layout (docs/storage-format.md): two files, ``journal-a`` and
``journal-b``, of the same size.  A 4 KiB header (``HEADER``: magic,
version, generation, CRC) is followed by entries (``ENTRY_HEAD`` then the
blob id and the record's bytes), each carrying the generation of the header
it was written under and a CRC32C of itself.  A scan reads entries from
the header on and stops at the first one whose magic, generation, length
or CRC is wrong: a torn append, a stale entry of an older generation, or
the zeros of the preallocation.  So a reset is a new header (a higher
generation) and one fdatasync, not a rewrite of the file.

The files are made at a store's first journaled put, not when it opens
(``_create_missing``; each is 4 MiB of zeros written and fsync'd): a
store that never takes a small put (most of a test suite's, a server of
big files) never pays for them.  Opening replays whichever files exist,
whole, short or with a torn header (``replay``), keeps and resets the
whole ones, and removes the rest; the first put makes what is missing,
once (concurrent first puts wait for it), and appends only once every
file and the directory entry naming it are durable.

Appends go to the *active* file, in order, under a lock; the fdatasync runs
outside it (one at a time: see below).  A checkpoint switches appends to
the other file, waits for the puts still publishing into the old one
(making their blob resident: ``publish``), writes the resident records of
the old one's puts (``materialize``), makes every record file durable
(``flush``), resets the old file, and only then lets go of those
residents: until the reset, a failed flush may have lost a record file,
and the blob must still be found in memory.  Checkpoints run in a
background thread (``checkpoint_after`` seconds after the first entry, or
when the active file is half full), when a blob with an entry is about to be
removed (``settle``), and at ``close``.

A full disk (ENOSPC, EDQUOT) while a checkpoint writes the resident
records is not a disk error: nothing the journal flushed is in doubt,
so the checkpoint fails (logged), its side stays dirty, its residents in
memory, and the checkpoint thread tries again every ``checkpoint_after``
seconds until there is room (``_due``).  Disk errors turn the journal
off for the life of the process (``broken``): a failed fdatasync of a
journal file, a failed ``flush`` or reset, any other error writing a
record file.  Linux
reports a write-back error once per open file and then marks the failed
pages clean, so after one nothing the journal's own syncs say can be
trusted: every put whose entry a successful flush did not cover fails,
later puts sync their own record files (as without a journal), and each
record of a file whose checkpoint failed is written again from its entry
and fsync'd one by one (``repair`` with ``force``), never trusted to the
page cache.  A failed checkpoint (a full disk while it writes a resident
record, a failed flush or reset) lets go of no resident: those blobs stay
in memory, their entries in the file, until a later checkpoint (the
thread's retry after a full disk, the next removal of one of them,
``close``) writes them (rewrites them, synced, after a disk error), or
the next start replays them.  Journal flushes are serialised (``_sync_lock``) and each
records how far it reached, so a put never takes another's flush, or
another's swallowed error, for its own; puts that arrive while one flush
runs share the next.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

from twisted.logger import Logger

from wsstorage import failpoints
from wsstorage.diskformat import FormatError, crc
from wsstorage.errors import NO_SPACE_ERRNOS, DiskFull, StorageError
from wsstorage.fsops import OsFileSystem

log = Logger()

__all__ = [
    "CHECKPOINT_AFTER",
    "JOURNAL_FILES",
    "JOURNAL_SIZE",
    "Entry",
    "PutJournal",
    "encode_entry",
    "scan",
]

#: The two journal files, in the data directory beside FORMAT.
JOURNAL_FILES = ("journal-a", "journal-b")
#: Default size of each journal file: about 900 puts of 4 KiB, so a
#: checkpoint (at half full, or a second after the first entry) comes long
#: before the file is full at the rate one FTP connection stores files.
JOURNAL_SIZE = 4 * 1024 * 1024
#: Seconds from the first entry of the active file to its checkpoint.
CHECKPOINT_AFTER = 1.0
#: The header occupies the first page: a reset rewrites that page only.
HEADER_SIZE = 4096
#: magic, version, generation, file size, CRC32C of the bytes before it.
HEADER = struct.Struct(">8sIQQ")
HEADER_CRC = struct.Struct(">I")
HEADER_MAGIC = b"WSFSPJNL"
#: Version of the journal files this code writes and reads; a higher one
#: is refused (FormatError), as FORMAT is.
JOURNAL_VERSION = 1
#: magic, generation, id length, record length, then (``ENTRY_CRC``) the
#: CRC32C of those fields, the id and the record.
ENTRY_HEAD = struct.Struct(">4sQHI")
ENTRY_CRC = struct.Struct(">I")
ENTRY_MAGIC = b"WSPE"
#: Bytes zeroed per write while preallocating a journal file.
_ZERO_CHUNK = 1024 * 1024
#: Suffix of a journal file being created (renamed into place once whole).
_TMP = ".tmp"


def _no_space(e: BaseException) -> bool:
    return isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS)


class Entry(NamedTuple):
    """One put: its blob id, the exact bytes of its record file, and where
    the entry starts in its journal file (how a failed put's entry is
    known again: ``_Side.voided``)."""

    blob_id: str
    record: bytes
    offset: int = 0


def encode_entry(generation: int, blob_id: str, record: bytes) -> bytes:
    """The bytes of one entry (``ENTRY_HEAD``, CRC, id, record)."""
    ident = blob_id.encode()
    head = ENTRY_HEAD.pack(ENTRY_MAGIC, generation, len(ident), len(record))
    value = crc(record, crc(ident, crc(head)))
    return head + ENTRY_CRC.pack(value) + ident + record


def encode_header(generation: int, size: int) -> bytes:
    head = HEADER.pack(HEADER_MAGIC, JOURNAL_VERSION, generation, size)
    return head + HEADER_CRC.pack(crc(head))


def decode_header(raw: bytes, path: str) -> int | None:
    """The generation in a journal file's header, or None if it is not a
    valid header (a file whose creation was cut short, or a torn reset:
    either way the file holds nothing still needed, since a header is only
    written when the file holds no entry that a checkpoint has not made
    durable).  A header of a newer version is FormatError."""
    header = _decode(raw, path)
    return None if header is None else header[0]


def _decode(raw: bytes, path: str) -> tuple[int, int] | None:
    """``decode_header``, with the file size the header says."""
    size = HEADER.size + HEADER_CRC.size
    if len(raw) < size:
        return None
    magic, version, generation, said = HEADER.unpack_from(raw)
    (value,) = HEADER_CRC.unpack_from(raw, HEADER.size)
    if magic != HEADER_MAGIC or value != crc(raw[: HEADER.size]):
        return None
    if version != JOURNAL_VERSION:
        raise FormatError(
            f"{path}: put journal version {version} is not supported "
            f"(this wsstorage reads version {JOURNAL_VERSION})"
        )
    return generation, said


def scan(
    raw: bytes | memoryview, generation: int, start: int = HEADER_SIZE
) -> tuple[list[Entry], int]:
    """The valid prefix of entries of ``generation`` from ``start``, and the
    offset after it.  Stops at the first entry that is torn, of another
    generation, longer than what is left, or fails its CRC: every entry
    acknowledged is in that prefix, since appends are made in order and an
    fdatasync flushes every append before it."""
    view = memoryview(raw)
    entries: list[Entry] = []
    offset = start
    fixed = ENTRY_HEAD.size + ENTRY_CRC.size
    while offset + fixed <= len(view):
        magic, gen, id_len, rec_len = ENTRY_HEAD.unpack_from(view, offset)
        if magic != ENTRY_MAGIC or gen != generation or not id_len:
            break
        end = offset + fixed + id_len + rec_len
        if end > len(view):
            break
        (value,) = ENTRY_CRC.unpack_from(view, offset + ENTRY_HEAD.size)
        ident = view[offset + fixed : offset + fixed + id_len]
        record = view[offset + fixed + id_len : end]
        if value != crc(record, crc(ident, crc(view[offset : offset + ENTRY_HEAD.size]))):
            break
        try:
            blob_id = bytes(ident).decode()
        except UnicodeDecodeError:
            break
        entries.append(Entry(blob_id, bytes(record), offset))
        offset = end
    return entries, offset


def readable_after(raw: bytes | memoryview, generation: int, start: int) -> tuple[int, int]:
    """How many whole entries of ``generation`` lie past ``start``, where a
    scan stopped, and the offset of the first: (0, -1) if none.

    A scan stops at the first entry it cannot read, and rightly replays
    nothing after it.  Past a torn append there is nothing of the same
    generation but, at most, entries whose fdatasync never returned (not
    acknowledged); past a damaged entry (a bad sector, a stray write) lie
    puts that were acknowledged and that this replay cannot bring back,
    the other replicas' copies must.  Finding whole entries past the stop
    tells an operator so, where silence looked like a clean replay."""
    view = bytes(raw)
    count, first = 0, -1
    at = view.find(ENTRY_MAGIC, start + 1)
    while at != -1:
        found, end = scan(view, generation, at)
        if found:
            count += len(found)
            first = at if first == -1 else first
            at = view.find(ENTRY_MAGIC, end)
        else:
            at = view.find(ENTRY_MAGIC, at + 1)
    return count, first


class _Side:
    """One journal file and what this process knows of it."""

    def __init__(self, path: str, fd: int, size: int, generation: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.generation = generation
        #: Offset of the next append.
        self.used = HEADER_SIZE
        #: Offset up to which a successful fdatasync covered the entries.
        self.synced = HEADER_SIZE
        #: Offsets of entries whose put failed: not rewritten by a repair
        #: (the blob was reported not stored).
        self.voided: set[int] = set()
        #: Blob ids with an entry in this file since its last reset.
        self.pending: set[str] = set()
        #: Puts that appended here and have not finished publishing their
        #: record (``publish``: the blob made resident): a checkpoint
        #: waits for them.
        self.inflight = 0
        #: Switched away from and not yet reset (a checkpoint failed): the
        #: next checkpoint finishes it first, rewriting its records.
        self.dirty = False
        #: When the first entry since the last reset was appended.
        self.first_at: float | None = None


def replay(
    fs: OsFileSystem,
    directory: str,
    flush: Callable[[Collection[str]], None],
    repair: Callable[[list[Entry], bool], None],
    keep: bool = True,
) -> list[_Side]:
    """Replay the journal files in ``directory``, whichever of them exist
    and in whatever state a crash left them, and leave only files a
    journal may append to.

    Every file under a journal name with a valid header has its valid
    entries replayed, whatever its size (a short file's scan stops at its
    end): all of them, oldest generation first, go to ``repair`` (forced:
    the crashed process may have left pages whose write-back failed in the
    cache, where they read back fine), then ``flush``.  A file with no
    valid header holds nothing still needed (``decode_header``).

    Only then, each file that is *whole* (a valid header, the size the
    header says, at least two pages) is reset (a new generation,
    fdatasync'd) and returned, open, if ``keep``; every other one, and any
    ``journal-?.tmp`` a creation cut short left, is removed and the
    directory fsync'd before this returns: a removal that a crash undid
    would replay entries of blobs deleted since.  A crash anywhere in this
    replays again (the resets and removals come after the flush)."""
    found: list[_Side] = []  # valid header: replayed; kept if whole
    doomed: list[str] = []  # removed once the flush is done
    whole: set[str] = set()
    #: (generation, entries) of each valid file: replayed oldest first.
    logs: list[tuple[int, list[Entry]]] = []
    try:
        for name in JOURNAL_FILES:
            path = os.path.join(directory, name)
            if fs.exists(path + _TMP):
                doomed.append(path + _TMP)
            try:
                fd = fs.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                file_size = fs.fstat_size(fd)
                raw = fs.pread(fd, file_size, 0)
                header = _decode(raw, path)
            except BaseException:
                fs.close(fd)
                raise
            if header is None:
                fs.close(fd)
                doomed.append(path)
                continue
            generation, said = header
            found.append(_Side(path, fd, file_size, generation))
            valid, stop = scan(raw, generation)
            logs.append((generation, valid))
            lost, at = readable_after(raw, generation, stop)
            if lost:
                log.warn(
                    "put journal: {path}: the entry at offset {stop} is damaged; "
                    "{lost} later entries (from offset {at}) are whole but cannot be "
                    "replayed: puts acknowledged by this server may be missing here; "
                    "run `wsfs fsck` to find them and `wsfs repair` to copy them back",
                    path=path,
                    stop=stop,
                    lost=lost,
                    at=at,
                )
            if keep and file_size == said and file_size >= 2 * HEADER_SIZE:
                whole.add(path)
            else:
                doomed.append(path)
        entries = [e for _, batch in sorted(logs, key=lambda t: t[0]) for e in batch]
        if entries:
            repair(entries, True)
            flush({e.blob_id for e in entries})
            log.info("put journal: replayed {n} entries in {dir}", n=len(entries), dir=directory)
        generation = max((side.generation for side in found), default=0)
        for side in found:
            if side.path in whole:
                generation += 1
                fs.pwrite_all(side.fd, encode_header(generation, side.size), 0)
                fs.fdatasync(side.fd)
                side.generation = generation
        for side in [s for s in found if s.path not in whole]:
            found.remove(side)
            fs.close(side.fd)
        for path in doomed:
            fs.unlink(path)
        if doomed:
            fs.fsync_dir(directory)
    except BaseException:
        for side in found:
            try:
                fs.close(side.fd)
            except OSError:
                pass
        raise
    return found


class PutJournal:
    """The two journal files of one store (module docstring).

    ``materialize(blob_ids)`` writes the record files of those blobs that
    are resident (unsynced), returning what lets go of them once their
    file is reset; ``flush(blob_ids)`` makes the record files of those
    blobs durable (the store's ``syncfs``); ``repair(entries, force)``
    makes sure each record
    file holds exactly its entry's bytes: without ``force`` it rewrites
    one that differs, unsynced (a ``flush`` follows); with ``force`` it
    writes every one again to a new file and fsyncs it (after a failed
    flush, or at open after a crash, the page cache may hold bytes that
    never reached the disk)."""

    def __init__(
        self,
        fs: OsFileSystem,
        directory: str,
        size: int,
        sides: list[_Side],
        flush: Callable[[Collection[str]], None],
        repair: Callable[[list[Entry], bool], None],
        checkpoint_after: float | None,
        materialize: Callable[[Collection[str]], Callable[[], None]] | None = None,
    ) -> None:
        self.fs = fs
        self._directory = directory
        #: Size of each journal file this journal creates.
        self._size = size
        #: The journal files, sorted by path; until both exist (``_ready``),
        #: only those found whole at open, reset, with nothing to append.
        self._sides = sorted(sides, key=lambda s: s.path)
        #: Whether both files exist and are durable: puts append only then.
        self._ready = len(self._sides) == len(JOURNAL_FILES)
        #: Held while the missing files are created: once, by the first put.
        self._create_lock = threading.Lock()
        self._active = 0
        self._flush = flush
        self._repair = repair
        self._materialize = materialize or _nothing_resident
        self._checkpoint_after = checkpoint_after
        self._next_generation = max((s.generation for s in sides), default=0) + 1
        self._lock = threading.Lock()
        #: The checkpoint thread waits on this: notified only when its
        #: deadline appears or a checkpoint becomes urgent, not at every
        #: put (a wake-up per put cost ~60 futex calls per STOR).
        self._wake = threading.Condition(self._lock)
        #: A checkpoint waits on this for the puts still publishing into
        #: the file it switched away from; notified when the last one is
        #: done, and when a checkpoint finishes.
        self._idle = threading.Condition(self._lock)
        #: Held by a checkpoint from its switch to its reset: one at a time,
        #: so the file a checkpoint switches to is always a reset one.
        self._checkpointing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._urgent = False
        #: When the checkpoint thread next tries to finish a side a
        #: checkpoint left dirty for want of space (``_finish``), or None.
        self._retry_at: float | None = None
        #: One journal flush at a time (module docstring).
        self._sync_lock = threading.Lock()
        #: Why the journal is off since a disk error (or since its files
        #: could not be created), or None.
        self.broken: str | None = None

    @property
    def size(self) -> int:
        """Bytes of each journal file."""
        return self._size

    @property
    def accepting(self) -> bool:
        """Whether a put may go through the journal (it may still find no
        room): not closed, not off.  A hint, read without the lock."""
        return not self._closing and self.broken is None

    # -- opening --------------------------------------------------------

    @classmethod
    def open(
        cls,
        fs: OsFileSystem,
        directory: str,
        size: int,
        flush: Callable[[Collection[str]], None],
        repair: Callable[[list[Entry], bool], None],
        checkpoint_after: float | None = CHECKPOINT_AFTER,
        materialize: Callable[[Collection[str]], Callable[[], None]] | None = None,
    ) -> PutJournal | None:
        """Replay the journal files in ``directory`` (``replay``), then keep
        those fit to append to, reset, and return the journal; the files
        that are missing are created, of ``size`` bytes each, at the first
        put (``_create_missing``), not here: a store that never journals a
        put (most tests, a server of big files) never writes them.  With
        ``size`` 0 the files are replayed if there, then removed, and None
        is returned."""
        if size and size < 2 * HEADER_SIZE:
            raise ValueError(f"a put journal file must be at least {2 * HEADER_SIZE} bytes")
        kept = replay(fs, directory, flush, repair, keep=bool(size))
        if not size:
            return None
        return cls(fs, directory, size, kept, flush, repair, checkpoint_after, materialize)

    # -- puts -----------------------------------------------------------

    def pending(self, blob_id: str) -> bool:
        """Whether ``blob_id`` has an entry no checkpoint has finished."""
        with self._lock:
            return any(blob_id in s.pending for s in self._sides)

    def put(self, blob_id: str, record: bytes, publish: Callable[[], None]) -> bool:
        """Append ``record``'s entry, fdatasync the journal, then
        ``publish()`` (the store makes the blob resident: no file yet,
        ``materialize`` writes it at the checkpoint); True once the put is
        durable.  False, with nothing appended, when
        the active file has no room (its checkpoint is due, and the other
        file is still being checkpointed), or the journal is closed or off
        (a disk error; its files could not be made): the caller syncs the
        record file itself.  The store's first put makes the files first
        (``_create_missing``).  Not waiting here is a choice:
        the caller's own two syncs cost less than waiting for a
        checkpoint's ``syncfs`` of everything written meanwhile.

        The record file is written only by a checkpoint, long after its
        entry is durable, so a record file found after a power loss
        either has its entry, and is replayed, or was made durable: an
        unacknowledged put never leaves a torn record that would read as
        a damaged blob.  A put that fails once its entry is appended (its
        fdatasync) voids the entry with a checkpoint before it raises:
        replayed, it would create a blob that was reported as not stored,
        and maybe overwrite a later one of the same id."""
        if not self._ready and not self._create_missing():
            return False
        with self._lock:
            if self._closing or self.broken is not None:
                return False
            side = self._sides[self._active]
            entry = encode_entry(side.generation, blob_id, record)
            if side.used + len(entry) > side.size:
                self._hurry()
                return False
            offset = side.used
            side.used += len(entry)
            side.pending.add(blob_id)
            side.inflight += 1
            if side.first_at is None:
                side.first_at = time.monotonic()
                self._start_thread()
                self._wake.notify_all()
            if side.used - HEADER_SIZE >= (side.size - HEADER_SIZE) // 2:
                self._hurry()
            try:
                # Under the lock: every entry before this one is in the file
                # (page cache) before it, so an fdatasync that covers it
                # covers them too.
                self.fs.pwrite_all(side.fd, entry, offset)
            except BaseException:
                side.used = offset  # nothing after it was appended: the lock is held
                side.inflight -= 1
                raise
        try:
            self._sync_through(side, offset + len(entry))
            publish()
        except BaseException:
            with self._lock:
                side.voided.add(offset)
            self._done(side)
            try:
                self.checkpoint()
            except Exception:
                log.failure(
                    "put journal: cannot void the entry of a failed put of {id}", id=blob_id
                )
            raise
        self._done(side)
        return True

    def _create_missing(self) -> bool:
        """Create the journal files that do not exist yet, at the first put
        (not at open: ``open``); True once both exist and are durable.

        Once: concurrent first puts wait here for the one that creates
        them, so no entry is appended before every file's preallocation,
        its fsync, its rename and the directory fsync are done (a put is
        acknowledged only once its entry is durable in a file whose own
        existence is).  A file is made under a temp name and renamed when
        whole (``_create``), so a crash at any point leaves each journal
        name absent or naming a whole, empty file, and at most a temp file
        that the next open removes.  A failure (a full disk, an I/O error)
        turns the journal off for the process, logged: the put, and every
        later one, syncs its own record instead; the next start tries
        again at its first put."""
        with self._create_lock:
            if self._ready:
                return True
            with self._lock:
                if self._closing or self.broken is not None:
                    return False
            have = {side.path for side in self._sides}
            made: list[_Side] = []
            path = ""
            try:
                for name in JOURNAL_FILES:
                    path = os.path.join(self._directory, name)
                    if path in have:
                        continue
                    with self._lock:
                        generation = self._next_generation
                        self._next_generation += 1
                    fd = _create(self.fs, path, self._size, generation, len(made) + 1)
                    made.append(_Side(path, fd, self._size, generation))
                self.fs.fsync_dir(self._directory)
            except OSError as e:
                for side in made:
                    self.fs.close(side.fd)
                why = f"cannot create {os.path.basename(path)}: {os.strerror(e.errno or 0)}"
                with self._lock:
                    if self.broken is None:
                        self.broken = why
                log.warn(
                    "put journal off ({why}): small puts sync their own record files",
                    why=why,
                )
                return False
            with self._lock:
                self._sides = sorted(self._sides + made, key=lambda s: s.path)
                self._ready = True
            return True

    def _sync_through(self, side: _Side, end: int) -> None:
        """Return once an fdatasync of ``side`` that succeeded covered every
        entry before ``end``: the last one may have (puts share flushes),
        else this one flushes everything appended so far.  Raises if a
        flush failed, this put's or an earlier one's: its error may have
        been the only report of this entry's loss."""
        with self._sync_lock:
            if self.broken is not None:
                raise StorageError(f"put journal is off: {self.broken}")
            if side.synced >= end:
                return
            with self._lock:
                target = side.used
            try:
                self.fs.fdatasync(side.fd)
            except OSError as e:
                self._break(f"flushing {os.path.basename(side.path)}: {os.strerror(e.errno or 0)}")
                raise
            side.synced = target

    def _break(self, why: str) -> None:
        """Turn the journal off after a disk error (module docstring)."""
        with self._lock:
            if self.broken is None:
                self.broken = why
                log.warn(
                    "put journal off after a disk error ({why}): small puts sync their own records",
                    why=why,
                )

    def _done(self, side: _Side) -> None:
        with self._lock:
            side.inflight -= 1
            if side.dirty and not side.inflight:
                self._idle.notify_all()

    def hurry(self) -> None:
        """Make the next checkpoint due now: the store holds many residents
        (``BlobStore._admit``)."""
        with self._lock:
            if self._ready and not self._closing:
                self._start_thread()
                self._hurry()

    def _hurry(self) -> None:
        """Make the next checkpoint due now (lock held)."""
        if not self._urgent:
            self._urgent = True
            self._wake.notify_all()

    # -- checkpoints ----------------------------------------------------

    def settle(self, blob_id: str) -> None:
        """Checkpoint if ``blob_id`` has an entry not yet checkpointed: its
        files are about to be removed, and a replay after a crash would
        bring it back."""
        if self.pending(blob_id):
            self.checkpoint()

    def checkpoint(self) -> None:
        """Switch appends to the other file, make every record file of the
        old one durable, then reset it.  A side left dirty by a failed
        checkpoint is finished first, its records rewritten from it."""
        with self._checkpointing:
            if self._closed:
                raise StorageError("the put journal is closed")
            if not self._ready:
                return  # no put has appended: nothing to checkpoint
            other = self._sides[1 - self._active]
            if other.dirty:
                # Rewritten from its entries, each synced, only if a flush
                # may have failed (the journal is off): a checkpoint that
                # found no room for a record file flushed nothing.
                self._finish(other, rewrite=self.broken is not None)
            with self._lock:
                old = self._sides[self._active]
                self._urgent = False
                if not old.pending and old.used == HEADER_SIZE:
                    return
                failpoints.hit("storage.journal.checkpoint")
                self._active = 1 - self._active
                old.dirty = True
                while old.inflight:
                    self._idle.wait()
            self._finish(old, rewrite=False)

    def _finish(self, side: _Side, rewrite: bool) -> None:
        """Write ``side``'s resident records, make its records durable,
        reset it, then let go of those residents (checkpoint lock held; no
        put appends to it).  ``rewrite``: a flush of it failed before, and
        a failed flush may have dropped dirty pages (Linux marks them clean
        after a write error), so its records are written again from the
        journal first, each synced.  Any failure leaves every resident in
        memory and the side dirty.  A full disk (or quota) while the
        resident records are written is no write-back error: nothing the
        journal flushed is in doubt, so the journal stays on and the
        checkpoint thread tries again ``checkpoint_after`` seconds later
        (``_due``); any other disk error turns it off (``_break``)."""
        blob_ids = set(side.pending)
        short = False  # no room for a record file: not a write-back error
        try:
            # The resident records of the side's puts get their files now
            # (unsynced: the flush below makes them durable); they are let
            # go of from memory only once the reset is done.
            try:
                release = self._materialize(blob_ids)
            except (OSError, DiskFull) as e:
                if not _no_space(e):
                    raise
                short = True
                with self._lock:
                    self._retry_at = time.monotonic() + (self._checkpoint_after or 1.0)
                    self._wake.notify_all()
                log.warn(
                    "put journal: no room for the record files of {file} ({why}): "
                    "its {n} puts stay in memory; retried until there is",
                    file=os.path.basename(side.path),
                    why=e,
                    n=len(blob_ids),
                )
                raise
            if rewrite:
                raw = self.fs.pread(side.fd, side.size, 0)
                entries, _ = scan(raw, side.generation)
                with self._lock:
                    voided = set(side.voided)
                self._repair([e for e in entries if e.offset not in voided], True)
            self._flush(blob_ids)
            with self._lock:
                generation = self._next_generation
                self._next_generation += 1
            self.fs.pwrite_all(side.fd, encode_header(generation, side.size), 0)
            self.fs.fdatasync(side.fd)
        except OSError as e:
            if not short:
                why = os.strerror(e.errno or 0)
                self._break(f"checkpoint of {os.path.basename(side.path)}: {why}")
            raise
        with self._lock:
            side.generation = generation
            side.used = side.synced = HEADER_SIZE
            side.voided.clear()
            side.pending.clear()
            side.first_at = None
            side.dirty = False
            if not any(s.dirty for s in self._sides):
                self._retry_at = None
            self._idle.notify_all()
        release()

    def _start_thread(self) -> None:
        """Start the checkpoint thread at the first put (lock held): a store
        that never journals a put (most tests, a server of big files)
        never has one."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="blobstore-journal", daemon=True)
            self._thread.start()

    def _due(self) -> float | None:
        """Seconds until the next checkpoint is due (0: now), or None if
        nothing is pending (lock held): the active file's, or the retry of
        a side a checkpoint left dirty for want of space (not once the
        journal is off: the next removal or ``close`` finishes it)."""
        if self._urgent:
            return 0.0
        now = time.monotonic()
        due: float | None = None
        if self._retry_at is not None and self.broken is None and any(s.dirty for s in self._sides):
            due = max(0.0, self._retry_at - now)
        side = self._sides[self._active]
        if side.first_at is not None and self._checkpoint_after is not None:
            active = max(0.0, side.first_at + self._checkpoint_after - now)
            due = active if due is None else min(due, active)
        return due

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing:
                    due = self._due()
                    if due == 0.0:
                        break
                    self._wake.wait(due)
                if self._closing:
                    return
            try:
                self.checkpoint()
            except Exception:
                log.failure("put journal: checkpoint failed (retried at the next one)")
                with self._lock:
                    # Not at once again: a failing disk would spin this thread.
                    self._urgent = False
                    self._wake.wait(self._checkpoint_after or 1.0)

    def close(self) -> None:
        """Stop the checkpoint thread, checkpoint, close the files.  A
        checkpoint that fails is logged: the entries stay, and the next
        open replays them."""
        if self._closed:
            return
        with self._lock:
            self._closing = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        # A put still creating the files finishes first (and then finds
        # the journal closing): its files are closed below with the others.
        with self._create_lock:
            try:
                self.checkpoint()
                if self._ready and self._sides[1 - self._active].dirty:
                    self.checkpoint()
            except Exception:
                log.failure("put journal: checkpoint at close failed (replayed at the next open)")
            # Under the checkpoint lock: a removal that passed the store's
            # check before close may still call ``settle``; it must find the
            # journal closed, not write a header through a closed descriptor
            # number that another file may have taken.
            with self._checkpointing:
                self._closed = True
                for side in self._sides:
                    self.fs.close(side.fd)

    def blob_ids(self) -> list[str]:
        """Every blob id with an entry not yet checkpointed, sorted."""
        with self._lock:
            return sorted(set().union(*(s.pending for s in self._sides)))


def _nothing_resident(blob_ids: Collection[str]) -> Callable[[], None]:
    """The ``materialize`` of a journal whose puts leave no record in
    memory: nothing to write, nothing to let go of."""
    return lambda: None


def _create(fs: OsFileSystem, path: str, size: int, generation: int, nth: int = 1) -> int:
    """Create a journal file of ``size`` bytes, every byte written (zeros,
    the header at the start) and fsync'd, so that no later append allocates
    a block or changes the size: an fdatasync of it then flushes data
    only.  Written to a temp name and renamed (the caller fsyncs the
    directory), so a file found under the final name is always whole.  A
    failure removes the temp file: nothing of it is left to fill the disk.
    ``nth``: which of the files being created this is (the failpoint
    ``storage.journal.create`` fires at the nth, before its fsync)."""
    tmp = path + _TMP
    fd = fs.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        zeros = bytes(_ZERO_CHUNK)
        offset = 0
        while offset < size:
            n = min(_ZERO_CHUNK, size - offset)
            fs.pwrite_all(fd, zeros[:n], offset)
            offset += n
        fs.pwrite_all(fd, encode_header(generation, size), 0)
        failpoints.hit("storage.journal.create", nth)
        fs.fsync(fd)
        fs.rename(tmp, path)
    except BaseException:
        fs.close(fd)
        try:
            fs.unlink(tmp)
        except OSError:
            pass
        raise
    fs.close(fd)
    return fs.open(path, os.O_RDWR)
