"""PUT: stream a request body into a transfer-layer upload.

Everything that can refuse the upload (authentication, the path, If-Match /
If-None-Match, quota, a pending upload of another user) is decided before
the client is told ``100 Continue``.  The body then flows straight from the
socket into the ``WriteSession``, whose backpressure pauses the socket; 201
or 204 goes out only after ``finish()`` fired, i.e. after every replica
sealed the data and the catalog committed it.

``Content-Range: bytes a-b/total`` continues the user's pending upload at
``a`` (curl ``-C OFFSET -T``); a PUT without it, or at 0, starts the upload
over, free of the total an abandoned client announced.  A total other than
the one the upload was begun with is 409; ``bytes a-b/*`` continues with
that one.  A body that ends before the total is kept as the pending upload
(202, ``Upload-Offset``), unless keeping it fails (507 when no storage
server has room for it: a new upload is then discarded); one that does
not match the length it announced is refused (400) and nothing is
committed.  A client that disconnects leaves the durable part pending,
resumable from the offset HEAD reports in ``Upload-Offset``.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import pending_charge
from wsfront.http import ranges
from wsfront.http.errors_map import HttpError
from wsfront.http.files import check_write_preconditions, quote_etag
from wsfront.http.request import BodyLost, StreamingRequest, wider_reads
from wsfront.transfer.errors import LengthConflict
from wsfront.transfer.writer import FAILED


@implementer(IConsumer)
class _Bounded:
    """Passes at most ``limit`` bytes to ``session``; more fails the request
    (400) instead of writing past the range the client announced."""

    def __init__(self, request: StreamingRequest, session, limit: int | None) -> None:
        self._request = request
        self._session = session
        self._limit = limit
        self.count = 0

    def registerProducer(self, producer, streaming: bool) -> None:
        self._session.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._session.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.count += len(data)
        if self._limit is not None and self.count > self._limit:
            self._request.fail_body(
                HttpError(400, f"the body is longer than the {self._limit} bytes announced")
            )
            return
        self._session.write(data)


def _content_range(request: StreamingRequest) -> ranges.RequestContentRange | None:
    header = request.getHeader(b"Content-Range")
    if header is None:
        return None
    try:
        return ranges.parse_content_range(header)
    except ranges.ContentRangeError as e:
        raise HttpError(400, str(e)) from None


def _check_quota(user, view, offset: int, length: int | None) -> None:
    """507 before the body is sent when its announced length cannot fit
    beside what the user's files and other pending uploads hold (the
    committed version, if any, is replaced; the user's own pending upload
    on the path, resumed, is not counted twice)."""
    if user.quota_bytes is None or length is None:
        return
    replaced = 0 if view.committed is None else view.committed.size
    own = 0 if view.pending is None else pending_charge(view.pending.size, replaced)
    room = user.file_room(replaced, own)
    if room is not None and offset + length > room:
        raise HttpError(507, "the upload would exceed your quota")


def _check_fits_the_pending_total(crange, pending) -> None:
    """416 before the body for a resume without a total (``bytes a-b/*``)
    that goes past the total its pending upload was declared with."""
    if crange is None or crange.total is not None or crange.first == 0 or pending is None:
        return
    declared = pending.declared_length
    if declared is not None and crange.last + 1 > declared:
        raise HttpError(
            416, f"bytes {crange.first}-{crange.last} go past the upload's total length {declared}"
        )


@inlineCallbacks
def put(context, request: StreamingRequest, user, target: paths.HttpTarget):
    if target.path == "/" or target.trailing_slash:
        raise HttpError(409, "PUT needs a file path, not a directory")
    paths.check_name(paths.basename(target.path))
    crange = _content_range(request)
    length = request.body_length
    if crange is not None and length is not None and length != crange.length:
        raise HttpError(
            400, f"Content-Length {length} does not match Content-Range ({crange.length} bytes)"
        )
    offset = 0 if crange is None else crange.first
    expected = length if crange is None else crange.length
    seen: list = []  # what check saw: the path's PathView, at each look (the last counts)

    def check(view) -> None:
        """Preconditions on the lookup open_write makes anyway (no trip of
        our own), before anything changes: about the committed version,
        whatever upload of the user's is pending there."""
        committed = view.committed
        if committed is not None and committed.is_dir:
            raise HttpError(409, "a directory has that name")
        seen.append(view)
        check_write_preconditions(request, committed)
        _check_quota(user, view, offset, expected)
        _check_fits_the_pending_total(crange, view.pending)

    try:
        session = yield context.transfers.open_write(
            user,
            target.path,
            offset,
            declared_length=None if crange is None else crange.total,
            check=check,
            expected_size=None if expected is None else offset + expected,
        )
    except catalog_errors.NotFound:
        if seen and seen[-1].committed is None and seen[-1].pending is None:
            # RFC 4918 (9.7.1): a missing intermediate collection is 409, as for MKCOL.
            raise HttpError(409, "the parent directory does not exist") from None
        raise
    except LengthConflict as e:
        raise HttpError(409, f"Content-Range: {e}") from None
    existed = seen[-1].committed is not None  # 201 only for a file that had no version
    session.when_failed().addErrback(lambda f: request.fail_body(f.value))
    sink = _Bounded(request, session, expected)
    restore_reads = wider_reads(request)
    try:
        yield request.stream_body(sink)
    except BodyLost:
        yield session.interrupt()
        raise
    except Exception:
        if session.state == "streaming":
            yield session.interrupt()
        else:
            # Failed: answered once the catalog says what is left of it.
            yield session.when_recorded()
        raise
    finally:
        restore_reads()
    if expected is not None and sink.count != expected:
        yield session.interrupt()
        raise HttpError(400, f"the body has {sink.count} bytes, {expected} were announced")
    total = session.session.declared_length  # Content-Range's, or the one resumed
    if total is not None and session.offset < total:
        yield session.interrupt()
        if session.state == FAILED:
            # Keeping the bytes failed (held within put_limit, their flush
            # refused for room): a new upload is discarded, a resume stays
            # at its durable offset; either way these bytes were not kept.
            raise session.error
        request.respond(202, headers=(("Upload-Offset", str(session.durable)),))
        return
    version = yield session.finish()
    headers = [("ETag", quote_etag(version.etag))]
    if existed:
        request.respond(204, headers=headers)
    else:
        location = paths.to_url_path(target.path)
        request.respond(201, headers=[*headers, ("Location", location)])
