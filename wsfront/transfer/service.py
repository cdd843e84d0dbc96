"""``Transfers``: the one API the FTP, HTTP and tus adapters stand on.

It turns a user and a virtual path into catalog and storage operations:
permissions and the user's root are applied here (so every protocol answers
the same way), uploads are started, resumed or taken over from another front
end per docs/architecture.md, and reads are handed out as failover-capable
producers.  Adapters never see replicas, epochs or checkpoints.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import (
    REPLICA_OK,
    REPLICA_STALE,
    Entry,
    Extent,
    NothingCommitted,
    UploadSession,
    User,
    Version,
    pending_charge,
)
from wsfront.transfer import pending_per_user
from wsfront.transfer.cache_hint import advise_drop_behind
from wsfront.transfer.errors import (
    Draining,
    LengthConflict,
    NoReplicasAvailable,
    OffsetTooLarge,
    StorageFull,
    UploadBusy,
)
from wsfront.transfer.extent_cache import ExtentCache
from wsfront.transfer.pending_per_user import PendingPerUser
from wsfront.transfer.pool import STORAGE_IDLE_TIMEOUT, StoragePool
from wsfront.transfer.put_on_commit import PUT_LIMIT, PutOnCommit
from wsfront.transfer.reader import ReadExtent, ReadStream
from wsfront.transfer.sessions_per_user import SessionsPerUser, Slot
from wsfront.transfer.stats import TransferStats
from wsfront.transfer.upload_log import StartLine
from wsfront.transfer.write_through import WriteThrough
from wsfront.transfer.writer import STREAMING, WriteSession
from wsstorage import errors as storage_errors
from wsstorage import failpoints
from wsstorage.client import PUT_MAX

log = Logger()

#: Looks at a path whose action its check judged (an upload's start with
#: ``open_write``'s ``check``, an HTTP DELETE or MOVE with preconditions)
#: in a row: another client may commit between each look and its action.
CHECKED_ATTEMPTS = 3


@inlineCallbacks
def judged_on_one_version(attempt: Callable[[], Any], exhausted: Callable[[], Exception]):
    """``attempt()``: a look at a path, a judgement of it, and an action that
    names the version judged, whose catalog transaction raises
    VersionChanged if another commit came in between, changing nothing.
    Then the path is looked at and judged again, as it is now; after
    ``CHECKED_ATTEMPTS`` such, ``exhausted()`` is raised.  Fires with what
    the attempt that acted fired with."""
    for n in range(CHECKED_ATTEMPTS):
        try:
            result = yield attempt()
        except catalog_errors.VersionChanged as e:
            if n + 1 < CHECKED_ATTEMPTS:
                continue
            raise exhausted() from e
        return result


@attrs.frozen
class TransferSettings:
    """Knobs of the transfer layer, with the defaults a front end runs on."""

    replicas: int = 2
    checkpoint_bytes: int = 8 << 20
    checkpoint_seconds: float = 2.0
    upload_expiry: float = 24 * 3600.0
    read_stall_timeout: float = 5.0
    hash_uploads: bool = True
    max_sessions_per_user: int | None = 64
    """Transfers (reads and writes) one user may run at once here."""
    max_pending_uploads_per_user: int | None = pending_per_user.DEFAULT_LIMIT
    """Interrupted uploads one user may leave pending here before a new
    upload is refused (resuming one never is); see
    wsfront.transfer.pending_per_user."""
    extent_cache_bytes: int = 32 << 20
    """Bytes of small sealed extents kept for repeat reads (0: none); see
    wsfront.transfer.extent_cache."""
    put_limit: int = attrs.field(default=PUT_LIMIT)
    """A blob that ends within this many bytes is stored with one ``put``
    per replica, opening no stream (0: always a stream); see
    wsfront.transfer.put_on_commit.  At most the put's own cap
    (``wsstorage.client.PUT_MAX``, 256 KiB), which every replica would
    refuse."""

    @put_limit.validator
    def _check_put_limit(self, attribute, value: int) -> None:
        if not 0 <= value <= PUT_MAX:
            raise ValueError(f"put_limit must be between 0 and {PUT_MAX} bytes, not {value}")


@attrs.frozen
class FileInfo:
    """A path as one user sees it: the pending upload for its owner, the
    committed version for everyone else."""

    path: str
    is_dir: bool
    size: int
    mtime: float
    etag: str | None
    inode: int
    pending: bool = False
    upload_id: str | None = None
    sha256: str | None = None
    declared_length: int | None = None
    """A pending upload's announced total length (None: not announced)."""
    extents: tuple[Extent, ...] | None = None
    """Where its bytes are (None: not looked up, as in listings): a
    committed version's extents, or a pending upload's durable ones (its
    kept prefix, then its current blob up to the checkpoint).  Durable blob
    bytes never change and blob ids are never reused, so equal extents are
    the same bytes: what tells an FTP APPE whether the file SIZE described
    is still there (``wsfront.ftp.datacmds.SizeReported``)."""
    blob_id: str | None = None
    """A pending upload's current blob, where its next bytes go (every
    takeover begins a new one)."""
    blob_start: int | None = None
    """A pending upload's file offset of ``blob_id``'s first byte: what the
    upload commits is its extents below it, then that blob from 0."""


@attrs.frozen
class PathView:
    """A path as a writer must judge it, both sides of it at once.

    ``committed`` is the committed version (None: none, or the path does not
    exist): what If-Match / If-None-Match (RFC 9110, 13.1.1-2), a quota's
    replaced bytes and 201-or-204 are about, whatever upload is pending.
    ``pending`` is the user's own live pending upload on the path, if any
    (another user's is never shown).
    """

    committed: FileInfo | None = None
    pending: FileInfo | None = None


@attrs.frozen
class ReadHandle:
    """An open download: metadata for the reply, and the producer.

    Everything a reply needs comes from the one catalog lookup that opened
    it: ``info`` is the committed version (what ``stream`` reads), and
    ``pending`` the user's own pending upload on the path, if any (its
    durable size is what a client resumes an upload from).  ``stream``
    touches no storage server until it is started, so a HEAD or a 304 costs
    that one lookup; ``reopen`` gives another range of the same version
    (multipart ranges) without asking the catalog again.
    """

    info: FileInfo
    version: Version
    stream: ReadStream
    pending: FileInfo | None = None
    _open_stream: Any = attrs.field(default=None, repr=False, eq=False)

    def reopen(self, offset: int = 0, length: int | None = None) -> ReadStream:
        """A new, unstarted stream of ``length`` bytes of this very version
        from ``offset``."""
        return self._open_stream(offset, length)


class NoCommittedVersion(catalog_errors.NotFound):
    """The path is a file without a committed version; ``pending`` is the
    user's own pending upload on it (None when it is someone else's)."""

    def __init__(self, message: str, pending: FileInfo | None = None) -> None:
        super().__init__(message)
        self.pending = pending


def _read_extent(extent) -> ReadExtent:
    """A catalog extent as the reader wants it: ok replicas, then the rest."""
    ok = tuple(r.node for r in extent.replicas if r.state == REPLICA_OK)
    rest = tuple(r.node for r in extent.replicas if r.state != REPLICA_OK)
    return ReadExtent(extent.blob_id, extent.blob_offset, extent.length, ok, rest)


def _durable_extents(upload: UploadSession) -> tuple[Extent, ...]:
    """The extents of ``upload``'s durable bytes: its kept prefix, then its
    current blob (from blob offset 0, as the catalog commits it) up to the
    checkpoint."""
    segment = upload.checkpoint - upload.blob_start
    if segment <= 0:
        return tuple(upload.base_extents)
    return (*upload.base_extents, Extent(upload.blob_id, 0, segment, upload.blob_start))


def _bytes_past(expected_size: int | None, offset: int) -> int | None:
    """The bytes an upload that starts at ``offset`` brings to a file of
    ``expected_size`` (None: unknown), never below 0."""
    return None if expected_size is None else max(expected_size - offset, 0)


def _length_after_takeover(
    upload: UploadSession, offset: int, declared_length: int | None, starts_over: bool
) -> int | None:
    """The declared length ``upload`` has once resumed at ``offset`` by a
    client that announced ``declared_length`` (None: no total).

    A client starting over at 0 keeps nothing of the upload, so nothing of
    what its abandoned client announced either.  A resume continues the
    upload, total included: one that announces no total keeps the recorded
    one, one that announces the recorded total (or the first total, when
    none was recorded) is consistent, and any other total is a conflict,
    refused before the upload is touched.
    """
    if starts_over and offset == 0:
        return declared_length
    recorded = upload.declared_length
    if declared_length is None or declared_length == recorded:
        return recorded
    if recorded is not None:
        raise LengthConflict(
            f"the pending upload's total length is {recorded}, not {declared_length}"
        )
    if declared_length < offset:
        raise LengthConflict(f"the total length {declared_length} is below the offset {offset}")
    return declared_length


def new_blob_id() -> str:
    """A fresh random blob id (URL- and file-name-safe)."""
    return "b" + secrets.token_hex(16)


class PermissionDenied(catalog_errors.PermissionDenied):
    """The user lacks the permission (FTP 550, HTTP 403)."""


class Transfers:
    """The transfer layer of one front end named ``name``."""

    def __init__(
        self,
        clock: IReactorTime,
        catalog,
        pool: StoragePool,
        name: str,
        settings: TransferSettings | None = None,
    ) -> None:
        self._clock = clock
        self.catalog = catalog
        self.pool = pool
        self.name = name
        self.settings = settings or TransferSettings()
        self.sessions: dict[str, WriteSession] = {}
        self.stats = TransferStats()
        self.draining = False
        self._opening = 0  # open_write calls between their start and a WriteSession
        self.per_user = SessionsPerUser(self.settings.max_sessions_per_user)
        self.pending_per_user = PendingPerUser(
            clock, self.settings.max_pending_uploads_per_user, self.settings.upload_expiry
        )
        self.extent_cache = ExtentCache(self.settings.extent_cache_bytes)
        self._slots: dict[int, Any] = {}  # id(WriteSession) -> its user's Slot

    # -- helpers ----------------------------------------------------------

    @staticmethod
    def _need(user: User, permission: str) -> None:
        if permission not in user.permissions:
            raise PermissionDenied(f"{user.name} may not {permission}")

    @staticmethod
    def full_path(user: User, vpath: str) -> str:
        """The catalog path of ``vpath`` in ``user``'s root
        (``paths.to_storage_path``: the root is checked once per root)."""
        return paths.to_storage_path(user.root, vpath)

    def _info(self, user: User, vpath: str, entry: Entry) -> FileInfo:
        pending = self._pending_info(user, vpath, entry)
        if pending is not None:
            return pending
        committed = self._committed_info(vpath, entry)
        if committed is None:
            raise catalog_errors.NotFound(vpath)
        return committed

    @staticmethod
    def _pending_info(user: User, vpath: str, entry: Entry) -> FileInfo | None:
        """The user's own live pending upload on ``entry``, if any."""
        upload = entry.upload
        if upload is None or not upload.live or upload.user != user.name or entry.is_dir:
            return None
        return FileInfo(
            path=vpath,
            is_dir=False,
            size=upload.checkpoint,
            mtime=upload.updated_at,
            etag=None,
            inode=entry.inode,
            pending=True,
            upload_id=upload.upload_id,
            declared_length=upload.declared_length,
            extents=_durable_extents(upload),
            blob_id=upload.blob_id,
            blob_start=upload.blob_start,
        )

    @staticmethod
    def _committed_info(vpath: str, entry: Entry) -> FileInfo | None:
        """``entry``'s committed version (a directory as itself), if any."""
        if entry.pending:
            return None
        version = entry.version
        return FileInfo(
            path=vpath,
            is_dir=entry.is_dir,
            size=entry.size,
            mtime=entry.mtime,
            etag=entry.etag if version is None else version.etag,
            inode=entry.inode,
            sha256=None if version is None else version.sha256,
            extents=None if version is None else version.extents,
        )

    # -- namespace --------------------------------------------------------

    @inlineCallbacks
    def stat(self, user: User, vpath: str):
        """FileInfo of ``vpath`` as ``user`` sees it (NotFound otherwise)."""
        entry = yield self.catalog.stat(self.full_path(user, vpath))
        return self._info(user, vpath, entry)

    @inlineCallbacks
    def view(self, user: User, vpath: str):
        """The PathView of ``vpath`` for ``user``: its committed version and
        the user's own pending upload (both None when it does not exist)."""
        try:
            entry = yield self.catalog.stat(self.full_path(user, vpath))
        except catalog_errors.NotFound:
            return PathView()
        return self._view(user, vpath, entry)

    def _view(self, user: User, vpath: str, entry: Entry | None) -> PathView:
        if entry is None:
            return PathView()
        return PathView(self._committed_info(vpath, entry), self._pending_info(user, vpath, entry))

    @inlineCallbacks
    def list_dir(self, user: User, vpath: str, after: str | None = None, limit: int = 1000):
        """One page of a directory listing (committed files only)."""
        self._need(user, "read")
        entries = yield self.catalog.list_dir(self.full_path(user, vpath), after, limit)
        return entries

    def mkdir(self, user: User, vpath: str):
        self._need(user, "mkdir")
        return self.catalog.mkdir(self.full_path(user, vpath))

    def rmdir(self, user: User, vpath: str):
        self._need(user, "delete")
        return self.catalog.rmdir(self.full_path(user, vpath))

    def delete(self, user: User, vpath: str, expected_etag: str | NothingCommitted | None = None):
        """Remove a file; refused (UploadBusy) while another user's pending
        upload is on it, or a live one (a client sending), as
        docs/architecture.md's table says.  The user's own interrupted
        upload there is abandoned with it, for every protocol alike, unless
        a session here still holds it (its row marked interrupted by
        another front end while this one paused: its client is sending).
        ``expected_etag``: only that version (catalog VersionChanged), or
        with ``NOTHING_COMMITTED`` only while none is committed."""
        self._need(user, "delete")
        d = self.catalog.delete(
            self.full_path(user, vpath),
            user=user.name,
            spare=frozenset(self.sessions),
            expected_etag=expected_etag,
        )

        def deleted(abandoned: str | None) -> None:
            if abandoned is not None:
                self.pending_per_user.discard(abandoned)

        def busy(failure):
            failure.trap(catalog_errors.PendingUploadExists)
            raise UploadBusy(f"{vpath} has a pending upload")

        return d.addCallbacks(deleted, busy)

    def rename(
        self,
        user: User,
        src: str,
        dst: str,
        replace: bool = True,
        expected_etag: str | NothingCommitted | None = None,
    ):
        """Move ``src`` to ``dst``; a file replaced there goes as ``delete``
        would take it (the user's own interrupted upload on it is abandoned,
        another's or a live one refuses), FTP RNTO and HTTP MOVE alike.
        (The catalog does not say which upload was abandoned: this front
        end's count of the user's pending uploads drops at its next
        refresh.)  ``expected_etag``: only that version of the file ``src``
        (catalog VersionChanged), or with ``NOTHING_COMMITTED`` only while
        none is committed."""
        self._need(user, "rename")
        return self.catalog.rename(
            self.full_path(user, src),
            self.full_path(user, dst),
            replace,
            user=user.name,
            spare=frozenset(self.sessions),
            expected_etag=expected_etag,
        )

    # -- reads ------------------------------------------------------------

    @inlineCallbacks
    def open_read(self, user: User, vpath: str, offset: int = 0, length: int | None = None):
        """A ReadHandle streaming the committed version from ``offset``, in
        one catalog lookup (one of the user's sessions until its stream
        ends).  IsADirectory for a directory; NoCommittedVersion (a NotFound,
        carrying the user's pending upload) for a file that has none yet."""
        self._refuse_if_draining()
        self._need(user, "read")
        slot = self.per_user.acquire(user.name)
        try:
            handle = yield self._open_read(user, vpath, offset, length)
        except BaseException:
            slot.release()
            raise
        self.per_user.hold_read(slot, handle.stream)
        return handle

    @inlineCallbacks
    def _open_read(self, user: User, vpath: str, offset: int, length: int | None):
        entry = yield self.catalog.stat(self.full_path(user, vpath))
        if entry.is_dir:
            raise catalog_errors.IsADirectory(vpath)
        upload = entry.upload
        pending = None
        if upload is not None and upload.live and upload.user == user.name:
            pending = self._info(user, vpath, entry)
        version = entry.version
        if version is None:
            raise NoCommittedVersion(vpath, pending)
        if offset > version.size:
            raise OffsetTooLarge(f"offset {offset} is beyond the size {version.size}")
        extents = [_read_extent(e) for e in version.extents]

        def open_stream(start: int, count: int | None) -> ReadStream:
            return ReadStream(
                self._clock,
                self.pool,
                extents,
                start,
                count,
                stall_timeout=self.settings.read_stall_timeout,
                stats=self.stats,
                on_damage=self._replica_damaged,
                cache=self.extent_cache,
            )

        info = FileInfo(
            path=vpath,
            is_dir=False,
            size=version.size,
            mtime=version.mtime,
            etag=version.etag,
            inode=entry.inode,
            sha256=version.sha256,
        )
        return ReadHandle(info, version, open_stream(offset, length), pending, open_stream)

    # -- writes -----------------------------------------------------------

    @inlineCallbacks
    def open_write(
        self,
        user: User,
        vpath: str,
        offset: int = 0,
        *,
        append: bool = False,
        declared_length: int | None = None,
        meta: Mapping[str, Any] | None = None,
        capped: bool = True,
        check: Callable[[PathView], None] | None = None,
        durable_start: bool = False,
        resume: bool = False,
        expected_size: int | None = None,
    ):
        """Start or resume the path's pending upload at ``offset`` and fire
        with a WriteSession (an IConsumer; ``finish()`` commits).

        ``append`` resumes at the size the user sees (APPE).  A pending
        upload of the same user is taken over (from this or another front
        end, with an epoch bump and a fence); another user's is UploadBusy.
        ``capped=False`` skips the per-user session cap: for the server's
        own repairs of a session (a checksum rollback), which must not lose
        to the user's other transfers.
        ``check``, if given, is called with the path's PathView (its
        committed version and the user's own pending upload) from the
        catalog lookup this call makes anyway, before anything changes: an
        adapter's preconditions (If-Match, quota) raise there, and need no
        lookup of their own.
        ``declared_length`` is the total the client announced (PUT's
        Content-Range, tus's Upload-Length), None if it announced none.  At
        offset 0 (not ``append``) a pending upload taken over starts over:
        it gets this length, whatever an abandoned client declared (STOR and
        PUT begin a new upload).  A resume above 0, or one that says so with
        ``resume`` (a tus PATCH names its upload), keeps the recorded length;
        announcing another is LengthConflict, before anything changes.
        ``durable_start``: the start itself is acknowledged to the client
        (tus answers a creation with 201 and the upload's URL before any
        byte is durable), so its catalog commit waits for the disk; else
        the first checkpoint or the commit makes it durable.
        ``expected_size``: the size the file will have once this upload's
        bytes are in, when its client said so before sending them (PUT's
        Content-Length, tus's Upload-Length, FTP's ALLO); the new blob
        then goes only to servers with room for the bytes past the offset
        (``StoragePool.choose``), and with none StorageFull is raised
        before anything changes.  None: placement by free space alone.
        An APPE (``append``) whose offset only the catalog knows is placed
        as if its size were unknown.
        """
        self._refuse_if_draining()
        slot = self.per_user.acquire(user.name) if capped else Slot(None, user.name)
        self._opening += 1
        try:
            self._need(user, "write")
            if capped and self.pending_per_user.full(user.name):
                yield self._refuse_unless_resuming(user, vpath)
            if check is None:
                # The lookup and the start in one transaction (a generator
                # fewer than through _open_write, for every small STOR),
                # run inside this one's trampoline (yield from).
                session = yield from self._start_write(
                    user, vpath, offset, append, declared_length, meta, durable_start, resume,
                    expected_size,
                )  # fmt: skip
            else:
                session = yield self._open_write(
                    user, vpath, offset, append, declared_length, meta, check, durable_start,
                    resume, expected_size,
                )  # fmt: skip
        except BaseException:
            slot.release()
            raise
        finally:
            self._opening -= 1
        if session.state == STREAMING:
            self._slots[id(session)] = slot
        else:
            slot.release()
        return session

    @inlineCallbacks
    def _refuse_unless_resuming(self, user: User, vpath: str):
        """``user`` is at the cap of pending uploads: take the counts from
        the catalog again (at most every few seconds), and if they still
        say so, refuse unless ``vpath`` holds one of the user's pending
        uploads (its resume leaves one fewer waiting)."""
        if self.pending_per_user.may_refresh():
            yield self._count_pending()
            if not self.pending_per_user.full(user.name):
                return
        upload = yield self.catalog.find_upload(self.full_path(user, vpath))
        if upload is None or not upload.live or upload.user != user.name:
            raise self.pending_per_user.refuse(user.name)

    @inlineCallbacks
    def _count_pending(self):
        """Count the pending uploads per user again from the catalog: the
        interrupted ones this front end owns and does not run now."""
        self.pending_per_user.begin_refresh()
        try:
            uploads = yield self.catalog.list_uploads(states=["interrupted"], owner=self.name)
        except Exception as e:
            # The counts stay as they were, and the upload is judged by
            # them: not refused with a catalog error for a count.
            self.pending_per_user.abandon_refresh()
            log.warn("pending uploads could not be counted again: {err}", err=e)
            return
        # One still streaming here is not pending, whatever its row says (a
        # lease holder that took this front end for dead marks them so).
        self.pending_per_user.reset(u for u in uploads if u.upload_id not in self.sessions)

    @inlineCallbacks
    def _open_write(
        self, user, vpath, offset, append, declared_length, meta, check, durable_start, resume,
        expected_size=None,
    ):  # fmt: skip
        """``open_write`` with an adapter's ``check``: a lookup of its own
        first, then the upload's start or takeover.

        The lookup and the start are two transactions: the start is told
        which version the check judged, and a commit in between (another
        client's append, say) is VersionChanged there, nothing started.
        Then the file is looked at and judged again, as it is now."""
        session = yield judged_on_one_version(
            lambda: self._open_write_checked(
                user, vpath, offset, append, declared_length, meta, check, resume, expected_size
            ),
            lambda: UploadBusy(f"{vpath} changed while its upload started; try again"),
        )
        return session

    @inlineCallbacks
    def _open_write_checked(
        self, user, vpath, offset, append, declared_length, meta, check, resume, expected_size
    ):
        """One attempt of ``_open_write``."""
        full = self.full_path(user, vpath)
        try:
            entry = yield self.catalog.stat(full)
        except catalog_errors.NotFound:
            entry = None
        check(self._view(user, vpath, entry))
        if entry is not None and entry.is_dir:
            raise catalog_errors.IsADirectory(vpath)
        upload = entry.upload if entry is not None else None
        if upload is not None and upload.live:
            if upload.user != user.name:
                raise UploadBusy(f"{vpath} has a pending upload of another user")
            if append:
                offset = upload.checkpoint
            length = _length_after_takeover(
                upload, offset, declared_length, starts_over=not (append or resume)
            )
            session = yield self._take_over(
                user, upload, offset, length, _bytes_past(expected_size, offset), checked=True
            )
            return session
        committed = entry.size if entry is not None and entry.version is not None else 0
        if append:
            offset = committed
        if offset > committed:
            raise OffsetTooLarge(f"offset {offset} is beyond the size {committed}")
        size = _bytes_past(expected_size, offset)
        blob_id = new_blob_id()
        replicas = self._choose_replicas(size, blob_id)
        try:
            upload = yield self._unplaced_unless_started(
                self.catalog.begin_upload(
                    user.name,
                    full,
                    base_length=offset,
                    blob_id=blob_id,
                    replicas=list(replicas),
                    wanted_replicas=self.settings.replicas,
                    owner=self.name,
                    expires_at=self._expiry(),
                    declared_length=declared_length,
                    meta=dict(meta or {}),
                    check_version=True,
                    expected_version_id=None if entry is None or entry.version is None
                    else entry.version.version_id,
                ),
                blob_id,
            )  # fmt: skip
        except catalog_errors.PendingUploadExists as e:
            raise UploadBusy(str(e)) from e
        line = self._start_line(upload, user, full, offset, replicas)
        session = yield self._open_session(user, upload, committed, line, new_upload=True)
        return session

    def _start_write(
        self, user, vpath, offset, append, declared_length, meta, durable=False, resume=False,
        expected_size=None,
    ):  # fmt: skip
        """``_open_write`` without an adapter's check: the lookup and the
        start of a new upload are one catalog transaction (``start_upload``),
        whose commit waits for no disk; a pending upload found instead is
        taken over (the user's own) or busy, as after a separate lookup.

        A plain generator of Deferreds, for ``yield from`` in open_write's
        inlineCallbacks: its own trampoline (a Deferred, a context copy, a
        callback chain) cost every small STOR ~15 calls for nothing."""
        full = self.full_path(user, vpath)
        size = None if append else _bytes_past(expected_size, offset)
        blob_id = new_blob_id()
        replicas = self._choose_replicas(size, blob_id, full)
        try:
            started = yield self._unplaced_unless_started(
                self.catalog.start_upload(
                    user.name,
                    full,
                    offset=None if append else offset,
                    blob_id=blob_id,
                    replicas=list(replicas),
                    wanted_replicas=self.settings.replicas,
                    owner=self.name,
                    expires_at=self._expiry(),
                    declared_length=declared_length,
                    meta=dict(meta or {}),
                    durable=durable,
                ),
                blob_id,
            )
        except catalog_errors.PendingUploadExists as e:
            upload = e.upload
            if upload is None:
                raise UploadBusy(str(e)) from e
            if upload.user != user.name:
                raise UploadBusy(f"{vpath} has a pending upload of another user") from e
            at = upload.checkpoint if append else offset
            length = _length_after_takeover(
                upload, at, declared_length, starts_over=not (append or resume)
            )
            session = yield self._take_over(
                user, upload, at, length, _bytes_past(expected_size, at)
            )
            return session
        except catalog_errors.InvalidOffset as e:
            raise OffsetTooLarge(str(e)) from e
        upload = started.upload
        line = self._start_line(upload, user, full, upload.blob_start, replicas)
        # It began the upload: new, a tus creation too (its 201 and URL go
        # out once its body ended, as a PUT's answer does; see _new_session).
        session = self._open_session_at_once(user, upload, started.committed_size, line, True)
        if session is None:
            session = yield self._open_session(
                user, upload, started.committed_size, line, new_upload=True
            )
        return session

    def _start_line(self, upload, user, full, offset, replicas) -> StartLine:
        """The upload's start line, which its session writes once it has
        run for a checkpoint period, or ends otherwise than by a commit
        (``upload_log``: a quick upload's commit line says it all)."""
        return StartLine(
            upload.upload_id, user.name, full, offset, ",".join(replicas), self._clock.seconds()
        )

    def _replica_damaged(self, blob_id: str, node: str) -> None:
        """A read found a bad block: mark that replica stale for repair."""
        log.warn("replica {node} of {blob} is damaged; marked stale", node=node, blob=blob_id)
        d = self.catalog.mark_replica(blob_id, node, REPLICA_STALE)
        d.addErrback(
            lambda f: log.warn("could not mark {blob} stale: {err}", blob=blob_id, err=f.value)
        )

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise Draining(f"front end {self.name} is draining; reconnect to another one")

    def _expiry(self) -> float:
        """When a session left alone from now on expires."""
        return self._clock.seconds() + self.settings.upload_expiry

    def _choose_replicas(
        self, size: int | None, blob_id: str, full: str | None = None
    ) -> tuple[str, ...]:
        """The servers of the new blob ``blob_id`` of ``size`` bytes (None:
        unknown), whose room it holds until its upload ends (the session's
        end gives it back, or ``_unplaced_unless_started`` when no blob is
        made).  None to be had is StorageFull when every server that is up
        is out of room for it (the client is told so: HTTP 507, FTP 452),
        NoReplicasAvailable otherwise (try again later).

        ``full``: the path of a start that may turn out a resume (found by
        the catalog after this choice); refused for room, it is chosen
        again with the room of an upload of that path still streaming
        here counted as free: the resume fences that session, and must
        not be refused for the bytes it is about to send itself."""
        replicas = tuple(self.pool.choose(self.settings.replicas, size=size, blob_id=blob_id))
        if not replicas and size and full is not None:
            mine = self._streaming_here(full)
            if mine is not None:
                replicas = tuple(
                    self.pool.choose(
                        self.settings.replicas, size=size, blob_id=blob_id, freeing=mine.blob_id
                    )
                )
        if not replicas:
            self._refuse_if_out_of_space(size)
            raise NoReplicasAvailable("no storage server is available")
        return replicas

    def _streaming_here(self, full: str) -> WriteSession | None:
        """The session of an upload of ``full`` running here, if any (a
        scan: only a start refused for room asks)."""
        for session in self.sessions.values():
            if session.session.path == full:
                return session
        return None

    def _unplaced_unless_started(self, d, blob_id: str):
        """``d``, a catalog start of the new blob ``blob_id``; if it fails,
        no blob was made, so the room ``choose`` set aside for it is given
        back (``StoragePool.release``): a resume found instead
        (PendingUploadExists) places its own blob, a start that finds the
        version changed chooses again, and neither must see its own first
        choice as taken."""

        def give_back(failure):
            self.pool.release(blob_id)
            return failure

        d.addErrback(give_back)
        return d

    def _refuse_if_out_of_space(self, size: int | None, freeing: str | None = None) -> None:
        """StorageFull if no server that is up has room for a new blob of
        ``size`` bytes (None: unknown) above its reserve, the room the blob
        ``freeing`` holds counted as free."""
        if self.pool.out_of_space(size, freeing=freeing):
            if size is None:
                raise StorageFull("every storage server is below its free space reserve")
            raise StorageFull(f"no storage server has room for {size} more bytes")

    @inlineCallbacks
    def _take_over(
        self,
        user: User,
        upload: UploadSession,
        offset: int,
        declared_length: int | None,
        size: int | None = None,
        checked: bool = False,
    ):
        """Resume ``upload`` at ``offset`` here: epoch bump, fence, new blob,
        and ``declared_length`` from now on (see _length_after_takeover).
        ``size``: the bytes the new blob will hold, if known; when no
        server has room for them, StorageFull before anything changes
        (the epoch, the fence), so the upload stays as it was.
        ``checked``: an adapter's check judged the path with this upload on
        it; one that ended since (committed, say) is VersionChanged, so the
        path is looked at and judged again."""
        if offset > upload.checkpoint:
            raise OffsetTooLarge(
                f"offset {offset} is beyond the durable offset {upload.checkpoint}"
            )
        local = self.sessions.get(upload.upload_id)
        # A session of it still streaming here (its client's old
        # connection) is fenced below: the room it holds is this resume's.
        self._refuse_if_out_of_space(size, None if local is None else local.blob_id)
        try:
            upload = yield self.catalog.take_over(
                upload.upload_id, upload.epoch, self.name, expires_at=self._expiry()
            )
        except catalog_errors.UploadFinished as e:
            if checked:
                raise catalog_errors.VersionChanged(f"the upload ended meanwhile: {e}") from e
            raise UploadBusy(f"the upload was taken over concurrently: {e}") from e
        except catalog_errors.EpochConflict as e:
            raise UploadBusy(f"the upload was taken over concurrently: {e}") from e
        self.pending_per_user.discard(upload.upload_id)
        if local is not None:
            local.fence(f"upload {upload.upload_id} was taken over by another connection")
        self.stats.takeovers += 1
        self.stats.event(
            self._clock.seconds(), "takeover", upload=upload.upload_id, epoch=upload.epoch,
            offset=offset, front_end=self.name,
        )  # fmt: skip
        log.info(
            "upload {id} taken over by {me} at epoch {epoch}, resuming at {offset}",
            id=upload.upload_id,
            me=self.name,
            epoch=upload.epoch,
            offset=offset,
        )
        keep = max(0, offset - upload.blob_start)
        blob_id = None
        try:
            failpoints.hit("transfer.before_fence")
            yield self._fence_current_blob(upload, keep)
            failpoints.hit("transfer.after_fence")
            blob_id = new_blob_id()
            replicas = self._choose_replicas(size, blob_id)
            resumed = yield self.catalog.resume_at(
                upload.upload_id,
                upload.epoch,
                offset,
                blob_id,
                list(replicas),
                self.settings.replicas,
                expires_at=self._expiry(),
                declared_length=declared_length,
            )
        except Exception:
            if blob_id is not None:
                self.pool.release(blob_id)
            # The catalog says this front end is streaming it now: say it
            # is interrupted, as it is (`wsfs sessions` showed it active
            # here, with no transfer anywhere, until this process ended).
            yield self._interrupt_after_failed_takeover(user, upload)
            raise
        upload = resumed.upload
        session = yield self._open_session(user, upload, resumed.committed_size)
        return session

    @inlineCallbacks
    def _interrupt_after_failed_takeover(self, user: User, upload: UploadSession):
        """Mark ``upload``, taken over here but not resumed, interrupted at
        its epoch (unless a newer takeover owns it, or it ended)."""
        try:
            yield self.catalog.interrupt_upload(upload.upload_id, upload.epoch)
        except (catalog_errors.EpochConflict, catalog_errors.UploadFinished):
            return
        except Exception as e:
            log.warn(
                "upload {id}: could not mark it interrupted: {err}", id=upload.upload_id, err=e
            )
            return
        self.pending_per_user.add(user.name, upload.upload_id)

    @inlineCallbacks
    def _fence_current_blob(self, upload: UploadSession, keep: int):
        """Fence every reachable replica of the current blob at ``keep`` bytes
        with the new epoch and seal it, so the old writer can add nothing.
        A replica the old writer sealed already, at ``keep`` bytes or more,
        counts as fenced.  A replica that misses the fence leaves the
        replica set, unless none was fenced: then they all stay, the upload
        is left interrupted, and the next takeover fences them at a higher
        epoch (its current blob is in no extent until one is fenced, so an
        unfenced replica is never read).

        A replica on a server the pool has heard nothing from for two probe
        rounds (``StoragePool.silent``) misses the fence at once, as it
        would after the storage client's idle timeout (10 s): the resume no
        longer waits that long for a server known to be frozen or gone.  One
        marked down a moment ago by a failed connection or a slow probe is
        still fenced: it may well answer, and a replica that misses the
        fence is lost to the upload."""
        nodes = [r.node for r in upload.replicas if r.state == REPLICA_OK]
        # A replica on a server registered since the pool last looked: the
        # registry read is waited for as long as a slow server's fence
        # would be (a replica that misses the fence is lost to the upload).
        looked_up = self.pool.lookup(nodes, wait=STORAGE_IDLE_TIMEOUT)
        if looked_up is not None:
            yield looked_up

        @inlineCallbacks
        def fence_one(node: str):
            if self.pool.silent(node):
                raise storage_errors.NodeUnavailable(
                    f"storage server {node} is down and has answered no health probe lately"
                )
            client = self.pool.client(node)
            try:
                try:
                    yield client.fence(upload.blob_id, upload.epoch, keep)
                except storage_errors.BlobSealed:
                    # The old writer finished this blob: its seals go out
                    # before its catalog commit, which our epoch now
                    # refuses.  Sealed bytes never change, so its first
                    # ``keep`` are as good as fenced (the extent names
                    # only those); shorter, it cannot serve the resume.
                    info = yield client.stat(upload.blob_id)
                    if info.size < keep:
                        raise
                    return node
                if keep:
                    try:
                        yield client.commit(upload.blob_id, upload.epoch)
                    except storage_errors.BlobSealed:
                        pass  # sealed by an earlier, interrupted takeover
            except storage_errors.BlobNotFound:
                # Only from a server older than the rule that a fence at 0
                # creates the blob empty at its epoch (so an old writer's
                # later put is refused): nothing to keep here either.
                if keep:
                    raise
            return node

        results = yield DeferredList([fence_one(n) for n in nodes], consumeErrors=True)
        fenced, missed = [], []
        for node, (ok, value) in zip(nodes, results):
            if ok:
                fenced.append(node)
                continue
            if value.check(storage_errors.StaleEpoch):
                # A newer takeover fenced it first: that one owns the upload.
                raise UploadBusy(f"upload {upload.upload_id} was taken over again meanwhile")
            log.warn(
                "replica {node} of {blob} missed the fence: {err}",
                node=node,
                blob=upload.blob_id,
                err=value.value,
            )
            missed.append(node)
        if keep and not fenced:
            # None holds the durable bytes for us now, but they are still
            # there: leave every replica in the set, for the next takeover
            # (a higher epoch) to fence once one is back.  Marked stale,
            # they would leave the upload no replica to resume from, ever.
            raise NoReplicasAvailable(f"no replica of {upload.blob_id} could be fenced")
        for node in missed:
            yield self.catalog.mark_replica(upload.blob_id, node, REPLICA_STALE)

    def _open_session_at_once(
        self,
        user: User,
        upload: UploadSession,
        replaced_size: int,
        line: StartLine | None = None,
        new_upload: bool = False,
    ) -> WriteSession | None:
        """``_open_session`` when nothing needs waiting for (every replica
        takes a ``PutOnCommit``, which opens nothing yet): the session, in
        the same call, not through a generator and a Deferred (a small
        STOR's start paid both between the catalog's answer and its 150
        reply).  None if a replica's stream must be opened first."""
        limit = self.settings.put_limit
        declared = upload.declared_length
        if limit <= 0 or (declared is not None and declared - upload.blob_start > limit):
            return None
        nodes = [r.node for r in upload.replicas if r.state == REPLICA_OK]
        if not nodes:
            return None  # _open_session interrupts the upload, as it always did
        meta = self._blob_meta(upload)
        clients = {n: self.pool.client(n) for n in nodes}
        writers = {
            n: PutOnCommit(clients[n], upload.blob_id, upload.epoch, meta, limit) for n in nodes
        }
        return self._new_session(
            user, upload, replaced_size, nodes, writers, line, new_upload, clients
        )

    def _blob_meta(self, upload: UploadSession) -> dict[str, Any]:
        """What each replica keeps beside the blob (a lost catalog is
        rebuilt from it)."""
        return {
            "inode": upload.inode,
            "path": upload.path,
            "owner": upload.user,
            "upload": upload.upload_id,
            "file_offset": upload.blob_start,
            "epoch": upload.epoch,
            "created_at": self._clock.seconds(),
        }

    @inlineCallbacks
    def _open_session(
        self,
        user: User,
        upload: UploadSession,
        replaced_size: int,
        line: StartLine | None = None,
        new_upload: bool = False,
    ):
        """Open the replica writers of ``upload``'s current blob: at once
        when each takes a put at commit (``_open_session_at_once``), else a
        write stream on each.  ``line`` (the upload's start line) goes to
        the session, which writes it (``upload_log``); if none opens, it is
        written here, before the failure's own lines."""
        session = self._open_session_at_once(user, upload, replaced_size, line, new_upload)
        if session is not None:
            return session
        nodes = [r.node for r in upload.replicas if r.state == REPLICA_OK]
        meta = self._blob_meta(upload)

        clients = {n: self.pool.client(n) for n in nodes}

        def open_one(node: str):
            return clients[node].write(upload.blob_id, upload.epoch, 0, meta)

        try:
            results = yield DeferredList([open_one(n) for n in nodes], consumeErrors=True)
        except BaseException:
            self.pool.release(upload.blob_id)  # cancelled: no session holds its room
            raise
        writers = {}
        for node, (ok, value) in zip(nodes, results):
            if ok:
                writers[node] = value
            else:
                log.warn(
                    "upload {id}: replica {node} refused it: {err}",
                    id=upload.upload_id,
                    node=node,
                    err=value.value,
                )
                if isinstance(value.value, storage_errors.NodeUnavailable):
                    self.pool.mark_down(node, str(value.value), clients[node])
        if not writers:
            self.pool.release(upload.blob_id)
            if line is not None:
                line.write(self._clock.seconds())
            refusals = [value.value for ok, value in results if not ok]
            if refusals and all(isinstance(e, storage_errors.DiskFull) for e in refusals):
                # Refused for room, as a session whose every replica ran out
                # of it: StorageFull, and a new upload, holding nothing to
                # resume, is discarded (WriteSession.discarded).
                end = self.catalog.abort_upload if new_upload else self.catalog.interrupt_upload
                yield end(upload.upload_id, upload.epoch)
                raise StorageFull("no storage server has room for the upload")
            yield self.catalog.interrupt_upload(upload.upload_id, upload.epoch)
            raise NoReplicasAvailable("no storage server accepted the upload")
        return self._new_session(
            user, upload, replaced_size, nodes, writers, line, new_upload, clients
        )

    def _new_session(
        self,
        user: User,
        upload: UploadSession,
        replaced_size: int,
        nodes: list[str],
        writers: dict[str, Any],
        line: StartLine | None = None,
        new_upload: bool = False,
        clients: dict[str, Any] | None = None,
    ) -> WriteSession:
        """The WriteSession of ``upload`` over the ``writers`` that opened
        (of ``nodes``), registered as running here.  ``new_upload``: this
        start began the upload (not a resume or takeover), so its client
        learns of it only from the answer to the request that began it
        (a STOR's, a PUT's, a tus creation's 201 and URL, sent once its
        body ended): refused for room before any of its bytes is durable,
        it is discarded (``WriteSession.discarded``), not left pending.  A
        tus upload whose URL was given is resumed by PATCH (not new)."""
        if len(writers) > 1:
            advise_drop_behind(upload.blob_id, writers)
        if self.extent_cache.capacity > 0:
            first = next(iter(writers))
            writers[first] = WriteThrough(writers[first], self.extent_cache)
        # The old committed bytes are released when the new version
        # replaces them; the user's other pending uploads hold theirs.  The
        # upload itself is charged its checkpoint past them already (a
        # takeover's: a new upload's starts at or below the committed size).
        own = pending_charge(upload.checkpoint, replaced_size)
        room = user.file_room(replaced_size, own)
        quota = None if room is None else max(0, room - upload.blob_start)
        session = WriteSession(
            self._clock,
            self.pool,
            self.catalog,
            upload,
            writers,
            quota_remaining=quota,
            checkpoint_bytes=self.settings.checkpoint_bytes,
            checkpoint_seconds=self.settings.checkpoint_seconds,
            hash_whole_file=self.settings.hash_uploads,
            on_end=self._session_ended,
            stats=self.stats,
            expiry=self.settings.upload_expiry,
            start_line=line,
            new_upload=new_upload,
            clients=clients,
        )
        if len(writers) < len(nodes):
            session.checkpoint()
        self.sessions[upload.upload_id] = session
        return session

    def _session_ended(self, session: WriteSession) -> None:
        if self.sessions.get(session.upload_id) is session:
            del self.sessions[session.upload_id]
        if session.left_pending:
            self.pending_per_user.add(session.session.user, session.upload_id)
        slot = self._slots.pop(id(session), None)
        if slot is not None:
            slot.release()

    # -- lifecycle --------------------------------------------------------

    @inlineCallbacks
    def recover(self):
        """At start: our sessions from a previous life are interrupted;
        fires with them.  Then the pending uploads per user are counted."""
        interrupted = yield self.catalog.interrupt_sessions_of(self.name)
        try:
            yield self._count_pending()
        except Exception as e:
            log.warn("could not count the pending uploads: {err}", err=e)
        return interrupted

    @inlineCallbacks
    def shutdown(self):
        """Checkpoint and interrupt every running upload (clean stop)."""
        sessions = list(self.sessions.values())
        yield DeferredList([s.interrupt() for s in sessions], consumeErrors=True)

    @property
    def busy(self) -> bool:
        """Any upload or download still running (or being opened) here?"""
        return bool(self.sessions) or self._opening > 0 or self.stats.active_reads > 0

    def expire(self):
        """Drop expired pending uploads (their blobs become collectable)."""
        return self.catalog.expire_uploads(self._clock.seconds())
