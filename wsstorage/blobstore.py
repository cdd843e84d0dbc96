"""The storage server's blobs on local disk (``IBlobStore``).

Open a store with ``BlobStore.open(data_dir)``; it creates the layout on
first use, refuses an unknown on-disk format (``FormatError``), takes an
exclusive lock on the directory (one process per data dir) and scans it:
sealed blobs are left on disk, unsealed ones are verified against their
checksums and reported ``INCOMPLETE`` with ``durable`` = the verified length.
``store.close()`` releases the lock; any call after it, of the store or of
a write handle it gave, raises StorageError.  The layout and the fsync
order are in ``docs/storage-format.md``.

API (refinements of ``IBlobStore`` are marked *):

* ``stat(blob_id) -> BlobInfo``
* ``open_write(blob_id, epoch, offset, meta) -> BlobWriteHandle`` with
  ``write(data)``, ``sync() -> int`` (durable length), ``seal() -> BlobInfo``,
  ``close()`` and attributes ``blob_id``, ``epoch``, ``size`` (= offset of the
  next byte), ``durable``.  *A new ``open_write`` on the same blob supersedes
  any earlier handle (its next call raises StaleEpoch), whatever the epoch.
  *``close()`` keeps the unsynced bytes (they stay readable and can be synced
  by the next handle); only ``durable`` is guaranteed across a crash.  It
  closes the blob's files, as a fence does: a blob no writer holds (an
  interrupted upload waiting to be resumed) holds no descriptor.
* *``open_put(blob_id, epoch, meta, size)``: the handle of a ``put`` (a
  blob created, written and sealed at once); up to ``INLINE_DATA_MAX``
  bytes a ``BlobPutHandle`` that keeps them in memory and whose ``seal``
  writes one sealed record holding them (``put_inline``), else
  ``open_write`` at 0.
* ``open_read(blob_id, offset, length) -> BlobReadHandle`` with ``read(n)``
  (at most ``n`` verified bytes, ``b""`` at the end), ``close()``,
  ``remaining``.  *``length=None`` reads to the end.  *``read_into(buffer,
  nowait=False)`` reads verified bytes into a caller's buffer (in place for
  whole blocks); with ``nowait`` it raises BlockingIOError rather than wait
  for the disk or a busy blob, so a reactor thread may call it.
* ``fence(blob_id, epoch, truncate_to) -> BlobInfo``; *on a sealed blob a
  no-op fence returns the blob unchanged (a sealed blob never changes);
  any other fence of a sealed blob is BlobSealed.  *A fence at 0 of an
  absent blob creates it empty at ``epoch``, its record durable, so a
  writer that had not created it yet (a front end holding a small upload
  for a ``put``) is refused for its epoch when it comes; at a
  ``truncate_to`` above 0 an absent blob is BlobNotFound.
* ``commit(blob_id, epoch) -> BlobInfo``; *committing a sealed blob again
  with an epoch not older than its own returns it (an idempotent retry).
* ``delete(blob_id)``, ``list_blobs() -> Iterator[BlobInfo]``,
  ``free_space() -> (free, total)``, *``close()``, *``damaged`` (ids whose
  record does not parse, found at start or since: left on disk, not
  listed, FormatError, until scrub quarantines them, ``quarantined``, or
  a ``delete`` removes them).
* *``open_write``, ``fence`` and ``commit`` accept an offset/``truncate_to``
  up to the blob's *verified* length: after a restart the torn tail of an
  INCOMPLETE blob (``size - durable`` bytes) cannot be continued.

Durability: a new blob has no record on disk until its first ``sync``,
``seal`` or ``fence`` (or a newer epoch), so creating it syncs nothing and
a small blob written and sealed at once costs three syncs (data and the record
holding its checksums at the same time, then the directory) and two new
files (no ``.sums``).  A crash before then loses the blob whole, which is
allowed: none of its bytes was reported durable (``durable`` is 0).

A ``put`` of at most ``INLINE_DATA_MAX`` bytes (``put_inline``) is one
file, the record holding the bytes too, and one sync: through the *put
journal* (``wsstorage.putjournal``) the record's bytes are appended to a
preallocated journal file and fdatasync'd (a pure data flush, shared by
concurrent puts), and the put is acknowledged with no file created: the
blob is *resident*, registered in ``_live`` with its record in memory
(``_residents``), so every look-up (stat, read, list, count, fence, a
second put, delete) finds it there.  A checkpoint writes the record
files (temp file, rename, unsynced), makes them and their names durable
with one ``syncfs`` (a second after the first entry, when the journal is
half full, before a blob with an entry is removed, at ``close``), resets
the journal file, and only then lets go of the residents
(``_materialize``).  Opening the store replays the journal before the
scan, so a record a crash left unwritten, or a power loss lost or tore,
is written again, not reported damaged.
The journal files are created by the store's first such put, not by
``open`` (a store that never takes one never writes their 8 MiB).
Without a journal (``journal_size=0``, a disk too full to create it) or
with no room in it, a put syncs its record and then the directory (two
syncs), as any record is written.  So does a put the store cannot afford
to keep resident (``_admit``): one past ``RESIDENT_MAX`` residents (each
costs about 3 KB of Python objects besides its bytes), or one whose
record file, with those of every resident, would not fit in the free
space (or inodes) of the disk less a margin: a resident's record must
find room when the checkpoint writes it, since the put was acknowledged.

Threads: ``write`` and ``read`` of one chunk (<= 256 KiB) only touch the page
cache and may run in the reactor thread.  ``open_write`` (it creates files
and may adopt an epoch durably), ``sync``, ``seal``, ``fence``, ``commit``,
``delete``, ``list_blobs`` and ``BlobStore.open`` block on fsync or on
scanning and belong in a thread.  The put journal's checkpoints run in a
thread of the store's own (started at its first journaled put, stopped by
``close``).  The fan-out directories missing at open (all 256 in a fresh
store) are made by another, which then fsyncs ``blobs/`` once; a blob
whose directory it has not made durable yet makes it so itself (an fsync
of ``blobs/``), and ``close`` stops and waits for it.  Each blob has a
lock; ``sync`` does not hold it while it fsyncs, so writes go on meanwhile.

Memory: no call reads more than ``MAX_READ_SPAN`` (1 MiB, or one block if
blocks are larger) at a time.  Resident puts' records are held until
their checkpoint: at most ``RESIDENT_MAX`` (1024) residents, each about
3.0 KB of Python objects besides its bytes (measured), and bytes no more
than the two journal files hold (8 MiB by default), twice that with each
blob's own copy.  The
checksums of bytes written but not yet synced are kept in memory (one entry
per block, about 100 bytes per 64 KiB), so a writer that syncs now and then
keeps that small.

Page cache: after a sync (or seal) has made a run of at least
``drop_behind`` bytes durable, the store asks the kernel to drop that run's
pages (``OsFileSystem.drop_cache``), as HDFS's
``dfs.datanode.drop.cache.behind.writes`` does.  Only synced bytes, never
past the last whole page synced while writes go on (that page may be dirty
again); at seal the rest of a blob at least that long.  Written data is
seldom read back soon, and fresh page-cache pages are what a write pays
most for in the kernel: reusing pages just freed is far cheaper than
growing the cache (on a VM with free-page reporting, a 1 GiB write spent
0.35 s of system CPU instead of 2 s).  A later read misses the cache and
reads the disk.  It is off by default (``DROP_BEHIND``); with
``BlobStore.open(drop_behind=N)`` blobs smaller than N keep their pages
(a small file is the likeliest to be read again soon, and a cold read of
one costs a seek, not bandwidth).
"""

from __future__ import annotations

import array
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from wsstorage._interfaces import IScrubbedStore
from wsstorage.binding import ClusterBond
from wsstorage.diskformat import (
    BLOBS_DIR,
    DATA_SUFFIX,
    DEFAULT_BLOCK_SIZE,
    ENTRY,
    FAN_OUT,
    FORMAT_FILE,
    FORMAT_VERSION,
    IDENTITY_FILE,
    INLINE_DATA_MAX,
    INLINE_SUMS_MAX,
    LOCK_FILE,
    META_SUFFIX,
    RECORD_HEAD,
    STATE_OPEN,
    STATE_SEALED,
    SUMS_SUFFIX,
    TMP_SUFFIX,
    BlobPaths,
    ClusterBinding,
    FormatError,
    MetaRecord,
    StoreIdentity,
    check_block_size,
    crc,
    encode_meta,
    format_record,
    parse_format,
)
from wsstorage.errors import (
    NO_SPACE_ERRNOS,
    BadRequest,
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    DiskFull,
    InvalidOffset,
    StaleEpoch,
    StorageError,
)
from wsstorage.fsops import (
    OsFileSystem,
    create_durably,
    publish,
    thread_pool,
    write_temp,
)
from wsstorage.putjournal import CHECKPOINT_AFTER, JOURNAL_SIZE, Entry, PutJournal
from wsstorage.records import INCOMPLETE, OPEN, SEALED, BlobInfo, check_blob_id
from wsstorage.reserve import NO_RESERVE, Reserve, ReserveTooLarge, below_reserve_problem

log = Logger()

__all__ = ["BlobPutHandle", "BlobReadHandle", "BlobStore", "BlobWriteHandle", "FormatError"]

#: Most resident blobs a store keeps (``_admit``): a resident costs about
#: 3.1 KB of Python objects besides its data (measured: a 1-byte put 3.1
#: KB, a 4 KiB one 11.6 KB with the blob's own copy of the data), and the
#: journal files alone would let 40,000 tiny puts be resident (130 MB).
#: At half of it a checkpoint is hurried; past it a put writes and syncs
#: its own record.  Also bounds a delete of a resident blob, whose
#: checkpoint writes every pending record first (docs/storage-format.md).
RESIDENT_MAX = 1024
#: Inodes left free, beyond one per resident, for a put to be resident.
RESIDENT_INODE_MARGIN = 64
#: The newest FORMAT version a store opened without a put journal needs:
#: one already at it is not upgraded (``BlobStore._prepare``).
_UNJOURNALED_VERSION = 3
#: The file ``disk_problem`` creates, writes, fsyncs and removes in the
#: store's directory (beside FORMAT, not in blobs/, whose listing expects
#: only fan-out directories).
PROBE_FILE = "health-probe.tmp"
#: Most bytes one ``BlobReadHandle.read`` reads from disk (one block if larger).
MAX_READ_SPAN = 1024 * 1024
#: Default least run of synced bytes whose page cache is dropped: 0, never.
#: Off by default: dropping moves the kernel's page cost from the writes
#: (every replica) to the first read of the file (one replica), and a GET
#: just after a PUT then reads the disk (bench/http.py: GET fell from
#: 0.92-1.18 to 0.40-0.77 of static.File).  1024 KiB is a good run when on.
DROP_BEHIND = 0
#: The run a writer's hint (``BlobWriteHandle.drop_cache_behind``) drops
#: behind a blob when the store's own ``drop_behind`` is off ...
HINTED_DROP_BEHIND = 1024 * 1024
#: ... once the blob has at least this many bytes durable: smaller blobs
#: (most files) keep their pages on every replica, so concurrent readers,
#: who spread over the replicas, find them cached (bench/http.py's 200
#: GETs of a 10 MiB file just written fell from 0.71-0.76 to 0.53-0.64 of
#: static.File when they were dropped too); a big blob still writes most
#: of itself into pages its own last sync freed.
HINTED_DROP_AFTER = 64 * 1024 * 1024
_PAGE = mmap.PAGESIZE


@contextmanager
def _disk_errors() -> Iterator[None]:
    """Turn a full disk into DiskFull, the error the wire protocol knows."""
    try:
        yield
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise DiskFull(f"no space left on device: {e}") from e
        raise


def _check_epoch(epoch: object) -> int:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise BadRequest(f"epoch must be a non-negative integer, not {epoch!r}")
    return epoch


def _check_offset(offset: object, what: str = "offset") -> int:
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise BadRequest(f"{what} must be a non-negative integer, not {offset!r}")
    return offset


class _Blob:
    """One blob's in-memory state; every field is guarded by ``lock``.

    ``size`` is the length of the data that counts; ``covered`` how much of it
    has known checksums (equal to ``size`` except for the torn tail of a blob
    found unsealed at start); ``durable`` how much is fsync'd with its
    checksums.  Checksums of full blocks not yet written to the ``.sums`` file
    are in ``pending``; the running CRC of the last, partial block is
    ``tail_crc``.  ``generation`` changes whenever another party (a new
    writer, a fence, a commit, a delete) takes the blob away from its current
    write handle.
    """

    def __init__(
        self, store: BlobStore, blob_id: str, record: MetaRecord, paths: BlobPaths | None = None
    ) -> None:
        self.lock = threading.RLock()
        self.store = store
        self.fs = store.fs
        self.blob_id = blob_id
        #: ``paths``: the caller's, when it made them already (``_get``).
        self.paths = paths if paths is not None else BlobPaths.of(store.root, blob_id)
        self.block_size = record.block_size
        self.epoch = record.epoch
        self.meta = record.meta
        self.sealed = record.state == STATE_SEALED
        self.size = record.size
        self.covered = record.size
        self.durable = record.size
        #: Bytes from 0 whose page cache was dropped after a sync (a page boundary
        #: or the sealed size).
        self.dropped = 0
        #: Least run of synced bytes dropped behind this blob: the store's,
        #: unless a writer's hint turned it on (``drop_cache_behind``) ...
        self.drop_behind = store.drop_behind
        #: ... and the least durable length before any is dropped (hint).
        self.drop_after = 0
        self.pending: dict[int, int] = {}
        self.tail_crc = 0
        self.tail_known = False
        self.generation = 0
        self.incomplete = False
        self.deleted = False
        self.data_fd: int | None = None
        self.sums_fd: int | None = None
        #: Syncs running with the blob's descriptors and its lock released
        #: (``BlobWriteHandle._sync_bytes``); while there are any, the
        #: descriptors that ``close_files`` lets go of wait in ``retired``.
        self.borrowed = 0
        self.retired: list[int] = []
        #: The checksum entries a sealed record holds itself (no ``.sums``).
        self.inline_sums = record.sums
        #: The bytes a sealed record holds itself (no ``.data``; format 3),
        #: once read (``inline_bytes``), and how many there are (None: the
        #: blob has a ``.data``).
        self.inline_data = record.data
        self.inline_size = record.data_size
        #: Whether a record of this blob is durable on disk.  A new blob has
        #: none until its first sync, seal or fence: until then a crash
        #: loses it whole (start removes files without a record), which is
        #: right, as none of its bytes was ever reported durable.
        self.recorded = True
        #: The exact bytes of a journaled put's record while it is
        #: *resident*: durable through its journal entry only, with no
        #: record file yet (``BlobStore._residents``); None otherwise.
        self.resident_record: bytes | None = None
        #: Bytes of disk its record file will take (``BlobStore._admit``).
        self.resident_cost = 0
        #: Set (registry lock held) by a delete holding the blob from its
        #: look-up to its end: a checkpoint then leaves it registered
        #: (``BlobStore._materialize``), so that no new blob of the id is
        #: created among the delete's unlinks.
        self.pinned = False

    # -- records --------------------------------------------------------

    def record(self, state: str | None = None, sums: bytes | None = None) -> MetaRecord:
        return MetaRecord(
            blob_id=self.blob_id,
            state=state or (STATE_SEALED if self.sealed else STATE_OPEN),
            epoch=self.epoch,
            block_size=self.block_size,
            size=self.size,
            meta=self.meta,
            sums=sums if sums is not None else self.inline_sums,
            data=self.inline_data,
            data_size=self.inline_size,
        )

    def durable_length(self) -> int:
        """Bytes that survive a crash: none before the record is durable."""
        if self.sealed:
            return self.size
        return self.durable if self.recorded else 0

    def info(self) -> BlobInfo:
        if self.sealed:
            state = SEALED
        elif self.incomplete:
            state = INCOMPLETE
        else:
            state = OPEN
        return BlobInfo(
            blob_id=self.blob_id,
            size=self.size,
            durable=self.durable_length(),
            state=state,
            epoch=self.epoch,
            meta=dict(self.meta),
        )

    def write_record(self, record: MetaRecord, alongside: int | None = None) -> None:
        """Replace the ``.meta`` file atomically: temp file, fsync, rename,
        fsync the directory.  A crash leaves the old or the new record.
        ``alongside``: a file (the blob's data) to fdatasync at the same
        time as the temp file, both before the rename.

        The directory fsync also makes the ``.data`` and ``.sums`` names
        durable (same directory), and the first record of a blob makes its
        fan-out directory durable too: that is the point where a new blob's
        entries must survive a crash, so creating one fsyncs nothing.

        An ``open`` record is only ever written with the ``.sums`` file
        beside it (created now if need be, its name made durable by that
        directory fsync): only a sealed record may hold its checksums."""
        if record.state == STATE_OPEN:
            self.open_sums()
        if not self.recorded:
            self.store.fan_out_durable(self.paths.directory)
        self.store.write_atomic(self.paths.meta, record.encode(), self.paths.directory, alongside)
        self.recorded = True

    def inline_bytes(self) -> bytes | None:
        """The bytes the sealed record holds (None: the blob has a
        ``.data``), read from it the first time a reader needs them.  A
        record replaced meanwhile (the blob deleted and stored again) is
        BlobNotFound; one that no longer decodes, ChecksumError (damage:
        the caller reads another replica)."""
        if self.inline_size is None or self.inline_data is not None:
            return self.inline_data
        try:
            record = self.store._read_record(self.paths, data=True)
        except FormatError as e:
            raise ChecksumError(f"blob {self.blob_id}: its record is damaged: {e}") from e
        if record is None or record.data is None or record.sums != self.inline_sums:
            raise BlobNotFound(f"blob {self.blob_id} was deleted")
        self.inline_data = record.data
        return self.inline_data

    # -- files ----------------------------------------------------------

    def open_files(self) -> None:
        """Open ``.data`` (what a write needs); ``open_sums`` opens ``.sums``."""
        if self.data_fd is None:
            self.data_fd = self.fs.open(self.paths.data, os.O_RDWR)

    def open_sums(self) -> None:
        """Open ``.sums``, creating it if absent: a new blob gets it at its
        first sync (or open record), not at its creation, so a blob sealed
        at once never has one (``inline_sums_fit``)."""
        if self.sums_fd is None:
            self.sums_fd = self.fs.open(self.paths.sums, os.O_RDWR | os.O_CREAT)

    def inline_sums_fit(self) -> bool:
        """Whether a seal now can put the checksums in the record: a blob
        with no record and no ``.sums`` yet, of at most INLINE_SUMS_MAX
        blocks (caller holds the lock)."""
        if self.recorded or self.sums_fd is not None or self.durable:
            return False
        if self.size != self.covered:
            return False
        return -(-self.covered // self.block_size) <= INLINE_SUMS_MAX

    def close_files(self) -> None:
        """Let go of the blob's descriptors (lock held).  One a sync in a
        thread still uses (``borrowed``) is closed when it gives it back:
        closed under it, its fdatasync would fail (EBADF) or, the number
        reused by another open meanwhile, sync an unrelated file."""
        fds = [fd for fd in (self.data_fd, self.sums_fd) if fd is not None]
        self.data_fd = self.sums_fd = None
        if self.borrowed:
            self.retired.extend(fds)
            return
        for fd in fds:
            self.fs.close(fd)

    def give_back(self) -> None:
        """A sync is done with the descriptors it borrowed (lock held)."""
        self.borrowed -= 1
        if not self.borrowed:
            retired, self.retired = self.retired, []
            for fd in retired:
                try:
                    self.fs.close(fd)
                except OSError as e:
                    # Called in a ``finally``: the sync's own outcome
                    # stands, and the other descriptors are still closed.
                    log.warn("closing a descriptor of {blob} failed: {e}", blob=self.blob_id, e=e)

    # -- checksums ------------------------------------------------------

    def entries(
        self, first: int, count: int, sums_fd: int | None, nowait: bool = False
    ) -> list[tuple[int, int] | None]:
        """(bytes covered, crc) of blocks ``first .. first + count - 1`` (None
        for a block that has none), with one pread of the ``.sums`` file for
        all of them (a 1 MiB read needs 16).  With ``nowait``,
        BlockingIOError if they are not in the page cache."""
        bs = self.block_size
        tail_len = self.covered % bs
        tail_index = self.covered // bs if self.tail_known and tail_len else -1
        raw = b""
        if self.inline_sums is not None:
            raw = self.inline_sums[first * ENTRY.size : (first + count) * ENTRY.size]
        elif sums_fd is None:
            pass  # no .sums file yet: every entry is in memory
        elif first * bs < self.covered and nowait:
            buf = bytearray(ENTRY.size * count)
            offset = first * ENTRY.size
            got = self.fs.preadv_into(sums_fd, memoryview(buf), offset, nowait=True)
            if got < len(buf) and offset + got < self.fs.fstat_size(sums_fd):
                raise BlockingIOError("checksums not in the page cache")
            raw = bytes(buf[:got])
        elif first * bs < self.covered:
            raw = self.fs.pread(sums_fd, ENTRY.size * count, first * ENTRY.size)
        out: list[tuple[int, int] | None] = []
        for k in range(count):
            index = first + k
            if index in self.pending:
                out.append((bs, self.pending[index]))
            elif index == tail_index:
                out.append((tail_len, self.tail_crc))
            elif index * bs >= self.covered or ENTRY.size * (k + 1) > len(raw):
                out.append(None)
            else:
                out.append(ENTRY.unpack_from(raw, ENTRY.size * k))
        return out

    def absorb(self, data: bytes | memoryview) -> None:
        """Fold bytes appended at ``covered`` into the running checksums."""
        view = memoryview(data)
        bs = self.block_size
        while view:
            room = bs - self.covered % bs
            piece = view[:room]
            self.tail_crc = crc(piece, self.tail_crc)
            self.covered += len(piece)
            view = view[len(piece) :]
            if self.covered % bs == 0:
                self.pending[self.covered // bs - 1] = self.tail_crc
                self.tail_crc = 0

    def entries_up_to(self, length: int) -> list[tuple[int, int, int]]:
        """Checksum entries (index, covered, crc) describing ``[0, length)``
        that are not yet in the ``.sums`` file; ``length`` is ``covered``."""
        out = [(i, self.block_size, c) for i, c in sorted(self.pending.items())]
        tail_len = length % self.block_size
        if tail_len:
            out.append((length // self.block_size, tail_len, self.tail_crc))
        return out

    def write_entries(self, entries: list[tuple[int, int, int]], fd: int | None = None) -> None:
        """Write checksum entries into ``.sums`` (``fd``: a sync's borrowed
        descriptor of it): one ``pwrite`` per run of consecutive indexes (a
        sync after 1 MiB of 64 KiB blocks writes 16 adjacent entries; one
        call instead of sixteen)."""
        sums_fd = self.sums_fd if fd is None else fd
        assert sums_fd is not None
        run: list[bytes] = []
        start = next_index = -1
        for index, covered, value in entries:
            if index != next_index and run:
                self.fs.pwrite_all(sums_fd, b"".join(run), start * ENTRY.size)
                run = []
            if not run:
                start = index
            run.append(ENTRY.pack(covered, value))
            next_index = index + 1
        if run:
            self.fs.pwrite_all(sums_fd, b"".join(run), start * ENTRY.size)
        for index, covered, _ in entries:
            if covered == self.block_size:
                self.pending.pop(index, None)

    # -- page cache ----------------------------------------------------

    def drop_span(self, length: int, final: bool = False) -> tuple[int, int] | None:
        """(offset, length) of the page cache to drop now that ``[0,
        length)`` is durable, marked dropped; None if there is too little
        (caller holds the lock).

        Ends at the last whole page of ``length``, whose next page may hold
        bytes written since (dirty: advice would queue it for writeback,
        not free it), except ``final`` (sealed: nothing more comes), when
        the rest of a blob of at least ``drop_behind`` bytes goes too."""
        least = self.drop_behind
        start = self.dropped
        end = length if final else length - length % _PAGE
        if not least or end <= start or length < self.drop_after:
            return None
        if end - start < least and not (final and length >= least):
            return None
        self.dropped = end
        return start, end - start

    def drop_synced(self, length: int, final: bool = False) -> None:
        """Drop the page cache behind ``[0, length)``, just synced (lock held)."""
        span = self.drop_span(length, final)
        if span is not None and self.data_fd is not None:
            self.fs.drop_cache(self.data_fd, *span)

    # -- truncation and durability (caller holds the lock) -------------

    def truncate(self, n: int) -> None:
        """Cut the blob to ``n`` bytes (``n <= covered``).  The ``.sums`` file
        is cut first and fsync'd, then the data, so that after a crash no
        checksum describes a byte beyond ``n``."""
        self.open_files()
        self.open_sums()
        assert self.data_fd is not None and self.sums_fd is not None
        bs = self.block_size
        tail_index, tail_len = divmod(n, bs)
        tail_crc = 0
        if tail_len:
            tail_crc = crc(self.fs.pread(self.data_fd, tail_len, tail_index * bs))
        self.pending = {i: c for i, c in self.pending.items() if i < tail_index}
        want_entries = min(tail_index + (1 if tail_len else 0), -(-self.durable // bs))
        sums_size = self.fs.fstat_size(self.sums_fd)
        if sums_size > want_entries * ENTRY.size or self.durable > n:
            self.fs.ftruncate(self.sums_fd, tail_index * ENTRY.size)
            if tail_len and self.durable > tail_index * bs:
                self.fs.pwrite_all(
                    self.sums_fd, ENTRY.pack(tail_len, tail_crc), tail_index * ENTRY.size
                )
            self.fs.fsync(self.sums_fd)
        self.fs.ftruncate(self.data_fd, n)
        if self.durable > n:
            self.fs.fsync(self.data_fd)
            self.durable = n
        self.size = self.covered = n
        self.dropped = min(self.dropped, n - n % _PAGE)
        self.tail_crc = tail_crc
        self.incomplete = False

    def sync_locked(self) -> int:
        """fdatasync data, then write and fdatasync the checksums, unless
        every byte is already durable; under the lock.  Writes no record.

        fdatasync, not fsync: the size of the file is flushed with its
        bytes, and its timestamps need not survive."""
        self.open_files()
        length = self.covered
        if self.durable >= length:
            return self.durable
        self.open_sums()
        assert self.data_fd is not None and self.sums_fd is not None
        self.fs.fdatasync(self.data_fd)
        self.write_entries(self.entries_up_to(length))
        self.fs.fdatasync(self.sums_fd)
        self.durable = max(self.durable, length)
        self.drop_synced(length)
        return self.durable

    def seal_locked(self) -> BlobInfo:
        """Seal at ``size``: data and checksums synced, then the record.

        A blob with no record and no ``.sums`` yet (written and sealed at
        once, as a put is) keeps its checksums in the sealed record: the
        record's temp file is written, then it and the data are synced at
        the same time (two fsyncs in flight share the file system's journal
        commit: 1.03-1.12 ms -> 0.75-0.88 ms a seal), then it is renamed
        and the directory synced; no ``.sums`` file to create and sync
        (docs/storage-format.md)."""
        if self.size > self.covered:
            self.truncate(self.covered)
        self.open_files()
        assert self.data_fd is not None
        if self.fs.fstat_size(self.data_fd) != self.size:
            self.fs.ftruncate(self.data_fd, self.size)
            self.durable = min(self.durable, self.size)
        if self.inline_sums_fit():
            entries = self.entries_up_to(self.covered)
            sums = b"".join(ENTRY.pack(covered, value) for _, covered, value in entries)
            self.write_record(self.record(STATE_SEALED, sums), alongside=self.data_fd)
            self.inline_sums = sums
            self.pending = {}
            self.durable = self.covered
        else:
            self.sync_locked()
            self.write_record(self.record(STATE_SEALED))
        self.drop_synced(self.size, final=True)
        self.sealed = True
        self.incomplete = False
        self.generation += 1
        self.close_files()
        self.store.forget(self)
        return self.info()


class BlobWriteHandle:
    """A write stream into one blob, at ``size``; see the module docstring."""

    def __init__(self, blob: _Blob, epoch: int, generation: int) -> None:
        self._blob = blob
        self.blob_id = blob.blob_id
        self.epoch = epoch
        self._generation = generation
        self._closed = False

    @property
    def size(self) -> int:
        return self._blob.size

    @property
    def durable(self) -> int:
        return self._blob.durable_length()

    def _check(self) -> _Blob:
        """Raise unless this handle still owns the blob (caller holds lock)."""
        blob = self._blob
        if self._closed:
            raise StorageError("write handle is closed")
        # After ``close`` (which closed the blob's files under its lock) a
        # call would open them again, and nothing would close them.
        blob.store.check_open()
        if blob.deleted:
            raise BlobNotFound(f"blob {self.blob_id} was deleted")
        if blob.epoch > self.epoch:
            raise StaleEpoch(f"blob {self.blob_id} is at epoch {blob.epoch} > {self.epoch}")
        if blob.sealed:
            raise BlobSealed(f"blob {self.blob_id} is sealed")
        if blob.generation != self._generation:
            raise StaleEpoch(f"blob {self.blob_id} was taken over by another writer")
        return blob

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (page cache only; safe in the reactor thread).

        On a full disk the bytes are not accepted (``size`` is unchanged) and
        DiskFull is raised."""
        self.write_pieces((data,))

    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Append ``pieces`` in order with one ``pwritev`` (per ``IOV_MAX``
        pieces): the storage server hands over the DATA frames of one socket
        read as views into the received bytes, so a batch of frames costs
        one system call and no copy.  All or nothing, as ``write``."""
        blob = self._blob
        with blob.lock:
            self._check()
            blob.open_files()
            assert blob.data_fd is not None
            try:
                with _disk_errors():
                    if len(pieces) == 1:
                        blob.fs.pwrite_all(blob.data_fd, pieces[0], blob.size)
                    else:
                        blob.fs.pwritev_all(blob.data_fd, pieces, blob.size)
            except BaseException:
                try:
                    blob.fs.ftruncate(blob.data_fd, blob.size)
                except OSError:
                    pass
                raise
            for data in pieces:
                blob.absorb(data)
            blob.size = blob.covered

    def drop_cache_behind(self) -> None:
        """The writer's hint that this replica will not be the first one
        read: drop the page cache behind what is synced from now on (and the
        rest at seal), as ``drop_behind`` does for every blob when the store
        has it on; when it is off, runs of ``HINTED_DROP_BEHIND`` once
        ``HINTED_DROP_AFTER`` bytes are durable.  Its writes then reuse the
        pages its last sync freed instead of growing the page cache (the
        expensive part of a write: the module docstring), and a read of it
        goes to the disk.  Cheap: no I/O, and no wait for the blob's lock,
        which a sync in the thread pool holds over its fsync while the
        storage server calls this from its reactor thread.  Both fields
        are only advice read under the lock by ``drop_span``: ``drop_after``
        is set first, so a sync that sees the run sees the floor too."""
        blob = self._blob
        if self._closed or blob.generation != self._generation:
            return  # no longer this blob's writer: its next call says so
        if not blob.drop_behind:
            blob.drop_after = HINTED_DROP_AFTER
            blob.drop_behind = HINTED_DROP_BEHIND

    def sync(self) -> int:
        """Make every byte written so far durable; return the durable length.

        Data, then checksums, then (the first time) the blob's record and
        its directory: the length returned survives a crash.  Blocks; the
        blob's lock is not held during the data and checksum syncs."""
        self._sync_bytes()
        blob = self._blob
        with blob.lock, _disk_errors():
            self._check()
            if not blob.recorded:
                blob.write_record(blob.record())
            return blob.durable

    def _sync_bytes(self, drop: bool = True) -> None:
        """fdatasync the data, then write and fdatasync its checksums, with
        the lock released meanwhile so that writes go on.  No record.  Then
        (``drop``) drop the page cache behind what was synced
        (``_Blob.drop_span``), out of the lock too: the reactor thread's
        writes take it.  A seal drops it all itself, in one call.  The
        descriptors are borrowed meanwhile (``_Blob.close_files``): a
        delete, commit or close of the store cannot close them under it."""
        blob = self._blob
        with blob.lock:
            self._check()
            blob.open_files()
            length = blob.covered
            if blob.durable >= length:
                return
            blob.open_sums()
            data_fd, sums_fd = blob.data_fd, blob.sums_fd
            entries = blob.entries_up_to(length)
            blob.borrowed += 1
        assert data_fd is not None and sums_fd is not None
        try:
            with _disk_errors():
                blob.fs.fdatasync(data_fd)
                with blob.lock:
                    self._check()
                    blob.write_entries(entries, sums_fd)
                blob.fs.fdatasync(sums_fd)
            with blob.lock:
                self._check()
                blob.durable = max(blob.durable, length)
                span = blob.drop_span(length) if drop else None
            if span is not None:
                blob.fs.drop_cache(data_fd, *span)
        finally:
            with blob.lock:
                blob.give_back()

    def seal(self) -> BlobInfo:
        """Commit: sync data and checksums, then the sealed record, then the
        directory, and only then return the sealed BlobInfo.  A blob never
        synced before gets its first record here (sealed), none wasted on
        an ``open`` record: four syncs, or three when its checksums fit in
        the record (``_Blob.seal_locked``).  Blocks."""
        blob = self._blob
        with blob.lock:
            self._check()
            inline = blob.inline_sums_fit()
        if not inline:
            self._sync_bytes(drop=False)
        with blob.lock, _disk_errors():
            self._check()
            info = blob.seal_locked()
        self._closed = True
        return info

    def close(self) -> None:
        """Release the handle and, if it still owns the blob, the blob's
        descriptors: an unsealed blob left by its writer (an interrupted
        upload, resumable for a day) held its ``.data`` and ``.sums`` open
        until then, so aborted uploads could exhaust the process's
        descriptors.  Unsynced bytes stay (in the file, not durable; their
        checksums in memory) and the next writer opens the files again."""
        if self._closed:
            return
        self._closed = True
        # Called from the storage server's reactor thread, whose connection
        # to this writer just went: a fence or seal in a thread may hold
        # the lock over its fsyncs, so a busy lock is waited for in a
        # helper thread, not here.
        if self._blob.lock.acquire(blocking=False):
            try:
                self._let_go_of_files()
            finally:
                self._blob.lock.release()
        elif self._blob.generation == self._generation:  # else: not ours to close
            _closer_pool().submit(self._let_go_of_files_locked)

    def discard(self) -> int:
        """Give back now the disk space of a write that failed for a full
        disk (DiskFull), not after the front ends' orphan grace (an hour):
        the bytes nothing can need.  Returns how many were given back.

        - A blob with no record (nothing of it was ever reported durable:
          no sync, fence or seal answered) is removed whole: no checkpoint
          can name a byte of it, a takeover would fence it at 0 (which
          creates it again, empty) and a restart would remove it anyway.
        - A recorded blob keeps its durable bytes: a checkpoint may name
          them, and a takeover resume from them (a pending upload's
          replica must survive its front end).  Only what was written past
          them is cut off.

        Only while this handle still owns the blob: one another writer, a
        fence, a seal or a delete took meanwhile is left alone.  The
        handle is done afterwards (its next call fails).  Blocks."""
        blob = self._blob
        store = blob.store
        with blob.lock:
            self._closed = True
            if blob.generation != self._generation or blob.deleted or blob.sealed:
                return 0
            blob.generation += 1  # a sync still running for the writer stops
            if blob.recorded or store._is_resident(blob):
                keep = blob.durable
                freed = 0
                if blob.covered > keep or blob.size > keep:
                    blob.open_files()
                    assert blob.data_fd is not None
                    freed = blob.fs.fstat_size(blob.data_fd) - keep
                    with _disk_errors():
                        blob.truncate(keep)
                blob.close_files()
                return max(freed, 0)
            return store._remove_unrecorded(blob)

    def _let_go_of_files(self) -> None:
        """Close the blob's files if this handle still owns it (lock held)."""
        blob = self._blob
        if blob.generation == self._generation and not blob.sealed:
            blob.close_files()

    def _let_go_of_files_locked(self) -> None:
        with self._blob.lock:
            self._let_go_of_files()


class BlobPutHandle:
    """The write handle of a small ``put`` (``BlobStore.open_put``): keeps
    the bytes in memory (at most the ``size`` announced, itself at most
    INLINE_DATA_MAX) and creates the blob, sealed, only at ``seal``
    (``BlobStore.put_inline``).  Nothing is on disk before then, so a crash
    loses it whole, as it does a new blob never synced."""

    def __init__(
        self, store: BlobStore, blob_id: str, epoch: int, meta: dict[str, Any], size: int
    ) -> None:
        self._store = store
        self.blob_id = blob_id
        self.epoch = epoch
        self._meta = meta
        self._limit = size
        self._buffer = bytearray()
        self.size = 0
        self.durable = 0
        self._closed = False

    def write(self, data: bytes | memoryview) -> None:
        self.write_pieces((data,))

    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> None:
        if self._closed:
            raise StorageError("write handle is closed")
        n = sum(len(p) for p in pieces)
        if self.size + n > self._limit:
            raise BadRequest(f"a put of {self._limit} bytes got {self.size + n}")
        for piece in pieces:
            self._buffer += piece
        self.size += n

    def seal(self) -> BlobInfo:
        """Store the bytes, sealed (``put_inline``).  A put that got fewer
        bytes than it announced is refused (BadRequest), never sealed
        short.  The bytes are kept until a seal succeeds: one that fails
        (DiskFull) left nothing on disk and may be tried again, as a
        ``BlobWriteHandle`` seal may."""
        if self._closed:
            raise StorageError("write handle is closed")
        if self.size != self._limit:
            raise BadRequest(f"a put of {self._limit} bytes got {self.size}")
        info = self._store.put_inline(self.blob_id, self.epoch, self._meta, bytes(self._buffer))
        self.durable = info.durable
        self.close()
        return info

    def close(self) -> None:
        self._closed = True
        self._buffer = bytearray()

    def discard(self) -> int:
        """Nothing of a put is on disk before its seal, and a seal that
        failed left nothing (``put_inline``): nothing to give back."""
        self.close()
        return 0


class BlobReadHandle:
    """Verified reads of ``[offset, offset + length)`` of one blob.

    A read of many blocks costs one ``pread`` of the data and one of the
    checksum entries (at most ``MAX_READ_SPAN`` bytes per call), and every
    block is checked against its entry before any of its bytes is returned.
    A read that ends inside a block keeps that verified block, so small
    sequential reads do not read and check it again.
    """

    def __init__(self, blob: _Blob, offset: int, length: int) -> None:
        self._blob = blob
        self._fs = blob.fs
        self.blob_id = blob.blob_id
        self.offset = offset
        self.remaining = length
        self._block_index = -1
        self._block = b""
        #: A blob whose record holds its bytes has no ``.data`` to open.
        self._inline = blob.inline_bytes()
        self._data_fd: int | None = None
        if self._inline is None:
            self._data_fd = self._fs.open(blob.paths.data, os.O_RDONLY)
        self._sums_fd: int | None = None
        try:
            self._open_sums()
        except BaseException:
            if self._data_fd is not None:
                self._fs.close(self._data_fd)
            raise

    def _open_sums(self) -> None:
        """Open ``.sums`` unless the record holds the checksums; a blob
        being written has none until its first sync (its checksums are
        all in memory until then), so its absence is no error then."""
        blob = self._blob
        if self._sums_fd is not None or blob.inline_sums is not None:
            return
        try:
            self._sums_fd = self._fs.open(blob.paths.sums, os.O_RDONLY)
        except FileNotFoundError:
            if blob.sealed:
                raise

    def _entries(
        self, first: int, count: int, end: int, nowait: bool = False
    ) -> tuple[list[tuple[int, int]], StorageError | None]:
        """The checksum entries of the usable blocks among ``first .. first +
        count - 1`` (caller holds the blob's lock), and the error that stops
        at the first block without one.

        ``end`` is where this handle's range ends: a block must have a
        checksum covering every byte of it the handle will use."""
        blob = self._blob
        bs = blob.block_size
        if blob.deleted:
            raise BlobNotFound(f"blob {self.blob_id} was deleted")
        self._open_sums()  # the first sync may have created it meanwhile
        if min(end, (first + count) * bs) > blob.size:
            raise InvalidOffset(f"blob {self.blob_id} was truncated under the reader")
        entries = blob.entries(first, count, self._sums_fd, nowait)
        good: list[tuple[int, int]] = []
        for k, entry in enumerate(entries):
            needed = min(bs, end - (first + k) * bs)
            if entry is None or entry[0] < needed or (k < count - 1 and entry[0] != bs):
                error = ChecksumError(
                    f"blob {self.blob_id} block {first + k} has no checksum (torn tail)"
                )
                return good, error
            good.append(entry)
        return good, None

    def _verify(
        self, view: memoryview, first: int, entries: list[tuple[int, int]]
    ) -> tuple[int, StorageError | None]:
        """How many of the blocks read into ``view`` match their entries, and
        the error of the first one that does not (or is short)."""
        bs = self._blob.block_size
        for k, (covered, expected) in enumerate(entries):
            block = view[k * bs : k * bs + covered]
            if len(block) != covered or crc(block) != expected:
                return k, ChecksumError(f"blob {self.blob_id} block {first + k} fails its checksum")
        return len(entries), None

    def _load(self, first: int, count: int, end: int) -> bytes:
        """Blocks ``first .. first + count - 1``, verified, as one bytes.

        When a block fails, the good blocks before it are returned (the next
        call starts at the bad one and raises); a first block that fails
        raises.
        """
        bs = self._blob.block_size
        with self._blob.lock:
            entries, error = self._entries(first, count, end)
            total = sum(entry[0] for entry in entries)
            if self._inline is not None:
                data = self._inline[first * bs : first * bs + total]
            else:
                assert self._data_fd is not None
                data = self._fs.pread(self._data_fd, total, first * bs) if total else b""
        view = memoryview(data)
        good, bad = self._verify(view, first, entries)
        view.release()
        error = bad or error
        if error is not None:
            if good == 0:
                raise self._failure(error)
            return data[: good * bs]
        return data

    def _failure(self, error: StorageError) -> StorageError:
        """What a block that failed means: damage (ChecksumError, which
        makes the front end mark this replica stale), unless the blob was
        deleted, or deleted and stored again, under this reader: it opened
        its files by name after reading the record, so it may check one
        blob's bytes against another's checksums.  That is BlobNotFound
        (read another replica).  Checked only on failure: free otherwise."""
        if isinstance(error, ChecksumError) and self._replaced():
            return BlobNotFound(f"blob {self.blob_id} was deleted or replaced under the reader")
        return error

    def _replaced(self) -> bool:
        """Whether the files this reader holds are no longer the blob's, or
        (sealed) its record on disk is not the one it was read from.  An
        unsealed blob's record lags its size: its live state says."""
        blob = self._blob
        if blob.deleted:
            return True
        try:
            for fd, path in ((self._data_fd, blob.paths.data), (self._sums_fd, blob.paths.sums)):
                if fd is None:
                    continue
                try:
                    named = os.stat(path)
                except FileNotFoundError:
                    return True
                held = os.fstat(fd)
                if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                    return True
            return blob.sealed and not blob.store._same_record(blob)
        except OSError:
            # The disk cannot say (EIO, EACCES): the checksum error stands,
            # so the front end still reports damage and repair runs.
            return False

    def read_into(self, buffer: memoryview, nowait: bool = False) -> int:
        """Like ``read(len(buffer))``, into ``buffer``: the number of verified
        bytes put there (0 at the end).

        With ``nowait`` the data must already be in the page cache: if the
        first block is not, BlockingIOError is raised and nothing is
        consumed (so a reactor thread can read cached data itself and leave
        the disk to a thread).  Reads whole blocks from a block boundary in
        place; an unaligned start or a buffer that is not a whole number of
        blocks is served by ``read`` and copied."""
        bs = self._blob.block_size
        want = min(len(buffer), self.remaining)
        if not want:
            return 0
        if self.offset % bs or len(buffer) % bs:
            if nowait:
                raise BlockingIOError("unaligned read: not done in place")
            data = self.read(want)
            buffer[: len(data)] = data
            return len(data)
        first = self.offset // bs
        count = -(-want // bs)
        lock = self._blob.lock
        # Never wait for the lock with nowait: a writer may hold it over fsync.
        if not lock.acquire(blocking=not nowait):
            raise BlockingIOError("the blob is busy")
        try:
            entries, error = self._entries(first, count, self.offset + self.remaining, nowait)
            total = sum(entry[0] for entry in entries)
            got = 0
            if total and self._inline is not None:
                piece = memoryview(self._inline)[first * bs : first * bs + total]
                got = len(piece)
                buffer[:got] = piece
            elif total:
                assert self._data_fd is not None
                got = self._fs.preadv_into(self._data_fd, buffer[:total], first * bs, nowait=nowait)
        finally:
            lock.release()
        if nowait and got < total:
            whole = got // bs  # a short read stops at what is cached
            if whole == 0:
                raise BlockingIOError("not in the page cache")
            entries, error = entries[:whole], None
        good, bad = self._verify(buffer[:got], first, entries)
        error = bad or error
        if good == 0 and error is not None:
            if nowait and isinstance(error, ChecksumError):
                # What the failure means takes a look at the disk
                # (``_failure``): not in the reactor thread, where a sick
                # disk would stall every transfer.  The threaded read does
                # it again from here.
                raise BlockingIOError("a block failed its checksum: checked off the reactor")
            raise self._failure(error)
        n = min(want, sum(entry[0] for entry in entries[:good]))
        self.offset += n
        self.remaining -= n
        return n

    def read(self, n: int) -> bytes:
        """Up to ``n`` verified bytes (``b""`` at the end).

        A damaged block raises ChecksumError; the good bytes before it in
        the same call are returned first and the next call raises, so a
        caller can deliver everything that verified."""
        if n < 0:
            raise BadRequest("read size must be non-negative")
        want = min(n, self.remaining)
        if not want:
            return b""
        bs = self._blob.block_size
        index, start = divmod(self.offset, bs)
        if index == self._block_index:  # the rest of the block kept last time
            piece = self._block[start : start + want]
        else:
            span = max(1, MAX_READ_SPAN // bs)
            last = min((self.offset + want - 1) // bs, index + span - 1)
            data = self._load(index, last - index + 1, self.offset + self.remaining)
            stop = min(start + want, len(data))
            piece = data if start == 0 and stop == len(data) else data[start:stop]
            if stop % bs and stop < len(data):  # ends inside a block: keep it
                self._block_index = index + stop // bs
                self._block = data[stop // bs * bs : (stop // bs + 1) * bs]
        self.offset += len(piece)
        self.remaining -= len(piece)
        return piece

    def close(self) -> None:
        for fd in (self._data_fd, self._sums_fd):
            if fd is not None:
                self._fs.close(fd)
        self._data_fd = self._sums_fd = None
        self._block = b""


#: ``FS_IOC_GETFLAGS``/``FS_IOC_SETFLAGS`` (linux/fs.h, on 64-bit Linux) and the
#: ``FS_TOPDIR_FL`` inode flag (``chattr +T``).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: str) -> bool:
    """Ask the file system to place each directory made in ``path`` in a
    block group of its own choosing (ext2/3/4's Orlov allocator, as for a
    directory of ``/``: the ``chattr +T`` flag), not in ``path``'s own.
    Whether the flag is set; False (and nothing changed) on a file system
    without it.

    Made for ``blobs/``: ext4 puts a new file's inode in its directory's
    block group, and without a journal it skips, one by one, every inode
    of that group deleted in the last 5 s (or 305 s while its inode table
    block is unwritten: ``recently_deleted`` in fs/ext4/ialloc.c).  The
    fan-out directories of a new store were all made in the group of the
    store's own directory, among whatever was deleted near it: on the VM
    we measure on, under a directory where test runs had just removed
    thousands of files, creating a file cost 0.2-1.5 ms of kernel CPU, and
    0.015 ms in a directory whose parent had the flag.  Only directories
    made after the flag is set move; a store's files stay where they are.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])  # the kernel reads and writes an int
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
        return True
    except OSError:  # ENOTTY, EOPNOTSUPP: no such flags here; EPERM
        return False
    finally:
        os.close(fd)


@implementer(IScrubbedStore)
class BlobStore:
    """Blobs under ``root``; build with ``BlobStore.open``."""

    def __init__(
        self,
        root: str,
        fs: OsFileSystem,
        block_size: int,
        lock_fd: int,
        drop_behind: int = DROP_BEHIND,
        identity: StoreIdentity | None = None,
    ) -> None:
        self.root = root
        self.fs = fs
        self.block_size = block_size
        #: Which data directory this is (``IDENTITY``): reported in health
        #: answers, so front ends notice a server that comes back on a wiped
        #: or replaced one.  None while a store made before identities
        #: could not be given one for want of space (``open``, ``identify``).
        self.identity = identity
        #: Held by a try at writing a missing IDENTITY (``identify``), and
        #: by ``close`` before it lets go of the directory's lock.
        self._identity_lock = threading.Lock()
        #: The last error other than a full disk that such a try logged.
        self._identity_error: str | None = None
        #: The cluster this store is bound to (``CLUSTER``, ``bind_cluster``).
        self.bond = ClusterBond(root, fs, None)
        #: Least run of synced bytes whose page cache is dropped; 0: never.
        self.drop_behind = drop_behind
        self._lock_fd: int | None = lock_fd
        self._registry_lock = threading.Lock()
        #: Set by ``close`` (under the registry lock): from then on no blob
        #: is registered and no write handle opens a file (``check_open``).
        self.closed = False
        self._live: dict[str, _Blob] = {}
        #: Fan-out directories whose entry this process has fsync'd (or found
        #: at open).  A directory goes in only if an fsync of ``blobs/``
        #: began after its ``mkdir`` returned.
        self._durable_dirs: set[str] = set()
        #: Fan-out directories this process made or found (``_fan_out``): a
        #: new blob in one of them skips its ``mkdir``, which would fail
        #: EEXIST.  wsfs never removes one; an operator may (``_in_fan_out``).
        self._made_dirs: set[str] = set()
        #: Guards ``_made_dirs``, ``_durable_dirs`` and ``_fanning``: the
        #: fan-out thread and puts in other threads change them together.
        #: Never held over a mkdir or an fsync.
        self._dirs_lock = threading.Lock()
        #: The directories the fan-out thread will mark durable once its
        #: fsync of ``blobs/`` returns (all made before that fsync began);
        #: one found removed meanwhile (``_in_fan_out``) is taken out.
        self._fanning: set[str] = set()
        #: The thread making the fan-out directories missing at open
        #: (``_fan_out_all``), and the flag ``close`` stops it with.
        self._fan_out_thread: threading.Thread | None = None
        self._fan_out_stop = threading.Event()
        #: Blobs whose record could not be read (at start, or found so
        #: since): left on disk as they are, absent from list_blobs and the
        #: count, FormatError from stat, until scrub quarantines them.  A
        #: set: every ``_get`` and ``_held`` looks an id up in it (``damaged``
        #: is the sorted view for reports).
        self._damaged: set[str] = set()
        # Ids scrub is judging, and whether their files are still the ones it
        # judges (``judging``, ``quarantine``).
        self._judged: dict[str, bool] = {}
        #: How many blobs ``list_blobs`` would list, kept as blobs come and
        #: go: ``health`` reports it every second to every front end, and
        #: counting by reading every record made each probe cost O(blobs).
        self._count = 0
        #: The put journal (``put_inline``), or None: puts sync their own
        #: record files (``BlobStore.open`` with ``journal_size=0``, or the
        #: journal could not be created for want of space).
        self._journal: PutJournal | None = None
        #: Whether ``syncfs`` works here; once it fails ENOSYS, a
        #: checkpoint fsyncs file by file (``_make_durable``).
        self._syncfs_works = True
        #: The *resident* blobs (guarded by the registry lock): sealed by a
        #: journaled put, acknowledged once its entry was fdatasync'd, and
        #: held here and in ``_live`` (their record's bytes in
        #: ``resident_record``) until the checkpoint of their journal file
        #: has written their record files and made them durable
        #: (``_materialize``).  No put creates a file: on this VM creating
        #: one cost 0.05-0.9 ms of kernel CPU, most of a small put's time.
        #: At most ``RESIDENT_MAX``, and what the two journal files hold
        #: (module docstring; ``_admit``).
        self._residents: dict[str, _Blob] = {}
        #: Puts admitted as residents (``_admit``), those still appending
        #: included, and the disk their record files will take (each
        #: rounded up to the allocation unit): what a checkpoint must find
        #: free.  Registry lock.
        self._admitted = 0
        self._admitted_bytes = 0
        #: Free space kept back from new blobs (wsstorage.reserve): a blob
        #: is not created while less than this (and its size, when known)
        #: is free.  No reserve by default; the storage server sets its own.
        self.reserve: Reserve = NO_RESERVE

    @property
    def damaged(self) -> list[str]:
        """The ids in ``_damaged``, sorted: what scrub, metrics and an
        operator see, in the same order every time."""
        return sorted(self._damaged)

    # -- opening --------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        fs: OsFileSystem | None = None,
        drop_behind: int = DROP_BEHIND,
        journal_size: int = JOURNAL_SIZE,
        checkpoint_after: float | None = CHECKPOINT_AFTER,
        reserve: Reserve = NO_RESERVE,
    ) -> BlobStore:
        """Open (creating on first use) the store in ``data_dir``.

        ``block_size`` applies only to a new store; an existing one keeps the
        size in its FORMAT file.  ``drop_behind``: the least run of synced
        bytes whose page cache is dropped (0: keep it; module docstring).
        ``journal_size``: bytes of each put journal file (0: no journal,
        every put syncs its own record); ``checkpoint_after``: seconds
        from a journal's first entry to its checkpoint (None: only when
        half full, before a removal, at close); ``reserve``: the free space
        kept back from new blobs (wsstorage.reserve; none by default, the
        storage server's is ``--reserve``).  Blocks: replays the put
        journal, scans and verifies unsealed blobs.  Raises FormatError for
        an unknown format or a directory in use."""
        fs = fs or OsFileSystem()
        root = os.path.abspath(os.fspath(data_dir))
        os.makedirs(root, exist_ok=True)
        lock_fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(lock_fd)
            raise FormatError(f"{root} is in use by another blob store process") from e
        try:
            cls._check_reserve_fits(root, fs, reserve)
            block_size = cls._prepare(root, fs, block_size, journal=journal_size > 0)
            no_room: OSError | None = None
            try:
                identity: StoreIdentity | None = cls._identify(root, fs)
            except OSError as e:
                if e.errno not in NO_SPACE_ERRNOS:
                    raise
                # An older store on a full disk serves as it did before
                # identities, without one, rather than not at all
                # (``identify`` tries again); said once it is open.
                identity, no_room = None, e
            if drop_behind < 0:
                raise ValueError(f"drop_behind must not be negative, not {drop_behind}")
            store = cls(root, fs, block_size, lock_fd, drop_behind, identity)
            store.reserve = reserve
            store.bond = ClusterBond.load(root, fs)
            # Before the scan: a record a power loss tore is rewritten from
            # its entry, not reported damaged.
            try:
                store._journal = PutJournal.open(
                    fs,
                    root,
                    journal_size,
                    store._make_durable,
                    store._restore,
                    checkpoint_after,
                    store._materialize,
                )
            except OSError as e:
                if e.errno not in NO_SPACE_ERRNOS:
                    raise
                # Its puts were acknowledged: the journal files are kept
                # as they are (a replay writes nothing over them) for the
                # next start to replay.
                raise DiskFull(
                    f"cannot open the blob store in {root}: replaying its put journal "
                    f"needs room for the record files of acknowledged puts, and the "
                    f"disk is full ({os.strerror(e.errno or 0)}); free space and inodes "
                    f"on the file system of {root}, then start the storage server again"
                ) from e
            try:
                store._scan()
                missing = store._fan_out_found()
            except BaseException:
                if store._journal is not None:
                    store._journal.close()
                raise
            if missing:
                store._start_fan_out(missing)
        except BaseException:
            os.close(lock_fd)
            raise
        if no_room is not None:
            log.warn(
                "{root}: this store has no IDENTITY file yet (it was made before store "
                "identities) and it cannot be written, the disk is full ({err}); the "
                "store serves without a store id (health answers report none) and "
                "IDENTITY is written as soon as there is room for it",
                root=root,
                err=os.strerror(no_room.errno or 0),
            )
        return store

    @staticmethod
    def _prepare(root: str, fs: OsFileSystem, block_size: int, journal: bool = True) -> int:
        """Check FORMAT (writing it for a new store, upgrading an older
        one); the store's block size.  ``journal``: whether this process
        may journal puts; a version-3 store opened without a journal is
        left at version 3, since nothing this process writes needs more
        (version 4 only says that acknowledged puts may be durable only
        through the journal files)."""
        fmt = os.path.join(root, FORMAT_FILE)
        blobs = os.path.join(root, BLOBS_DIR)
        if fs.exists(fmt):
            with open(fmt, "rb") as f:
                block_size, version = parse_format(f.read(4096), fmt)
            if version < (FORMAT_VERSION if journal else _UNJOURNALED_VERSION):
                # Every blob of versions 1 and 2 reads as it is; the new
                # FORMAT makes older code refuse a store that may now hold
                # records with inline checksums (version 2), a small put's
                # bytes after the JSON line (version 3) or puts durable only
                # through the journal (version 4).  (Versions 1 and 2 go to
                # 4 even without a journal: FORMAT is written in one version.)
                _write_atomic(fs, fmt, format_record(block_size), root)
            return block_size
        # An empty blobs/ is a first open cut short between its mkdir and
        # the FORMAT write: nothing is in it to misread, so it is finished.
        # One with anything in it is not ours to guess about.
        if fs.exists(blobs) and any(True for _ in fs.listdir(blobs)):
            raise FormatError(f"{root} has a {BLOBS_DIR}/ directory but no {FORMAT_FILE} file")
        check_block_size(block_size)
        if not fs.exists(blobs):
            fs.mkdir(blobs)
        # Before any fan-out directory is made in it (they all are after
        # FORMAT, by ``_fan_out_all`` or a put).
        spread_subdirectories(blobs)
        # The new store's identity, durable by FORMAT's directory fsync: a
        # crash before that leaves a store that never served, with no FORMAT
        # and an empty blobs/, which its next open creates again (a new id
        # over the old: no front end ever heard that one).
        ident = os.path.join(root, IDENTITY_FILE)
        publish(fs, write_temp(fs, ident, StoreIdentity.new().encode(), sync=True), ident)
        _write_atomic(fs, fmt, format_record(block_size), root)
        return block_size

    @staticmethod
    def _identify(root: str, fs: OsFileSystem) -> StoreIdentity:
        """The store's identity, from ``IDENTITY``; a store made before
        identities (or whose creation a crash cut short) gets one now,
        written atomically.  That is no wipe: the front ends' catalog has
        no identity for a server that never reported one, and takes the
        first it hears.  A damaged file is refused (FormatError), never
        replaced: a new id would make every front end take the store's
        blobs for lost.  A write that fails leaves no IDENTITY (one renamed
        but not made durable is removed: no id is reported that a crash
        could take back)."""
        path = os.path.join(root, IDENTITY_FILE)
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
        except FileNotFoundError:
            pass  # only a missing file is made anew: any other error stops here
        else:
            identity = StoreIdentity.decode(data, path)
            # A crash between a rename and its directory's fsync leaves a
            # name a power loss can still take back: made durable before
            # this id is reported.
            fs.fsync_dir(root)
            return identity
        identity = StoreIdentity.new()
        create_durably(fs, root, IDENTITY_FILE, identity.encode())
        return identity

    @property
    def cluster_id(self) -> str | None:
        """The cluster the store is bound to (health reports it), or None."""
        return self.bond.cluster_id

    def bind_cluster(self, cluster_id: str) -> ClusterBinding:
        """Bind the store to ``cluster_id`` durably, or confirm it is;
        ``WrongCluster`` if bound to another (``wsstorage.binding``)."""
        return self.bond.bind(cluster_id)

    def check_cluster(self, cluster_id: str) -> None:
        """``WrongCluster`` if the store is bound to another cluster."""
        self.bond.check(cluster_id)

    def identify(self) -> StoreIdentity | None:
        """The store's identity (what health reports).  If ``open`` could
        not write an older store's IDENTITY for want of space, it is tried
        again here, once per call (every health answer) and by one thread
        at a time, until it is written: then logged once, and reported
        from then on.  A try that fails for want of space again says
        nothing (``open`` said why); another error is logged once, and the
        store goes on without an id.  Blocks (a few file-system calls)."""
        if self.identity is not None or not self._identity_lock.acquire(blocking=False):
            return self.identity
        try:
            if self.identity is None and not self.closed:
                self.identity = self._identify(self.root, self.fs)
                self._identity_error = None
                log.info(
                    "{root}: IDENTITY written, this store is {store} from now on",
                    root=self.root,
                    store=self.identity.store_id,
                )
        except (OSError, FormatError) as e:
            full = isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS
            if not full and str(e) != self._identity_error:
                self._identity_error = str(e)
                log.warn(
                    "{root}: cannot give this store its IDENTITY (tried again at each "
                    "health check): {err}",
                    root=self.root,
                    err=e,
                )
        finally:
            self._identity_lock.release()
        return self.identity

    def _scan(self) -> None:
        """Clean up after a crash and load every unsealed blob as INCOMPLETE.

        Temp files and blob files without a record (a creation or delete cut
        short) are removed; nothing they held was ever acknowledged."""
        blobs = os.path.join(self.root, BLOBS_DIR)
        for prefix in sorted(self.fs.listdir(blobs)):
            directory = os.path.join(blobs, prefix)
            names = set(self.fs.listdir(directory))
            records = {n[: -len(META_SUFFIX)] for n in names if n.endswith(META_SUFFIX)}
            for name in sorted(names):
                stem, ext = os.path.splitext(name)
                path = os.path.join(directory, name)
                if ext == TMP_SUFFIX or (ext in (DATA_SUFFIX, SUMS_SUFFIX) and stem not in records):
                    self.fs.unlink(path)
            for blob_id in sorted(records):
                try:
                    record = self._read_record(BlobPaths.of(self.root, blob_id))
                except FormatError:
                    self._damaged.add(blob_id)
                    continue
                if record is not None:
                    self._count += 1
                if record is not None and record.state == STATE_OPEN:
                    self._live[blob_id] = self._recover(record)

    def _fan_out_found(self) -> list[str]:
        """List ``blobs/`` once: the fan-out directories there are taken as
        made, and as durable after one fsync of ``blobs/`` (a process that
        made one may have died before the fan-out thread or its first
        blob's record fsync'd it into ``blobs/``; a record's own fsyncs
        commit the directory's creation on ext4 and XFS, but not by POSIX,
        and not on a file system without a journal).  A fresh store has none
        and pays nothing.  The ones missing are returned, for
        ``_fan_out_all`` to make."""
        blobs = os.path.join(self.root, BLOBS_DIR)
        present = set(self.fs.listdir(blobs))
        missing: list[str] = []
        found: list[str] = []
        for i in range(FAN_OUT):
            name = f"{i:02x}"
            directory = os.path.join(blobs, name)
            (found if name in present else missing).append(directory)
        if found:
            self.fs.fsync_dir(blobs)
            self._made_dirs.update(found)
            self._durable_dirs.update(found)
        return missing

    def _start_fan_out(self, missing: list[str]) -> None:
        """Make the ``missing`` fan-out directories in a thread of the store
        (``_fan_out_all``), so that ``open`` does not wait for them: on a
        fresh store, 256 mkdirs and an fsync took 20-120 ms, a third of the
        test suite's time.  A thread that cannot start is no loss: each
        directory is then made by its first blob (``_in_fan_out``)."""
        thread = threading.Thread(
            target=self._fan_out_all,
            args=(missing,),
            name=f"blobstore-fan-out {self.root}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as e:
            log.warn("cannot start the fan-out thread of {root}: {e}", root=self.root, e=e)
            return
        self._fan_out_thread = thread

    def _fan_out_all(self, missing: list[str]) -> None:
        """Make every ``missing`` fan-out directory, then fsync ``blobs/``
        once and mark them durable, so a blob's first record in one of them
        need not pay that directory fsync itself (with 256 of them, the
        first ~600 blobs a fresh process stores would, a third of them an
        extra fsync each).

        Runs in the store's fan-out thread (``_start_fan_out``), so opening
        a fresh store does not wait for it.  A put meanwhile whose
        directory is not made yet, or not yet durable, makes it itself
        (``_fan_out``, ``fan_out_durable``: one fsync of ``blobs/``), as one
        an operator removed.  ``close`` stops it between two mkdirs and
        waits for it.  A disk error is logged and ends it: the directories
        not made or not marked durable are left to the puts."""
        blobs = os.path.join(self.root, BLOBS_DIR)
        try:
            for directory in missing:
                if self._fan_out_stop.is_set():
                    return
                self._fan_out(directory)
            with self._dirs_lock:
                if self._fan_out_stop.is_set():
                    return
                # Made (by this thread or a put) before the fsync begins.
                self._fanning = {d for d in missing if d in self._made_dirs}
            self.fs.fsync_dir(blobs)
            with self._dirs_lock:
                self._durable_dirs.update(self._fanning)
        except OSError as e:
            log.warn("making the fan-out directories of {root} failed: {e}", root=self.root, e=e)
        except Exception:
            log.failure("making the fan-out directories of {root} failed", root=self.root)
        finally:
            with self._dirs_lock:
                self._fanning = set()

    def wait_fanned_out(self, timeout: float | None = None) -> bool:
        """Wait for the fan-out thread (``_fan_out_all``) to end; whether
        it has (or there was none).  For tests that count a put's syncs."""
        thread = self._fan_out_thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _recover(self, record: MetaRecord) -> _Blob:
        """Verify an unsealed blob block by block; its durable length is the
        longest prefix whose blocks match their stored checksums."""
        blob = _Blob(self, record.blob_id, record)
        blob.incomplete = True
        blob.tail_known = True
        bs = blob.block_size
        data_fd = self.fs.open(blob.paths.data, os.O_RDONLY | os.O_CREAT)
        sums_fd = self.fs.open(blob.paths.sums, os.O_RDONLY | os.O_CREAT)
        try:
            size = self.fs.fstat_size(data_fd)
            verified, tail_crc, index = 0, 0, 0
            while True:
                raw = self.fs.pread(sums_fd, ENTRY.size, index * ENTRY.size)
                if len(raw) != ENTRY.size:
                    break
                covered, value = ENTRY.unpack(raw)
                if not 0 < covered <= bs:
                    break
                data = self.fs.pread(data_fd, covered, index * bs)
                if len(data) != covered or crc(data) != value:
                    break
                verified += covered
                index += 1
                if covered < bs:
                    tail_crc = value
                    break
        finally:
            self.fs.close(data_fd)
            self.fs.close(sums_fd)
        blob.size = size
        blob.covered = blob.durable = verified
        blob.tail_crc = tail_crc
        return blob

    def close(self) -> None:
        """Close open files and release the data directory's lock.  Every
        later call, of the store or of a write handle it gave, raises
        StorageError (``check_open``): one that went on would open files
        nothing closes again, in a directory no longer locked."""
        with self._registry_lock:
            self.closed = True
            live = list(self._live.values())
            self._live.clear()
        # Before anything is let go of: the thread touches no file after.
        self._fan_out_stop.set()
        if self._fan_out_thread is not None:
            self._fan_out_thread.join()
        for blob in live:
            with blob.lock:
                blob.close_files()
        if self._journal is not None:
            # A checkpoint: every record, resident ones too, written and
            # durable (if it fails, the next open replays them).
            self._journal.close()
        with self._registry_lock:
            self._residents.clear()
            self._admitted = self._admitted_bytes = 0
        with self._identity_lock:
            pass  # a try at IDENTITY (``identify``) is done: it saw ``closed``
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- helpers --------------------------------------------------------

    def check_open(self) -> None:
        """StorageError once the store is closed."""
        if self.closed:
            raise StorageError(f"blob store {self.root} is closed")

    def write_atomic(
        self, path: str, data: bytes, directory: str, alongside: int | None = None
    ) -> None:
        with _disk_errors():
            _write_atomic(self.fs, path, data, directory, alongside)

    # -- the put journal ----------------------------------------------

    def _write_sealed(self, blob: _Blob, record: MetaRecord) -> None:
        """Write a ``put``'s sealed record: through the put journal (the
        entry appended and fdatasync'd, then the blob made *resident*:
        no file is created, its record stays in memory until the next
        checkpoint writes it and makes it durable, ``_materialize``), or,
        with no journal or no room in it, as any record is
        (``_Blob.write_record``: temp file, two syncs, rename)."""
        journal = self._journal
        paths = blob.paths
        if journal is not None and journal.accepting:
            raw = record.encode()
            cost = self._admit(len(raw), journal)
            if cost is not None:
                try:
                    done = journal.put(blob.blob_id, raw, lambda: self._reside(blob, raw, cost))
                except BaseException:
                    self._unadmit(cost)
                    raise
                if done:
                    blob.recorded = True
                    return
                self._unadmit(cost)
        self._in_fan_out(paths.directory, lambda: blob.write_record(record))

    def _admit(self, size: int, journal: PutJournal) -> int | None:
        """Whether a put whose record is ``size`` bytes may be resident:
        the disk space its record file will take (admitted: counted until
        the checkpoint lets go of it, or ``_unadmit``), or None, and the
        put writes and syncs its own record (a full disk then refuses it,
        DiskFull, before it is acknowledged).  A resident is acknowledged
        before its record file exists, so the checkpoint must find room
        for it: the disk's free space (``OsFileSystem.room``, as an
        unprivileged user sees it) must hold every admitted record and
        this one with a journal file's size to spare, and its free inodes
        one per record and ``RESIDENT_INODE_MARGIN``.  At most
        ``RESIDENT_MAX`` residents (memory; a delete's checkpoint), a
        checkpoint hurried from half of that."""
        try:
            free, inodes, unit = self.fs.room(self.root)
        except OSError:
            return None
        cost = -(-size // unit) * unit
        with self._registry_lock:
            count = self._admitted
            if (
                count >= RESIDENT_MAX
                or free < self._admitted_bytes + cost + journal.size
                or inodes < count + 1 + RESIDENT_INODE_MARGIN
            ):
                cost_or_none = None
            else:
                self._admitted += 1
                self._admitted_bytes += cost
                cost_or_none = cost
        if count + 1 >= RESIDENT_MAX // 2:
            journal.hurry()
        return cost_or_none

    def _unadmit(self, cost: int) -> None:
        """Let go of one admitted resident of ``cost`` bytes (``_admit``)."""
        with self._registry_lock:
            self._admitted -= 1
            self._admitted_bytes -= cost

    def _reside(self, blob: _Blob, raw: bytes, cost: int) -> None:
        """A journaled put's entry is durable: the blob (registered, its
        lock held by the put) stays registered, with its record's bytes,
        until the checkpoint of its journal file (``_materialize``).
        Called by the journal before the put counts as done for a
        checkpoint (``PutJournal.put``), so that checkpoint sees it."""
        with self._registry_lock:
            blob.resident_record = raw
            blob.resident_cost = cost
            self._residents[blob.blob_id] = blob

    def _is_resident(self, blob: _Blob) -> bool:
        """Whether ``blob`` is resident: its record may have no file yet,
        what is in memory is the blob (``_residents``)."""
        return self._residents.get(blob.blob_id) is blob

    def _materialize(self, blob_ids: Collection[str]) -> Callable[[], None]:
        """Write the record file of each resident blob among ``blob_ids``
        (a checkpoint's, before its flush): temp file and rename, unsynced,
        as a replay does (``_restore``); the flush that follows makes them
        durable.  Returns what lets go of exactly those blobs once the
        checkpoint has reset their journal file (not before: until then
        a failed flush may have lost a record file, and the blob must be
        found in memory).  Letting go drops a blob from ``_live`` only if
        it is still the one registered and no delete holds it
        (``pinned``); a blob deleted meanwhile was made durable by the
        delete's own checkpoint first (``_settle``).

        Takes the registry lock only to look the blobs up and to let them
        go, never a blob's lock (a put holding it may be waiting for this
        checkpoint), and no record of one is written twice: a resident's
        record never changes, and none of its id is written while it is
        registered (a fence or a second put finds it sealed)."""
        with self._registry_lock:
            blobs = [b for i in sorted(blob_ids) if (b := self._residents.get(i)) is not None]
        for blob in blobs:
            raw = blob.resident_record
            assert raw is not None
            self._write_record_file(blob.paths, raw)

        def release() -> None:
            with self._registry_lock:
                for blob in blobs:
                    self._drop_resident(blob)
                    if self._live.get(blob.blob_id) is blob and not blob.pinned:
                        del self._live[blob.blob_id]

        return release

    def _drop_resident(self, blob: _Blob) -> None:
        """``blob`` is no longer resident (registry lock held): out of
        ``_residents``, its record's bytes and its admission (``_admit``)
        given back, once, whoever comes first: the checkpoint that wrote
        its record (``_materialize``) or a delete that removed it after
        that checkpoint's flush and before it let go (``delete``)."""
        if self._residents.get(blob.blob_id) is blob:
            del self._residents[blob.blob_id]
            self._admitted -= 1
            self._admitted_bytes -= blob.resident_cost
        blob.resident_record = None

    def _write_record_file(self, paths: BlobPaths, raw: bytes) -> None:
        """A resident's record file, unsynced (``_materialize``)."""
        tmp = self._in_fan_out(paths.directory, lambda: write_temp(self.fs, paths.meta, raw))
        publish(self.fs, tmp, paths.meta)

    def _settle(self, blob_id: str) -> None:
        """Before a blob's files are removed: checkpoint the put journal if
        it holds an entry of the blob not yet checkpointed, or a replay
        after a crash would bring the blob back."""
        if self._journal is not None:
            with _disk_errors():
                self._journal.settle(blob_id)

    def _make_durable(self, blob_ids: Collection[str]) -> None:
        """Make the record files of ``blob_ids`` (written by puts through
        the journal, or by its replay) durable, with their names: one
        ``syncfs`` of the data directory's file system, or, where there is
        none, an fsync of each record, then of each directory, then of
        ``blobs/`` (a fan-out directory a replay made again)."""
        if self._syncfs_works:
            try:
                # Through the lock file's descriptor, open since the store
                # was: a fresh one would miss a write-back error another
                # store of this disk was told of first (OsFileSystem.syncfs).
                self.fs.syncfs(self.root, self._lock_fd)
                return
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                self._syncfs_works = False
                log.info("syncfs is not available: put journal checkpoints fsync each record")
        directories: set[str] = set()
        for blob_id in sorted(blob_ids):
            paths = BlobPaths.of(self.root, blob_id)
            try:
                fd = self.fs.open(paths.meta, os.O_RDONLY)
            except FileNotFoundError:
                continue  # a put that failed, its entry voided by this checkpoint
            try:
                self.fs.fsync(fd)
            finally:
                self.fs.close(fd)
            directories.add(paths.directory)
        for directory in sorted(directories):
            self.fs.fsync_dir(directory)
        if directories:
            self.fs.fsync_dir(os.path.join(self.root, BLOBS_DIR))

    def _restore(self, entries: list[Entry], force: bool = False) -> None:
        """Make each entry's record file hold exactly its bytes (replay):
        one missing, short, torn or otherwise different (a power loss may
        lose a record file written without a sync) is written again, temp
        file and rename, unsynced (``_make_durable`` follows).  With
        ``force`` every one is written again to a new file, fsync'd, and its
        directory fsync'd: after a failed flush, or at open after a crash,
        a record may read back right from pages whose write-back failed
        (Linux marks them clean), and only a new file's own fsync proves it
        is on disk.

        One exception: a record of a later epoch than the entry's is a
        later blob of that id (a fence came after the put failed), left as
        it is.  One of the same or an older epoch is a stale record (of a
        blob removed before this put, its removal perhaps not durable when
        the power went) or a torn copy: the acknowledged put wins."""
        for entry in entries:
            check_blob_id(entry.blob_id)
            paths = BlobPaths.of(self.root, entry.blob_id)
            current = _read_whole(self.fs, paths.meta)
            if current == entry.record and not force:
                continue
            later = current is not None and current != entry.record
            if later and _epoch_of(current) > _epoch_of(entry.record):
                log.warn(
                    "put journal: {id} holds a later record than its entry: kept",
                    id=entry.blob_id,
                )
                continue
            if not self.fs.exists(paths.directory):
                self.fs.mkdir(paths.directory)
            if force:
                _write_atomic(self.fs, paths.meta, entry.record, paths.directory)
            else:
                publish(self.fs, write_temp(self.fs, paths.meta, entry.record), paths.meta)
            if current != entry.record:
                log.info("put journal: restored the record of {id}", id=entry.blob_id)

    def journal_pending(self) -> list[str]:
        """Blob ids whose put is durable through the journal only (not yet
        checkpointed), sorted; empty without a journal."""
        return [] if self._journal is None else self._journal.blob_ids()

    def checkpoint(self) -> None:
        """Checkpoint the put journal now (a no-op without one)."""
        if self._journal is not None:
            with _disk_errors():
                self._journal.checkpoint()

    def _read_record(self, paths: BlobPaths, data: bool = False) -> MetaRecord | None:
        """The blob's record, or None if it has none.  Without ``data``
        only its JSON line is read (``RECORD_HEAD`` bytes, usually): a small
        blob's bytes, after it, are read by the readers that need them
        (``_Blob.inline_bytes``)."""
        try:
            fd = self.fs.open(paths.meta, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            raw = self.fs.pread(fd, RECORD_HEAD, 0)
            total = None
            if len(raw) == RECORD_HEAD:
                if not data and b"\n" in raw:
                    total = self.fs.fstat_size(fd)
                else:
                    raw = self.fs.pread(fd, 1 << 20, 0)
        finally:
            self.fs.close(fd)
        return MetaRecord.decode(raw, total)

    def _get(self, blob_id: str, create: MetaRecord | None = None) -> tuple[_Blob, bool]:
        """The blob's state: the live object if unsealed, else from disk.

        With ``create``, an absent blob is registered from that record and
        returned with its lock already held (``True``): the caller creates
        its files, so a concurrent caller waits on the lock."""
        check_blob_id(blob_id)
        with self._registry_lock:
            self.check_open()
            blob = self._live.get(blob_id)
            if blob is not None:
                return blob, False
            paths = BlobPaths.of(self.root, blob_id)
            try:
                record = self._read_record(paths)
            except FormatError:
                self._note_damaged(blob_id)
                raise
            if record is not None or create is not None:
                self._note_undamaged(blob_id, record)
            if record is not None:
                if record.state == STATE_SEALED:
                    return _Blob(self, blob_id, record, paths), False
                blob = self._recover(record)
            elif create is not None:
                blob = _Blob(self, blob_id, create, paths)
                blob.tail_known = True
                blob.lock.acquire()
            else:
                raise BlobNotFound(f"no blob {blob_id}")
            self._live[blob_id] = blob
            return blob, record is None

    def _note_damaged(self, blob_id: str) -> None:
        """A record that decoded before (at start, or when it was written)
        no longer does (caller holds the registry lock): it joins
        ``damaged``, for scrub to report and quarantine, and leaves the
        count, as it leaves ``list_blobs``."""
        if blob_id not in self._damaged:
            self._damaged.add(blob_id)
            self._count -= 1

    def _note_undamaged(self, blob_id: str, record: MetaRecord | None) -> None:
        """A record in ``damaged`` reads again (put back by hand), so it is
        listed and counted again; or, none there, a new blob of that id is
        being created (caller holds the registry lock).  A record found
        merely absent stays in ``damaged``: its files went by hand (a
        delete and scrub's quarantine take it out themselves), and scrub,
        finding it gone, takes it out (``quarantined``)."""
        if blob_id in self._damaged:
            self._damaged.remove(blob_id)
            if record is not None:
                self._count += 1

    def quarantined(self, blob_id: str, record_moved: bool) -> None:
        """Scrub moved ``blob_id``'s files out of ``blobs/``, or found them
        gone (``record_moved``: its record among them, so it is no longer
        listed): it leaves ``damaged``, or else the count."""
        with self._registry_lock:
            self._left(blob_id, record_moved)

    def _left(self, blob_id: str, record_moved: bool) -> None:
        """``quarantined``, the registry lock held."""
        if blob_id in self._damaged:
            self._damaged.remove(blob_id)
        elif record_moved:
            self._count -= 1

    def judging(self, blob_id: str) -> None:
        """Scrub starts judging ``blob_id`` (reading it, or its record):
        from now until ``judged``, a delete of its files voids the
        judgement, so that ``quarantine`` moves nothing.  Without this, a
        damaged copy deleted and written again good meanwhile (repair
        discards an untrusted replica and copies a good one in its place)
        would be quarantined in its stead."""
        with self._registry_lock:
            self._judged[blob_id] = True

    def judgement_holds(self, blob_id: str) -> bool:
        """Whether the files scrub is judging are still there (not deleted
        since ``judging``)."""
        with self._registry_lock:
            return self._judged.get(blob_id, True)

    def judged(self, blob_id: str) -> None:
        """Scrub is done with ``blob_id`` (``judging``)."""
        with self._registry_lock:
            self._judged.pop(blob_id, None)

    def _files_removed(self, blob_id: str) -> None:
        """A blob's files were deleted (registry lock held): whatever scrub
        judged of them no longer holds for the id (``judging``)."""
        if blob_id in self._judged:
            self._judged[blob_id] = False

    def quarantine(self, blob_id: str, move: Callable[[str], object]) -> list[str]:
        """Move ``blob_id``'s files out of ``blobs/`` with ``move(path)``
        (scrub's quarantine), record first, and return the paths moved;
        the caller fsyncs the directory.  Nothing is moved from a blob
        registered (being written or deleted: not the one scrub found), nor
        from one deleted since scrub began ``judging`` it (what is there
        now is another blob's).

        The moves and what follows for ``damaged`` and the count are one
        step under the registry lock, as ``_delete_damaged``'s unlinks are.
        Made by path with no lock, a writer could create the id among them
        (its new ``.data`` then moved away too, and the id taken out of the
        count although it was just counted again), and a delete of the
        damaged blob, finding its files gone, take the id out of
        ``damaged`` first, so that it left the count too: one too low."""
        check_blob_id(blob_id)
        paths = BlobPaths.of(self.root, blob_id)
        self._settle(blob_id)
        with self._registry_lock:
            self.check_open()
            if blob_id in self._live or not self._judged.get(blob_id, True):
                return []
            moved = paths.remove_all(move)
            self._left(blob_id, paths.meta in moved)
        return moved

    def _held(self, blob_id: str) -> tuple[_Blob, bool]:
        """The blob, registered even if sealed, and whether its lock is
        held already (a blob not registered before: taken here, under the
        registry lock, so nothing can create or delete it meanwhile)."""
        check_blob_id(blob_id)
        with self._registry_lock:
            self.check_open()
            blob = self._live.get(blob_id)
            if blob is not None:
                return blob, False
            try:
                record = self._read_record(BlobPaths.of(self.root, blob_id))
            except FormatError:
                self._note_damaged(blob_id)
                raise
            if record is None:
                raise BlobNotFound(f"no blob {blob_id}")
            self._note_undamaged(blob_id, record)
            if record.state == STATE_SEALED:
                blob = _Blob(self, blob_id, record)
            else:
                blob = self._recover(record)
            blob.lock.acquire()
            self._live[blob_id] = blob
            return blob, True

    def _get_new(self, blob_id: str, create: MetaRecord) -> tuple[_Blob, bool]:
        """``_get`` with ``create`` for a caller that may create the blob:
        one that finds the blob deleted by the time it has its lock (a
        delete was under way) looks again, and creates it, rather than
        fail with BlobNotFound.  A created blob's lock is held."""
        while True:
            blob, created = self._get(blob_id, create=create)
            if created:
                return blob, True
            with blob.lock:
                if not blob.deleted:
                    return blob, False

    def _same_record(self, blob: _Blob) -> bool:
        """Whether the record on disk is still the one ``blob`` was read
        from (or, if damaged, may be); a resident blob is its own record."""
        if self._is_resident(blob):
            return True
        try:
            record = self._read_record(blob.paths)
        except FormatError:
            return True
        return record is not None and (
            record.state == STATE_SEALED,
            record.epoch,
            record.size,
            record.sums,
            record.data_size,
        ) == (blob.sealed, blob.epoch, blob.size, blob.inline_sums, blob.inline_size)

    def _blob(self, blob_id: str) -> _Blob:
        return self._get(blob_id)[0]

    def forget(self, blob: _Blob) -> None:
        with self._registry_lock:
            if self._live.get(blob.blob_id) is blob:
                del self._live[blob.blob_id]

    def _create(self, blob: _Blob) -> None:
        """Create an empty blob's files, kept open for its writer.

        Nothing is synced and no record is written: the blob becomes durable
        at its first sync, seal or fence (``write_record``), so a small blob
        that is written and sealed at once pays for one record and one
        directory fsync, not two.  Until then a crash loses it whole, and
        the next start removes its files (they have no record)."""
        paths = blob.paths
        blob.recorded = False
        with _disk_errors():
            try:
                # ``.sums`` comes at the first sync or open record (open_sums).
                flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
                blob.data_fd = self._in_fan_out(
                    paths.directory, lambda: self.fs.open(paths.data, flags)
                )
                with self._registry_lock:
                    self._count += 1
            except BaseException:
                blob.close_files()
                blob.deleted = True
                self.forget(blob)
                for path in (paths.data, paths.sums):
                    try:
                        self.fs.unlink(path)
                    except OSError:
                        pass
                raise

    def _in_fan_out(self, directory: str, make: Callable[[], Any]) -> Any:
        """``make()`` (which creates a file in fan-out ``directory``) once the
        directory is there; if it went meanwhile (an operator removed it
        empty: FileNotFoundError), the directory is made again, its entry
        made durable again by the next record, and ``make()`` run again."""
        self._fan_out(directory)
        try:
            return make()
        except FileNotFoundError:
            with self._dirs_lock:
                self._made_dirs.discard(directory)
                self._durable_dirs.discard(directory)
                # An fsync of blobs/ the fan-out thread runs now may have
                # begun before the mkdir to come.
                self._fanning.discard(directory)
            self._fan_out(directory)
            return make()

    def _fan_out(self, directory: str) -> None:
        """Make a blob's fan-out directory unless this process knows it is
        there (the fan-out thread, or a put in another thread, may be
        making it too: EEXIST means it is there)."""
        with self._dirs_lock:
            if directory in self._made_dirs:
                return
        try:
            self.fs.mkdir(directory)
        except FileExistsError:
            pass
        with self._dirs_lock:
            self._made_dirs.add(directory)

    def fan_out_durable(self, directory: str) -> None:
        """Make a fan-out directory's own entry (in ``blobs/``) durable, once
        per directory and process: a blob's first record needs it.  Those
        found at open are, and the fan-out thread makes the missing ones
        and fsyncs ``blobs/`` once (``_fan_out_all``); this pays an fsync
        of ``blobs/`` only for a directory the thread has not yet made
        durable (a put racing it, or after it failed) or one made again
        after an operator removed it.  The caller made the directory
        (``_fan_out``) before, so this fsync begins after its mkdir."""
        with self._dirs_lock:
            if directory in self._durable_dirs:
                return
        self.fs.fsync_dir(os.path.join(self.root, BLOBS_DIR))
        with self._dirs_lock:
            self._durable_dirs.add(directory)

    # -- IBlobStore -----------------------------------------------------

    def stat(self, blob_id: str) -> BlobInfo:
        blob = self._blob(blob_id)
        with blob.lock:
            if blob.deleted:
                raise BlobNotFound(f"no blob {blob_id}")
            return blob.info()

    def open_write(
        self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]
    ) -> BlobWriteHandle:
        """Create the blob (offset 0) or continue an unsealed one at
        ``offset`` (truncating it first if smaller than its size).  Blocks."""
        check_blob_id(blob_id)
        _check_epoch(epoch)
        _check_offset(offset)
        meta = encode_meta(meta)
        new = MetaRecord(blob_id, STATE_OPEN, epoch, self.block_size, 0, meta)
        blob, created = self._get_new(blob_id, new)
        if created:
            try:
                if offset != 0:
                    blob.deleted = True
                    self.forget(blob)
                    raise InvalidOffset(f"blob {blob_id} does not exist; writes start at 0")
                try:
                    self._check_reserve(0)
                except DiskFull:
                    blob.deleted = True
                    self.forget(blob)
                    raise
                self._create(blob)
                return BlobWriteHandle(blob, epoch, blob.generation)
            finally:
                blob.lock.release()
        with blob.lock, _disk_errors():
            if blob.deleted:
                raise BlobNotFound(f"no blob {blob_id}")
            if blob.sealed:
                raise BlobSealed(f"blob {blob_id} is sealed")
            if epoch < blob.epoch:
                raise StaleEpoch(f"blob {blob_id} is at epoch {blob.epoch} > {epoch}")
            if offset > blob.covered:
                raise InvalidOffset(
                    f"offset {offset} beyond the end of blob {blob_id} ({blob.covered})"
                )
            blob.generation += 1
            try:
                if offset < blob.size or blob.incomplete:
                    blob.truncate(offset)
                # A newer epoch is adopted durably, so that an older writer
                # stays refused after a restart (this gives a new blob its
                # first record); a new meta waits for the blob's first record.
                if epoch > blob.epoch or (blob.recorded and meta != blob.meta):
                    new = blob.record()
                    blob.write_record(
                        MetaRecord(new.blob_id, new.state, epoch, new.block_size, new.size, meta)
                    )
            except BaseException:
                blob.close_files()  # the old writer is superseded, no new one
                raise
            blob.epoch, blob.meta = epoch, meta
            return BlobWriteHandle(blob, epoch, blob.generation)

    def open_put(
        self, blob_id: str, epoch: int, meta: dict[str, Any], size: int
    ) -> BlobWriteHandle | BlobPutHandle:
        """A write handle for a blob that is created, written with ``size``
        bytes and sealed at once (the ``put`` op).  Up to INLINE_DATA_MAX
        bytes and INLINE_SUMS_MAX blocks (``inline_fits``) the handle keeps
        them in memory and its ``seal`` writes one sealed record holding
        them (``BlobPutHandle``); else, or when the blob exists by then,
        this is ``open_write`` at 0.  Blocks."""
        check_blob_id(blob_id)
        _check_epoch(epoch)
        _check_offset(size, "size")
        if not self.inline_fits(size):
            return self.open_write(blob_id, epoch, 0, meta)
        return BlobPutHandle(self, blob_id, epoch, encode_meta(meta), size)

    def inline_fits(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes fits in a sealed record: at most
        INLINE_DATA_MAX bytes and INLINE_SUMS_MAX blocks (with 512-byte
        blocks 64 KiB is 128 blocks, more entries than a record may hold)."""
        return size <= INLINE_DATA_MAX and -(-size // self.block_size) <= INLINE_SUMS_MAX

    def put_inline(self, blob_id: str, epoch: int, meta: dict[str, Any], data: bytes) -> BlobInfo:
        """Create ``blob_id`` sealed, its bytes and checksums in its record
        (format 3: no ``.data``, no ``.sums``): one sync, the put
        journal's, and no file until the next checkpoint (the blob stays
        resident meanwhile: ``_write_sealed``); without a journal, one new
        file: the record's temp file is fsync'd, renamed, and the directory
        fsync'd (two syncs).  A blob that exists already (a fence came
        first, a writer before it), or one of more blocks than a record
        holds checksums for (``inline_fits``), is written as ``open_write``
        at 0 and sealed instead, with the refusals that brings (BlobSealed,
        StaleEpoch).  Blocks."""
        if len(data) > INLINE_DATA_MAX:
            raise BadRequest(f"at most {INLINE_DATA_MAX} bytes go in a record, not {len(data)}")
        created = False
        if self.inline_fits(len(data)):
            new = MetaRecord(blob_id, STATE_OPEN, epoch, self.block_size, 0, meta)
            blob, created = self._get_new(blob_id, new)
        if not created:
            handle = self.open_write(blob_id, epoch, 0, meta)
            try:
                handle.write(data)
                return handle.seal()
            except DiskFull:
                try:
                    handle.discard()  # never acknowledged: its space back now
                except Exception:
                    log.failure("giving back the space of {blob} after a full disk", blob=blob_id)
                raise
            finally:
                handle.close()
        try:
            self._check_reserve(len(data))
        except DiskFull:
            blob.deleted = True
            self.forget(blob)
            blob.lock.release()
            raise
        # Counted from now, as a blob is from its creation (it is listed,
        # unrecorded, while live): exact whether or not it fails.
        with self._registry_lock:
            self._count += 1
        try:
            bs = self.block_size
            sums = b"".join(
                ENTRY.pack(len(block), crc(block))
                for block in (data[i : i + bs] for i in range(0, len(data), bs))
            )
            sealed = MetaRecord(
                blob_id, STATE_SEALED, epoch, bs, len(data), meta, sums, data, len(data)
            )
            blob.recorded = False
            with _disk_errors():
                self._write_sealed(blob, sealed)
            blob.size = blob.covered = blob.durable = len(data)
            blob.inline_sums, blob.inline_data, blob.inline_size = sums, data, len(data)
            # Its checksums are the record's, as for a sealed blob read
            # from disk (a resident one stays registered, and is read so).
            blob.tail_known = False
            blob.sealed = True
        except BaseException:
            blob.deleted = True
            # A failure after the rename (the directory fsync) leaves the
            # record, and so a listed blob: it stays counted.
            if not self.fs.exists(blob.paths.meta):
                with self._registry_lock:
                    self._count -= 1
            raise
        finally:
            blob.generation += 1
            with self._registry_lock:
                # A resident blob stays registered until its checkpoint
                # (``_materialize``), which may have let go of it already.
                if self._live.get(blob_id) is blob and not self._is_resident(blob):
                    del self._live[blob_id]
            blob.lock.release()
        return blob.info()

    def open_read(self, blob_id: str, offset: int, length: int | None) -> BlobReadHandle:
        """Verified reads of a range; past the end is InvalidOffset."""
        _check_offset(offset)
        if length is not None:
            _check_offset(length, "length")
        blob = self._blob(blob_id)
        with blob.lock:
            if blob.deleted:
                raise BlobNotFound(f"no blob {blob_id}")
            size = blob.size
        if length is None:
            length = max(size - offset, 0)
        if offset + length > size or offset > size:
            raise InvalidOffset(f"range {offset}+{length} is past the end of {blob_id} ({size})")
        try:
            return BlobReadHandle(blob, offset, length)
        except FileNotFoundError as e:
            # A sealed blob looked up, then deleted (and maybe stored again)
            # before its files were opened: gone, not damaged.  With the
            # same record still there a missing file is damage, told as a
            # flipped block is (no path: the message goes to clients), so
            # the front end marks this replica and reads another, and
            # scrub reports it.
            if not self._same_record(blob):
                raise BlobNotFound(f"blob {blob_id} was deleted") from e
            raise ChecksumError(f"blob {blob_id} is damaged: a file of it is missing") from e

    def fence(self, blob_id: str, epoch: int, truncate_to: int) -> BlobInfo:
        """Adopt ``epoch`` and cut the blob to ``truncate_to``, durably.
        Every write handle with an older epoch fails from now on, and so
        does every later write or put with one: an absent blob fenced at 0
        is created empty at ``epoch`` with its record.  Blocks."""
        _check_epoch(epoch)
        _check_offset(truncate_to, "truncate_to")
        if truncate_to == 0:
            create = MetaRecord(blob_id, STATE_OPEN, epoch, self.block_size, 0, {})
            blob, created = self._get_new(blob_id, create)
        else:
            blob, created = self._blob(blob_id), False
        if created:
            try:
                self._create(blob)
                with _disk_errors():
                    blob.write_record(blob.record())
                blob.close_files()  # no writer: a later one opens them again
                return blob.info()
            finally:
                blob.lock.release()
        with blob.lock, _disk_errors():
            if blob.deleted:
                raise BlobNotFound(f"no blob {blob_id}")
            if epoch < blob.epoch:
                raise StaleEpoch(f"blob {blob_id} is at epoch {blob.epoch} > {epoch}")
            if blob.sealed:
                if truncate_to != blob.size:
                    raise BlobSealed(f"blob {blob_id} is sealed at {blob.size}")
                return blob.info()
            if truncate_to > blob.covered:
                raise InvalidOffset(
                    f"truncate_to {truncate_to} beyond the end of {blob_id} ({blob.covered})"
                )
            unchanged = truncate_to == blob.size == blob.durable and not blob.incomplete
            if epoch == blob.epoch and unchanged and blob.recorded:
                return blob.info()
            blob.generation += 1
            try:
                if truncate_to < blob.size or blob.incomplete:
                    blob.truncate(truncate_to)
                blob.sync_locked()
                if epoch > blob.epoch or not blob.recorded:
                    new = blob.record()
                    blob.write_record(
                        MetaRecord(
                            new.blob_id, new.state, epoch, new.block_size, new.size, new.meta
                        )
                    )
                    blob.epoch = epoch
            finally:
                blob.close_files()  # no writer owns it now: the next one opens them again
            return blob.info()

    def commit(self, blob_id: str, epoch: int) -> BlobInfo:
        """Seal at the current (verified) size without a stream.  Blocks."""
        _check_epoch(epoch)
        blob = self._blob(blob_id)
        with blob.lock, _disk_errors():
            if blob.deleted:
                raise BlobNotFound(f"no blob {blob_id}")
            if epoch < blob.epoch:
                raise StaleEpoch(f"blob {blob_id} is at epoch {blob.epoch} > {epoch}")
            if blob.sealed:
                return blob.info()
            blob.generation += 1
            blob.epoch = epoch
            try:
                return blob.seal_locked()
            except BaseException:
                blob.close_files()  # no writer owns it now (a seal closes them itself)
                raise

    def delete(self, blob_id: str) -> None:
        """Remove the record first, then the data: a crash in between leaves
        files without a record, which the next start removes.  Blocks.

        A sealed blob is registered for the delete (``_held``), as a blob
        being written is: a new blob of the same id cannot be created
        between the look-up and the unlinks (they would remove its files),
        and a second delete waits, then finds it deleted.

        A blob whose record does not decode (``damaged``) is removed too
        (``_delete_damaged``): the caller, GC or an operator, wants it
        gone, and nothing else can remove it but scrub's quarantine."""
        while True:
            try:
                blob, held = self._held(blob_id)
            except FormatError:
                if self._delete_damaged(blob_id):
                    return
                continue  # it reads again, or is registered: look again
            if held:
                with self._registry_lock:
                    blob.pinned = True
                break
            blob.lock.acquire()
            with self._registry_lock:
                current = self._live.get(blob_id) is blob
                # A resident blob's checkpoint leaves it registered now.
                blob.pinned = current
            if current or blob.deleted:
                break
            # Sealed and forgotten while this waited for its lock (a put,
            # a seal): the id may hold another blob by now.  Look again.
            blob.lock.release()
        try:
            if blob.deleted:
                raise BlobNotFound(f"no blob {blob_id}")
            self._settle(blob_id)
            blob.deleted = True
            blob.generation += 1
            blob.close_files()
            # The blob leaves the count with the file that makes it listed
            # (its record, or its data before it has one), and only for the
            # call that removed that file.
            listed_by = blob.paths.meta if blob.recorded else blob.paths.data

            def unlink(path: str) -> None:
                self.fs.unlink(path)
                if path == listed_by:
                    with self._registry_lock:
                        self._count -= 1
                        self._files_removed(blob_id)

            blob.paths.remove_all(unlink)
            self.fs.fsync_dir(blob.paths.directory)
        finally:
            # Forgotten before its lock is released: whoever waited on it
            # finds it deleted and, looking again, the id free.  A resident
            # blob whose delete failed (its checkpoint did) stays: its
            # record may have no file yet.  One deleted was made durable by
            # ``_settle`` (its checkpoint may not have let go of it yet).
            with self._registry_lock:
                blob.pinned = False
                if blob.deleted:
                    self._drop_resident(blob)
                gone = blob.deleted or (blob.sealed and not self._is_resident(blob))
                if gone and self._live.get(blob_id) is blob:
                    del self._live[blob_id]
            blob.lock.release()

    def _remove_unrecorded(self, blob: _Blob) -> int:
        """Remove the files of ``blob``, a blob with no record whose
        writer failed (``BlobWriteHandle.discard``; its lock held, its
        generation moved on).  No directory fsync: files without a record
        are removed at the next start if a crash brings them back.
        Returns the bytes its data file held."""
        blob.deleted = True
        blob.close_files()
        paths = blob.paths
        try:
            freed = os.stat(paths.data).st_size
        except OSError:
            freed = 0
        try:
            for path in (paths.data, paths.sums):
                try:
                    self.fs.unlink(path)
                except FileNotFoundError:
                    continue
                if path == paths.data:
                    with self._registry_lock:
                        self._count -= 1
                        self._files_removed(blob.blob_id)
        finally:
            # Forgotten before its lock is released, as a delete does:
            # whoever waited on it finds it deleted and, looking again,
            # the id free.
            with self._registry_lock:
                if self._live.get(blob.blob_id) is blob:
                    del self._live[blob.blob_id]
        return freed

    def _delete_damaged(self, blob_id: str) -> bool:
        """Remove the files of a blob whose record does not decode; False
        if by then it does, or is gone, or the id is registered (the caller
        looks again).  Such a blob was never counted, so the count stays.

        The files are renamed to temp names (``BlobPaths.tomb``) under the
        registry lock, so no new blob of the id is created among the
        renames (its ``_get`` would find the damaged record and fail, or
        none and wait here), and unlinked after it: every open, stat and
        create of the store waited for the unlink of a ``.data`` that may
        be gigabytes.  A crash before the unlinks leaves temp files, which
        the next start removes (``_scan``).  So does a tomb whose unlink
        fails: the blob is gone once its files are renamed, and the delete
        succeeds; the failure is logged."""
        paths = BlobPaths.of(self.root, blob_id)
        tombs: list[str] = []
        # Not under the registry lock: a checkpoint may take a while, and a
        # damaged blob gets no new entry meanwhile (a put of it fails).
        self._settle(blob_id)

        def bury(path: str) -> None:
            tomb = paths.tomb(path)
            self.fs.rename(path, tomb)
            tombs.append(tomb)

        with self._registry_lock:
            if blob_id in self._live:
                return False
            try:
                self._read_record(paths)
            except FormatError:
                pass
            else:
                return False
            paths.remove_all(bury)
            self._damaged.discard(blob_id)
            self._files_removed(blob_id)
        for tomb in tombs:
            try:
                self.fs.unlink(tomb)
            except OSError:
                log.failure("cannot unlink {tomb} (removed at the next start)", tomb=tomb)
        self.fs.fsync_dir(paths.directory)
        return True

    def count_blobs(self) -> int:
        """How many blobs ``list_blobs`` lists (``damaged`` ones excluded),
        without touching the disk."""
        return self._count

    def list_blobs(self) -> Iterator[BlobInfo]:
        """Every blob, one record file at a time (no ``.data`` is read).
        A record that does not decode is not listed but added to
        ``damaged`` (scrub reports and quarantines it).

        Blobs being written that have no record yet (never synced) are
        listed too, after the others: they exist for as long as this
        process runs, like any open blob.  So are resident blobs (a
        journaled put's, whose record file the next checkpoint writes),
        unless their record file was found meanwhile: each once."""
        with self._registry_lock:
            unrecorded = {b.blob_id for b in self._live.values() if not b.recorded}
            unrecorded.update(self._residents)
        blobs = os.path.join(self.root, BLOBS_DIR)
        for prefix in sorted(self.fs.listdir(blobs)):
            directory = os.path.join(blobs, prefix)
            try:
                names = sorted(self.fs.listdir(directory))
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(META_SUFFIX):
                    blob_id = name[: -len(META_SUFFIX)]
                    unrecorded.discard(blob_id)  # got its record meanwhile
                    try:
                        yield self.stat(blob_id)
                    except (BlobNotFound, FormatError, BadRequest):
                        # A record that does not decode is in ``damaged``
                        # now (``_get``), for scrub to quarantine.
                        continue
        for blob_id in sorted(unrecorded):
            try:
                yield self.stat(blob_id)
            except BlobNotFound:
                continue

    def free_space(self) -> tuple[int, int]:
        return self.fs.statvfs(self.root)

    @staticmethod
    def _check_reserve_fits(root: str, fs: OsFileSystem, reserve: Reserve) -> None:
        """ReserveTooLarge, before the store is prepared, for a reserve the
        disk of ``root`` cannot leave free: a typo (``--reserve 20T`` for
        20G) the store would otherwise run with, refusing every new blob."""
        if reserve == NO_RESERVE:
            return
        try:
            _free, total = fs.statvfs(root)
        except OSError:
            return  # opening the store will say what is wrong
        problem = reserve.too_large_for(total)
        if problem is not None:
            raise ReserveTooLarge(f"{root}: {problem}")

    def reserve_bytes(self, total: int) -> int:
        """The reserve (``self.reserve``) on this store's disk of ``total`` bytes."""
        return self.reserve.bytes_of(total)

    def _check_reserve(self, size: int) -> None:
        """DiskFull unless ``size`` more bytes leave the reserve free: a new
        blob is not created on a disk that is nearly full (wsstorage.reserve).
        One statvfs (a few microseconds); none without a reserve."""
        if self.reserve == NO_RESERVE:
            return
        try:
            free, total = self.free_space()
        except OSError:
            return  # the write itself will say what is wrong
        reserve = self.reserve_bytes(total)
        problem = below_reserve_problem(free - size, reserve)
        if problem is not None:
            raise DiskFull(f"no new blobs here: {problem}")

    def disk_problem(self) -> str | None:
        """Why this store cannot take new blobs now, or None if it can: its
        blobs/ directory is still there and a small file can be created,
        written, fsync'd and removed in its directory.  Free space and a
        blob count say nothing of a disk remounted read-only or a data
        directory removed under the running server.  Blocking (an fsync):
        for a thread, and not on every health probe.  The reason names no
        path: front ends show it."""
        if not self.fs.exists(os.path.join(self.root, BLOBS_DIR)):
            return f"the data directory has lost its {BLOBS_DIR} directory"
        path = os.path.join(self.root, PROBE_FILE)
        try:
            fd = self.fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                self.fs.pwrite_all(fd, b"wsfs health probe\n", 0)
                self.fs.fsync(fd)
            finally:
                self.fs.close(fd)
            self.fs.unlink(path)
        except OSError as e:
            why = os.strerror(e.errno).lower() if e.errno else type(e).__name__
            return f"the data directory is not writable: {why}"
        return None


def _closer_pool() -> ThreadPoolExecutor:
    """A thread for closes that wait on a busy blob lock: not the helper
    pool (``fsops``), whose threads a lock holder's fsyncs may be waiting for."""
    return thread_pool("close", 1)


def _epoch_of(raw: bytes) -> int:
    """The epoch of an encoded record, or -1 if it does not decode (a torn
    or damaged one, which any entry replaces)."""
    try:
        return MetaRecord.decode(raw).epoch
    except FormatError:
        return -1


def _write_atomic(
    fs: OsFileSystem, path: str, data: bytes, directory: str, alongside: int | None = None
) -> None:
    """Write ``data`` to a temp file, fsync it (and, at the same time,
    fdatasync ``alongside``), rename it to ``path``, fsync ``directory``."""
    publish(fs, write_temp(fs, path, data, sync=True, alongside=alongside), path)
    fs.fsync_dir(directory)


def _read_whole(fs: OsFileSystem, path: str) -> bytes | None:
    """A file's bytes, or None if there is none."""
    try:
        fd = fs.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return fs.pread(fd, fs.fstat_size(fd) + 1, 0)
    finally:
        fs.close(fd)
