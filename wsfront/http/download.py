"""GET and HEAD of a user's file: metadata, preconditions, ranges, streaming.

HEAD answers exactly the headers GET would (HEAD ignores Range, as RFC 9110
requires).  The body streams from the transfer layer's ``ReadStream`` with
``request.registerProducer``; a client that leaves stops the upstream read
at once.  The owner of a pending upload also gets ``Upload-Offset``: the
durable size it can resume its PUT from (DESIGN.md, Uploads), and a ``Link``
to the same upload as a tus resource (``rel="tus-upload"``).
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.http import conditional, listing, ranges
from wsfront.http.errors_map import HttpError
from wsfront.http.files import headers_of, quote_etag
from wsfront.http.mimetypes import content_type
from wsfront.http.request import CONTENT_SECURITY_HEADERS, StreamingRequest
from wsfront.http.tus_headers import tus_link
from wsfront.transfer.errors import TransferAborted

_OPEN_ATTEMPTS = 3


@inlineCallbacks
def serve(context, request: StreamingRequest, user, target: paths.HttpTarget):
    yield request.discard_body()
    transfers = context.transfers
    info = yield transfers.stat(user, target.path)
    if info.is_dir:
        if not target.trailing_slash and target.path != "/":
            location = paths.to_url_path(target.path, directory=True)
            request.respond(301, headers=(("Location", location),))
            return
        yield listing.serve(context, request, user, target.path)
        return
    if target.trailing_slash:
        raise HttpError(404, "not a directory")
    extra = []
    if info.pending:
        extra.append(("Upload-Offset", str(info.size)))
        link = tus_link(info)
        if link is not None:
            extra.append(link)
    try:
        yield _serve_committed(context, request, user, target.path, info, extra)
    except catalog_errors.NotFound:
        raise HttpError(404, "no committed version", tuple(extra)) from None


@inlineCallbacks
def _serve_committed(context, request, user, vpath, info, extra):
    transfers = context.transfers
    method = request.method.decode("latin-1")
    headers = headers_of(request)
    meta = None if info.pending else info
    for _ in range(_OPEN_ATTEMPTS):
        if meta is None:
            handle = yield transfers.open_read(user, vpath)
            handle.stream.stopProducing()
            meta = handle.info
        etag = quote_etag(meta.etag)
        common = [
            ("ETag", etag),
            ("Last-Modified", conditional.format_http_date(meta.mtime)),
            ("Accept-Ranges", "bytes"),
            *CONTENT_SECURITY_HEADERS,
            *extra,
        ]
        verdict = conditional.evaluate(method, headers, etag, meta.mtime)
        if verdict is conditional.Verdict.NOT_MODIFIED:
            request.respond(304, headers=common)
            return
        if verdict is conditional.Verdict.PRECONDITION_FAILED:
            raise HttpError(412, "precondition failed", tuple(extra))
        outcome: ranges.RangeOutcome = ranges.WholeBody()
        if method == "GET" and verdict is conditional.Verdict.PROCEED:
            outcome = ranges.evaluate_range(request.getHeader(b"Range"), meta.size)
        if isinstance(outcome, ranges.NotSatisfiable):
            raise HttpError(
                416,
                "range not satisfiable",
                (("Content-Range", outcome.content_range), *common),
            )
        ctype = content_type(paths.basename(vpath))
        if method == "HEAD":
            _start(request, 200, common, ctype, meta.size)
            request.finish()
            return
        send = _send_single
        if isinstance(outcome, ranges.Partial) and outcome.is_multipart:
            send = _send_multipart
        done = yield send(context, request, user, vpath, meta, outcome, common, ctype)
        if done:
            return
        meta = None  # the version changed under us: start again with the new one
    raise HttpError(503, "the file keeps changing; try again")


def _start(request, status, headers, ctype, length) -> None:
    request.setResponseCode(status)
    request.set_headers(headers)
    request.setHeader(b"Content-Type", ctype.encode("latin-1"))
    request.setHeader(b"Content-Length", b"%d" % length)


@inlineCallbacks
def _open(context, user, vpath, meta, first, length):
    """A ReadHandle of exactly the version ``meta`` describes, or None if the
    file changed meanwhile."""
    handle = yield context.transfers.open_read(user, vpath, first, length)
    if handle.version.etag != meta.etag:
        handle.stream.stopProducing()
        return None
    return handle


@inlineCallbacks
def _pump(request, handle):
    """Stream ``handle`` into the request; the client leaving stops it."""
    stream = handle.stream
    request.on_gone(stream.stopProducing)
    try:
        yield stream.start(request)
    except TransferAborted:
        return False
    except Exception:
        if request.startedWriting:
            request.abort()
        raise
    return True


@inlineCallbacks
def _send_single(context, request, user, vpath, meta, outcome, common, ctype):
    if isinstance(outcome, ranges.Partial):
        r = outcome.ranges[0]
        first, length, status = r.first, r.length, 206
        headers = [*common, ("Content-Range", r.content_range(meta.size))]
    else:
        first, length, status, headers = 0, meta.size, 200, common
    handle = None
    if length:
        handle = yield _open(context, user, vpath, meta, first, length)
        if handle is None:
            return False
    _start(request, status, headers, ctype, length)
    if handle is not None:
        yield _pump(request, handle)
    if not request.gone:
        request.finish()
    return True


@inlineCallbacks
def _send_multipart(context, request, user, vpath, meta, outcome, common, ctype):
    body = ranges.MultipartByteranges(outcome.ranges, meta.size, ctype)
    first = body.ranges[0]
    handle = yield _open(context, user, vpath, meta, first.first, first.length)
    if handle is None:
        return False
    request.setResponseCode(206)
    request.set_headers(common)
    request.setHeader(b"Content-Type", body.content_type_header.encode("latin-1"))
    request.setHeader(b"Content-Length", b"%d" % body.content_length)
    for index, (header, r) in enumerate(body.parts()):
        if request.gone:
            return True
        if index:
            handle = yield _open(context, user, vpath, meta, r.first, r.length)
            if handle is None:
                request.abort()  # a new version: never splice two into one answer
                return True
        request.write(header)
        ok = yield _pump(request, handle)
        if not ok:
            return True
    if not request.gone:
        request.write(body.epilogue())
        request.finish()
    return True
