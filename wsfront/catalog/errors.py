"""Errors of the catalog, shared by both backends.

Every front end maps them to protocol replies the same way (FTP 550/450/553,
HTTP 404/409/412...), so each failure a user can cause has its own class.
Session errors are distinct: an ``EpochConflict`` means another front end
took the upload over, and ends this session; it is never retried.
"""

from __future__ import annotations


class CatalogError(Exception):
    """Base class of every catalog error."""

    def __init__(self, message: str = "") -> None:
        doc = (self.__class__.__doc__ or self.__class__.__name__).strip()
        super().__init__(message or doc)
        self.message = message or doc


class NotFound(CatalogError):
    """No such file, directory, upload, user, blob or job."""


class Exists(CatalogError):
    """The name is already taken."""


class RootInUse(Exists):
    """A new user's root already holds files (a deleted user's kept tree)."""


class NotEmpty(CatalogError):
    """The directory is not empty."""


class RootBusy(CatalogError):
    """The directory is a user's root, or holds one: like a mount point
    (POSIX EBUSY), it is never moved or removed while the account exists."""


class NotADirectory(CatalogError):
    """A component of the path, or the target, is not a directory."""


class IsADirectory(CatalogError):
    """The path is a directory where a file was expected."""


class InvalidName(CatalogError):
    """The path or name breaks the name policy (DESIGN.md, Files)."""


class InvalidMove(CatalogError):
    """A directory cannot be moved into its own subtree (or the root moved)."""


class PendingUploadExists(CatalogError):
    """A live upload owned by another session is pending on this path.
    ``upload`` is that session when the catalog looked it up (``start_upload``),
    so its owner can take it over without another lookup."""

    def __init__(self, *args: object, upload: object | None = None) -> None:
        super().__init__(*args)
        self.upload = upload


class EpochConflict(CatalogError):
    """The session's epoch moved on: another front end took the upload over."""


class UploadFinished(EpochConflict):
    """The upload is committed, aborted or expired: no further change is possible.
    ``state`` is which (None when unknown): its writer tells its client
    what ended it (deleted or aborted, expired), not that it was taken over."""

    def __init__(self, *args: object, state: str | None = None) -> None:
        super().__init__(*args)
        self.state = state


class VersionChanged(CatalogError):
    """The file's committed version is no longer the one expected (it was
    overwritten, appended to, truncated or deleted meanwhile)."""


class HashMismatch(CatalogError):
    """The whole-file sha256 differs from the one already recorded: the bytes
    read are not the bytes that were committed."""


class InvalidOffset(CatalogError):
    """The offset is above the durable checkpoint, or otherwise out of range."""


class QuotaExceeded(CatalogError):
    """The user's byte or file quota would be exceeded."""


class PermissionDenied(CatalogError):
    """The user lacks the permission for this operation."""


class AuthFailed(CatalogError):
    """Unknown user or wrong password (deliberately indistinguishable)."""


class LeaseHeld(CatalogError):
    """The job or lease belongs to another owner."""


class CatalogUnavailable(CatalogError):
    """The metadata database could not be reached or stayed locked; the
    operation may or may not have taken effect.  A passing outage: the
    client is told to try again (FTP 451, HTTP 503 with ``Retry-After``)."""

    retry_after = 5
    """Seconds a client should wait before trying again."""


class CatalogFull(CatalogError):
    """The metadata database's disk is full: no write can commit until an
    operator frees space (FTP 452, HTTP 507); reads still work."""


class CatalogClosed(RuntimeError):
    """The catalog was closed (its front end is stopping): nothing more is
    asked of it.  A RuntimeError, as before it had a class of its own: not
    a client's error, nor an outage to try again after."""

    def __init__(self, message: str = "catalog is closed") -> None:
        super().__init__(message)


class SchemaTooNew(CatalogError):
    """The database schema is newer than this code: upgrade wsfs first."""
