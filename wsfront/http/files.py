"""User paths over HTTP: method routing and the namespace methods.

GET/HEAD live in ``download.py``, PUT in ``upload.py``, PROPFIND in
``propfind.py``; DELETE, MKCOL and
MOVE are here because each is one transfer-layer call plus its
preconditions.  Every path is resolved inside the user's root first.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import NOTHING_COMMITTED
from wsfront.http import conditional
from wsfront.http.destination import destination, destination_error
from wsfront.http.errors_map import HttpError
from wsfront.http.request import StreamingRequest
from wsfront.transfer.service import judged_on_one_version

ALLOWED = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, MOVE, PROPFIND"

ALLOWED_ON_EXISTING = ", ".join(m for m in ALLOWED.split(", ") if m != "MKCOL")
"""The Allow of MKCOL's 405 on a name that exists (RFC 9110, 15.5.6: a 405
must list what the resource supports; RFC 4918, 9.3.1: MKCOL there is 405)."""

DAV_CLASSES = "1"
"""WebDAV compliance (RFC 4918, 18): class 1 only; class 2 would promise LOCK."""


def handle(context, request: StreamingRequest, user, raw_path: bytes):
    """Run the method of ``request`` on the user path ``raw_path``."""
    from wsfront.http import download, propfind, upload

    target = paths.resolve_http(raw_path)
    method = request.method
    if method in (b"GET", b"HEAD"):
        return download.serve(context, request, user, target)
    if method == b"PUT":
        return upload.put(context, request, user, target)
    if method == b"DELETE":
        return delete(context, request, user, target)
    if method == b"MKCOL":
        return mkcol(context, request, user, target)
    if method == b"MOVE":
        return move(context, request, user, target)
    if method == b"PROPFIND":
        return propfind.propfind(context, request, user, target)
    if method == b"OPTIONS":
        return options(request)
    raise HttpError(405, "method not allowed", (("Allow", ALLOWED),))


@inlineCallbacks
def options(request: StreamingRequest):
    yield request.discard_body()
    request.respond(204, headers=(("Allow", ALLOWED), ("DAV", DAV_CLASSES)))


def headers_of(request: StreamingRequest) -> dict[str, str]:
    """The request's headers as ``conditional.evaluate`` wants them."""
    return {
        name.decode("latin-1"): ", ".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


PRECONDITION_HEADERS = (
    b"If-Match",
    b"If-None-Match",
    b"If-Unmodified-Since",
    b"If-Modified-Since",
    b"If-Range",
)


def has_preconditions(request: StreamingRequest) -> bool:
    """Whether ``conditional.evaluate`` has anything to decide (If-Range
    matters only to a GET with Range; evaluate ignores it otherwise)."""
    return any(request.requestHeaders.hasHeader(h) for h in PRECONDITION_HEADERS)


@inlineCallbacks
def stat_or_none(context, user, vpath: str):
    """The FileInfo of ``vpath`` for ``user``, None if it does not exist."""
    try:
        info = yield context.transfers.stat(user, vpath)
    except catalog_errors.NotFound:
        return None
    return info


def check_write_preconditions(request: StreamingRequest, committed) -> None:
    """412 unless If-Match / If-None-Match / If-Unmodified-Since hold for the
    committed version ``committed`` (None: nothing committed).

    Always the committed version (RFC 9110, 13.1.1-2: the selected
    representation), never the user's own pending upload on the path: an
    interrupted upload must not make ``If-None-Match: *`` overwrite a file,
    nor the file's current ETag fail ``If-Match``."""
    if not has_preconditions(request):
        return
    etag = None
    mtime = None
    if committed is not None:
        etag = quote_etag(committed.etag) if committed.etag else '"dir"'
        mtime = committed.mtime
    method = request.method.decode("latin-1")
    verdict = conditional.evaluate(method, headers_of(request), etag, mtime)
    if verdict is conditional.Verdict.PRECONDITION_FAILED:
        raise HttpError(412, "precondition failed")


def quote_etag(etag: str) -> str:
    return f'"{etag}"'


@inlineCallbacks
def stat_target(context, user, target: paths.HttpTarget):
    """The FileInfo of what ``target`` names, None if nothing: a path ending
    in ``/`` names a directory, so on a file it names nothing (GET answers
    404 there too), and no method may act on the file through it."""
    info = yield stat_or_none(context, user, target.path)
    if info is not None and target.trailing_slash and not info.is_dir:
        return None
    return info


@inlineCallbacks
def view_target(context, user, target: paths.HttpTarget):
    """The PathView of what ``target`` names (empty if nothing; a path
    ending in ``/`` names no file, as for ``stat_target``)."""
    view = yield context.transfers.view(user, target.path)
    if target.trailing_slash and not (view.committed is not None and view.committed.is_dir):
        return type(view)()
    return view


def judged_etag(request: StreamingRequest, view):
    """The version of the file ``view`` a DELETE or MOVE names to the
    catalog, so that a commit after its preconditions were judged is
    VersionChanged (judged again): None without preconditions, the
    committed version's ETag, or NOTHING_COMMITTED when only the user's
    pending upload is there.  A pending upload is no representation
    (RFC 9110, 3.2): If-Match fails on it and ``If-None-Match: *`` holds,
    as for PUT, and that verdict must not outlive a commit."""
    if not has_preconditions(request):
        return None
    if view.committed is not None:
        return view.committed.etag
    return NOTHING_COMMITTED


@inlineCallbacks
def delete(context, request: StreamingRequest, user, target: paths.HttpTarget):
    """DELETE; with preconditions, of the version they were judged on: a
    commit between the look and the removal means look and judge again
    (``judged_on_one_version``), so an If-Match never removes a newer file."""
    yield request.discard_body()
    if target.path == "/":
        raise HttpError(403, "the root cannot be deleted")
    yield judged_on_one_version(
        lambda: _delete_once(context, request, user, target),
        lambda: HttpError(409, "the file kept changing while it was deleted"),
    )
    request.respond(204)


@inlineCallbacks
def _delete_once(context, request, user, target):
    """One look, judgement and removal of ``delete``."""
    view = yield view_target(context, user, target)
    check_write_preconditions(request, view.committed)
    info = view.committed or view.pending
    if info is None:
        raise HttpError(404, "no such file or directory")
    if info.is_dir:
        yield context.transfers.rmdir(user, target.path)
        return
    yield context.transfers.delete(user, target.path, expected_etag=judged_etag(request, view))


@inlineCallbacks
def mkcol(context, request: StreamingRequest, user, target: paths.HttpTarget):
    # RFC 4918 (9.3): a body MKCOL does not understand is 415.
    yield request.require_no_body(HttpError(415, "MKCOL takes no body"))
    exists = (("Allow", ALLOWED_ON_EXISTING),)
    if target.path == "/":
        raise HttpError(405, "the root exists", exists)
    try:
        yield context.transfers.mkdir(user, target.path)
    except catalog_errors.Exists:
        if target.trailing_slash and (yield stat_target(context, user, target)) is None:
            raise HttpError(409, "a file has that name") from None
        raise HttpError(405, "that name exists already", exists) from None
    except catalog_errors.NotFound:
        raise HttpError(409, "the parent directory does not exist") from None
    request.respond(201, headers=(("Location", paths.to_url_path(target.path, directory=True)),))


@inlineCallbacks
def move(context, request: StreamingRequest, user, target: paths.HttpTarget):
    """RFC 4918 MOVE, except that only a file ever replaces a file.

    With ``Overwrite: T`` (the default) RFC 4918 would delete whatever the
    destination holds, a whole tree included, before moving; wsfs never
    deletes more than the one file a request names, so a directory on
    either side of a replacement is 409 Conflict, both ways alike (nginx's
    dav module answers 409 for a file onto a collection too).
    """
    yield request.discard_body()
    dest = destination(request)
    if target.path == "/":
        raise HttpError(403, "the root cannot be moved")
    if dest.path == "/":
        raise HttpError(403, "the destination is the root, which cannot be replaced")
    overwrite = overwrite_of(request)
    moved = yield judged_on_one_version(
        lambda: _move_once(context, request, user, target, dest, overwrite),
        lambda: HttpError(409, "the file kept changing while it was moved"),
    )
    request.respond(204 if moved else 201)


@inlineCallbacks
def _move_once(context, request, user, target, dest, overwrite):
    """One look, judgement and rename of ``move``; whether it replaced a
    file.  VersionChanged: the source's version changed after its
    preconditions were judged (look and judge again)."""
    view = yield view_target(context, user, target)
    check_write_preconditions(request, view.committed)
    info = view.committed or view.pending
    if info is None:
        raise HttpError(404, "no such file or directory")
    if dest.trailing_slash and not info.is_dir:
        raise HttpError(409, "a file cannot move to a directory path (ending in /)")
    if dest.path == target.path:
        raise HttpError(403, "the source and the destination are the same")
    try:
        existing = yield stat_or_none(context, user, dest.path)
    except catalog_errors.NotADirectory as e:
        raise destination_error(e, dest) from None
    if existing is not None and not overwrite:
        raise HttpError(412, "the destination exists and Overwrite is F")
    if existing is not None and (existing.is_dir or info.is_dir):
        raise HttpError(409, NEVER_REPLACED)
    judged = None if info.is_dir else judged_etag(request, view)
    try:
        yield context.transfers.rename(
            user, target.path, dest.path, replace=overwrite, expected_etag=judged
        )
    except catalog_errors.Exists:
        # Taken meanwhile: by a directory (Overwrite T), or by anything (F).
        raise HttpError(409 if overwrite else 412, "the destination exists") from None
    except catalog_errors.NotFound:
        raise HttpError(409, "the destination's parent directory does not exist") from None
    except catalog_errors.PendingUploadExists:
        raise HttpError(409, "the destination is busy: an upload is pending on it") from None
    except (catalog_errors.NotADirectory, catalog_errors.InvalidName) as e:
        raise destination_error(e, dest) from None
    return existing is not None


def overwrite_of(request: StreamingRequest) -> bool:
    """The Overwrite header (RFC 4918, 10.6): T when absent; a value other
    than T or F is 400, since guessing T could replace a file by surprise."""
    value = (request.getHeader(b"Overwrite") or b"T").strip().upper()
    if value not in (b"T", b"F"):
        raise HttpError(400, "Overwrite must be T or F")
    return value == b"T"


NEVER_REPLACED = "a directory is never replaced, nor a file replaced by a directory"
