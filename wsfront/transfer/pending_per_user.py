"""A cap on the interrupted uploads one user leaves pending.

An upload cut short stays pending, resumable from its durable offset on
any front end, until it expires (``upload_expiry``, a day by default).
While it waits it costs no descriptor, socket or front-end memory, but
it keeps a catalog row, its blob's files on each replica and a small
record in each replica's memory (about 2 KiB).  Without a cap one user
who starts uploads and hangs up at once piles them up for a day; the
per-user session cap (``sessions_per_user``) bounds only the transfers
running at once, so it does not stop that.

``PendingPerUser`` counts, per user, the uploads this front end left
interrupted and not yet resumed here, each until it would expire.  A new
upload of a user at the cap is refused (``TooManyPendingUploads``, a
quota: FTP 552, HTTP 507); resuming one of their pending uploads never
is.  The count is this front end's view: it is taken from the catalog at
start (``reset``, the uploads it owns that are interrupted) and again,
at most every ``REFRESH_SECONDS``, when a user reaches the cap, so uploads
resumed on another front end, cancelled (tus ``DELETE``) or expired stop
counting.  With several front ends a user may leave up to the cap on each.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime

from wsfront.transfer.errors import TooManyPendingUploads

#: Seconds at least between two counts taken again from the catalog.
REFRESH_SECONDS = 10.0
#: The cap, unless configured (``--max-pending-uploads-per-user``).
DEFAULT_LIMIT = 1000


class PendingPerUser:
    """Interrupted uploads left pending here, per user name, capped at
    ``limit`` (None: no cap); each counts until ``expiry`` seconds after
    it was interrupted (the catalog's expiry then collects it)."""

    def __init__(self, clock: IReactorTime, limit: int | None, expiry: float) -> None:
        self._clock = clock
        self.limit = limit
        self._expiry = expiry
        #: user -> upload id -> when it stops counting.
        self._uploads: dict[str, dict[str, float]] = {}
        self._user_of: dict[str, str] = {}
        self._refreshed_at: float | None = None
        #: What ``add``/``discard`` did while a count was being taken from
        #: the catalog (``begin_refresh`` .. ``reset``), done again on top
        #: of it: the catalog's answer predates them.
        self._journal: list[tuple] | None = None
        #: Seconds at least between two counts taken from the catalog.
        self.refresh_seconds = REFRESH_SECONDS

    def add(self, user: str, upload_id: str, expires_at: float | None = None) -> None:
        """``upload_id`` of ``user`` was left interrupted here."""
        if expires_at is None:
            expires_at = self._clock.seconds() + self._expiry
        if self._journal is not None:
            self._journal.append((self.add, user, upload_id, expires_at))
        self._forget(upload_id)
        self._uploads.setdefault(user, {})[upload_id] = expires_at
        self._user_of[upload_id] = user

    def discard(self, upload_id: str) -> None:
        """``upload_id`` no longer waits here (resumed, taken over)."""
        if self._journal is not None:
            self._journal.append((self.discard, upload_id))
        self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        user = self._user_of.pop(upload_id, None)
        if user is None:
            return
        uploads = self._uploads.get(user, {})
        uploads.pop(upload_id, None)
        if not uploads:
            self._uploads.pop(user, None)

    def count(self, user: str) -> int:
        """Pending uploads of ``user`` that have not expired yet."""
        uploads = self._uploads.get(user)
        if not uploads:
            return 0
        now = self._clock.seconds()
        for upload_id in [u for u, expires_at in uploads.items() if expires_at <= now]:
            self._forget(upload_id)
        return len(uploads)

    def full(self, user: str) -> bool:
        """Whether ``user`` is at the cap; expired entries are pruned only
        then (every upload start asks: pruning never raises a count)."""
        if self.limit is None or len(self._uploads.get(user, ())) < self.limit:
            return False
        return self.count(user) >= self.limit

    def may_refresh(self) -> bool:
        """Whether the counts may be taken from the catalog again now."""
        now = self._clock.seconds()
        return self._refreshed_at is None or now - self._refreshed_at >= self.refresh_seconds

    def begin_refresh(self) -> None:
        """A count is being taken from the catalog (``reset`` or
        ``abandon_refresh`` follows): no other is due before
        ``refresh_seconds`` from now, and what changes meanwhile is kept."""
        self._refreshed_at = self._clock.seconds()
        self._journal = []

    def abandon_refresh(self) -> None:
        """The catalog could not answer: the counts stay as they were."""
        self._journal = None

    def reset(self, uploads: Iterable) -> None:
        """Count exactly ``uploads`` (UploadSessions: the catalog's
        interrupted uploads owned by this front end), then what changed
        here since ``begin_refresh``."""
        journal, self._journal = self._journal or [], None
        if self._refreshed_at is None or not journal:
            self._refreshed_at = self._clock.seconds()
        self._uploads, self._user_of = {}, {}
        for upload in uploads:
            self.add(upload.user, upload.upload_id, upload.expires_at)
        for change, *args in journal:
            change(*args)

    def refuse(self, user: str) -> TooManyPendingUploads:
        """The error for a new upload of ``user`` at the cap."""
        return TooManyPendingUploads(
            f"{user} has {self.count(user)} interrupted uploads pending (at most "
            f"{self.limit}): resume or finish one first, or wait until they expire"
        )
