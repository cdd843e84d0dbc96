"""Directory listings: HTML for browsers, JSON for a client whose Accept
header prefers ``application/json`` (``wsfront.http.accept``).

A directory may hold millions of entries, so a listing is written page by
page as the catalog returns them (``Transfers.list_dir`` with ``after=``),
chunked, and waits while the client's socket is full: memory stays at one
page whatever the directory's size.
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wsfront import paths
from wsfront.http import accept, conditional
from wsfront.http.request import CONTENT_SECURITY_HEADERS, StreamingRequest


@implementer(IPushProducer)
class Flow:
    """Registered on the request so the listing waits while the client is slow."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiting: Deferred | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def ready(self) -> Deferred | None:
        """None when writing may go on, else a Deferred that fires when it may."""
        if not self.paused or self.stopped:
            return None
        self._waiting = Deferred()
        return self._waiting


LISTING_TYPES = ("text/html", "application/json")
"""What a listing can be, the default first (``accept.choose``)."""


def wants_json(request: StreamingRequest) -> bool:
    """Whether the client's Accept header(s), q-values and all, prefer JSON."""
    fields = request.requestHeaders.getRawHeaders(b"Accept")
    header = None if fields is None else b",".join(fields)
    return accept.choose(header, LISTING_TYPES) == "application/json"


def _json_entry(entry) -> bytes:
    return json.dumps(
        {
            "name": entry.name,
            "type": "dir" if entry.is_dir else "file",
            "size": entry.size,
            "mtime": entry.mtime,
            "etag": entry.etag,
        },
        ensure_ascii=False,
    ).encode("utf-8")


def _html_head(vpath: str) -> bytes:
    title = html.escape(vpath)
    up = ""
    if vpath != "/":
        href = html.escape(paths.to_url_path(paths.parent(vpath), directory=True))
        up = f'<tr><td><a href="{href}">../</a></td><td></td><td></td></tr>\n'
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n"
        "<table>\n<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n" + up
    ).encode("utf-8")


def _html_entry(vpath: str, entry) -> bytes:
    child = paths.to_url_path(
        ("" if vpath == "/" else vpath) + "/" + entry.name, directory=entry.is_dir
    )
    name = entry.name + ("/" if entry.is_dir else "")
    size = "" if entry.is_dir else str(entry.size)
    return (
        f'<tr><td><a href="{html.escape(child)}">{html.escape(name)}</a></td>'
        f"<td>{size}</td><td>{conditional.format_http_date(entry.mtime)}</td></tr>\n"
    ).encode()


_HTML_TAIL = b"</table>\n</body></html>\n"


@inlineCallbacks
def serve(context, request: StreamingRequest, user, vpath: str):
    """Write the listing of directory ``vpath`` (headers only for HEAD)."""
    as_json = wants_json(request)
    first = yield context.transfers.list_dir(user, vpath, None, context.settings.listing_page)
    request.setResponseCode(200)
    request.set_headers(CONTENT_SECURITY_HEADERS)
    request.setHeader(b"Vary", b"Accept")
    request.setHeader(b"Cache-Control", b"no-cache")
    ctype = b"application/json" if as_json else b"text/html; charset=utf-8"
    request.setHeader(b"Content-Type", ctype)
    if request.method == b"HEAD":
        request.finish()
        return
    separators = itertools.chain((b"",), itertools.repeat(b","))

    def render(entry) -> bytes:
        if as_json:
            return next(separators) + _json_entry(entry)
        return _html_entry(vpath, entry)

    if as_json:
        name = json.dumps(vpath, ensure_ascii=False).encode("utf-8")
        head, tail = b'{"path": ' + name + b', "entries": [', b"]}\n"
    else:
        head, tail = _html_head(vpath), _HTML_TAIL
    yield stream_pages(context, request, user, vpath, first, render, head, tail)


@inlineCallbacks
def stream_pages(
    context,
    request: StreamingRequest,
    user,
    vpath: str,
    first: list,
    render: Callable[[Any], bytes],
    head: bytes,
    tail: bytes,
    flush_bytes: int | None = None,
):
    """Write ``head``, ``render(entry)`` of every entry of directory
    ``vpath``, then ``tail``, and finish ``request``; the status and
    headers are already set.

    ``first`` is the directory's first page (``Transfers.list_dir`` of
    ``listing_page`` entries, read before the headers so that an error
    still has its own answer); the next pages are read as the ones before
    are written.  What is rendered is written at the end of each page, and
    within one as soon as ``flush_bytes`` of it gathered (if given); after
    each write the next waits while the client's socket is full (``Flow``),
    and stops, unfinished, once the client is gone."""
    page_size = context.settings.listing_page
    flow = Flow()
    request.registerProducer(flow, True)
    try:
        pending, size = [head], len(head)
        page = first
        while True:
            for entry in page:
                part = render(entry)
                pending.append(part)
                size += len(part)
                if flush_bytes is not None and size >= flush_bytes:
                    request.write(b"".join(pending))
                    pending, size = [], 0
                    if not (yield _keep_up(flow, request)):
                        return
            if len(page) < page_size:
                break
            if pending:
                request.write(b"".join(pending))
                pending, size = [], 0
            if not (yield _keep_up(flow, request)):
                return
            page = yield context.transfers.list_dir(user, vpath, page[-1].name, page_size)
        if request.gone:
            return
        pending.append(tail)
        request.write(b"".join(pending))
    finally:
        if not request._disconnected:
            request.unregisterProducer()
    request.finish()


@inlineCallbacks
def _keep_up(flow: Flow, request: StreamingRequest):
    """Wait while the client is slow; False once it is gone."""
    waiting = flow.ready()
    if waiting is not None:
        yield waiting
    return not (flow.stopped or request.gone)
