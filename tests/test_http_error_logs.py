"""What the HTTP site logs, and tells the client, when a request fails.

An error the protocol answers (503 with every storage server down, 507 over
quota) is routine: one line in the log at warn, no traceback, and a body
that names no blob id or storage server.  Only an unexpected error (500)
logs a traceback.  The site logs before it answers, so every event is in by
the time the client has its response.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.error import ConnectionClosed
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.catalog_outage import fill, make_writes_wait_briefly, tmpfs, write_locked
from tests.http_clients_support import ChunkedBody
from tests.http_env import HttpEnv, MiB, payload
from tests.http_raw import connect, head_of
from tests.transfer_env import PASSWORD


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest.fixture
def events():
    """Every log event emitted while the test runs."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def reactor_():
    from twisted.internet import reactor

    return reactor


def site_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("log_namespace") == "wsfront.http.site"]


def severe(events: list[dict]) -> list[str]:
    """Events at error or critical, from anywhere, as text."""
    return [
        formatEvent(e) for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


def the_line(events: list[dict], method: str, path: str) -> dict:
    """The one site event about ``method path`` (and check it is one line)."""
    mine = [e for e in site_events(events) if (e.get("method"), e.get("path")) == (method, path)]
    assert len(mine) == 1, [formatEvent(e) for e in mine]
    event = mine[0]
    assert "log_failure" not in event
    assert "\n" not in formatEvent(event)
    return event


async def body_of(response) -> bytes:
    return await response.content()


@pytest_twisted.ensureDeferred
async def test_no_storage_server_is_one_warn_line_per_request_and_no_traceback(env, events):
    data = b"data" * 20_000  # past the extent cache: the GET needs storage
    r = await env.request("PUT", "/kept", data=data)
    assert r.code == 201, await body_of(r)
    for node in env.transfer.nodes.values():
        await node.kill()
    del events[:]

    put = await env.request("PUT", "/new", data=b"data")
    assert put.code == 503
    await body_of(put)
    get = await env.request("GET", "/kept")
    assert get.code == 503
    await body_of(get)

    assert severe(events) == []
    for method, path in (("PUT", "/new"), ("GET", "/kept")):
        event = the_line(events, method, path)
        assert event["log_level"] is LogLevel.warn
        assert event["status"] == 503
        text = formatEvent(event)
        assert f"{method} {path}: 503" in text
        assert "NoReplicasAvailable" in text


@pytest_twisted.ensureDeferred
async def test_the_503_body_names_no_blob_nor_storage_server(env, events):
    """The client learns that storage is unreachable; which blob and which
    servers (lost replicas included) is for the server's log line."""
    r = await env.request("PUT", "/kept", data=b"data" * 20_000)
    assert r.code == 201, await body_of(r)
    for node in env.transfer.nodes.values():
        await node.kill()
    del events[:]

    get = await env.request("GET", "/kept")
    assert get.code == 503
    body = (await body_of(get)).decode()
    logged = formatEvent(the_line(events, "GET", "/kept"))
    blob_ids = _blob_ids_in(logged)
    assert blob_ids, logged  # the operator sees which blob, and where
    assert any(node in logged for node in env.transfer.nodes), logged
    for secret in [*blob_ids, *env.transfer.nodes]:
        assert secret not in body, body
    assert "try again later" in body


def _blob_ids_in(text: str) -> list[str]:
    """The blob ids a reader's error names (``blob <id>``)."""
    words = text.replace(":", " ").split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "blob"]


@pytest_twisted.ensureDeferred
async def test_over_quota_puts_are_one_warn_line_and_no_traceback(env, events):
    await env.catalog.set_quota("alice", MiB, None)
    env.authenticator.forget("alice")
    # Announced too big: refused before the body (Expect: 100-continue).
    client = await connect(reactor_(), env.port.getHost().port)
    token = base64.b64encode(f"alice:{PASSWORD}".encode())
    client.send(
        b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n"
        b"Expect: 100-continue\r\nAuthorization: Basic " + token + b"\r\n\r\n"
    )
    assert head_of(await client.closed)[0] == 507
    # No length: the transfer layer's QuotaExceeded once the body outgrows it.
    r = await env.request("PUT", "/grow", data=ChunkedBody(reactor_(), payload(3 * MiB)))
    assert r.code == 507
    await body_of(r)

    assert severe(events) == []
    for path, why in (("/big", "quota"), ("/grow", "QuotaExceeded")):
        event = the_line(events, "PUT", path)
        assert event["log_level"] is LogLevel.warn
        assert event["status"] == 507
        assert why in formatEvent(event)


@pytest_twisted.ensureDeferred
async def test_a_client_error_is_one_info_line(env, events):
    r = await env.request("GET", "/missing%20file?x=1")
    assert r.code == 404
    await body_of(r)
    event = the_line(events, "GET", "/missing%20file?x=1")  # as the client sent it
    assert event["log_level"] is LogLevel.info
    assert event["status"] == 404


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_a_500_with_a_traceback(env, events, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the front end")

    monkeypatch.setattr(env.transfers, "open_read", broken)
    r = await env.request("GET", "/anything")
    assert r.code == 500
    body = (await body_of(r)).decode()
    assert "a bug" not in body
    mine = [e for e in site_events(events) if "/anything" in formatEvent(e)]
    assert len(mine) == 1, [formatEvent(e) for e in mine]
    assert mine[0]["log_level"] is LogLevel.critical
    assert mine[0]["log_failure"].check(RuntimeError)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["GET", "DELETE", "PROPFIND"])
async def test_a_client_gone_before_a_small_body_is_no_500_and_no_traceback(
    env, events, monkeypatch, method
):
    """A body that a GET, DELETE or PROPFIND reads and drops, never sent
    (the client left after ``100 Continue``): nothing to answer, nothing
    to log.  It was logged as a 500 with a BodyLost traceback, and the
    answer then written to the closed socket raised later in the reactor."""
    original = env.site._failed
    handled: defer.Deferred = defer.Deferred()

    def failed(failure, request):
        try:
            return original(failure, request)
        finally:
            handled.callback(None)

    monkeypatch.setattr(env.site, "_failed", failed)
    token = env.auth_header[b"Authorization"][0]
    client = await connect(reactor_(), env.port.getHost().port)
    client.send(
        method.encode() + b" /nothing HTTP/1.1\r\nHost: x\r\nAuthorization: " + token
        + b"\r\nDepth: 0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )  # fmt: skip
    assert (await client.until(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
    client.close()
    await handled
    assert severe(events) == []
    assert [e for e in site_events(events) if e.get("status") == 500] == []


# -- the catalog out of service ----------------------------------------------------------


@pytest.fixture
def full_env(tmp_path):
    """An HttpEnv whose SQLite catalog is on a tmpfs of its own."""
    from twisted.internet import reactor

    with tmpfs(tmp_path / "catalog") as where:
        e = HttpEnv(reactor, tmp_path, catalog_dir=where)
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def _answers(env, requests) -> list[tuple[int, dict, str]]:
    answers = []
    for method, path, kw in requests:
        r = await env.request(method, path, **kw)
        answers.append((r.code, r.headers, (await body_of(r)).decode()))
    return answers


WRITES = [
    ("PUT", "/new", {"data": b"data"}),
    ("PUT", "/grow", {"data": ChunkedBody(reactor_(), payload(MiB))}),
    ("MKCOL", "/dir", {}),
    ("DELETE", "/kept", {}),
    ("MOVE", "/kept", {"headers": {b"Destination": [b"/moved"]}}),
]


@pytest_twisted.ensureDeferred
async def test_a_full_catalog_disk_is_507_and_one_warn_line_per_request(full_env, events):
    env = full_env
    r = await env.request("PUT", "/kept", data=b"kept")
    assert r.code == 201, await body_of(r)
    filler = fill(env.transfer.catalog_dir)
    del events[:]

    for (method, path, _), (code, _, body) in zip(WRITES, await _answers(env, WRITES)):
        assert code == 507, (method, path, body)
        assert "insufficient storage" in body
        assert "sqlite" not in body and str(env.transfer.catalog_dir) not in body
        event = the_line(events, method, path)
        assert event["log_level"] is LogLevel.warn
        assert "CatalogFull" in formatEvent(event)
    assert severe(events) == []
    get = await env.request("GET", "/kept")  # reads still work
    assert (get.code, await body_of(get)) == (200, b"kept")

    filler.unlink()
    r = await env.request("PUT", "/new", data=b"new")
    assert r.code == 201, await body_of(r)


@pytest_twisted.ensureDeferred
async def test_a_locked_catalog_is_503_with_retry_after_and_one_warn_line(env, events):
    r = await env.request("PUT", "/kept", data=b"kept")
    assert r.code == 201, await body_of(r)
    await make_writes_wait_briefly(env.catalog)
    with write_locked(env.transfer.catalog_dir / "catalog.sqlite"):
        del events[:]
        answers = await _answers(env, WRITES)
    for (method, path, _), (code, headers, body) in zip(WRITES, answers):
        assert code == 503, (method, path, body)
        assert headers.getRawHeaders(b"Retry-After") == [b"5"]
        assert "catalog unavailable, try again later" in body
        event = the_line(events, method, path)
        assert event["log_level"] is LogLevel.warn
        assert "CatalogUnavailable" in formatEvent(event)
    assert severe(events) == []
    r = await env.request("PUT", "/new", data=b"new")
    assert r.code == 201, await body_of(r)


# -- storage full -------------------------------------------------------------------------


@pytest.fixture
def small_disks_env(tmp_path):
    """An HttpEnv whose three storage servers each have a 2 MiB tmpfs."""
    from contextlib import ExitStack

    from twisted.internet import reactor

    with ExitStack() as disks:
        for name in ("s1", "s2", "s3"):
            disks.enter_context(tmpfs(tmp_path / name, "2m"))
        e = HttpEnv(reactor, tmp_path)
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_every_replica_full_is_507_insufficient_storage_not_try_again(
    small_disks_env, events
):
    env = small_disks_env
    for path, data in (
        ("/sized", payload(4 * MiB)),
        ("/chunked", ChunkedBody(reactor_(), payload(4 * MiB))),
        ("/later", payload(4 * MiB)),  # the disks are full from the start
    ):
        r = await env.request("PUT", path, data=data)
        body = (await body_of(r)).decode()
        assert r.code == 507, (path, body)
        assert body == f"{path}: insufficient storage\n"
        event = the_line(events, "PUT", path)
        assert event["log_level"] is LogLevel.warn
        assert "StorageFull" in formatEvent(event)
    assert severe(events) == []


@pytest.fixture
def pg_env(tmp_path):
    """An HttpEnv on a PostgreSQL catalog whose connections carry their own
    application_name, so a test can end them and only them."""
    import secrets

    from twisted.internet import reactor

    from tests.catalog_fixtures import postgres_schema_url

    pytest.importorskip("psycopg")
    for url in postgres_schema_url():
        name = "wsfs_test_" + secrets.token_hex(6)
        e = HttpEnv(reactor, tmp_path, catalog_url=f"{url}&application_name={name}")
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        e.pg_admin_url, e.pg_application = url, name
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_lost_postgresql_connections_are_replaced_without_a_failed_request(pg_env, events):
    # A PostgreSQL restart ends every pooled connection: each transaction
    # that meets a dead one runs again on a new connection (nothing was
    # committed on it), so no client sees the restart.
    import psycopg

    env = pg_env
    r = await env.request("PUT", "/kept", data=b"kept")
    assert r.code == 201, await body_of(r)
    with psycopg.connect(env.pg_admin_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (env.pg_application,),
        ).fetchall()
    assert ended
    del events[:]
    for i in range(len(ended) + 1):
        r = await env.request("PUT", f"/new{i}", data=b"new")
        assert r.code == 201, await body_of(r)
        r = await env.request("GET", "/kept")
        assert (r.code, await body_of(r)) == (200, b"kept")
    assert severe(events) == []


@pytest_twisted.ensureDeferred
async def test_a_put_cut_off_by_the_front_ends_shutdown_logs_no_traceback(env, events):
    """Ctrl-C during an upload: the front end checkpoints and interrupts it
    (``Transfers.shutdown``), then the reactor drops the connection.  The
    handler, resumed by the body's loss, finds the session interrupted
    already and ends at once: the request must count as gone by then, or
    the site takes the lost body for a bug (a 500 with a traceback)."""
    reactor = reactor_()
    requests = []
    dispatch = env.site.dispatch

    def spy(request):
        requests.append(request)
        dispatch(request)

    env.site.dispatch = spy
    opened: defer.Deferred = defer.Deferred()
    open_write = env.transfers.open_write

    def opening(*args, **kw):
        return open_write(*args, **kw).addCallback(lambda s: (opened.callback(s), s)[1])

    env.transfers.open_write = opening
    client = await connect(reactor, env.port.getHost().port)
    token = env.auth_header[b"Authorization"][0]
    client.send(
        b"PUT /cut HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n"
        % (token, 8 * MiB)
    )
    client.send(payload(MiB))
    await opened
    await env.transfers.shutdown()
    lost = requests[0].notifyFinish()
    client.close()
    with pytest.raises(ConnectionClosed):
        await lost
    assert severe(events) == []
