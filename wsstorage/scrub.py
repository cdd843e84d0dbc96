"""Scrub: re-read every sealed blob at a gentle pace and verify its checksums.

Disks rot silently; a damaged block is otherwise found only when a client
reads it.  The scrubber walks the store's sealed blobs, reads each one
through ``open_read`` (which checks every block's CRC32C) in chunks, and
sleeps between chunks so it reads at most ``bytes_per_second``: client
traffic keeps the disk.  A blob that fails (ChecksumError, a short data
file, an unreadable record), and every blob the store lists in its
``damaged`` (a record that does not decode, found at start or by a
``list_blobs`` or ``stat`` since, of any format), is reported to ``on_damaged`` and, with
``quarantine``, moved out of ``blobs/`` into ``quarantine/`` (record first,
so the store stops listing it at once).  The front end then finds the
replica missing (fsck or the maintenance audit), marks it lost and repair
re-copies it from a good replica: the damaged bytes are kept for a human
but never served again.

Unsealed blobs are left alone: they are being written, and a restart
verifies them anyway.  The lead or the storage owner wires a ``Scrubber``
into the server (``start()`` / ``stop()``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import task, threads
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsstorage._interfaces import IScrubbedStore
from wsstorage.diskformat import BlobPaths
from wsstorage.errors import BlobNotFound, StorageError

log = Logger()

QUARANTINE_DIR = "quarantine"

RunBlocking = Callable[..., Deferred]


@attrs.frozen
class Damage:
    """One damaged blob the scrubber found."""

    blob_id: str
    error: str
    found_at: float
    quarantined: bool


def _in_thread(reactor: Any) -> RunBlocking:
    pool = reactor.getThreadPool()

    def run(f: Callable[..., Any], *args: Any) -> Deferred:
        return threads.deferToThreadPool(reactor, pool, f, *args)

    return run


def inline(f: Callable[..., Any], *args: Any) -> Deferred:
    """Run blocking work in the calling thread (tests with a fake clock)."""
    return maybeDeferred(f, *args)


class Scrubber:
    """Verifies the blobs of one store on disk (``IScrubbedStore``: a
    ``BlobStore``)."""

    def __init__(
        self,
        clock: IReactorTime,
        store: IScrubbedStore,
        *,
        bytes_per_second: float = 16 * 1024 * 1024,
        chunk: int = 256 * 1024,
        quarantine: bool = True,
        on_damaged: Callable[[Damage], None] | None = None,
        run_blocking: RunBlocking | None = None,
    ) -> None:
        if bytes_per_second <= 0 or chunk <= 0:
            raise ValueError("bytes_per_second and chunk must be positive")
        self._clock = clock
        self._store = store
        self._rate = bytes_per_second
        self._chunk = chunk
        self._quarantine = quarantine
        self._on_damaged = on_damaged
        self._run = run_blocking or _in_thread(clock)
        self.damaged: list[Damage] = []
        self.passes = 0
        self._loop: task.LoopingCall | None = None
        self._stopping = False
        #: The blob whose judgement (``_judge``) has not ended yet.
        self._judging: str | None = None

    # -- one blob ----------------------------------------------------------

    def _judge(self, blob_id: str) -> None:
        """Scrub judges ``blob_id`` from now (``IScrubbedStore.judging``),
        and no longer the blob before it (``judged``): while scrub judges
        a blob (and quarantines it), a delete of its files tells the store
        that what is there after is not what was judged.

        Called first in the thread call that opens the blob or reads its
        record, so that neither call takes the store's registry lock in
        the reactor thread, where it waited for whatever holds the lock
        (a record read from the disk, say), twice per blob.  A judgement
        left open a little longer voids nothing: scrub asks the store
        about the blob it judges now only (``_end_judgement`` ends the
        last one of a pass)."""
        self._end_judgement()
        self._store.judging(blob_id)
        self._judging = blob_id

    def _end_judgement(self) -> None:
        blob_id, self._judging = self._judging, None
        if blob_id is not None:
            self._store.judged(blob_id)

    def _open(self, blob_id: str) -> Any:
        self._judge(blob_id)
        return self._store.open_read(blob_id, 0, None)

    def _read_chunk(self, handle: Any) -> int:
        return len(handle.read(self._chunk))

    async def verify(self, blob_id: str) -> str | None:
        """Read ``blob_id`` end to end at the configured pace; return the
        error that damaged it, or None if every block verified.  Scrub
        judges it from its opening (``_judge``)."""
        try:
            handle = await self._run(self._open, blob_id)
        except BlobNotFound:
            return None  # deleted meanwhile
        except (StorageError, OSError, ValueError) as e:
            return f"{e.__class__.__name__}: {e}"
        try:
            while not self._stopping:
                try:
                    n = await self._run(self._read_chunk, handle)
                except BlobNotFound:
                    return None
                except (StorageError, OSError) as e:
                    return f"{e.__class__.__name__}: {e}"
                if n == 0:
                    return None
                await task.deferLater(self._clock, n / self._rate, lambda: None)
            return None
        finally:
            handle.close()

    def _still_damaged(self, blob_id: str) -> str | None:
        """The error of a blob the store counts ``damaged`` (its record does
        not decode), or None if it is gone or reads again; scrub judges it
        from here (``_judge``)."""
        self._judge(blob_id)
        try:
            self._store.stat(blob_id)
        except BlobNotFound:
            # Its files went (by hand, or a delete): it leaves the store's
            # ``damaged``, which cannot tell this from a quarantine of ours
            # under way (``BlobStore._note_undamaged``).
            self._store.quarantined(blob_id, False)
            return None
        except (StorageError, OSError) as e:
            return f"{e.__class__.__name__}: {e}"
        return None

    def _move_to_quarantine(self, blob_id: str) -> bool:
        paths = BlobPaths.of(self._store.root, blob_id)
        target = os.path.join(self._store.root, QUARANTINE_DIR)
        os.makedirs(target, exist_ok=True)
        stamp = f"{int(time.time())}"

        def move(path: str) -> None:
            suffix = os.path.splitext(path)[1]
            os.rename(path, os.path.join(target, f"{blob_id}.{stamp}{suffix}"))

        # The store moves them under its lock, its count and ``damaged``
        # following (``BlobStore.quarantine``).
        moved = self._store.quarantine(blob_id, move)
        fd = os.open(paths.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return bool(moved)

    def _store_closed(self) -> bool:
        """The store was closed under the pass (the service stops): its
        errors say so, not that a blob is damaged."""
        return bool(self._store.closed)

    async def _damaged(self, blob_id: str, error: str) -> bool:
        """Quarantine (if so configured) and report a damaged blob; False,
        and nothing reported, if it was deleted while judged: what is there
        now (repair's good copy, say) is not what was found damaged."""
        quarantined = False
        if self._quarantine:
            try:
                quarantined = await self._run(self._move_to_quarantine, blob_id)
            except (StorageError, OSError) as e:
                log.error("scrub: cannot quarantine {blob}: {err}", blob=blob_id, err=e)
        if not quarantined and not await self._run(self._store.judgement_holds, blob_id):
            log.info(
                "scrub: blob {blob} was deleted while being checked ({err}); not reported",
                blob=blob_id,
                err=error,
            )
            return False
        damage = Damage(blob_id, error, self._clock.seconds(), quarantined)
        self.damaged.append(damage)
        log.error(
            "scrub: blob {blob} is damaged ({err}){q}",
            blob=blob_id,
            err=error,
            q=", quarantined" if quarantined else "",
        )
        if self._on_damaged is not None:
            self._on_damaged(damage)
        return True

    # -- a pass ----------------------------------------------------------

    async def scrub_pass(self) -> dict[str, Any]:
        """Verify every sealed blob once, and report every blob whose record
        does not decode (the store's ``damaged``); fire with counts."""
        try:
            counts = await self._blobs_judged()
        finally:
            self._end_judgement()
        self.passes += 1
        return counts

    async def _blobs_judged(self) -> dict[str, Any]:
        infos = await self._run(lambda: [i for i in self._store.list_blobs() if i.sealed])
        checked = damaged = 0
        nbytes = 0
        for info in infos:
            if self._stopping:
                break
            error = await self.verify(info.blob_id)
            if error is not None and self._store_closed():
                break
            checked += 1
            nbytes += info.size
            if error is not None and await self._damaged(info.blob_id, error):
                damaged += 1
        # Listing filled ``damaged`` with any record it could not decode.
        for blob_id in sorted(self._store.damaged):
            if self._stopping:
                break
            error = await self._run(self._still_damaged, blob_id)
            if error is not None and self._store_closed():
                break
            if error is not None and await self._damaged(blob_id, error):
                damaged += 1
        return {"checked": checked, "damaged": damaged, "bytes": nbytes}

    def start(self, interval: float = 24 * 3600.0) -> Deferred:
        """Scrub now and then every ``interval`` seconds (a pass longer than
        that simply delays the next)."""
        self._stopping = False
        self._loop = task.LoopingCall(lambda: ensureDeferred(self.scrub_pass()))
        self._loop.clock = self._clock
        return self._loop.start(interval, now=True)

    def stop(self) -> None:
        """Stop after the chunk being read (the loop's Deferred then fires)."""
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
