"""Errors of the transfer layer, one per answer an adapter must give.

FTP and HTTP map these to reply codes (see docs/architecture.md); nothing
else about replicas, epochs or catalogs leaks into the adapters.
"""

from __future__ import annotations

from wsfront.text import one_line


class TransferError(Exception):
    """Base class of the transfer layer's errors."""


class NoReplicasAvailable(TransferError):
    """Every replica of the data is unreachable (FTP 451, HTTP 503)."""


class StorageFull(NoReplicasAvailable):
    """Every replica refused the bytes for lack of space (FTP 452, HTTP 507
    "insufficient storage"): unlike a replica that is down, waiting will not
    help until an operator frees space or adds a server.  The upload stays
    pending, resumable from its durable offset, as for any lost replicas;
    a new upload none of whose bytes was durable is discarded instead
    (``WriteSession.discarded``: nothing of it to resume)."""


class SessionFenced(TransferError):
    """Another front end took this upload over; this writer must stop.

    Never a replica failure: the client gets an error, not a 226/201.
    """


class UploadEnded(SessionFenced):
    """The upload was ended under this writer by someone else: deleted with
    its file or aborted, or expired.  Answered as a fence (FTP 451, HTTP
    409), with a message that says which, never "taken over"."""

    def __init__(self, state: str | None) -> None:
        super().__init__(_ENDED.get(state or "", "the upload has ended"))
        self.state = state


_ENDED = {
    "aborted": "the upload was deleted or aborted",
    "expired": "the upload expired",
    "committed": "the upload was committed already",
}
"""What a client is told of an upload ended in each final state (the
catalog records a DELETE's abandoned upload as aborted, like an abort)."""


class SessionFailed(TransferError):
    """The upload could not go on (FTP 451, HTTP 500/503)."""


class TransferAborted(TransferError):
    """The transfer was stopped by its client (disconnect, ABOR)."""


class QuotaExceeded(TransferError):
    """The user's quota does not allow these bytes (FTP 552, HTTP 507)."""


class OffsetTooLarge(TransferError):
    """A resume or read offset beyond what is stored (FTP 554, HTTP 416)."""


class LengthConflict(OffsetTooLarge):
    """A resume announces a total length other than the one its pending
    upload declared (HTTP PUT: 409; FTP never announces one).  Refused
    before the upload is touched."""


class UploadIncomplete(SessionFailed):
    """The client ended an upload (FTP: closed the data connection) short of
    the length it was declared with (by the PUT or tus request that began
    it): nothing is committed, the bytes stay pending and resumable (FTP 451,
    HTTP 503)."""


class UploadBusy(TransferError):
    """Another user's (or session's) pending upload holds the path (450/409)."""


class Draining(TransferError):
    """This front end is draining for a restart: try another (FTP 421, HTTP 503)."""


class TooManySessions(TransferError):
    """The user has as many transfers running as allowed (FTP 450, HTTP 429
    with ``Retry-After``): one account can't take every slot of a front end."""

    retry_after = 5
    """Seconds a client should wait before trying again."""


class TooManyPendingUploads(QuotaExceeded):
    """The user left as many interrupted uploads pending as allowed (a
    quota on their number: FTP 552, HTTP 507): a new one is refused until
    they resume, finish or cancel one, or one expires.  Resuming one is
    never refused for it."""


class LengthExceeded(QuotaExceeded):
    """Bytes past the length the upload was declared with (by the PUT or tus
    request that began it): a quota on this one upload (FTP 552, HTTP 507);
    the upload stays pending at its durable offset."""


_PUBLIC = (
    OffsetTooLarge,
    UploadEnded,
    TooManySessions,
    TooManyPendingUploads,
    UploadIncomplete,
    LengthExceeded,
)
"""Errors whose messages this layer builds from numbers and the user's own
name only (``offset 9 is beyond the size 3``): a client may be shown them."""


def public_detail(error: BaseException) -> str:
    """The part of ``error``'s message a client may see after the generic
    text of its class (FTP and HTTP alike): only for ``_PUBLIC`` errors, on
    one line (FTP's reply framing), and never with a ``/`` in it (every
    catalog path has one), so a message that starts naming a path some day
    stays out."""
    if not isinstance(error, _PUBLIC):
        return ""
    detail = one_line(str(error))
    return "" if "/" in detail or len(detail) > 200 else detail
