"""``/-/status``: the administrators' live view of a front end.

Routes (all for administrators only, see ``access.py``)::

    GET  /-/status              the page (static HTML)
    GET  /-/status/status.js    its script (status.css, favicon.svg alike)
    GET  /-/status/feed.json    the live snapshot the page polls (feed.py)
    POST /-/status/repair       queue a repair job now (CSRF token required)

The page lives on the same origin as user files, so it defends itself: a
strict Content-Security-Policy allows exactly one script, the shipped
``status.js``, by its sha256 (the page loads it with a matching
``integrity``), no inline code, no plugins, no framing; Trusted Types are
enforced so no string can become markup; and admin actions need the CSRF
token from the feed in a request header.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime

from wsfront.http.errors_map import HttpError
from wsfront.metrics_catalog import CatalogSnapshot
from wsfront.status.access import require_admin
from wsfront.status.csrf import CsrfTokens
from wsfront.status.feed import build_feed
from wsfront.status.sampler import ThroughputSampler

_COMMON_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
DATA_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def _static(name: str) -> bytes:
    return resources.files("wsfront.status").joinpath("static", name).read_bytes()


def page_policy(script_hash: str) -> str:
    """The Content-Security-Policy of the status page."""
    return (
        "default-src 'none'; "
        f"script-src '{script_hash}'; "
        "style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    )


class StatusEndpoint:
    """Mounted with ``site.mount("status", endpoint)``; ``start``/``stop`` run
    its throughput sampler with the front end."""

    def __init__(
        self,
        clock: IReactorTime,
        transfers,
        snapshot: CatalogSnapshot | None = None,
        *,
        sample_interval: float = 1.0,
        csrf: CsrfTokens | None = None,
    ) -> None:
        self._clock = clock
        self.transfers = transfers
        self.snapshot = snapshot
        self.sampler = ThroughputSampler(clock, transfers, sample_interval)
        self.csrf = csrf or CsrfTokens()
        script = _static("status.js")
        digest = base64.b64encode(hashlib.sha256(script).digest()).decode("ascii")
        self.script_hash = f"sha256-{digest}"
        self._files = {
            "status.js": (script, "text/javascript; charset=utf-8"),
            "status.css": (_static("status.css"), "text/css; charset=utf-8"),
            "favicon.svg": (_static("favicon.svg"), "image/svg+xml"),
        }
        self._page = _static("index.html").replace(b"{{SCRIPT_SRI}}", self.script_hash.encode())
        self.policy = page_policy(self.script_hash)

    def start(self) -> None:
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()

    @inlineCallbacks
    def __call__(self, request, context, segments: list[str]):
        user = yield require_admin(context, request)
        name = "/".join(segments)
        if name == "repair":
            yield self._repair(request, user)
            return
        if request.method not in (b"GET", b"HEAD"):
            raise HttpError(405, "read-only page", (("Allow", "GET, HEAD"),))
        if name == "":
            self._send(request, self._page, "text/html; charset=utf-8", self.policy)
        elif name in self._files:
            body, content_type = self._files[name]
            self._send(request, body, content_type, DATA_CSP)
        elif name == "feed.json":
            if self.snapshot is not None:
                yield self.snapshot.refresh()
            self.sampler.sample_if_stale()
            feed = build_feed(
                self.transfers,
                self.sampler,
                self.snapshot,
                self.csrf.token(user.name),
                self._clock.seconds(),
            )
            body = json.dumps(feed, default=str, separators=(",", ":")).encode("utf-8")
            self._send(request, body, "application/json", DATA_CSP)
        else:
            raise HttpError(404, "no such status page")

    def _send(self, request, body: bytes, content_type: str, policy: str) -> None:
        headers = (*_COMMON_HEADERS, ("Content-Security-Policy", policy))
        if request.method == b"HEAD":
            request.respond(200, b"", content_type=None, headers=headers)
            return
        request.respond(200, body, content_type=content_type, headers=headers)

    @inlineCallbacks
    def _repair(self, request, user):
        if request.method != b"POST":
            raise HttpError(405, "repair is started with POST", (("Allow", "POST"),))
        if not self.csrf.valid(user.name, request.getHeader(CsrfTokens.HEADER)):
            raise HttpError(403, "missing or wrong CSRF token")
        origin = request.getHeader(b"Origin")
        host = request.getHeader(b"Host")
        if origin is not None and host is not None and origin.split(b"://", 1)[-1] != host:
            raise HttpError(403, "cross-origin admin action refused")
        job = yield self.transfers.catalog.enqueue_job("repair", {"now": True})
        body = json.dumps({"job_id": job.job_id, "state": job.state}).encode("utf-8")
        self._send(request, body, "application/json", DATA_CSP)


def status_endpoint(
    clock: IReactorTime, transfers, snapshot: CatalogSnapshot | None = None, **kw
) -> StatusEndpoint:
    """The ``/-/status`` endpoint over ``transfers`` (call ``start()`` with the service)."""
    return StatusEndpoint(clock, transfers, snapshot, **kw)
