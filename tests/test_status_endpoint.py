"""``/-/status`` over HTTP: administrators only (401 without credentials, 403
for other users), a strict Content-Security-Policy on the page, a JSON feed
that shows live sessions, storage servers and events, and an admin action
that needs its CSRF token."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import MiB, payload
from tests.status_env import StatusEnv, basic
from tests.support import free_port
from tests.transfer_env import PASSWORD, SECRET, Feeder
from wsfront.http.site import SiteSettings
from wsfront.transfer.pool import NOT_PROBED
from wsstorage.client import StorageClient


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(StatusEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def one(headers, name: str) -> str:
    return headers.getRawHeaders(name)[0]


@pytest.mark.parametrize("path", ["/-/status", "/-/status/feed.json", "/-/status/status.js"])
@pytest_twisted.ensureDeferred
async def test_status_wants_a_login_and_refuses_users_who_are_not_admins(env, path):
    code, headers, _ = await env.get(path)
    assert code == 401
    assert one(headers, "WWW-Authenticate").startswith("Basic ")
    code, _, _ = await env.get(path, basic("alice", PASSWORD))
    assert code == 403
    code, _, _ = await env.get(path, basic("root", "wrong"))
    assert code == 401
    code, _, _ = await env.get(path, env.admin_header)
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_anonymous_reading_does_not_open_the_status_page(tmp_path):
    from twisted.internet import reactor

    env = StatusEnv(reactor, tmp_path, settings=SiteSettings(anonymous_user="alice"))
    await env.start()
    try:
        code, headers, _ = await env.get("/-/status/feed.json")
        assert code == 401
        assert headers.getRawHeaders("WWW-Authenticate")
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_the_page_sends_a_strict_content_security_policy(env):
    code, headers, body = await env.get("/-/status", env.admin_header)
    assert code == 200
    assert one(headers, "Content-Type") == "text/html; charset=utf-8"
    policy = one(headers, "Content-Security-Policy")
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == f"'{env.status.script_hash}'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["frame-ancestors"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert one(headers, "X-Content-Type-Options") == "nosniff"
    assert one(headers, "Cache-Control") == "no-store"
    assert b"<script>" not in body, "no inline script"
    assert f'integrity="{env.status.script_hash}"'.encode() in body
    code, headers, script = await env.get("/-/status/status.js", env.admin_header)
    assert code == 200
    assert one(headers, "Content-Type").startswith("text/javascript")
    assert (
        env.status.script_hash
        == "sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode()
    )
    assert b"innerHTML" not in script


@pytest_twisted.ensureDeferred
async def test_feed_shows_a_live_upload_nodes_and_a_takeover(env):
    data = payload(2 * MiB)
    session = await env.transfers.open_write(
        env.user, "/dir <b>&amp;.bin", 0, declared_length=len(data)
    )
    await Feeder(env.reactor, session, data, stop_at=MiB).start()
    await session.checkpoint()
    code, headers, body = await env.get("/-/status/feed.json", env.admin_header)
    assert code == 200
    assert one(headers, "Content-Type") == "application/json"
    assert "default-src 'none'" in one(headers, "Content-Security-Policy")
    feed = json.loads(body)
    [live] = feed["sessions"]
    assert live["path"] == "/alice/dir <b>&amp;.bin"
    assert (live["offset"], live["durable"], live["size"]) == (MiB, MiB, 2 * MiB)
    assert live["user"] == "alice" and len(live["replicas"]) == 2
    assert sorted(n["name"] for n in feed["nodes"]) == ["s1", "s2", "s3"]
    assert all(n["up"] and n["total_bytes"] > 0 for n in feed["nodes"])
    assert feed["front_ends"] == [{"name": "fe-a", "this": True, "active": 1, "interrupted": 0}]
    await session.interrupt()
    fe_b = await env.transfer.front_end("fe-b")
    resumed = await fe_b.open_write(env.user, "/dir <b>&amp;.bin", append=True)
    feed = json.loads((await env.get("/-/status/feed.json", env.admin_header))[2])
    assert feed["sessions"] == []
    assert [f["name"] for f in feed["front_ends"]] == ["fe-a", "fe-b"]
    await resumed.abort()


@pytest_twisted.ensureDeferred
async def test_repair_action_needs_the_csrf_token_from_the_feed(env):
    feed = json.loads((await env.get("/-/status/feed.json", env.admin_header))[2])
    headers = dict(env.admin_header)
    r = await env.http.post(env.url("/-/status/repair"), headers=headers)
    assert r.code == 403
    await r.content()
    r = await env.http.post(
        env.url("/-/status/repair"), headers={**headers, b"X-CSRF-Token": [b"0" * 64]}
    )
    assert r.code == 403
    await r.content()
    good = {**headers, b"X-CSRF-Token": [feed["csrf"].encode()]}
    r = await env.http.post(
        env.url("/-/status/repair"), headers={**good, b"Origin": [b"http://evil.example"]}
    )
    assert r.code == 403
    await r.content()
    assert await env.catalog.list_jobs() == []
    r = await env.http.post(env.url("/-/status/repair"), headers=good)
    assert r.code == 200
    answer = json.loads(await r.content())
    [job] = await env.catalog.list_jobs()
    assert (job.job_id, job.kind) == (answer["job_id"], "repair")
    alice = basic("alice", PASSWORD)
    r = await env.http.post(
        env.url("/-/status/repair"), headers={**alice, b"X-CSRF-Token": [feed["csrf"].encode()]}
    )
    assert r.code == 403
    await r.content()


@pytest_twisted.ensureDeferred
async def test_feed_shows_a_pending_endpoint_and_why_it_is_not_taken(env):
    """A server the registry moved to an endpoint where nothing listens (a
    typo): the feed shows the endpoint in use, and the pending one with
    its probe's error; no pending endpoint elsewhere."""
    pool = env.transfers.pool
    typo = f"tcp:127.0.0.1:{free_port()}"
    pool.move("s3", typo, StorageClient(env.reactor, "s3", typo, SECRET, idle_timeout=3.0))
    await pool.probe_all()
    nodes = {
        n["name"]: n
        for n in json.loads((await env.get("/-/status/feed.json", env.admin_header))[2])["nodes"]
    }
    s3 = nodes["s3"]
    assert s3["up"] and s3["endpoint"] == pool.endpoint("s3") != typo
    assert s3["pending_endpoint"] == typo
    assert s3["pending_error"] and s3["pending_error"] != NOT_PROBED
    assert "refused" in s3["pending_error"].lower()
    assert (nodes["s1"]["pending_endpoint"], nodes["s1"]["pending_error"]) == (None, None)
    pool.unpend("s3")  # closes its client
