"""Prometheus metrics of one front end, served at ``/-/metrics``.

The transfer layer, the FTP factory, the storage pool and GC already keep
plain counters (``TransferStats``, ``FTPStats``, ``NodeState``,
``GarbageCollector.purged_uploads_total``); this module reads them at
scrape time through a custom collector instead of hooking
``prometheus_client`` objects into the hot paths, so a transfer costs the
same whether anyone scrapes or not.  Each front end gets its own
``CollectorRegistry`` (never the global one): several front ends in one
process (tests, ``wslocal``) do not mix their numbers.

Wiring (``FrontendService``)::

    snapshot = CatalogSnapshot(reactor, catalog)
    http = HttpCounters(); http.attach(site)
    registry = make_registry(transfers, snapshot, ftp=ftp_factory, http=http,
                             gc=maintenance.gc)
    site.mount("metrics", metrics_endpoint(registry, snapshot))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.internet.defer import inlineCallbacks

from wsfront.metrics_catalog import CatalogSnapshot, LatencyHistogram

#: Methods the site serves, each its own label value; anything else is
#: "other", so a client inventing methods cannot grow the label set.
_METHODS = frozenset(
    {"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "MKCOL", "MOVE", "PROPFIND"}
)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HttpCounters:
    """Per-request HTTP counters, fed by the site's access-log hook.

    ``WsSite.log(request)`` runs once per finished request and does nothing
    by default ("access logging is left to metrics"); ``attach(site)``
    points it here.  A transfer is a 2xx GET or PUT of a user's file, or a
    tus PATCH (one chunk); the server's own ``/-/`` pages are requests but
    not transfers.  A request that carries ``started_at`` (reactor seconds
    at dispatch) also lands in the latency histogram.

    A 501 for a method wsfs does not know (``request.unknown_method``) is
    a client's doing, not a server error: it is counted in
    ``unknown_methods`` and left out of ``requests``, so an alert on the
    rate of 5xx answers does not fire for a scanner sending junk methods.
    It stays out of the latency histogram too, whose ``_count`` then
    equals the requests total (a mean latency or a rate made from one
    agrees with the other); its bytes still count, as they crossed the wire.
    """

    def __init__(self, clock=None) -> None:
        self._clock = clock
        self.requests: Counter[tuple[str, str]] = Counter()
        self.unknown_methods = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.downloads = 0
        self.uploads = 0
        self.latency = LatencyHistogram(HTTP_BUCKETS)

    def attach(self, site) -> None:
        """Count every request ``site`` finishes (it calls ``site.log``)."""
        self._clock = self._clock or getattr(site, "reactor", None)
        site.log = self.observe

    def observe(self, request) -> None:
        method = request.method.decode("latin-1", "replace").upper()
        if method not in _METHODS:
            method = "other"
        code = int(getattr(request, "code", 0) or 0)
        unknown = code == 501 and getattr(request, "unknown_method", False)
        if unknown:
            self.unknown_methods += 1
        else:
            self.requests[(method, str(code))] += 1
        self.bytes_out += int(getattr(request, "sentLength", 0) or 0)
        self.bytes_in += int(getattr(request, "body_received", 0) or 0)
        if 200 <= code < 300:
            path = getattr(request, "path", b"") or b""
            own = path == b"/-" or path.startswith(b"/-/")
            if method == "GET" and not own:
                self.downloads += 1
            elif (method == "PUT" and not own) or (
                method == "PATCH" and path.startswith(b"/-/uploads/")
            ):
                self.uploads += 1
        started = getattr(request, "started_at", None)
        if started is not None and self._clock is not None and not unknown:
            self.latency.observe(max(0.0, self._clock.seconds() - started))


def _histogram(name: str, doc: str, hist: LatencyHistogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.sum)


class FrontendCollector(Collector):
    """Reads a front end's counters at scrape time.

    ``ftp`` is the ``FTPFactory`` (or just its ``FTPStats``), ``http`` an
    ``HttpCounters``; either may be None when that protocol is off.
    ``snapshot`` supplies the catalog-wide numbers (under-replicated and
    unavailable blobs and files as ``wsfs status`` counts them, live
    uploads per front end, repair backlog) as last refreshed.  ``gc``
    is the front end's ``GarbageCollector`` (its maintenance service's),
    whose counters move only while this front end holds the maintenance
    lease: sum them over the front ends.
    """

    def __init__(
        self,
        transfers,
        snapshot: CatalogSnapshot | None = None,
        ftp: Any = None,
        http: HttpCounters | None = None,
        gc: Any = None,
    ) -> None:
        self.transfers = transfers
        self.snapshot = snapshot
        self.ftp = ftp
        self.http = http
        self.gc = gc

    def collect(self) -> Iterator[Metric]:
        yield from self._frontend()
        yield from self._transfer_layer()
        yield from self._protocols()
        yield from self._storage()
        if self.gc is not None:
            yield from self._gc()
        if self.snapshot is not None:
            yield from self._catalog()

    def _frontend(self) -> Iterator[Metric]:
        info = InfoMetricFamily("wsfs_frontend", "This front end.")
        info.add_metric([], {"name": self.transfers.name})
        yield info
        sessions = list(self.transfers.sessions.values())
        yield GaugeMetricFamily(
            "wsfs_active_upload_sessions",
            "Upload sessions streaming on this front end now.",
            value=len(sessions),
        )
        yield GaugeMetricFamily(
            "wsfs_active_upload_received_bytes",
            "Bytes the live upload sessions of this front end received so far.",
            value=sum(s.received for s in sessions),
        )

    def _transfer_layer(self) -> Iterator[Metric]:
        s = self.transfers.stats
        moved = CounterMetricFamily(
            "wsfs_transfer_bytes",
            "Bytes through the transfer layer, every protocol (read: to clients).",
            labels=["direction"],
        )
        moved.add_metric(["read"], s.read_bytes)
        moved.add_metric(["write"], s.write_bytes)
        yield moved
        reads = CounterMetricFamily(
            "wsfs_transfer_reads", "Downloads by outcome.", labels=["outcome"]
        )
        reads.add_metric(["started"], s.reads_started)
        reads.add_metric(["completed"], s.reads_completed)
        yield reads
        uploads = CounterMetricFamily(
            "wsfs_transfer_uploads", "Upload sessions by outcome.", labels=["outcome"]
        )
        for outcome in ("started", "committed", "interrupted", "failed"):
            uploads.add_metric([outcome], getattr(s, f"uploads_{outcome}"))
        yield uploads
        yield CounterMetricFamily(
            "wsfs_read_failovers",
            "Reads moved to another replica mid-stream (server died, checksum, stall).",
            value=s.read_failovers,
        )
        yield CounterMetricFamily(
            "wsfs_takeovers", "Uploads this front end took over (epoch bump).", value=s.takeovers
        )
        yield CounterMetricFamily(
            "wsfs_fenced_writes",
            "Upload sessions ended because another front end took them over.",
            value=s.fenced,
        )
        yield CounterMetricFamily(
            "wsfs_replica_drops",
            "Replicas dropped from an upload mid-write (the file is under-replicated).",
            value=s.replica_drops,
        )
        yield from self._caches()

    def _caches(self) -> Iterator[Metric]:
        """The small-extent cache and the per-user session cap: whether the
        cache earns its memory (hits against misses) and how often users hit
        the cap are what an operator tunes them by."""
        cache = getattr(self.transfers, "extent_cache", None)
        if cache is not None:
            lookups = CounterMetricFamily(
                "wsfs_extent_cache_lookups",
                "Reads of small sealed extents, by whether memory answered them.",
                labels=["outcome"],
            )
            lookups.add_metric(["hit"], cache.hits)
            lookups.add_metric(["miss"], cache.misses)
            yield lookups
            yield GaugeMetricFamily(
                "wsfs_extent_cache_bytes",
                "Bytes of verified extents held in memory now.",
                value=cache.size,
            )
        per_user = getattr(self.transfers, "per_user", None)
        if per_user is not None:
            yield CounterMetricFamily(
                "wsfs_sessions_refused",
                "Transfers refused because their user had too many running at once.",
                value=per_user.refused,
            )

    def _protocols(self) -> Iterator[Metric]:
        moved = CounterMetricFamily(
            "wsfs_protocol_bytes",
            "Bytes on the wire by protocol (in: from clients).",
            labels=["protocol", "direction"],
        )
        transfers = CounterMetricFamily(
            "wsfs_protocol_transfers",
            "Completed transfers by protocol and direction.",
            labels=["protocol", "direction"],
        )
        ftp = getattr(self.ftp, "stats", self.ftp)
        if ftp is not None:
            moved.add_metric(["ftp", "in"], ftp.bytes_received)
            moved.add_metric(["ftp", "out"], ftp.bytes_sent)
            transfers.add_metric(["ftp", "download"], ftp.downloads_completed)
            transfers.add_metric(["ftp", "upload"], ftp.uploads_committed)
        http = self.http
        if http is not None:
            moved.add_metric(["http", "in"], http.bytes_in)
            moved.add_metric(["http", "out"], http.bytes_out)
            transfers.add_metric(["http", "download"], http.downloads)
            transfers.add_metric(["http", "upload"], http.uploads)
        yield moved
        yield transfers
        if ftp is not None:
            yield CounterMetricFamily(
                "wsfs_ftp_connections", "FTP control connections.", value=ftp.connections
            )
            yield CounterMetricFamily("wsfs_ftp_logins", "Successful FTP logins.", value=ftp.logins)
            yield CounterMetricFamily(
                "wsfs_ftp_aborted_transfers", "FTP transfers aborted.", value=ftp.transfers_aborted
            )
            yield CounterMetricFamily(
                "wsfs_ftp_passive_ports_refused",
                "PASV/EPSV refused 425: the client address held its share of the passive range.",
                value=ftp.passive_ports_refused,
            )
            yield CounterMetricFamily(
                "wsfs_ftp_passive_ports_unreached",
                "Passive ports closed because no data connection reached them in time.",
                value=ftp.passive_ports_unreached,
            )
            sessions = getattr(self.ftp, "sessions", None)
            if sessions is not None:
                yield GaugeMetricFamily(
                    "wsfs_ftp_open_connections", "FTP control connections open now.",
                    value=len(sessions),
                )  # fmt: skip
        if http is not None:
            requests = CounterMetricFamily(
                "wsfs_http_requests",
                "Finished HTTP requests (unknown methods' 501s: wsfs_http_unknown_methods).",
                labels=["method", "code"],
            )
            for (method, code), n in sorted(http.requests.items()):
                requests.add_metric([method, code], n)
            yield requests
            yield CounterMetricFamily(
                "wsfs_http_unknown_methods",
                "Requests refused 501 for a method wsfs does not know: a client's doing, "
                "not among wsfs_http_requests_total's 5xx answers.",
                value=http.unknown_methods,
            )
            if http.latency.count:
                yield _histogram(
                    "wsfs_http_request_duration_seconds",
                    "Time from dispatch to the last byte of the answer (requests of "
                    "wsfs_http_requests_total).",
                    http.latency,
                )

    def _storage(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("wsfs_storage_up", "1 if the storage server answers probes.",
                               labels=["node"])  # fmt: skip
        writable = GaugeMetricFamily(
            "wsfs_storage_writable",
            "1 if the storage server takes new blobs: up, its disk takes writes, not draining.",
            labels=["node"],
        )
        free = GaugeMetricFamily("wsfs_storage_free_bytes", "Free space on the storage server.",
                                 labels=["node"])  # fmt: skip
        total = GaugeMetricFamily("wsfs_storage_total_bytes", "Size of the storage server's disk.",
                                  labels=["node"])  # fmt: skip
        foreign = GaugeMetricFamily(
            "wsfs_storage_foreign",
            "1 if the storage server's store is bound to another cluster (catalog): "
            "it is used for nothing.",
            labels=["node"],
        )
        for node in self.transfers.pool.nodes():
            up.add_metric([node.name], 1 if node.up else 0)
            foreign.add_metric([node.name], 1 if node.foreign is not None else 0)
            writable.add_metric([node.name], 1 if node.takes_new_blobs else 0)
            free.add_metric([node.name], node.free_bytes)
            total.add_metric([node.name], node.total_bytes)
        yield up
        yield writable
        yield free
        yield total
        yield foreign

    def _gc(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "wsfs_gc_purged_uploads",
            "Finished uploads' catalog rows this front end's GC purged "
            "(finished over --upload-retention-days ago).",
            value=self.gc.purged_uploads_total,
        )

    def _catalog(self) -> Iterator[Metric]:
        snap = self.snapshot
        # The counts of ``wsfs status`` (one query, replica_health): a
        # replica counts only on a server not recorded down.
        health = (
            ("wsfs_under_replicated_blobs", snap.under_replicated,
             "Sealed, referenced blobs with fewer ok replicas on servers not down than wanted."),
            ("wsfs_under_replicated_files", snap.under_replicated_files,
             "Files with a blob among wsfs_under_replicated_blobs."),
            ("wsfs_unavailable_blobs", snap.unavailable,
             "Sealed, referenced blobs with no ok replica on a server not down (unreadable)."),
            ("wsfs_unavailable_files", snap.unavailable_files,
             "Files with a blob among wsfs_unavailable_blobs (unreadable now)."),
        )  # fmt: skip
        for name, count, doc in health:
            if count is not None:
                yield GaugeMetricFamily(name, doc, value=count)
        live = GaugeMetricFamily(
            "wsfs_live_uploads",
            "Pending uploads in the catalog by owning front end and state.",
            labels=["front_end", "state"],
        )
        for owner, states in sorted(snap.uploads_by_owner().items()):
            for state, n in sorted(states.items()):
                live.add_metric([owner, state], n)
        yield live
        jobs = GaugeMetricFamily(
            "wsfs_admin_jobs", "Queued and running admin jobs (repair, drain...).",
            labels=["kind", "state"],
        )  # fmt: skip
        for (kind, state), n in sorted(snap.jobs.items()):
            jobs.add_metric([kind, state], n)
        yield jobs
        yield CounterMetricFamily(
            "wsfs_catalog_snapshot_errors", "Failed catalog queries for metrics.", value=snap.errors
        )
        age = snap.age()
        if age is not None:
            yield GaugeMetricFamily(
                "wsfs_catalog_snapshot_age_seconds",
                "Age of the catalog numbers shown (replica counts, uploads, jobs): a scrape "
                "waits at most 1 s for new ones, then shows the last while the query goes on.",
                value=age,
            )
        if snap.latency.count:
            yield _histogram(
                "wsfs_catalog_query_duration_seconds",
                "Latency of the catalog queries behind metrics and the status page.",
                snap.latency,
            )


def make_registry(
    transfers,
    snapshot: CatalogSnapshot | None = None,
    ftp: Any = None,
    http: HttpCounters | None = None,
    gc: Any = None,
) -> CollectorRegistry:
    """A registry of this front end's own (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FrontendCollector(transfers, snapshot, ftp, http, gc))
    return registry


def metrics_endpoint(
    registry: CollectorRegistry,
    snapshot: CatalogSnapshot | None = None,
    *,
    require_admin: bool = False,
):
    """The ``/-/metrics`` endpoint: ``site.mount("metrics", metrics_endpoint(...))``.

    Open by default, as Prometheus scrapers expect (the numbers name no
    user or file); ``require_admin`` asks for an administrator's Basic
    credentials instead.  The catalog snapshot is refreshed (at most once
    per its ttl, waiting at most its ``wait`` for a slow catalog) before
    the registry is rendered.
    """
    from wsfront.http.errors_map import HttpError

    @inlineCallbacks
    def endpoint(request, context, segments: list[str]):
        if segments not in ([], [""]):
            raise HttpError(404, "no such metrics page")
        if request.method not in (b"GET", b"HEAD"):
            raise HttpError(405, "metrics are read with GET", (("Allow", "GET, HEAD"),))
        if require_admin:
            from wsfront.status.access import require_admin as check

            yield check(context, request)
        if snapshot is not None:
            yield snapshot.refresh()
        body = generate_latest(registry)
        request.respond(
            200,
            b"" if request.method == b"HEAD" else body,
            content_type=CONTENT_TYPE_LATEST,
            headers=(("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")),
        )

    return endpoint
