"""Map the transfer layer's and the catalog's errors to HTTP answers.

The adapter never decides a status from an error's message: each error class
has one answer here (docs/architecture.md, Path state x operation), so FTP and
HTTP stay consistent with the same table.

Nor does a message ever reach the client: catalog and transfer messages name
catalog paths (``/alice/x``: the user's root, which is not the user's to see),
user names, blob ids and storage nodes.  The body is built from the class's
text here and the path the client asked for, so nothing else can leak.
"""

from __future__ import annotations

from attrs import frozen

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.transfer import errors as transfer_errors


@frozen
class HttpError(Exception):
    """An answer decided before or instead of the normal response.

    ``headers`` are extra response headers (``WWW-Authenticate``,
    ``Content-Range`` of a 416, ``Allow`` of a 405...).
    """

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (catalog_errors.NotFound, 404, "no such file or directory"),
    (catalog_errors.PermissionDenied, 403, "permission denied"),
    (catalog_errors.AuthFailed, 401, "login incorrect"),
    (catalog_errors.Exists, 409, "the name exists already"),
    (catalog_errors.NotEmpty, 409, "directory not empty"),
    (catalog_errors.RootBusy, 409, "directory busy: it is, or holds, another account's root"),
    (catalog_errors.NotADirectory, 409, "not a directory"),
    (catalog_errors.IsADirectory, 409, "is a directory"),
    (catalog_errors.InvalidName, 400, "file name not allowed"),
    (catalog_errors.InvalidMove, 409, "a directory cannot move into itself"),
    (catalog_errors.PendingUploadExists, 409, "file busy: an upload is pending on it"),
    (catalog_errors.InvalidOffset, 416, "offset beyond the end of the file"),
    (catalog_errors.QuotaExceeded, 507, "quota exceeded"),
    (catalog_errors.UploadFinished, 409, "upload already finished"),
    (catalog_errors.EpochConflict, 409, "upload taken over by another session"),
    (catalog_errors.CatalogUnavailable, 503, "catalog unavailable, try again later"),
    (catalog_errors.CatalogFull, 507, "insufficient storage: the catalog is full"),
    (transfer_errors.UploadBusy, 409, "file busy: another upload is pending on it"),
    (transfer_errors.OffsetTooLarge, 416, "offset beyond the end of the file"),
    (transfer_errors.QuotaExceeded, 507, "quota exceeded"),
    (transfer_errors.StorageFull, 507, "insufficient storage"),
    (transfer_errors.NoReplicasAvailable, 503, "storage unavailable, try again later"),
    (transfer_errors.UploadEnded, 409, "upload ended"),
    (transfer_errors.SessionFenced, 409, "upload taken over by another session"),
    (transfer_errors.SessionFailed, 503, "upload failed, try again later"),
    (transfer_errors.TransferAborted, 400, "transfer aborted"),
    (transfer_errors.Draining, 503, "server restarting, try again"),
    (transfer_errors.TooManySessions, 429, "too many transfers at once, try again later"),
)


def http_error(error: BaseException, raw_path: bytes | None = None) -> HttpError:
    """The HttpError to answer for ``error`` (500 for anything unexpected).

    ``raw_path`` is the request's path as sent (still percent-encoded): a
    user path is named in the message (``/x: no such file or directory``),
    the only path the body ever shows.
    """
    if isinstance(error, HttpError):
        return error
    if isinstance(error, paths.PathError):
        return HttpError(error.http_status, error.message)
    for cls, status, text in _TABLE:
        if isinstance(error, cls):
            retry = getattr(error, "retry_after", None)
            headers = () if retry is None else (("Retry-After", str(retry)),)
            return HttpError(status, _message(text, error, raw_path), headers)
    return HttpError(500, "internal server error")


def _message(text: str, error: BaseException, raw_path: bytes | None) -> str:
    detail = transfer_errors.public_detail(error)
    if detail:
        text = f"{text}: {detail}"
    shown = client_path(raw_path)
    return text if shown is None else f"{shown}: {text}"


def client_path(raw_path: bytes | None) -> str | None:
    """The user path the client asked for, as the client sees it (decoded,
    inside its root), or None for the server's own ``/-/`` endpoints and for
    a path that does not resolve."""
    if raw_path is None or raw_path == b"/-" or raw_path.startswith(b"/-/"):
        return None
    try:
        target = paths.resolve_http(raw_path)
    except paths.PathError:
        return None
    if target.trailing_slash and target.path != "/":
        return target.path + "/"
    return target.path
