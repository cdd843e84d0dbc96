"""WebDAV PROPFIND (RFC 4918, 9.1): what WebDAV clients list a directory with.

Read-side class 1 only, enough for rclone's webdav remote, cadaver and
davfs2 to browse and to see what they copied: Depth 0 and 1 (``infinity``,
and a missing Depth, which means it, get 403 ``propfind-finite-depth``, as
9.1 allows: a whole tree in one answer is unbounded), the live properties a
GET shows as headers, nothing writable (PROPPATCH, LOCK: 405).

A resource is what GET would serve: the committed version (a directory as
its listing), never the user's own pending upload, which only adds
``Upload-Offset`` to the answer's headers as it does to HEAD's; a file with
nothing committed is 404, as for GET.  Hrefs are the HTML listing's
(``paths.to_url_path``).  A Depth 1 answer on a directory streams page by
page from the catalog like the HTML/JSON listing (``listing.stream_pages``), so its
memory is a page and one flush, whatever the directory's size.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.http import dav_xml
from wsfront.http.download import pending_headers
from wsfront.http.errors_map import HttpError
from wsfront.http.files import quote_etag, view_target
from wsfront.http.listing import stream_pages
from wsfront.http.mimetypes import content_type
from wsfront.http.request import CONTENT_SECURITY_HEADERS, StreamingRequest

MAX_BODY = 64 << 10
"""The largest PROPFIND body read (more: 413); clients send well under 1 KiB."""

FLUSH_BYTES = 64 << 10
"""Bytes of responses gathered before a Depth 1 answer writes and checks
whether the client keeps up."""


@inlineCallbacks
def propfind(context, request: StreamingRequest, user, target: paths.HttpTarget):
    """Answer a PROPFIND on ``target`` with a 207 multistatus."""
    depth = depth_of(request)
    if depth is None:
        request.respond(403, dav_xml.FINITE_DEPTH_ERROR, content_type=dav_xml.CONTENT_TYPE)
        return
    query = yield read_query(request)
    if "read" not in user.permissions:
        raise catalog_errors.PermissionDenied(f"{user.name} may not read")
    view = yield view_target(context, user, target)
    extra = pending_headers(view.pending)
    info = view.committed
    if info is None and view.pending is not None:
        raise HttpError(404, "no committed version", extra)
    if info is None:
        raise catalog_errors.NotFound(target.path)
    own = resource_of(target.path, info.is_dir, info.size, info.mtime, info.etag)
    headers = (*CONTENT_SECURITY_HEADERS, *extra)
    if depth == 0 or not info.is_dir:
        body = dav_xml.MULTISTATUS_HEAD + dav_xml.response(own, query) + dav_xml.MULTISTATUS_TAIL
        request.respond(207, body, content_type=dav_xml.CONTENT_TYPE, headers=headers)
        return
    yield _stream_children(context, request, user, target.path, own, query, headers)


def depth_of(request: StreamingRequest) -> int | None:
    """The Depth header: 0 or 1, None for infinity (also when absent,
    RFC 4918, 10.2); anything else is 400, and so are two Depth headers:
    it is a single value, not a list (RFC 9110, 5.3), and answering the
    last of ``0`` and ``1`` would list a folder a client may have meant
    to stat only."""
    values = request.requestHeaders.getRawHeaders(b"Depth")
    if values is None:
        return None
    if len(values) > 1:
        raise HttpError(400, "one Depth header, please: it holds a single value")
    value = values[0]
    value = value.strip().lower()
    if value == b"infinity":
        return None
    if value in (b"0", b"1"):
        return int(value)
    raise HttpError(400, "Depth must be 0, 1 or infinity")


def read_query(request: StreamingRequest) -> Deferred:
    """Fire with the request body's PropfindQuery (empty: allprop); 400 for
    a body that is not one, 413 beyond ``MAX_BODY`` (refused unread when
    its Content-Length says so)."""
    length = request.body_length
    if length == 0:
        return succeed(dav_xml.ALLPROP)
    if length is not None and length > MAX_BODY:
        return fail(HttpError(413, f"a PROPFIND body is at most {MAX_BODY} bytes"))
    sink = _QuerySink(request)
    return request.stream_body(sink).addCallback(lambda _: sink.result())


@implementer(IConsumer)
class _QuerySink:
    """Keeps the body (``MAX_BODY`` at most) and parses it once, whole.

    Fed piece by piece as it arrived, expat before 2.6 re-scans an
    unfinished token from its start at every piece (CVE-2023-52425): a
    64 KiB body sent in 1-byte chunks took over a second of the reactor.
    """

    def __init__(self, request: StreamingRequest) -> None:
        self._request = request
        self._body = bytearray()
        self._error: HttpError | None = None

    def registerProducer(self, producer, streaming: bool) -> None:
        """Keeping a capped body keeps up with any client: nothing to pause."""

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        if self._error is not None:
            return
        if len(self._body) + len(data) > MAX_BODY:
            self._fail(HttpError(413, f"a PROPFIND body is at most {MAX_BODY} bytes"))
            return
        self._body += data

    def _fail(self, error: HttpError) -> None:
        self._error = error
        self._request.fail_body(error)

    def result(self) -> dav_xml.PropfindQuery:
        # A body complete before it was claimed came in whole: fail_body
        # could not fail it, so an error found in it is raised here.
        if self._error is not None:
            raise self._error
        try:
            return dav_xml.parse_propfind(bytes(self._body))
        except dav_xml.PropfindSyntaxError as e:
            raise HttpError(400, f"bad PROPFIND body: {e}") from None


def resource_of(
    vpath: str, is_dir: bool, size: int, mtime: float, etag: str | None
) -> dav_xml.Resource:
    """The live properties of ``vpath``, as GET or HEAD would show them."""
    name = paths.basename(vpath) if vpath != "/" else None
    if is_dir:
        return dav_xml.Resource(
            paths.to_url_path(vpath, directory=True), True, mtime, display_name=name
        )
    return dav_xml.Resource(
        paths.to_url_path(vpath),
        False,
        mtime,
        size=size,
        etag=quote_etag(etag) if etag else None,
        content_type=content_type(name or ""),
        display_name=name,
    )


@inlineCallbacks
def _stream_children(context, request, user, vpath: str, own, query, headers):
    """Write the multistatus of directory ``vpath`` and its entries, a
    catalog page at a time, waiting while the client's socket is full."""
    first = yield context.transfers.list_dir(user, vpath, None, context.settings.listing_page)
    request.setResponseCode(207)
    request.set_headers(headers)
    request.setHeader(b"Content-Type", dav_xml.CONTENT_TYPE.encode("latin-1"))
    prefix = "" if vpath == "/" else vpath

    def render(entry) -> bytes:
        child = resource_of(
            prefix + "/" + entry.name, entry.is_dir, entry.size, entry.mtime, entry.etag
        )
        return dav_xml.response(child, query)

    head = dav_xml.MULTISTATUS_HEAD + dav_xml.response(own, query)
    tail = dav_xml.MULTISTATUS_TAIL
    yield stream_pages(context, request, user, vpath, first, render, head, tail, FLUSH_BYTES)
