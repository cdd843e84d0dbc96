"""Prometheus metrics of a storage server, on a port of their own (an option).

A storage server speaks only its wire protocol, so metrics get a separate
small HTTP listener (``--metrics EP``) rather than a wire operation.  Like
the front end's collector this reads what the server already keeps at
scrape time (connections, streams, the blob store's free space and damaged
records, the process's byte counters) and touches no hot path.  It does
not import wsfront: storage hosts need not install the front end.

Wiring (``wsstorage.service``, when ``--metrics`` is given)::

    registry = storage_registry(factory)
    port = yield listen_metrics(reactor, options["metrics"], registry)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from wsstorage.counters import ProcessCounters


class StorageCollector(Collector):
    """Reads one ``StorageServerFactory`` (and its store) when scraped."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Any]:
        factory = self.factory
        info = InfoMetricFamily("wsstorage_server", "This storage server.")
        info.add_metric([], {"name": factory.name})
        yield info
        yield GaugeMetricFamily(
            "wsstorage_connections", "Authenticated and pending connections.",
            value=len(factory.connections),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "wsstorage_active_streams", "Reads and writes streaming now.",
            value=factory.active_streams,
        )  # fmt: skip
        store = factory.store
        try:
            free, total = store.free_space()
        except OSError:
            free = total = None
        if free is not None:
            yield GaugeMetricFamily("wsstorage_free_bytes", "Free space.", value=free)
            yield GaugeMetricFamily("wsstorage_total_bytes", "Size of the disk.", value=total)
            reserve_of = getattr(store, "reserve_bytes", None)
            if reserve_of is not None:
                yield GaugeMetricFamily(
                    "wsstorage_reserve_bytes",
                    "Free space kept back from new blobs (--reserve): below it, none is created.",
                    value=reserve_of(total),
                )
        yield GaugeMetricFamily(
            "wsstorage_damaged_blobs",
            "Blobs whose record does not parse, at start or since (left on disk, not served).",
            value=len(getattr(store, "damaged", ()) or ()),
        )
        moved = CounterMetricFamily(
            "wsstorage_process_bytes",
            "Blob bytes read and written by every server in this process.",
            labels=["direction"],
        )
        moved.add_metric(["read"], ProcessCounters.read)
        moved.add_metric(["write"], ProcessCounters.written)
        yield moved


def storage_registry(factory: Any) -> CollectorRegistry:
    """A registry of this server's own (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StorageCollector(factory))
    return registry


class MetricsResource(Resource):
    """``GET /metrics`` (or ``/``) in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        if request.path not in (b"/", b"/metrics"):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self.registry)


def listen_metrics(reactor: Any, endpoint: str, registry: CollectorRegistry) -> Deferred:
    """Serve ``registry`` on ``endpoint``; fires with the listening port."""
    site = Site(MetricsResource(registry))
    site.log = lambda request: None
    return serverFromString(reactor, endpoint).listen(site)
