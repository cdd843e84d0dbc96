"""An HTTP front end with ``/-/metrics`` and ``/-/status`` mounted, for tests.

``StatusEnv`` is ``HttpEnv`` (real storage servers, real SQLite catalog,
user ``alice``) plus an administrator ``root``, a ``GarbageCollector`` on
its own ``task.Clock`` (``gc``, ``gc_clock``: a test runs passes when and
at what time it wants), the metrics registry of that front end and the
status endpoint, mounted the way ``FrontendService`` will
mount them.  ``scrape()`` reads ``/-/metrics`` over HTTP and parses it with
prometheus_client's own parser.
"""

from __future__ import annotations

import base64

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from tests.http_env import HttpEnv
from wsfront.maintenance.gc import GarbageCollector
from wsfront.metrics import HttpCounters, make_registry, metrics_endpoint
from wsfront.metrics_catalog import CatalogSnapshot
from wsfront.status import status_endpoint

ADMIN = "root"
ADMIN_PASSWORD = "admin-pass-42"  # URL-safe: the browser test puts it in the URL


def basic(user: str, password: str) -> dict[bytes, list[bytes]]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {b"Authorization": [f"Basic {token}".encode()]}


class StatusEnv(HttpEnv):
    """HttpEnv with metrics and the status page mounted."""

    async def start(self) -> StatusEnv:
        await super().start()
        await self.catalog.add_user(ADMIN, ADMIN_PASSWORD, admin=True)
        self.snapshot = CatalogSnapshot(self.reactor, self.catalog, ttl=0)
        self.http_counters = HttpCounters(self.reactor)
        self.http_counters.attach(self.site)
        self.gc_clock = task.Clock()
        self.gc = GarbageCollector(self.gc_clock, self.catalog, self.transfers.pool)
        self.registry = make_registry(
            self.transfers, self.snapshot, http=self.http_counters, gc=self.gc
        )
        self.site.mount("metrics", metrics_endpoint(self.registry, self.snapshot))
        self.status = status_endpoint(self.reactor, self.transfers, self.snapshot)
        self.status.start()
        self.site.mount("status", self.status)
        return self

    @property
    def admin_header(self) -> dict[bytes, list[bytes]]:
        return basic(ADMIN, ADMIN_PASSWORD)

    async def get(self, path: str, headers=None) -> tuple[int, object, bytes]:
        """(status, headers, body) of a GET."""
        answer = await self.http.get(self.url(path), headers=headers or {})
        body = await treq.content(answer)
        return answer.code, answer.headers, body

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``{(sample name, sorted labels): value}`` from ``/-/metrics``."""
        code, _headers, body = await self.get("/-/metrics")
        assert code == 200, body
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    async def stop(self) -> None:
        self.status.stop()
        await super().stop()


def value(samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as a counter that never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
