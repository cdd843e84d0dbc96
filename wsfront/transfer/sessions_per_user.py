"""A cap on the transfers one user runs at once on a front end.

Counted in the transfer layer, so FTP, HTTP and tus share it: every
``open_read`` and ``open_write`` takes a slot for its user, or fails with
``TooManySessions``; the slot is given back when the transfer ends (a read
stream finished or stopped, a write session committed, interrupted, fenced
or failed) or when its opening failed.  A read handle dropped without being
started or stopped gives its slot back when it is garbage-collected, so a
forgotten handle cannot leak a slot for good.
"""

from __future__ import annotations

import weakref

from wsfront.transfer.errors import TooManySessions


class Slot:
    """One running transfer of ``user``; ``release()`` may be called any
    number of times, only the first counts.  A slot without an owner counts
    nowhere (an uncapped session)."""

    def __init__(self, owner: SessionsPerUser | None, user: str) -> None:
        self._owner: SessionsPerUser | None = owner
        self.user = user

    def release(self, _result=None):
        """Give the slot back; passes ``_result`` through (for addBoth)."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self.user)
        return _result


class SessionsPerUser:
    """Running transfers per user name, capped at ``limit`` (None: no cap)."""

    def __init__(self, limit: int | None = 64) -> None:
        self.limit = limit
        self._running: dict[str, int] = {}
        self.refused = 0

    def acquire(self, user: str) -> Slot:
        """A slot for one more transfer of ``user``, or TooManySessions."""
        running = self._running.get(user, 0)
        if self.limit is not None and running >= self.limit:
            self.refused += 1
            raise TooManySessions(
                f"{user} already runs {running} transfers (at most {self.limit} at once)"
            )
        self._running[user] = running + 1
        return Slot(self, user)

    def running(self, user: str) -> int:
        return self._running.get(user, 0)

    def _release(self, user: str) -> None:
        left = self._running.get(user, 0) - 1
        if left > 0:
            self._running[user] = left
        else:
            self._running.pop(user, None)

    def hold_read(self, slot: Slot, stream) -> None:
        """Keep ``slot`` until ``stream`` (a ReadStream) ends: its ``start()``
        Deferred fires, or it is stopped, or it is dropped unused."""
        # Only a weak reference in the wrappers: the stream must not keep
        # itself alive through them, or a dropped one would wait for the
        # cycle collector to give its slot back.
        ref, cls = weakref.ref(stream), type(stream)

        def counted_start(consumer):
            return cls.start(ref(), consumer).addBoth(slot.release)

        def counted_stop():
            slot.release()
            cls.stopProducing(ref())

        stream.start = counted_start
        stream.stopProducing = counted_stop
        weakref.finalize(stream, slot.release)
