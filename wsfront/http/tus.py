"""tus 1.0 resumable uploads at ``/-/uploads/``, over transfer-layer sessions.

Every tus upload *is* a transfer-layer pending upload (docs/tus.md): the
creation POST calls ``Transfers.open_write`` on the path the metadata names,
the tus URL is ``/-/uploads/<upload_id>`` of that session, and HEAD / PATCH
look the session up in the catalog, so any front end can continue an upload
another one began (or one begun over FTP or PUT).  A PATCH resumes the
session at its offset through ``open_write`` (a takeover when another
request or front end held it), streams the body into it, and ends by
committing (offset = length) or by interrupting it at its durable offset,
which is what the answer's ``Upload-Offset`` reports: nothing is
acknowledged before it is on disk on every live replica and in the catalog.

Checksums: the body streams to the replicas as it arrives and is hashed on
the way; a PATCH whose digest does not match (or that breaks off) is rolled
back by resuming the session at the PATCH's first offset, which fences the
unverified bytes away, before the 460 goes out.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import COMMITTED
from wsfront.http.errors_map import HttpError, http_error
from wsfront.http.request import StreamingRequest
from wsfront.http.site import authenticate, check_method_known
from wsfront.http.tus_body import ChunkSink
from wsfront.http.tus_headers import (
    CHECKSUMS,
    EXTENSIONS,
    TUS_VERSION,
    check_offset_content_type,
    check_resumable,
    format_expires,
    format_metadata,
    parse_checksum,
    parse_metadata,
    parse_number,
    upload_url,
)
from wsfront.transfer.errors import TransferAborted, UploadEnded
from wsfront.transfer.writer import FAILED, STREAMING

log = Logger()

_COLLECTION_METHODS = "OPTIONS, POST"
_UPLOAD_METHODS = "OPTIONS, HEAD, PATCH, DELETE"


@attrs.frozen
class TusSettings:
    """Knobs of the tus endpoint."""

    max_size: int = 1 << 40
    """Tus-Max-Size: the largest Upload-Length accepted."""


class TusEndpoint:
    """The ``uploads`` endpoint of a ``WsSite``: ``site.mount("uploads", TusEndpoint())``.

    State kept here is only a cache: the length a deferred-length upload
    learned from a PATCH (until the catalog can record it) and the start
    offsets of checksummed PATCHes still being verified, so HEAD on this
    front end never reports unverified bytes.
    """

    def __init__(self, settings: TusSettings | None = None) -> None:
        self.settings = settings or TusSettings()
        self._learned_lengths: dict[str, int] = {}
        self._verifying: dict[str, int] = {}
        self._terminating: set[str] = set()

    def __call__(self, request: StreamingRequest, context, segments: list[str]):
        # Every answer but OPTIONS's carries Tus-Resumable (tus 1.0.0,
        # Tus-Resumable), the errors too: a client checks it on a 409 or 460.
        request.set_lasting_header(b"Tus-Resumable", TUS_VERSION.encode())
        method = request.method
        override = request.getHeader(b"X-HTTP-Method-Override")
        if method == b"POST" and override:
            method = override.strip().upper()
            check_method_known(request, method)
        if segments in ([], [""]):
            upload_id = None
            allowed = _COLLECTION_METHODS
        elif len(segments) == 1 and segments[0]:
            upload_id = segments[0]
            allowed = _UPLOAD_METHODS
        else:
            raise HttpError(404, "no such upload")
        if method == b"OPTIONS":
            return self.options(request)
        handler = self._handler(method, upload_id)
        if handler is None:
            raise HttpError(405, "method not allowed", (("Allow", allowed),))
        d = authenticate(context, request)
        d.addCallback(lambda user: handler(context, request, user, upload_id))
        return d

    def _handler(self, method: bytes, upload_id: str | None):
        if upload_id is None:
            return self.create if method == b"POST" else None
        return {b"HEAD": self.head, b"PATCH": self.patch, b"DELETE": self.terminate}.get(method)

    # -- discovery ---------------------------------------------------------

    @inlineCallbacks
    def options(self, request: StreamingRequest):
        """Discovery; no authentication (browsers send it as a CORS preflight)."""
        yield request.discard_body()
        request.respond(
            204,
            headers=(
                ("Tus-Resumable", TUS_VERSION),
                ("Tus-Version", TUS_VERSION),
                ("Tus-Extension", ",".join(EXTENSIONS)),
                ("Tus-Max-Size", str(self.settings.max_size)),
                ("Tus-Checksum-Algorithm", ",".join(CHECKSUMS)),
            ),
        )

    # -- creation ------------------------------------------------------------

    @inlineCallbacks
    def create(self, context, request: StreamingRequest, user, _upload_id):
        check_resumable(request.getHeader(b"Tus-Resumable"))
        length = parse_number("Upload-Length", request.getHeader(b"Upload-Length"))
        defer_length = request.getHeader(b"Upload-Defer-Length")
        if defer_length is not None and defer_length.strip() != b"1":
            raise HttpError(400, "Upload-Defer-Length must be 1")
        if (length is None) == (defer_length is None):
            raise HttpError(400, "give exactly one of Upload-Length and Upload-Defer-Length: 1")
        self._check_size(length)
        meta = parse_metadata(request.getHeader(b"Upload-Metadata"))
        vpath = target_path(meta)
        has_body = request.body_length != 0
        checksum = None
        if has_body:
            check_offset_content_type(request.getHeader(b"Content-Type"))
            checksum = parse_checksum(request.getHeader(b"Upload-Checksum"))
            self._check_body_fits(request, length)
        yield self._replace_own_pending(context, user, vpath)
        # The 201 and its URL acknowledge the upload itself: its start must
        # be durable even if no checkpoint follows (no body, or one whose
        # checkpoint fails).
        session = yield context.transfers.open_write(
            user, vpath, 0, declared_length=length, meta=meta, durable_start=True,
            expected_size=length,
        )  # fmt: skip
        upload_id = session.upload_id
        location = ("Location", upload_url(upload_id))

        def expires() -> tuple[str, str]:
            # As the checkpoints of a body left it (activity moves it).
            return ("Upload-Expires", format_expires(session.expires_at))

        log.info(
            "tus upload {id} created for {user}: {path}", id=upload_id, user=user.name, path=vpath
        )
        if has_body:
            try:
                offset = yield self._receive(
                    request, session, context, user, vpath, 0, length, checksum
                )
            except Exception as e:
                # The upload's URL goes with the answer when there is an
                # upload to resume: not when a new one found no room for
                # any of its bytes and was discarded (507 alone).
                answer = http_error(e)
                if session.discarded or answer.status == 500:
                    raise
                headers = (*answer.headers, location, expires())
                raise HttpError(answer.status, answer.message, headers) from None
            headers = [location, ("Upload-Offset", str(offset))]
            if length is None or offset < length:
                headers.append(expires())  # a complete upload will not expire
        elif length == 0:
            yield session.finish()
            headers = [location]
        else:
            yield session.interrupt()
            headers = [location, expires()]
        request.respond(201, headers=headers)

    @inlineCallbacks
    def _replace_own_pending(self, context, user, vpath: str):
        """A new upload to a path replaces its owner's own pending one there
        (as STOR and PUT restart it); another user's stays and wins (409)."""
        try:
            info = yield context.transfers.stat(user, vpath)
        except catalog_errors.NotFound:
            return
        if not info.pending or not info.upload_id:
            return
        yield self._abort(context, info.upload_id)

    # -- core: HEAD and PATCH ----------------------------------------------------

    @inlineCallbacks
    def head(self, context, request: StreamingRequest, user, upload_id: str):
        check_resumable(request.getHeader(b"Tus-Resumable"))
        yield request.discard_body()
        upload = yield self._load(context, user, upload_id)
        headers = [("Cache-Control", "no-store"), ("Upload-Offset", str(self._offset(upload)))]
        length = self._length(upload)
        if length is None:
            headers.append(("Upload-Defer-Length", "1"))
        else:
            headers.append(("Upload-Length", str(length)))
        if upload.meta:
            headers.append(("Upload-Metadata", format_metadata(upload.meta)))
        if upload.state != COMMITTED:
            headers.append(("Upload-Expires", format_expires(upload.expires_at)))
        request.respond(200, headers=headers)

    @inlineCallbacks
    def patch(self, context, request: StreamingRequest, user, upload_id: str):
        check_resumable(request.getHeader(b"Tus-Resumable"))
        check_offset_content_type(request.getHeader(b"Content-Type"))
        offset = parse_number("Upload-Offset", request.getHeader(b"Upload-Offset"))
        if offset is None:
            raise HttpError(400, "PATCH needs Upload-Offset")
        checksum = parse_checksum(request.getHeader(b"Upload-Checksum"))
        new_length = parse_number("Upload-Length", request.getHeader(b"Upload-Length"))
        upload = yield self._load(context, user, upload_id)
        current = self._offset(upload)
        if offset != current:
            raise HttpError(
                409,
                f"Upload-Offset {offset} is not the upload's offset {current}",
                (("Upload-Offset", str(current)),),
            )
        length = self._length(upload)
        if new_length is not None and new_length != length:
            if length is not None:
                raise HttpError(400, f"the upload's length is {length} already")
            if new_length < offset:
                raise HttpError(400, f"Upload-Length {new_length} is below the offset {offset}")
            self._check_size(new_length)
            length = new_length
        if upload.state == COMMITTED:
            yield self._no_body_past_the_end(request, current)
            request.respond(204, headers=(("Upload-Offset", str(current)),))
            return
        self._check_body_fits(request, None if length is None else length - offset)
        complete = length is not None and offset == length
        # tus expiration: "MUST be included in every PATCH response if the
        # upload is going to expire", i.e. unless this PATCH completed it.
        if request.body_length == 0 and not complete:
            expires = ("Upload-Expires", format_expires(upload.expires_at))
            request.respond(204, headers=(("Upload-Offset", str(offset)), expires))
            return
        vpath = self._vpath(user, upload)
        body = request.body_length
        session = yield context.transfers.open_write(
            user, vpath, offset, resume=True,
            expected_size=length if body is None else offset + body,
        )  # fmt: skip
        if new_length is not None and upload.declared_length is None:
            self._learned_lengths[upload_id] = new_length
        done = yield self._receive(request, session, context, user, vpath, offset, length, checksum)
        headers = [("Upload-Offset", str(done))]
        if length is None or done < length:
            # As the takeover and the checkpoints moved it, not as it was
            # before this PATCH.
            headers.append(("Upload-Expires", format_expires(session.expires_at)))
        request.respond(204, headers=headers)

    @staticmethod
    def _no_body_past_the_end(request: StreamingRequest, offset: int) -> Deferred:
        """A PATCH at the end of a completed upload may carry no body: one
        gets 413, the answer for a body past a live upload's length too (tusd
        answers 204 and drops it, which leaves the client to guess what
        became of its bytes)."""
        full = HttpError(
            413, "the upload is complete: no bytes fit after it", (("Upload-Offset", str(offset)),)
        )
        return request.require_no_body(full)

    @inlineCallbacks
    def _receive(self, request, session, context, user, vpath, offset, length, checksum):
        """Stream the body into ``session`` from ``offset``; commit when it
        reaches ``length``, else interrupt at the durable offset.  Fires with
        the offset to report; 460 (rolled back) when the checksum fails."""
        upload_id = session.upload_id
        limit = None if length is None else length - offset
        sink = ChunkSink(request, session, limit, checksum)
        session.when_failed().addErrback(lambda f: request.fail_body(f.value))
        if checksum is not None:
            self._verifying[upload_id] = offset
        try:
            try:
                yield request.stream_body(sink)
            except BaseException:
                # A failed session is answered once the catalog says what
                # is left of it, as PUT and STOR are.
                yield session.when_recorded()
                superseded = isinstance(session.error, TransferAborted)
                if checksum is not None and not superseded:
                    # Streaming or failed alike: checkpoints may have made
                    # unverified bytes durable, which must not stay resumable.
                    yield self._roll_back(context, user, vpath, session, offset)
                elif session.state == STREAMING:
                    yield session.interrupt()
                if superseded and upload_id in self._terminating:
                    # tus termination: the upload is gone, not taken over.
                    raise HttpError(410, "the upload was terminated") from None
                if superseded:
                    raise HttpError(409, "a newer request took this upload over") from None
                raise
            if not sink.verified:
                yield self._roll_back(context, user, vpath, session, offset)
                raise HttpError(
                    460,
                    f"Upload-Checksum ({checksum.algorithm}) does not match the body",
                    (("Upload-Offset", str(offset)),),
                )
            if length is not None and session.offset == length:
                yield session.finish()
                self._learned_lengths.pop(upload_id, None)
                return session.offset
            yield session.interrupt()
            if session.state == FAILED:
                # Its bytes could not be kept (held within put_limit, their
                # flush refused for room): answered as a failure, not with
                # the offset of an upload that may be gone (discarded).
                raise session.error
            return session.durable
        except UploadEnded as e:
            if e.state != "aborted":
                raise
            # Terminated through another front end (a DELETE there, of the
            # upload or of its file), found at a checkpoint or the commit:
            # gone, as a termination on this one answers.
            raise HttpError(410, "the upload was terminated") from None
        finally:
            if self._verifying.get(upload_id) == offset:
                del self._verifying[upload_id]

    @inlineCallbacks
    def _roll_back(self, context, user, vpath: str, session, offset: int):
        """Forget the unverified bytes after ``offset``: resume the session
        there (fencing the rest away) and leave it interrupted.  Skipped when
        a newer request took the session over meanwhile: it owns the offset.

        The checkpoint may already lie past ``offset`` (checkpoints run while
        the body streams), so the rollback must not fail quietly: it is not
        subject to the user's session cap, and if it still cannot be done
        (draining, no replicas) the upload is aborted rather than left
        resumable after bytes that failed their checksum.
        """
        transfers = context.transfers
        yield session.abort()
        try:
            upload = yield transfers.catalog.get_upload(session.upload_id)
        except catalog_errors.NotFound:
            return
        if upload.epoch != session.epoch or not upload.live:
            return
        try:
            fresh = yield transfers.open_write(user, vpath, offset, capped=False, resume=True)
        except Exception as e:
            log.error(
                "tus upload {id}: cannot roll back to {offset} ({err}); aborting it so the "
                "unverified bytes are never resumed",
                id=session.upload_id, offset=offset, err=e,
            )  # fmt: skip
            try:
                yield transfers.catalog.abort_upload(session.upload_id)
            except catalog_errors.NotFound:
                pass
            return
        yield fresh.interrupt()
        log.info("tus upload {id} rolled back to {offset}", id=session.upload_id, offset=offset)

    # -- termination ---------------------------------------------------------------

    @inlineCallbacks
    def terminate(self, context, request: StreamingRequest, user, upload_id: str):
        check_resumable(request.getHeader(b"Tus-Resumable"))
        yield request.discard_body()
        upload = yield self._load(context, user, upload_id)
        if upload.state == COMMITTED:
            raise HttpError(410, "the upload is complete; delete the file instead")
        yield self._abort(context, upload_id)
        request.respond(204)

    @inlineCallbacks
    def _abort(self, context, upload_id: str):
        local = context.transfers.sessions.get(upload_id)
        self._terminating.add(upload_id)  # what a PATCH cut short by it answers
        try:
            if local is not None:
                yield local.abort()
            try:
                yield context.transfers.catalog.abort_upload(upload_id)
            except catalog_errors.UploadFinished:
                raise HttpError(410, "the upload has ended") from None
        finally:
            self._terminating.discard(upload_id)
        self._learned_lengths.pop(upload_id, None)

    # -- helpers ----------------------------------------------------------------------

    @inlineCallbacks
    def _load(self, context, user, upload_id: str):
        """The user's upload ``upload_id``: live or committed; 404 / 410 otherwise."""
        try:
            upload = yield context.transfers.catalog.get_upload(upload_id)
        except catalog_errors.NotFound:
            raise HttpError(404, "no such upload") from None
        if upload.user != user.name:
            raise HttpError(404, "no such upload")
        if upload.state == COMMITTED:
            return upload
        if not upload.live or upload.expires_at <= context.reactor.seconds():
            raise HttpError(410, f"the upload is gone ({upload.state})")
        return upload

    def _offset(self, upload) -> int:
        """The offset a client resumes at: the durable checkpoint, never
        past a checksummed PATCH still being verified here."""
        verifying = self._verifying.get(upload.upload_id)
        if verifying is None:
            return upload.checkpoint
        return min(verifying, upload.checkpoint)

    def _length(self, upload) -> int | None:
        if upload.state == COMMITTED:
            return upload.checkpoint
        if upload.declared_length is not None:
            return upload.declared_length
        return self._learned_lengths.get(upload.upload_id)

    def _check_size(self, length: int | None) -> None:
        if length is not None and length > self.settings.max_size:
            raise HttpError(413, f"the largest upload is {self.settings.max_size} bytes")

    @staticmethod
    def _check_body_fits(request: StreamingRequest, room: int | None) -> None:
        if room is not None and request.body_length is not None and request.body_length > room:
            raise HttpError(413, f"the body goes past the upload's length ({room} bytes left)")

    @staticmethod
    def _vpath(user, upload) -> str:
        try:
            return paths.to_virtual_path(user.root, upload.path)
        except paths.PathError:
            raise HttpError(404, "the upload is outside your tree") from None


def target_path(meta: dict[str, str]) -> str:
    """Where an upload lands, from its metadata: ``path`` (in the user's
    tree; ending in ``/`` it names a directory for ``filename``; refused as
    the URL path would be), else ``filename`` (or Uppy's ``name``) in the
    user's root, which must be a plain, unreserved name (400 otherwise)."""
    filename = meta.get("filename") or meta.get("name")
    if filename is not None:
        if "/" in filename:
            raise HttpError(400, "Upload-Metadata filename must be a name, not a path")
        paths.check_name(filename)
    raw = meta.get("path")
    if raw:
        vpath = paths.resolve("/", raw)
        if raw.endswith("/") or vpath == "/":
            if filename is None:
                raise HttpError(400, "Upload-Metadata path names a directory: add filename")
            vpath = paths.resolve(vpath, filename)
        return vpath
    if filename is None:
        raise HttpError(400, "Upload-Metadata needs filename or path")
    try:
        return paths.resolve("/", filename)
    except paths.PathError as e:
        raise HttpError(400, f"Upload-Metadata filename: {e.message}") from None
