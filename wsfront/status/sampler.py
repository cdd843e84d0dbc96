"""Throughput history and per-session rates for the status page.

``TransferStats`` keeps running totals; a rate needs two samples.  The
sampler takes one per ``interval`` (a LoopingCall while the front end runs,
or on demand when a feed request finds the last sample old) and keeps the
last ``history`` points, enough for a chart of the last minutes, plus the
last few offsets of each live upload session for its rate.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class ThroughputSampler:
    """Samples ``transfers.stats`` and ``transfers.sessions`` periodically."""

    def __init__(
        self, clock: IReactorTime, transfers, interval: float = 1.0, history: int = 300
    ) -> None:
        self._clock = clock
        self.transfers = transfers
        self.interval = interval
        self.points: deque[tuple[float, float, float]] = deque(maxlen=history)
        self._last: tuple[float, int, int] | None = None
        self._offsets: dict[str, deque[tuple[float, int]]] = {}
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self.sample)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample_if_stale(self) -> None:
        if self._last is None or self._clock.seconds() - self._last[0] >= self.interval:
            self.sample()

    def sample(self) -> None:
        """Record one point: bytes/second read and written since the last one."""
        now = self._clock.seconds()
        stats = self.transfers.stats
        if self._last is not None and now > self._last[0]:
            then, read, written = self._last
            span = now - then
            self.points.append(
                (now, (stats.read_bytes - read) / span, (stats.write_bytes - written) / span)
            )
        self._last = (now, stats.read_bytes, stats.write_bytes)
        live = self.transfers.sessions
        for upload_id in list(self._offsets):
            if upload_id not in live:
                del self._offsets[upload_id]
        for upload_id, session in live.items():
            self._offsets.setdefault(upload_id, deque(maxlen=5)).append((now, session.offset))

    def rate(self, upload_id: str) -> float:
        """Bytes/second of an upload over its last few samples (0 if unknown)."""
        seen = self._offsets.get(upload_id)
        if not seen or len(seen) < 2:
            return 0.0
        (t0, o0), (t1, o1) = seen[0], seen[-1]
        return max(0.0, (o1 - o0) / (t1 - t0)) if t1 > t0 else 0.0
