"""Transfer-layer, catalog and path errors turned into FTP replies.

The transfer layer raises one class per answer a client must get
(docs/architecture.md); this table is the only place that knows which FTP
code each one becomes, so every command answers a given failure the same way.
Anything unexpected becomes 451 (a local error the client may retry) and is
logged by the caller, never shown as a traceback.
"""

from __future__ import annotations

from wsfront import paths
from wsfront.catalog import errors as catalog_errors
from wsfront.transfer import errors as transfer_errors

_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    # Transfer layer (checked first: some subclass catalog errors).
    (transfer_errors.UploadBusy, 450, "File busy: another upload is pending on it"),
    (transfer_errors.OffsetTooLarge, 554, "Restart offset beyond the end of the file"),
    # Before QuotaExceeded, its base: a quota on this one upload, not on the
    # account ("Quota exceeded" sent users looking at their quota).
    (transfer_errors.LengthExceeded, 552, "Upload passed its declared length"),
    (transfer_errors.QuotaExceeded, 552, "Quota exceeded"),
    (transfer_errors.UploadEnded, 451, "Upload ended"),
    (transfer_errors.SessionFenced, 451, "Upload taken over by another session"),
    (transfer_errors.StorageFull, 452, "Insufficient storage"),
    (transfer_errors.NoReplicasAvailable, 451, "Storage unavailable, try again later"),
    (transfer_errors.SessionFailed, 451, "Upload failed, try again later"),
    (transfer_errors.TransferAborted, 426, "Transfer aborted"),
    (transfer_errors.Draining, 421, "Server restarting: reconnect to resume"),
    (transfer_errors.TooManySessions, 450, "Too many transfers at once, try again later"),
    # Catalog.
    (catalog_errors.PermissionDenied, 550, "Permission denied"),
    (catalog_errors.NotFound, 550, "No such file or directory"),
    (catalog_errors.Exists, 550, "File exists"),
    (catalog_errors.NotEmpty, 550, "Directory not empty"),
    (catalog_errors.RootBusy, 550, "Directory busy: it is, or holds, another account's root"),
    (catalog_errors.NotADirectory, 550, "Not a directory"),
    (catalog_errors.IsADirectory, 550, "Is a directory"),
    (catalog_errors.InvalidName, 553, "File name not allowed"),
    (catalog_errors.InvalidMove, 553, "Cannot move a directory into itself"),
    (catalog_errors.PendingUploadExists, 450, "File busy: an upload is pending on it"),
    (catalog_errors.UploadFinished, 451, "Upload already finished"),
    (catalog_errors.EpochConflict, 451, "Upload taken over by another session"),
    (catalog_errors.InvalidOffset, 554, "Restart offset beyond the end of the file"),
    (catalog_errors.QuotaExceeded, 552, "Quota exceeded"),
    (catalog_errors.AuthFailed, 530, "Login incorrect"),
    (catalog_errors.HashMismatch, 451, "Read back data does not match the file's recorded hash"),
    (catalog_errors.CatalogUnavailable, 451, "Catalog unavailable, try again later"),
    (catalog_errors.CatalogFull, 452, "Insufficient storage: the catalog is full"),
)

UNEXPECTED = (451, "Local error in processing")


def reply_for(error: BaseException) -> tuple[int, str]:
    """The (code, text) an FTP client gets for ``error``.

    The text is the class's own; only the few transfer errors whose messages
    are built from numbers add theirs (``554 ...: offset 9 is beyond the
    size 3``).  Any other message may name a catalog path (``UploadBusy``
    can carry the catalog's ``an upload is pending on /alice/x``: the user's
    root is not theirs to see), a blob or a storage node, so none is shown.
    Path refusals use the code ``wsfront.paths`` chose.
    """
    if isinstance(error, paths.PathError):
        return error.ftp_code, error.message
    for cls, code, text in _TABLE:
        if isinstance(error, cls):
            detail = transfer_errors.public_detail(error)
            return (code, f"{text}: {detail}") if detail else (code, text)
    return UNEXPECTED


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is a failure a client can cause, or a known outage
    (not worth a traceback)."""
    return isinstance(error, paths.PathError) or any(isinstance(error, c) for c, _, _ in _TABLE)


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` is an outage of the server's own (the catalog
    unreachable or full): answered like any expected error, and worth one
    line in the log, as HTTP gives it, since the operator has something to
    fix and the catalog said nothing of it."""
    return isinstance(error, catalog_errors.CatalogUnavailable | catalog_errors.CatalogFull)
