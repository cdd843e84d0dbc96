"""Counters and recent events of one front end's transfer layer.

Metrics (``/-/metrics``) and the status page read these; the transfer layer
only increments plain integers and appends to a bounded deque, so keeping
them costs nothing measurable per chunk.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs


@attrs.frozen
class TransferEvent:
    """Something an operator wants to see happen: failover, takeover, fence."""

    at: float
    kind: str
    detail: dict[str, Any]


@attrs.define
class TransferStats:
    """Totals since the front end started."""

    reads_started: int = 0
    reads_completed: int = 0
    reads_ended: int = 0
    read_bytes: int = 0
    read_failovers: int = 0
    uploads_started: int = 0
    uploads_committed: int = 0
    uploads_interrupted: int = 0
    uploads_failed: int = 0
    write_bytes: int = 0
    takeovers: int = 0
    fenced: int = 0
    replica_drops: int = 0
    events: deque = attrs.field(factory=lambda: deque(maxlen=200))

    @property
    def active_reads(self) -> int:
        return self.reads_started - self.reads_ended

    def event(self, when: float, kind: str, **detail: Any) -> None:
        self.events.append(TransferEvent(when, kind, detail))
