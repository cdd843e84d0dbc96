"""A briefly cached view of the catalog for metrics and the status page.

Prometheus collectors run synchronously at scrape time and the status page
polls every second; neither may put a catalog query on every request of
every watcher.  ``CatalogSnapshot`` asks the catalog at most once per
``ttl`` seconds (concurrent askers share one query) and keeps the last
answer; an asker waits at most ``wait`` seconds for a new one, so a slow or
unreachable catalog shows as stale numbers (and their age), never as a hung
scrape.  It also times its own queries: the catalog latency histogram
costs nothing extra.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsfront.catalog.records import JOB_QUEUED, JOB_RUNNING

log = Logger()

#: Upper bounds of the catalog query latency histogram, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """Cumulative bucket counts, the shape Prometheus histograms expose."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count), ...]`` including ``+Inf``."""
        return [(repr(b), c) for b, c in zip(self.buckets, self.counts)] + [("+Inf", self.count)]


#: The counts of ``ICatalog.replica_health`` a snapshot keeps: what ``wsfs
#: status`` shows, by replicas on servers not recorded down.
HEALTH_COUNTS = ("under_replicated", "under_replicated_files", "unavailable", "unavailable_files")


class CatalogSnapshot:
    """Replica health, live uploads and the repair backlog, cached.

    The replica counts come from ``replica_health``, the very query of
    ``wsfs status``: a replica counts only on a server the registry does
    not record down, so while servers are down the metrics, the status
    page and ``wsfs status`` say the same (repair's own backlog,
    ``count_under_replicated``, keeps counting ok replicas wherever they
    are until its grace period ends)."""

    def __init__(self, clock: IReactorTime, catalog, ttl: float = 5.0, wait: float = 1.0) -> None:
        self._clock = clock
        self._catalog = catalog
        self.ttl = ttl
        #: How long a refresh of numbers it already has waits for new ones.
        self.wait = wait
        self.refreshed_at: float | None = None
        self.under_replicated: int | None = None
        self.under_replicated_files: int | None = None
        self.unavailable: int | None = None
        self.unavailable_files: int | None = None
        self.uploads: list = []
        self.jobs: Counter[tuple[str, str]] = Counter()
        self.errors = 0
        self.latency = LatencyHistogram()
        self._querying = False
        self._waiters: list[Deferred] = []

    def age(self) -> float | None:
        """Seconds since the numbers were read, or None before the first answer."""
        if self.refreshed_at is None:
            return None
        return self._clock.seconds() - self.refreshed_at

    def fresh(self) -> bool:
        if self.refreshed_at is None:
            return False
        return self._clock.seconds() - self.refreshed_at < self.ttl

    def refresh(self) -> Deferred:
        """Fire (with self) once the snapshot is at most ``ttl`` old, or
        after ``wait`` seconds with the numbers it has, whichever is first;
        the very first refresh waits for an answer.  Never fails.

        A scrape never waits long on the replica counts: their query reads
        every blob (0.5 s on a 300k-file SQLite catalog, twice that while a
        server is down, growing with the catalog), and a scrape that waited
        for it would time out in exactly the outage it is for.  The query
        goes on in the background, and the next scrape shows its answer."""
        if self.fresh():
            return succeed(self)
        d: Deferred = Deferred()
        self._waiters.append(d)
        if not self._querying:
            self._querying = True
            self._query()
        if not d.called and self.refreshed_at is not None:
            self._clock.callLater(self.wait, self._give_up_waiting, d)
        return d

    def _give_up_waiting(self, d: Deferred) -> None:
        if d in self._waiters:
            self._waiters.remove(d)
            d.callback(self)

    def _query(self) -> None:
        started = time.monotonic()
        queries = [
            self._catalog.replica_health(with_paths=False),
            self._catalog.list_uploads(),
            self._catalog.list_jobs([JOB_QUEUED, JOB_RUNNING]),
        ]
        d = DeferredList(queries, consumeErrors=True)
        d.addCallback(self._got, started)

    def _got(self, results: list[tuple[bool, Any]], started: float) -> None:
        self.latency.observe(time.monotonic() - started)
        (ok_health, health), (ok_uploads, uploads), (ok_jobs, jobs) = results
        for ok, value in results:
            if not ok:
                self.errors += 1
                log.warn("catalog snapshot query failed: {err}", err=value.value)
        if ok_health:
            for name in HEALTH_COUNTS:
                setattr(self, name, int(health[name]))
        if ok_uploads:
            self.uploads = list(uploads)
        if ok_jobs:
            self.jobs = Counter((job.kind, job.state) for job in jobs)
        self.refreshed_at = self._clock.seconds()
        self._querying = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    def uploads_by_owner(self) -> dict[str, Counter[str]]:
        """``{front end: Counter(state: live uploads)}`` from the last snapshot."""
        owners: dict[str, Counter[str]] = {}
        for upload in self.uploads:
            owners.setdefault(upload.owner, Counter())[upload.state] += 1
        return owners
