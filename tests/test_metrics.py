"""``/-/metrics``: the numbers move when transfers, failovers, replica drops
and takeovers happen (scraped over HTTP before and after, parsed with
prometheus_client's parser), and each front end keeps its own registry."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import pytest_twisted
from prometheus_client import REGISTRY, generate_latest
from twisted.internet import defer

from tests.http_env import MiB, payload
from tests.status_env import StatusEnv, value
from tests.support import python_env, require_tool
from tests.transfer_env import Feeder, PausingCollector, sha256
from wsfront.ftp.factory import FTPStats
from wsfront.metrics import make_registry
from wsfront.transfer.errors import TooManySessions
from wsfront.transfer.extent_cache import ExtentCache
from wsfront.transfer.stats import TransferStats


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(StatusEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_http_upload_and_download_move_byte_and_transfer_counters(env):
    before = await env.scrape()
    data = payload(MiB + 5)
    r = await env.request("PUT", "/m.bin", data=data)
    assert r.code == 201, await r.text()
    r = await env.request("GET", "/m.bin")
    assert (await r.content()) == data
    after = await env.scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("wsfs_transfer_bytes_total", direction="write") == len(data)
    assert delta("wsfs_transfer_bytes_total", direction="read") == len(data)
    assert delta("wsfs_transfer_uploads_total", outcome="committed") == 1
    assert delta("wsfs_transfer_reads_total", outcome="completed") == 1
    assert delta("wsfs_protocol_bytes_total", protocol="http", direction="in") == len(data)
    assert delta("wsfs_protocol_bytes_total", protocol="http", direction="out") >= len(data)
    assert delta("wsfs_protocol_transfers_total", protocol="http", direction="upload") == 1
    assert delta("wsfs_protocol_transfers_total", protocol="http", direction="download") == 1
    assert delta("wsfs_http_requests_total", method="PUT", code="201") == 1
    assert delta("wsfs_http_requests_total", method="GET", code="200") >= 1
    # The site stamps each request's dispatch time, so the documented
    # latency histogram (docs/operations.md) counts them too.
    assert delta("wsfs_http_request_duration_seconds_count") >= 2


@pytest_twisted.ensureDeferred
async def test_a_download_failover_and_a_dead_server_show_in_the_metrics(env):
    data = payload(8 * MiB)
    await env.upload("/f", data)
    before = await env.scrape()
    assert {value(before, "wsfs_storage_up", node=n) for n in ("s1", "s2", "s3")} == {1}
    assert value(before, "wsfs_storage_total_bytes", node="s1") > 0
    assert value(before, "wsfs_read_failovers_total") == 0

    handle = await env.transfers.open_read(env.user, "/f")
    sink = PausingCollector(pause_at=MiB)
    done = handle.stream.start(sink)
    await sink.paused
    victim = handle.stream.serving
    await env.transfer.kill(victim)
    sink.producer.resumeProducing()
    await done
    assert sha256(sink.data) == sha256(data)
    await env.transfers.pool.probe_all()
    after = await env.scrape()
    assert value(after, "wsfs_read_failovers_total") == 1
    assert value(after, "wsfs_storage_up", node=victim) == 0
    assert value(after, "wsfs_storage_writable", node=victim) == 0
    assert {value(after, "wsfs_storage_up", node=n) for n in ("s1", "s2", "s3") if n != victim} == {
        1
    }


@pytest_twisted.ensureDeferred
async def test_a_replica_lost_mid_upload_counts_a_drop_and_an_under_replicated_blob(env):
    before = await env.scrape()
    assert value(before, "wsfs_under_replicated_blobs") == 0
    data = payload(3 * MiB)
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, data, stop_at=MiB).start()
    during = await env.scrape()
    assert value(during, "wsfs_active_upload_sessions") == 1
    assert value(during, "wsfs_live_uploads", front_end="fe-a", state="active") == 1
    victim = session.replicas[0]
    await env.transfer.kill(victim)
    await Feeder(env.reactor, session, data[MiB:]).start()
    await session.finish()
    after = await env.scrape()
    assert value(after, "wsfs_replica_drops_total") == 1
    assert value(after, "wsfs_under_replicated_blobs") == 1
    assert value(after, "wsfs_active_upload_sessions") == 0
    assert value(after, "wsfs_live_uploads", front_end="fe-a", state="active") == 0
    assert value(after, "wsfs_catalog_query_duration_seconds_count") >= 3


@pytest_twisted.ensureDeferred
async def test_takeover_and_fence_are_counted_on_the_front_ends_involved(env):
    from wsfront.transfer.errors import SessionFenced

    session_a = await env.transfers.open_write(env.user, "/t", 0)
    failed_a = session_a.when_failed()
    await Feeder(env.reactor, session_a, b"x" * 1000).start()
    await session_a.checkpoint()
    fe_b = await env.transfer.front_end("fe-b")
    session_b = await fe_b.open_write(env.user, "/t", append=True)
    session_a.write(b"late")
    with pytest.raises(SessionFenced):
        await failed_a
    await session_b.finish()
    a = await env.scrape()
    assert value(a, "wsfs_fenced_writes_total") == 1
    assert value(a, "wsfs_takeovers_total") == 0
    b_text = generate_latest(make_registry(fe_b)).decode()
    assert "wsfs_takeovers_total 1.0" in b_text
    assert 'wsfs_frontend_info{name="fe-b"} 1.0' in b_text


def test_ftp_counters_are_read_from_ftp_stats_at_scrape_time():
    pool = SimpleNamespace(nodes=lambda: [])
    transfers = SimpleNamespace(name="fe-x", sessions={}, pool=pool, stats=TransferStats())
    ftp = FTPStats()
    registry = make_registry(transfers, ftp=ftp)
    ftp.bytes_sent, ftp.bytes_received, ftp.downloads_completed = 300, 20, 2
    text = generate_latest(registry).decode()
    assert 'wsfs_protocol_bytes_total{direction="out",protocol="ftp"} 300.0' in text
    assert 'wsfs_protocol_bytes_total{direction="in",protocol="ftp"} 20.0' in text
    assert 'wsfs_protocol_transfers_total{direction="download",protocol="ftp"} 2.0' in text
    ftp.passive_ports_refused, ftp.passive_ports_unreached = 4, 7
    text = generate_latest(registry).decode()
    assert "wsfs_ftp_passive_ports_refused_total 4.0" in text
    assert "wsfs_ftp_passive_ports_unreached_total 7.0" in text
    assert b"wsfs_" not in generate_latest(REGISTRY), "the global registry stays clean"


@pytest_twisted.ensureDeferred
async def test_metrics_answer_prometheus_text_and_refuse_other_methods(env):
    code, headers, body = await env.get("/-/metrics")
    assert code == 200
    assert headers.getRawHeaders("Content-Type")[0].startswith("text/plain; version=")
    assert b"# TYPE wsfs_transfer_bytes_total counter" in body
    r = await env.request("POST", "/-/metrics", auth=False)
    assert r.code == 405
    await r.content()
    code, _h, _b = await env.get("/-/metrics/nope")
    assert code == 404


def test_http_latency_is_observed_when_the_site_stamps_the_dispatch_time():
    from twisted.internet.task import Clock

    from wsfront.metrics import HttpCounters

    clock = Clock()
    counters = HttpCounters(clock)
    stamped = SimpleNamespace(
        method=b"GET", code=200, path=b"/f", sentLength=10, body_received=0, started_at=0.0
    )
    clock.advance(0.3)
    counters.observe(stamped)
    counters.observe(SimpleNamespace(method=b"BREW", code=405, path=b"/f"))
    counters.observe(SimpleNamespace(method=b"PROPFIND", code=207, path=b"/"))
    pool = SimpleNamespace(nodes=lambda: [])
    transfers = SimpleNamespace(name="fe-x", sessions={}, pool=pool, stats=TransferStats())
    text = generate_latest(make_registry(transfers, http=counters)).decode()
    assert 'wsfs_http_request_duration_seconds_bucket{le="0.25"} 0.0' in text
    assert 'wsfs_http_request_duration_seconds_bucket{le="0.5"} 1.0' in text
    assert "wsfs_http_request_duration_seconds_count 1.0" in text
    assert 'wsfs_http_requests_total{code="405",method="other"} 1.0' in text
    assert 'wsfs_http_requests_total{code="207",method="PROPFIND"} 1.0' in text
    assert 'wsfs_protocol_transfers_total{direction="download",protocol="http"} 1.0' in text


@pytest_twisted.ensureDeferred
async def test_extent_cache_hits_and_refused_sessions_are_scraped(env):
    data = payload(4096)
    await env.upload("/small.bin", data)
    # An empty cache, as after a restart (the upload put its bytes there).
    env.transfers.extent_cache = ExtentCache(env.transfers.extent_cache.capacity)
    before = await env.scrape()
    for _ in range(2):
        r = await env.request("GET", "/small.bin")
        assert (await r.content()) == data
    per_user = env.transfers.per_user
    held = [per_user.acquire("u") for _ in range(per_user.limit)]
    with pytest.raises(TooManySessions):
        per_user.acquire("u")
    for slot in held:
        slot.release()
    after = await env.scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # The first GET fetched the extent from storage, the second from memory.
    assert delta("wsfs_extent_cache_lookups_total", outcome="miss") == 1
    assert delta("wsfs_extent_cache_lookups_total", outcome="hit") == 1
    assert value(after, "wsfs_extent_cache_bytes") == len(data)
    assert delta("wsfs_sessions_refused_total") == 1


@pytest_twisted.ensureDeferred
async def test_a_server_up_but_taking_no_writes_shows_as_not_writable(env):
    """A server whose disk takes no writes (or that is draining) still
    answers probes: ``wsfs_storage_up`` stays 1, ``wsfs_storage_writable``
    says it gets no new blobs."""
    before = await env.scrape()
    assert {value(before, "wsfs_storage_writable", node=n) for n in ("s1", "s2", "s3")} == {1}
    env.transfers.pool.mark_unwritable("s1", "disk error: read-only file system")
    env.transfers.pool.set_draining("s2", True)
    after = await env.scrape()
    assert value(after, "wsfs_storage_up", node="s1") == 1
    assert value(after, "wsfs_storage_writable", node="s1") == 0
    assert value(after, "wsfs_storage_writable", node="s2") == 0
    assert value(after, "wsfs_storage_writable", node="s3") == 1


@pytest_twisted.ensureDeferred
async def test_the_rows_gc_purges_are_counted_in_the_metrics(env):
    """``wsfs_gc_purged_uploads_total``: the finished uploads' rows this
    front end's GC purged, over all its passes; 0 before any."""
    from twisted.internet import reactor

    for i in range(3):
        r = await env.request("PUT", f"/p{i}.bin", data=payload(1000 + i))
        assert r.code == 201, await r.text()
    before = await env.scrape()
    assert before[("wsfs_gc_purged_uploads_total", ())] == 0
    env.gc_clock.advance(reactor.seconds() + 6 * 86400)
    assert (await env.gc.run_pass())["purged_uploads"] == 0  # within the retention (7 days)
    assert value(await env.scrape(), "wsfs_gc_purged_uploads_total") == 0
    env.gc_clock.advance(2 * 86400)
    assert (await env.gc.run_pass())["purged_uploads"] == 3
    assert value(await env.scrape(), "wsfs_gc_purged_uploads_total") == 3
    assert (await env.gc.run_pass())["purged_uploads"] == 0
    assert value(await env.scrape(), "wsfs_gc_purged_uploads_total") == 3


async def wsfs_status(env) -> dict:
    """``wsfs --json status``, a real ``wsfs`` process on env's catalog."""
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "wsfront.cli", "--catalog", env.transfer.catalog_url, "--json", "status"],
        env=python_env(),
    )
    assert code == 0, err
    return json.loads(out)


@pytest_twisted.ensureDeferred
async def test_metrics_and_the_status_page_count_live_replicas_as_wsfs_status_does(env):
    """Both servers holding /f recorded down (as a front end's probes
    record them): ``wsfs status`` counts /f under-replicated and
    unavailable, and so must the metrics and the status page, which used
    to count the replicas there ok (0) until repair's grace period ended."""
    await env.upload("/f", b"f" * 1000)
    await env.upload("/g", b"g" * 1000)
    entry = await env.catalog.stat("/alice/f")
    holders = [r.node for r in entry.version.extents[0].replicas]
    assert len(holders) == 2
    for name in holders:
        await env.catalog.set_node_health(name, "down", 0, 0, env.reactor.seconds(), "killed")
    st = await wsfs_status(env)
    assert st["unavailable"] == st["unavailable_files"] == 1, st
    assert st["unavailable_paths"] == ["/alice/f"]
    # /g shares at least one of the two down servers out of three: short too.
    assert st["under_replicated"] == st["under_replicated_files"] == 2, st
    samples = await env.scrape()
    assert value(samples, "wsfs_under_replicated_blobs") == st["under_replicated"]
    assert value(samples, "wsfs_under_replicated_files") == st["under_replicated_files"]
    assert value(samples, "wsfs_unavailable_blobs") == st["unavailable"]
    assert value(samples, "wsfs_unavailable_files") == st["unavailable_files"]
    code, _headers, body = await env.get("/-/status/feed.json", env.admin_header)
    assert code == 200
    feed = json.loads(body)
    assert (feed["under_replicated"], feed["unavailable"]) == (
        st["under_replicated"],
        st["unavailable"],
    )


@pytest_twisted.ensureDeferred
async def test_unknown_methods_are_counted_apart_from_the_servers_5xx_answers(env):
    """A scanner's junk methods get 501 on the wire (curl, before any
    login; a tus ``X-HTTP-Method-Override`` too), counted in
    ``wsfs_http_unknown_methods_total``, not as 5xx answers of
    ``wsfs_http_requests_total``, which a server-error alert watches; a
    known method the resource does not allow stays a 405 there."""
    from wsfront.http.tus import TusEndpoint

    env.site.mount("uploads", TusEndpoint())
    before = await env.scrape()
    curl = require_tool("curl")
    for method in ("BREW", "FROBNICATE"):
        out, err, code = await env.run(
            [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, env.url("/f")]
        )
        assert (code, out) == (0, b"501"), err
    r = await env.request(
        "POST",
        "/-/uploads/",
        headers={"X-HTTP-Method-Override": "BREW", "Tus-Resumable": "1.0.0"},
        auth=False,
    )
    await r.content()
    assert r.code == 501
    r = await env.request("TRACE", "/f")
    await r.content()
    assert r.code == 405
    after = await env.scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("wsfs_http_unknown_methods_total") == 3
    assert delta("wsfs_http_requests_total", method="other", code="405") == 1
    codes = [dict(labels)["code"] for name, labels in after if name == "wsfs_http_requests_total"]
    assert codes and not [c for c in codes if c.startswith("5")], codes


@pytest_twisted.ensureDeferred
async def test_the_latency_histogram_leaves_out_unknown_methods_as_the_requests_total_does(env):
    """``wsfs_http_request_duration_seconds`` counts the requests that
    ``wsfs_http_requests_total`` counts, and no others: a scanner's junk
    methods (501, ``wsfs_http_unknown_methods_total``) added samples to
    the histogram that no request of the total matched, so a latency or
    rate figure from its ``_count`` disagreed with the requests total."""
    before = await env.scrape()
    for method in ("BREW", "FROBNICATE", "BREW"):
        r = await env.request(method, "/f")
        await r.content()
        assert r.code == 501
    r = await env.request("GET", "/missing")
    await r.content()
    assert r.code == 404
    after = await env.scrape()

    def total(samples) -> float:
        return sum(v for (name, _), v in samples.items() if name == "wsfs_http_requests_total")

    def count(samples) -> float:
        return value(samples, "wsfs_http_request_duration_seconds_count")

    assert (
        value(after, "wsfs_http_unknown_methods_total")
        - value(before, "wsfs_http_unknown_methods_total")
        == 3
    )
    # The scrape before and the GET, in both; the 501s in neither.
    assert total(after) - total(before) == 2
    assert count(after) - count(before) == 2
    assert count(after) == total(after)
