"""RETR, STOR, APPE, STOU, LIST, NLST and MLSD: one transfer each.

Each command checks its path with the transfer layer first (so errors come
without a data connection), then waits for the data connection, answers 150
and couples the two ends: a ``ReadStream`` pushing into the data connection
for downloads, the data connection pushing into a ``WriteSession`` for
uploads.  The control connection keeps reading meanwhile, so ABOR stops the
transfer (the client gets 426, then 226 for the ABOR).

Upload endings (DESIGN.md, Uploads): the data connection closing normally
commits what arrived (``WriteSession.finish()``; 226 only once it has
fired), because stream mode can't tell a finished upload from a dead client.
A reset (RST, or a socket error) is no normal close, and neither is,
under PROT P, a close without the client's TLS close_notify: it gets 426
and, like ABOR, interrupts the session, leaving it pending and resumable
with REST + STOR or APPE (``upload_cut_short``).  An upload that
this command began and that got no byte (no data connection, ABOR, a
stall or a reset before the first byte) is abandoned instead: kept, it
would stand as a 0-byte pending upload hiding the committed file from its
owner and blocking everyone else until it expired.
A session that fails (quota, fenced, no replica) gets its error reply and
never a 226.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
from collections.abc import Callable

import attrs
from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog._rows import etag_of
from wsfront.ftp import listing
from wsfront.ftp.asciimode import FromNetwork, ToNetwork
from wsfront.ftp.data import DataChannel, connect_active
from wsfront.ftp.parsing import names_directory
from wsfront.ftp.replies import Reply
from wsfront.text import one_line
from wsfront.transfer.errors import SessionFenced, TransferAborted
from wsfront.transfer.service import FileInfo, PathView

log = Logger()


class Transfer:
    """One running transfer, as ABOR, STAT and a lost control connection see it."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.aborted = False
        self.waiting: Deferred | None = None
        self.channel: DataChannel | None = None
        self.session = None
        self.streaming_upload = False
        self._abort_hooks: list = []
        self._done_waiters: list[Deferred] = []
        self.finished = False

    def on_abort(self, hook) -> None:
        self._abort_hooks.append(hook)

    def abort(self) -> None:
        """ABOR (or the client is gone): stop the transfer now."""
        if self.aborted or self.finished:
            return
        self.aborted = True
        hooks, self._abort_hooks = self._abort_hooks, []
        for hook in hooks:
            hook()
        if self.waiting is not None:
            self.waiting.cancel()
        if self.channel is not None:
            self.channel.abort()

    def control_lost(self, clock, grace: float) -> None:
        """The control connection is gone.  A running upload is left to its
        data connection, whose close commits what arrived (the client may
        just have died: FTP can't tell); after ``grace`` seconds a data
        connection still open is cut.  Anything else stops at once."""
        if not self.streaming_upload:
            self.abort()
            return
        channel = self.channel

        def cut():
            if channel is not None and not channel.is_closed:
                channel.abort()

        clock.callLater(grace, cut)

    def bytes_moved(self) -> int:
        channel = self.channel
        if channel is None:
            return 0
        return channel.received + channel.sent

    def done_deferred(self) -> Deferred:
        """Fires once the transfer command has sent its final reply."""
        d: Deferred = Deferred()
        if self.finished:
            d.callback(None)
        else:
            self._done_waiters.append(d)
        return d

    def finish(self) -> None:
        self.finished = True
        waiters, self._done_waiters = self._done_waiters, []
        for d in waiters:
            d.callback(None)


async def _run(ctl, verb: str, body) -> None:
    """Run ``body(transfer)`` as the connection's transfer; its errors become
    replies, sent before anyone waiting on the transfer (ABOR) is told."""
    transfer = Transfer(verb)
    ctl.transfer = transfer
    try:
        await body(transfer)
    except Exception as e:
        if transfer.aborted and not isinstance(e, Reply):
            ctl.stats.transfers_aborted += 1
            ctl.reply(426, "Connection closed; transfer aborted")
        else:
            ctl.reply_error(e)
    finally:
        if ctl.transfer is transfer:
            ctl.transfer = None
        transfer.finish()


def _name(vpath: str) -> str:
    """The last component of ``vpath``, a path ``ctl.file_path`` (or
    ``paths.resolve``) made: ``paths.basename`` without checking it again
    (it validates every component, for each 150 reply)."""
    return vpath.rpartition("/")[2]


async def _data_channel(ctl, transfer: Transfer) -> DataChannel:
    """The data connection PASV/EPSV or PORT/EPRT prepared, once it is up."""
    timeout = ctl.settings.data_timeout
    listener = ctl.passive
    if listener is not None:
        ctl.passive = None
        d = listener.wait(ctl.reactor, timeout)
    elif ctl.active is not None:
        target, ctl.active = ctl.active, None
        d = connect_active(ctl.reactor, target.host, target.port, timeout)
    else:
        raise no_data_setup(ctl)
    transfer.waiting = d
    try:
        channel = await d
    except CancelledError:
        raise TransferAborted("aborted while waiting for the data connection") from None
    finally:
        transfer.waiting = None
        if listener is not None:
            ctl.stats.refused_data_connections += listener.refused
            listener.refused = 0
            ctl.park_passive(listener)
    transfer.channel = channel
    if transfer.aborted:
        channel.abort()
        raise TransferAborted("aborted")
    if ctl.protection.private:
        if ctl.settings.require_tls_session_reuse:
            channel.require_session_of(control_tls(ctl.transport))
        channel.start_tls(ctl.settings.tls)
    channel.watch_stall(ctl.reactor, timeout)
    return channel


STALLED = "Data connection timed out (nothing moved for too long)"


def control_tls(transport):
    """The OpenSSL connection under a TLS control connection (explicit or
    implicit, behind a PROXY-protocol wrapper or not); None if none."""
    while transport is not None:
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, SSL.Connection):
            return handle
        transport = getattr(transport, "transport", None)
    return None


def check_session_reuse(channel: DataChannel) -> None:
    """522 for a data connection refused by ``--require-tls-session-reuse``."""
    if channel.reuse_refused:
        raise Reply(
            522,
            "TLS session reuse required: resume the control connection's session "
            "on the data connection",
        )


async def _close_cleanly(ctl, channel: DataChannel) -> None:
    """Flush and close the data connection; 426 unless it closed cleanly."""
    reason = await channel.close()
    check_session_reuse(channel)
    if not isinstance(reason, net_error.ConnectionDone):
        raise Reply(426, "Data connection lost; transfer aborted")


# -- downloads -----------------------------------------------------------------


async def retrieve(ctl, path: str, offset: int) -> None:
    """RETR from ``offset`` (REST): the committed version, streamed."""
    handle = await ctl.transfers.open_read(ctl.user, path, offset)

    async def body(transfer: Transfer) -> None:
        channel = await _data_channel(ctl, transfer)
        mode = "BINARY" if ctl.binary else "ASCII"
        ctl.reply(
            150,
            f"Opening {mode} mode data connection for {_name(path)} ({handle.stream.length} bytes)",
        )
        channel.watch_for_close()
        encode = None if ctl.binary else ToNetwork().feed
        try:
            await handle.stream.start(channel.consumer(encode))
        except Exception as e:
            gone = channel.is_closed
            channel.abort()
            ctl.stats.bytes_sent += channel.sent
            if transfer.aborted:
                raise
            check_session_reuse(channel)
            if channel.stalled:
                raise Reply(426, STALLED + "; transfer aborted") from None
            if gone:
                raise Reply(426, "Data connection closed; transfer aborted") from None
            _log_cut_short(ctl, path, offset, channel.sent, handle.stream.length, e)
            raise
        ctl.stats.bytes_sent += channel.sent
        await _close_cleanly(ctl, channel)
        ctl.stats.downloads_completed += 1
        ctl.reply(226, "Transfer complete")

    await _run(ctl, "RETR", body)


#: The longest path or reason a cut-short RETR's log line shows.
LOGGED_TEXT_MAX = 500


def _log_cut_short(
    ctl, path: str, offset: int, sent: int, length: int, error: BaseException
) -> None:
    """One line for a RETR the server's side ended mid-stream (the storage
    holding the file gone, no replica left): the client's 451 says only
    "try again later", so the operator gets the user, the path, how far it
    got and why, as HTTP logs its GET cut short (``log_error_answer``).
    A client's own abort or close is not logged."""
    log.warn(
        "RETR {path} by {user}: cut short after {sent} of {length} bytes{start} ({reason})",
        path=one_line(path, LOGGED_TEXT_MAX, controls=True),
        user=ctl.user.name,
        sent=sent,
        length=length,
        start=f" from offset {offset}" if offset else "",
        reason=one_line(f"{type(error).__name__}: {error}", LOGGED_TEXT_MAX, controls=True),
    )


# -- uploads -------------------------------------------------------------------


@attrs.frozen
class SizeReported:
    """What SIZE (or MLST) last told this connection of a path, where an
    APPE of it resumes (``curl -C - -T`` sends SIZE, then APPE with the
    bytes from that size on).

    A committed file (``etag``) is resumed there only while it is still
    that version with no pending upload on it: once another client
    replaced or appended to it, the size names a file that is gone, and
    resuming there would cut the new one (an APPE appending to another's
    log lost their line).  The APPE is refused then (450, ask SIZE again),
    as nothing tells which bytes the client means to send.

    The owner's pending upload (``upload_id``) is resumed at ``size`` while
    it is still that upload and its first ``size`` bytes are still the
    ones SIZE counted (``prefix``, their extents): it may have grown since,
    or been taken over and resumed at or past ``size`` by another of the
    owner's connections, and the client's bytes start at ``size``.  One
    that started over (a STOR from 0 takes the upload over), or another
    upload begun after a DELETE, is refused: resuming would cut a file the
    client never saw (a 3 MB file was cut to 510 bytes).  If the upload
    was committed meanwhile (the server drains a data connection the
    client gave up on, and commits what arrived), the file is resumed at
    ``size`` only while it is the version that upload committed: the
    counted prefix, then bytes of the upload's own blob (``blob_id``)
    alone.  Any other version, another client's append after that commit
    included, is refused: those bytes are not this client's to cut.  That
    version is told by its ETag, not its extents: the upload's base extents
    (``base``, below ``blob_start``) then its blob from 0, the identity the
    catalog's commit gives it (``etag_of``); compaction later swaps a
    version's extents for one blob but keeps that ETag, and files resumed
    many times are the ones it compacts."""

    size: int
    etag: str | None
    upload_id: str | None = None
    prefix: tuple[tuple[int, int, str | None, int], ...] | None = None
    blob_id: str | None = None
    base: tuple[tuple[str, int, int], ...] = ()
    blob_start: int = 0

    @classmethod
    def of(cls, info: FileInfo) -> SizeReported:
        if not info.pending:
            return cls(info.size, info.etag)
        if info.extents is None or info.blob_start is None:
            return cls(info.size, None, info.upload_id)
        start = info.blob_start
        base = tuple(
            (e.blob_id, e.blob_offset, e.length) for e in info.extents if e.file_offset < start
        )
        prefix = spans(info.extents, 0, info.size)
        return cls(info.size, None, info.upload_id, prefix, info.blob_id, base, start)

    def _committed_etag(self, size: int) -> str:
        """The ETag of the version the upload SIZE saw makes if committed
        at ``size`` bytes (``commit_upload``'s extents)."""
        rows = [{"blob_id": b, "blob_offset": o, "length": n} for b, o, n in self.base]
        if size > self.blob_start:
            rows.append(
                {"blob_id": self.blob_id, "blob_offset": 0, "length": size - self.blob_start}
            )
        return etag_of(rows)

    def check(self, path: str) -> Callable[[PathView], None] | None:
        """``open_write``'s check of the path as the APPE finds it."""
        if self.etag is None and self.prefix is None:
            return None  # a transfer layer that tells no extents (tests' stand-ins)

        def still_that_file(view: PathView) -> None:
            if not self._still_there(view):
                raise Reply(
                    450,
                    f"{_name(path)} changed since SIZE reported {self.size} bytes; send SIZE again",
                )

        return still_that_file

    def _still_there(self, view: PathView) -> bool:
        committed, pending = view.committed, view.pending
        if self.etag is not None:
            return pending is None and committed is not None and committed.etag == self.etag
        if pending is not None:
            return (
                pending.upload_id == self.upload_id
                and pending.extents is not None
                and spans(pending.extents, 0, self.size) == self.prefix
            )
        if committed is None or committed.size < self.size:
            return False
        return committed.etag == self._committed_etag(committed.size)


def spans(extents, start: int, end: int) -> tuple[tuple[int, int, str | None, int], ...]:
    """The bytes ``start`` to ``end`` of a file made of ``extents``, as
    (file offset, length, blob id, blob offset), cut to that range and with
    contiguous pieces of one blob joined: the same bytes give the same
    spans however the catalog split them.  A hole (bytes no extent covers)
    ends the spans there, so a shorter file never matches a longer one."""
    out: list[list] = []
    at = start
    for e in sorted(extents, key=lambda e: e.file_offset):
        lo, hi = max(e.file_offset, start), min(e.file_offset + e.length, end)
        if hi <= lo:
            continue
        if lo != at:
            break
        blob_offset = e.blob_offset + (lo - e.file_offset)
        last = out[-1] if out else None
        if last is not None and last[2] == e.blob_id and last[3] + last[1] == blob_offset:
            last[1] += hi - lo
        else:
            out.append([lo, hi - lo, e.blob_id, blob_offset])
        at = hi
    if at < end:
        out.append([at, end - at, None, 0])  # not there: matches no file that has them
    return tuple(tuple(s) for s in out)


async def store(
    ctl,
    path: str,
    offset: int | None,
    *,
    append: bool = False,
    announce: str | None = None,
    check: Callable[[PathView], None] | None = None,
    expected_size: int | None = None,
) -> None:
    """STOR at ``offset`` (REST), or APPE: at ``offset`` when SIZE told the
    client a size on this connection (``check``: that it is still the file
    SIZE described, ``SizeReported``), else at the size the user sees.
    ``expected_size``: the file's size the client announced with ALLO."""
    if path == "/":
        raise catalog_errors.IsADirectory("/")
    need_data_setup(ctl)

    if append and offset is None:
        session = await ctl.transfers.open_write(
            ctl.user, path, 0, append=True, expected_size=expected_size
        )
    else:
        session = await ctl.transfers.open_write(
            ctl.user, path, offset or 0, check=check, expected_size=expected_size
        )

    async def body(transfer: Transfer) -> None:
        transfer.session = session
        try:
            channel = await _data_channel(ctl, transfer)
        except Exception:
            await _let_go(ctl, session)
            raise
        if transfer.aborted:
            await _let_go(ctl, session)
            raise TransferAborted("aborted")
        start = session.offset
        ctl.sizes.pop(path, None)
        text = announce or f"Ok to send data for {_name(path)}"
        ctl.reply(150, text + (f", resuming at {start}" if start else ""))

        outcome: Deferred = Deferred()

        def settle(tag, value=None):
            if not outcome.called:
                outcome.callback((tag, value))

        channel.closed_reason().addCallback(lambda reason: settle("closed", reason))
        session.when_failed().addErrback(lambda f: settle("failed", f.value))
        transfer.on_abort(lambda: settle("aborted"))
        channel.on_stall(lambda: settle("stalled"))
        decoder = None if ctl.binary else FromNetwork()
        channel.receive_into(session, decoder.feed if decoder is not None else None)
        transfer.streaming_upload = True
        tag, value = await outcome
        transfer.streaming_upload = False
        session.unregisterProducer()
        ctl.stats.bytes_received += channel.received
        if tag == "aborted":
            channel.abort()
            kept = await _let_go(ctl, session)
            ctl.stats.transfers_aborted += 1
            raise Reply(426, "Transfer aborted" + kept)
        if tag == "stalled":
            kept = await _let_go(ctl, session)
            ctl.stats.transfers_aborted += 1
            raise Reply(426, STALLED + kept)
        if tag == "closed" and channel.reuse_refused:
            await _let_go(ctl, session)
            check_session_reuse(channel)
        if tag == "closed" and upload_cut_short(channel, value, ctl.settings.strict_tls_upload_eof):
            kept = await _let_go(ctl, session)
            ctl.stats.transfers_aborted += 1
            raise Reply(426, _cut_short_text(channel) + kept)
        if tag == "failed":
            channel.abort()
            # Answered once the catalog says what is left of it.
            await session.when_recorded()
            if isinstance(value, TransferAborted):
                # Transfers aborts a local session it takes over (same user,
                # another connection): for this client that is a fence.
                raise SessionFenced("taken over by another connection") from value
            raise value
        if decoder is not None:
            tail = decoder.flush()
            if tail:
                session.write(tail)
        version = await session.finish()
        ctl.stats.uploads_committed += 1
        ctl.reply(226, f"Transfer complete, {version.size} bytes stored")

    await _run(ctl, "APPE" if append else "STOR", body)


#: What a 426 adds about the upload it cut short (``_let_go``).
KEPT = "; the upload is kept, resume it with REST or APPE"
NOTHING_ARRIVED = "; nothing arrived, no upload is kept"
NO_ROOM = "; no room to keep what arrived, no upload is kept"


def upload_cut_short(channel: DataChannel, reason: BaseException, strict_tls: bool) -> bool:
    """Whether an upload's data connection closed with ``reason`` other
    than normally, so what arrived must not be committed.

    On plain TCP a FIN is ConnectionDone and a reset or socket error
    anything else.  Under TLS (``DataChannel``) only a close_notify is
    ConnectionDone; a FIN without one (a killed client, a truncation
    attack, or a client that never sends close_notify) is cut short only
    with ``strict_tls`` (vsftpd's ``strict_ssl_read_eof``, off by default
    there too: ftplib, curl and lftp send close_notify, but not every
    client does).  A reset below TLS is cut short either way."""
    if isinstance(reason, net_error.ConnectionDone):
        return False
    return strict_tls or not (channel.tls and channel.fin_below_tls)


def _cut_short_text(channel: DataChannel) -> str:
    if channel.tls and channel.fin_below_tls:
        return "Data connection closed without TLS close_notify; transfer aborted"
    return "Data connection reset; transfer aborted"


def need_data_setup(ctl) -> None:
    """425 before an upload begins when no PASV/EPSV/PORT/EPRT prepared its
    data connection: refused after ``open_write``, the path would be left
    a pending upload of nothing."""
    if ctl.passive is None and ctl.active is None:
        raise no_data_setup(ctl)


def no_data_setup(ctl) -> Reply:
    """The 425 of a transfer command with no data connection prepared:
    none was asked for, or the last PASV/EPSV's port was closed because no
    connection reached it in time (say so: the client did send PASV)."""
    if ctl.passive_unreached:
        return Reply(
            425,
            "Data connection timed out: nothing connected to the passive port within "
            f"{ctl.settings.data_timeout:g} s; send PASV or EPSV again",
        )
    return Reply(425, "Use PASV, EPSV, PORT or EPRT first")


async def _let_go(ctl, session) -> str:
    """End an upload that stops without its client's commit; what the 426
    says of it: kept (interrupted, resumable) or abandoned.

    An upload this command began (epoch 1: a resume takes the session over
    and bumps it) that received no byte holds nothing worth resuming, so it
    is abandoned and the path is as it was before the STOR.  One that took
    over an earlier pending upload (REST or APPE) is only interrupted: its
    durable bytes stay resumable, as they were.  One whose bytes found no
    room on any storage server as it was interrupted is discarded
    (``WriteSession.discarded``)."""
    if session.epoch != 1 or session.received:
        await session.interrupt()
        return NO_ROOM if session.discarded else KEPT
    await session.abort()
    try:
        await ctl.transfers.catalog.abort_upload(session.upload_id, session.epoch)
    except catalog_errors.EpochConflict:
        pass  # taken over or ended meanwhile: no longer this command's
    except Exception as e:
        log.warn("upload {id} could not be abandoned: {err}", id=session.upload_id, err=e)
    return NOTHING_ARRIVED


_UNIQUE_SUFFIX_BYTES = 9
"""What STOU adds to a name: a dot and 8 hex digits."""


def unique_name_parts(argument: str) -> tuple[str, str]:
    """(directory as sent, stem) of a STOU argument.

    The directory part is kept as the client wrote it, for the reply to
    name the new file the way the client named its place (RFC 1123
    4.1.2.9: ``150 FILE: pppp``, the pathname written).  An argument that
    names a directory (empty, or ending in '/', '.' or '..') gets the stem
    ``stou`` inside it.  The stem is cut, at a character boundary, so that
    it keeps a valid name with the suffix: its own checks wait for the full
    name, so ``STOU -`` makes ``-.1a2b3c4d`` (only ``-`` itself is reserved
    at the root)."""
    head, sep, last = argument.rpartition("/")
    if last in ("", ".", ".."):
        return argument + ("/" if argument and not argument.endswith("/") else ""), "stou"
    encoded = last.encode("utf-8", "surrogateescape")
    cut = paths.MAX_NAME_BYTES - _UNIQUE_SUFFIX_BYTES
    if len(encoded) > cut:
        while cut > 0 and encoded[cut] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
            cut -= 1
        last = encoded[:cut].decode("utf-8", "surrogateescape")
    return head + sep, last


async def store_unique(ctl, argument: str) -> None:
    """STOU: store under a fresh name in the cwd, or beside (or inside the
    directory) ``argument`` names; the 150 reply says which."""
    need_data_setup(ctl)
    prefix, stem = unique_name_parts(argument.strip(" ") and argument)
    directory = ctl.path(prefix) if prefix else ctl.cwd
    for _ in range(10):
        name = f"{stem}.{secrets.token_hex(4)}"
        target = paths.resolve(directory, name)
        try:
            await ctl.transfers.stat(ctl.user, target)
        except catalog_errors.NotFound:
            break
    else:
        raise catalog_errors.Exists("no unique name found")
    await store(ctl, target, 0, announce=f"FILE: {prefix}{name}")


# -- listings ------------------------------------------------------------------


def listing_entry(user, name: str, info) -> listing.Entry:
    """A ``listing.Entry`` for a stat result (FileInfo)."""
    return listing.Entry(
        name=name,
        is_dir=info.is_dir,
        size=info.size,
        mtime=info.mtime,
        inode=info.inode,
        perms=user.permissions,
    )


def _catalog_entry(user, entry, prefix: str | None = None) -> listing.Entry:
    return listing.Entry(
        name=entry.name if not prefix else prefix + entry.name,
        is_dir=entry.is_dir,
        size=entry.size,
        mtime=entry.mtime,
        inode=entry.inode,
        perms=user.permissions,
    )


def _committed_entry(user, target: str, view, name: str | None = None) -> listing.Entry:
    """The listing entry of file ``target``: its committed version, which
    LIST and NLST show to everyone (DESIGN.md, Files), as a directory
    listing does, even to the owner of a pending upload on it (whose SIZE
    and MLST report that upload, to resume from).  ``view`` is the path's
    PathView; a file with only a pending upload is not listed (NotFound).
    ``name`` is the name shown (the path's last component if None)."""
    if view.committed is None:
        raise catalog_errors.NotFound(f"{target} has no committed version yet")
    return listing_entry(user, name or paths.basename(target), view.committed)


_GLOB_CHARS = re.compile(r"[*?\[]")


def check_directory_name(argument: str, info) -> None:
    """550 when ``argument`` ends in '/' and names a file (``info``)."""
    if not info.is_dir and names_directory(argument):
        raise Reply(550, "Not a directory")


def _glob(argument: str) -> tuple[str, str] | None:
    """(directory part as sent, pattern) when the last component of a
    LIST/NLST argument is a shell pattern (``*``, ``?``, ``[...]``), as
    ``mget *.bin`` sends it; None otherwise.  Patterns stop there: the
    directory part is a plain path, resolved inside the user's root."""
    head, sep, last = argument.rpartition("/")
    if not _GLOB_CHARS.search(last):
        return None
    return head + sep, last


def _glob_matcher(pattern: str) -> Callable[[str], bool]:
    """fnmatch's test of a name, case-sensitive as names are; a leading dot
    is matched only by a pattern that starts with one, as in a shell.
    Compiled here for this listing, not through ``fnmatch.fnmatchcase``,
    whose process-wide cache would keep up to 32768 patterns a client made
    up (a long one compiles to kilobytes)."""
    match = re.compile(fnmatch.translate(pattern)).match
    dot = pattern.startswith(".")
    return lambda name: (dot or not name.startswith(".")) and match(name) is not None


async def list_dir(ctl, argument: str, verb: str) -> None:
    """LIST, NLST or MLSD of a directory (page by page) or of one file.

    A LIST/NLST argument that names nothing and ends in a shell pattern
    lists the matching entries of its directory (``mget *.bin``); a name
    that exists is listed as itself, so a file called ``*`` still is.  NLST
    gives the matches with the directory part as sent, for the client to
    RETR them by those names, and a file named by a path as that path."""
    if verb != "MLSD":
        # ``ls`` options (``-la``) are whole words of letters: ``-old*``,
        # ``-la/`` and ``-2024-backup`` are names (an ``mdelete -old*``
        # must not match every file).
        _options, argument = listing.parse_list_argument(argument)
    target = ctl.path(argument) if argument.strip(" ") else ctl.cwd
    pattern = prefix = None
    # One catalog lookup gives both what the user sees (``info``: their own
    # pending upload first) and the committed version a file is listed as.
    view = await ctl.transfers.view(ctl.user, target)
    info = view.pending or view.committed
    if info is None:
        glob = None if verb == "MLSD" else _glob(argument)
        if glob is None:
            raise catalog_errors.NotFound(target)
        prefix, pattern = glob
        target = ctl.path(prefix) if prefix else ctl.cwd
        info = await ctl.transfers.stat(ctl.user, target)
        if not info.is_dir:
            raise catalog_errors.NotADirectory(prefix)
        if verb == "LIST":
            prefix = ""
    check_directory_name(argument, info)
    if verb == "MLSD" and not info.is_dir:
        raise Reply(501, "MLSD needs a directory; use MLST for a file")
    now = ctl.reactor.seconds()

    def render(entries) -> bytes:
        if verb == "LIST":
            return b"".join(listing.list_lines(entries, now, clock=ctl.reactor.seconds))
        if verb == "NLST":
            return b"".join(listing.nlst_lines(entries))
        return b"".join(listing.mlsd_lines(entries, ctl.mlst_facts))

    # NLST of a file gives the path as sent (relative as sent), as a
    # pattern's matches come with their directory part: the name the
    # client RETRs (``mget d/f``); its last component alone named nothing
    # from the cwd.  LIST shows the name, as it does for a pattern.
    name = argument if verb == "NLST" else None
    one = None if info.is_dir else _committed_entry(ctl.user, target, view, name)
    matches = None if pattern is None else _glob_matcher(pattern)

    async def body(transfer: Transfer) -> None:
        channel = await _data_channel(ctl, transfer)
        ctl.reply(150, "Here comes the directory listing")
        channel.watch_for_close()
        try:
            if one is not None:
                await channel.write_paced(render([one]))
            else:
                after = None
                page = ctl.settings.listing_page
                while True:
                    entries = await ctl.transfers.list_dir(ctl.user, target, after, page)
                    shown = entries
                    if matches is not None:
                        shown = [e for e in entries if matches(e.name)]
                    if shown:
                        await channel.write_paced(
                            render(_catalog_entry(ctl.user, e, prefix) for e in shown)
                        )
                    if transfer.aborted:
                        raise TransferAborted("aborted")
                    if len(entries) < page:
                        break
                    after = entries[-1].name
        except net_error.ConnectionDone:
            check_session_reuse(channel)
            if channel.stalled:
                raise Reply(426, STALLED + "; listing aborted") from None
            raise Reply(426, "Data connection closed; listing aborted") from None
        except Exception:
            channel.abort()
            check_session_reuse(channel)
            raise
        ctl.stats.bytes_sent += channel.sent
        await _close_cleanly(ctl, channel)
        ctl.reply(226, "Directory send OK")

    await _run(ctl, verb, body)
