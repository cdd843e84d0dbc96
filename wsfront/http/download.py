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
from wsfront.http.direct import body_consumer
from wsfront.http.errors_map import HttpError
from wsfront.http.files import has_preconditions, headers_of, quote_etag
from wsfront.http.mimetypes import content_type
from wsfront.http.request import CONTENT_SECURITY_HEADERS, StreamingRequest
from wsfront.http.tus_headers import tus_link
from wsfront.transfer import reader
from wsfront.transfer.errors import TransferAborted
from wsfront.transfer.service import NoCommittedVersion


@inlineCallbacks
def serve(context, request: StreamingRequest, user, target: paths.HttpTarget):
    yield request.discard_body()
    try:
        # One catalog lookup answers everything: metadata, preconditions,
        # ranges and the body all come from the version it found.
        handle = yield context.transfers.open_read(user, target.path)
    except catalog_errors.IsADirectory:
        if not target.trailing_slash and target.path != "/":
            location = paths.to_url_path(target.path, directory=True)
            request.respond(301, headers=(("Location", location),))
            return
        yield listing.serve(context, request, user, target.path)
        return
    except NoCommittedVersion as e:
        if target.trailing_slash:
            raise HttpError(404, "not a directory") from None
        raise HttpError(404, "no committed version", pending_headers(e.pending)) from None
    if target.trailing_slash:
        raise HttpError(404, "not a directory")
    plan = _answer(request, target.path, handle, pending_headers(handle.pending))
    if plan is not None:
        yield _send(request, handle, plan)


def pending_headers(pending) -> tuple:
    """``Upload-Offset`` (and the tus ``Link``) for the owner of a pending upload."""
    if pending is None:
        return ()
    extra = [("Upload-Offset", str(pending.size))]
    link = tus_link(pending)
    if link is not None:
        extra.append(link)
    return tuple(extra)


def _answer(request, vpath, handle, extra):
    """Answer everything but the body of the committed version ``handle``
    describes (preconditions, ranges, headers) without touching storage.
    Returns what body must follow: None (none), ``(first, length)``, or the
    MultipartByteranges to send."""
    meta = handle.info
    method = request.method.decode("latin-1")
    etag = quote_etag(meta.etag)
    common = [
        ("ETag", etag),
        ("Last-Modified", conditional.format_http_date(meta.mtime)),
        ("Accept-Ranges", "bytes"),
        *CONTENT_SECURITY_HEADERS,
        *extra,
    ]
    verdict = conditional.Verdict.PROCEED
    if has_preconditions(request):
        verdict = conditional.evaluate(method, headers_of(request), etag, meta.mtime)
    if verdict is conditional.Verdict.NOT_MODIFIED:
        request.respond(304, headers=common)
        return None
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
        return None
    if isinstance(outcome, ranges.Partial) and outcome.is_multipart:
        body = ranges.MultipartByteranges(outcome.ranges, meta.size, ctype)
        request.setResponseCode(206)
        request.set_headers(common)
        request.setHeader(b"Content-Type", body.content_type_header.encode("latin-1"))
        request.setHeader(b"Content-Length", b"%d" % body.content_length)
        return body
    if isinstance(outcome, ranges.Partial):
        r = outcome.ranges[0]
        first, length, status = r.first, r.length, 206
        headers = [*common, ("Content-Range", r.content_range(meta.size))]
    else:
        first, length, status, headers = 0, meta.size, 200, common
    _start(request, status, headers, ctype, length)
    if not length:
        request.finish()
        return None
    return (first, length)


def _start(request, status, headers, ctype, length) -> None:
    request.setResponseCode(status)
    request.set_headers(headers)
    request.setHeader(b"Content-Type", ctype.encode("latin-1"))
    request.setHeader(b"Content-Length", b"%d" % length)


@inlineCallbacks
def _pump(request, stream):
    """Stream ``stream`` into the request; the client leaving stops it."""
    request.on_gone(stream.stopProducing)
    # The response's socket buffers as much as the storage side pulls per
    # turn (the read's share of the budget): fewer pause/resume rounds and
    # reactor turns per MiB than Twisted's 64 KiB / 128 KiB defaults.
    restore = reader.widen(getattr(request.channel, "transport", None), stream.length)
    try:
        # Over plain TCP the bytes go straight into the socket while it
        # takes them (wsfront.http.direct); headers still go first, through
        # the request.
        yield stream.start(body_consumer(request, stream.length))
    except TransferAborted:
        return False
    except Exception:
        if request.startedWriting:
            request.abort()
        raise
    finally:
        restore()
    return True


@inlineCallbacks
def _send(request, handle, plan):
    if isinstance(plan, tuple):
        first, length = plan
        stream = handle.stream
        if first or length != handle.info.size:
            stream = handle.reopen(first, length)
        ok = yield _pump(request, stream)
        if not request.gone:
            if ok:
                request.finish()
            else:
                # Stopped short (the transport stops its producer as the
                # client goes, before the request hears of it): not finished,
                # which would count a cut-short download as complete.
                request.abort()
        return
    for header, r in plan.parts():
        if request.gone:
            return
        request.write(header)
        ok = yield _pump(request, handle.reopen(r.first, r.length))
        if not ok:
            return
    if not request.gone:
        request.write(plan.epilogue())
        request.finish()
