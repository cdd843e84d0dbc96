"""Map the transfer layer's and the catalog's errors to HTTP statuses.

The adapter never decides a status from an error's message: each error class
has one answer here (docs/architecture.md, Path state x operation), so FTP and
HTTP stay consistent with the same table.
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


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (catalog_errors.NotFound, 404),
    (catalog_errors.PermissionDenied, 403),
    (catalog_errors.AuthFailed, 401),
    (catalog_errors.Exists, 409),
    (catalog_errors.NotEmpty, 409),
    (catalog_errors.NotADirectory, 409),
    (catalog_errors.IsADirectory, 409),
    (catalog_errors.InvalidName, 400),
    (catalog_errors.InvalidMove, 409),
    (catalog_errors.PendingUploadExists, 409),
    (catalog_errors.InvalidOffset, 416),
    (catalog_errors.QuotaExceeded, 507),
    (catalog_errors.EpochConflict, 409),
    (transfer_errors.UploadBusy, 409),
    (transfer_errors.OffsetTooLarge, 416),
    (transfer_errors.QuotaExceeded, 507),
    (transfer_errors.NoReplicasAvailable, 503),
    (transfer_errors.SessionFenced, 409),
    (transfer_errors.SessionFailed, 503),
    (transfer_errors.TransferAborted, 400),
    (transfer_errors.Draining, 503),
    (transfer_errors.TooManySessions, 429),
)


def http_error(error: BaseException) -> HttpError:
    """The HttpError to answer for ``error`` (500 for anything unexpected)."""
    if isinstance(error, HttpError):
        return error
    if isinstance(error, paths.PathError):
        return HttpError(error.http_status, error.message)
    for cls, status in _STATUS:
        if isinstance(error, cls):
            retry = getattr(error, "retry_after", None)
            headers = () if retry is None else (("Retry-After", str(retry)),)
            return HttpError(status, str(error) or cls.__name__, headers)
    return HttpError(500, "internal server error")
