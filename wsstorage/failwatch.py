"""Who waits for a write stream to fail (``IBlobWriter.when_failed``).

Every writer of a blob (over the wire, in process, the test cluster's)
keeps the same promise: each ``when_failed`` Deferred errbacks once, with
the stream's error, if the stream breaks; none fires once it ended well.
One small holder keeps that promise for all of them."""

from __future__ import annotations

from twisted.internet import defer


class FailureWatchers:
    """The Deferreds given out by a stream's ``when_failed``."""

    def __init__(self) -> None:
        self._waiting: list[defer.Deferred] = []

    def watch(self, error: BaseException | None) -> defer.Deferred:
        """A Deferred for ``when_failed``: failed at once with ``error`` if
        the stream has broken already, else errbacked by ``fail``."""
        if error is not None:
            return defer.fail(error)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def fail(self, error: BaseException) -> None:
        """The stream broke: tell every watcher, once."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(error)

    def forget(self) -> None:
        """The stream ended: nobody is told anything any more."""
        self._waiting = []
