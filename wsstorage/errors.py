"""Errors of the storage tier, shared by the server, the client and the fake.

Each has a stable wire ``code`` so the client can raise the same class the
server raised.  The transfer layer tells them apart: a ``StaleEpoch`` ends a
write session (it is never a replica failure), a ``ChecksumError`` or a
``NodeUnavailable`` sends a read to another replica.
"""

from __future__ import annotations

import errno
import re


class StorageError(Exception):
    """Base class; ``code`` is the wire error code (docs/wire-protocol.md)."""

    code = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()


class BadRequest(StorageError):
    """The request is malformed (bad field, bad blob id, bad range)."""

    code = "bad_request"


class BlobNotFound(StorageError):
    """No blob with that id on this server."""

    code = "not_found"


class BlobExists(StorageError):
    """A blob with that id already exists (copy or create would overwrite)."""

    code = "exists"


class BlobSealed(StorageError):
    """The blob is sealed (committed); it can no longer be written."""

    code = "sealed"


class StaleEpoch(StorageError):
    """The request's epoch is older than the blob's: another writer took over."""

    code = "stale_epoch"


class InvalidOffset(StorageError):
    """A write or fence beyond the end of the blob, or a read past its end."""

    code = "invalid_offset"


class ChecksumError(StorageError):
    """A block of the blob failed its checksum: read another replica."""

    code = "checksum"


#: The errnos of a full disk or an exceeded quota: told to clients as
#: DiskFull, and not a write-back error (nothing written is in doubt).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(StorageError):
    """The server's disk is full; committed blobs are untouched."""

    code = "disk_full"


class DiskError(StorageError):
    """The server's disk failed the operation (read-only, a file or
    directory of the store gone): the node is sick, not the request."""

    code = "disk_error"


class AuthenticationFailed(StorageError):
    """The peer could not prove knowledge of the cluster secret."""

    code = "auth_failed"


class ProtocolError(StorageError):
    """The peer broke the wire protocol (bad frame, wrong version)."""

    code = "protocol"


class NodeUnavailable(StorageError):
    """The storage server could not be reached or the connection was lost."""

    code = "unavailable"


class Busy(StorageError):
    """The server refuses more work right now (too many streams)."""

    code = "busy"


class WrongCluster(StorageError):
    """The store is bound to another cluster (catalog) than the request's:
    its blobs are not this cluster's to delete, nor its room to fill."""

    code = "wrong_cluster"

    @property
    def bound_to(self) -> str | None:
        """The cluster id the store is bound to, from the message (the
        wire carries only code and message); None if it names none."""
        m = re.search(r"bound to cluster ([0-9a-f]{32})", self.message)
        return m.group(1) if m else None


def wrong_cluster(bound: str, asked: str) -> WrongCluster:
    """The one spelling of the refusal, so ``bound_to`` can read it back."""
    return WrongCluster(f"this store is bound to cluster {bound}, not {asked}")


ERRORS_BY_CODE: dict[str, type[StorageError]] = {
    cls.code: cls
    for cls in (
        StorageError,
        BadRequest,
        BlobNotFound,
        BlobExists,
        BlobSealed,
        StaleEpoch,
        InvalidOffset,
        ChecksumError,
        DiskFull,
        DiskError,
        AuthenticationFailed,
        ProtocolError,
        NodeUnavailable,
        Busy,
        WrongCluster,
    )
}


def error_from_code(code: str, message: str) -> StorageError:
    """Rebuild the error a peer reported; an unknown code becomes a
    StorageError that keeps it as its ``code``: ``format`` (a record the
    server cannot decode, ``diskformat.FormatError``, which this module
    cannot import) is one a client tells apart from ``error``."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    err = StorageError(message)
    err.code = code
    return err
