"""Uploads on the wire: who decides before the body, resume, bad lengths.

These tests speak raw HTTP/1.1 where treq would hide what matters (the
``100 Continue``, a client that stops half-way, framing that lies) and
check the catalog for what is pending and what is committed.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_clients_support import ChunkedBody, GatedBody
from tests.http_env import HttpEnv, MiB, payload
from tests.http_raw import connect, head_of
from tests.transfer_env import PASSWORD


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def basic(name: str = "alice", password: str = PASSWORD) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{name}:{password}".encode()) + b"\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reactor_():
    from twisted.internet import reactor

    return reactor


def hook(obj, name: str) -> defer.Deferred:
    """Fires with the result of the next call of ``obj.name`` (a method that
    returns a Deferred), once that call's Deferred fired."""
    d: defer.Deferred = defer.Deferred()
    original = getattr(obj, name)

    def wrapped(*a, **kw):
        def done(result):
            setattr(obj, name, original)
            if not d.called:
                d.callback(result)
            return result

        return defer.maybeDeferred(original, *a, **kw).addBoth(done)

    setattr(obj, name, wrapped)
    return d


def session_ended(session) -> defer.Deferred:
    """Fires with ``session`` once it ends (committed, interrupted, failed)."""
    d: defer.Deferred = defer.Deferred()
    original = session._on_end

    def ended(s):
        if original is not None:
            original(s)
        d.callback(s)

    session._on_end = ended
    return d


async def get(env, path, headers=None, method="GET"):
    r = await env.request(method, path, headers=headers or {})
    return r, await r.content()


@pytest_twisted.ensureDeferred
async def test_refusal_comes_before_100_continue_and_no_body_is_read(env):
    client = await connect(reactor_(), env.port.getHost().port)
    client.send(
        b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
    )
    got = await client.closed
    status, headers = head_of(got)
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic ")
    assert b"100 Continue" not in got
    assert await env.catalog.find_upload("/alice/f") is None


@pytest_twisted.ensureDeferred
async def test_100_continue_goes_out_once_the_upload_is_open(env):
    client = await connect(reactor_(), env.port.getHost().port)
    client.send(
        b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        + basic()
        + b"\r\n"
    )
    got = await client.until(b"100 Continue\r\n\r\n")
    assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
    upload = await env.catalog.find_upload("/alice/f")
    assert upload is not None and upload.checkpoint == 0
    client.send(b"hello")
    got = await client.until(b"Content-Length: 0\r\n\r\n")
    assert head_of(got)[0] == 201
    client.close()
    r, body = await get(env, "/f")
    assert (r.code, body) == (200, b"hello")


@pytest_twisted.ensureDeferred
async def test_quota_is_checked_before_the_body_is_accepted(env):
    await env.catalog.set_quota("alice", 1000, None)
    env.authenticator.forget("alice")
    client = await connect(reactor_(), env.port.getHost().port)
    client.send(
        b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n"
        + basic()
        + b"\r\n"
    )
    got = await client.closed
    assert head_of(got)[0] == 507
    assert b"100 Continue" not in got


async def _put_head(env, head: bytes) -> int:
    """The status a PUT with ``head`` (and Expect: 100-continue) is first
    answered with, its body not sent: 100 if it is asked for."""
    client = await connect(reactor_(), env.port.getHost().port)
    client.send(head + b"Expect: 100-continue\r\n" + basic() + b"\r\n")
    got = await client.until(b"\r\n\r\n")
    client.close()
    return int(got.split(b" ", 2)[1])


@pytest_twisted.ensureDeferred
async def test_quota_before_the_body_counts_pending_uploads_but_a_resumes_own_once(env):
    from tests.transfer_env import Feeder

    await env.catalog.set_quota("alice", 1000, None)
    user = await env.catalog.get_user("alice")
    session = await env.transfer.transfers.open_write(user, "/held", 0)
    await Feeder(reactor_(), session, b"h" * 600).start()
    await session.interrupt()  # pending, holding 600 of the 1000
    env.authenticator.forget("alice")
    assert await _put_head(env, b"PUT /other HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n") == 507
    resume = (
        b"PUT /held HTTP/1.1\r\nHost: x\r\nContent-Range: bytes 600-999/1000\r\n"
        b"Content-Length: 400\r\n"
    )
    assert await _put_head(env, resume) == 100


def arrived(session, count: int) -> defer.Deferred:
    """Fires once ``session`` was given ``count`` bytes in all."""
    d: defer.Deferred = defer.Deferred()
    original = session.write
    seen = [0]

    def write(data):
        original(data)
        seen[0] += len(data)
        if seen[0] >= count and not d.called:
            session.write = original
            d.callback(seen[0])

    session.write = write
    return d


async def start_put(env, path: str, length: int, extra: bytes = b""):
    """A raw PUT whose body the test sends itself once ``100 Continue`` came;
    returns the client and the server's WriteSession."""
    opened = hook(env.transfers, "open_write")
    client = await connect(reactor_(), env.port.getHost().port)
    client.send(
        b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path.encode(), length)
        + b"Expect: 100-continue\r\n"
        + extra
        + basic()
        + b"\r\n"
    )
    await client.until(b"100 Continue\r\n\r\n")
    return client, await opened


@pytest_twisted.ensureDeferred
async def test_interrupted_put_resumes_with_content_range_from_the_upload_offset(env):
    data = payload(3 * MiB + 99)
    half = 1 * MiB + 7
    client, session = await start_put(env, "/resume.bin", len(data))
    got_half = arrived(session, half)
    client.send(data[:half])
    await got_half
    ended = session_ended(session)
    client.close()
    interrupted = await ended
    assert interrupted is session and interrupted.durable == half
    upload = await env.catalog.find_upload("/alice/resume.bin")
    assert (upload.state, upload.checkpoint) == ("interrupted", half)
    r, _ = await get(env, "/resume.bin", method="HEAD")
    assert r.code == 404
    offset = int(r.headers.getRawHeaders("Upload-Offset")[0])
    assert offset == half
    resumed = hook(env.transfers, "open_write")
    r = await env.request(
        "PUT",
        "/resume.bin",
        data=data[offset:],
        headers={"Content-Range": f"bytes {offset}-{len(data) - 1}/{len(data)}"},
    )
    assert r.code == 201, await r.text()
    session = await resumed
    assert session.received == len(data) - offset < len(data)
    r, body = await get(env, "/resume.bin")
    assert sha(body) == sha(data)


@pytest_twisted.ensureDeferred
async def test_content_length_that_contradicts_content_range_is_400_and_nothing_changes(env):
    r = await env.request("PUT", "/f", data=b"old")
    assert r.code == 201
    r = await env.request("PUT", "/f", data=b"12345", headers={"Content-Range": "bytes 0-9/10"})
    assert r.code == 400
    r, body = await get(env, "/f")
    assert body == b"old"
    assert await env.catalog.find_upload("/alice/f") is None


@pytest_twisted.ensureDeferred
async def test_chunked_body_longer_than_its_content_range_is_400_and_not_committed(env):
    r = await env.request(
        "PUT",
        "/f",
        data=ChunkedBody(reactor_(), payload(300_000)),
        headers={"Content-Range": "bytes 0-99999/100000"},
    )
    assert r.code == 400
    assert "longer" in await r.text()
    r, _ = await get(env, "/f")
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_chunked_body_shorter_than_its_content_range_is_400_and_not_committed(env):
    r = await env.request(
        "PUT",
        "/f",
        data=ChunkedBody(reactor_(), payload(1000)),
        headers={"Content-Range": "bytes 0-1999/2000"},
    )
    assert r.code == 400
    r, _ = await get(env, "/f")
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_a_segment_that_ends_before_the_total_stays_pending(env):
    data = payload(3000)
    r = await env.request(
        "PUT", "/seg", data=data[:1000], headers={"Content-Range": "bytes 0-999/3000"}
    )
    assert (r.code, r.headers.getRawHeaders("Upload-Offset")) == (202, ["1000"])
    r, _ = await get(env, "/seg")
    assert (r.code, r.headers.getRawHeaders("Upload-Offset")) == (404, ["1000"])
    upload = await env.catalog.find_upload("/alice/seg")
    assert r.headers.getRawHeaders("Link") == [f'</-/uploads/{upload.upload_id}>; rel="tus-upload"']
    r = await env.request(
        "PUT", "/seg", data=data[1000:], headers={"Content-Range": "bytes 1000-2999/3000"}
    )
    assert r.code == 201
    r, body = await get(env, "/seg")
    assert body == data


@pytest_twisted.ensureDeferred
async def test_resume_beyond_the_durable_offset_is_416(env):
    r = await env.request("PUT", "/seg", data=b"x" * 10, headers={"Content-Range": "bytes 0-9/100"})
    assert r.code == 202
    r = await env.request(
        "PUT", "/seg", data=b"y" * 10, headers={"Content-Range": "bytes 50-59/100"}
    )
    assert r.code == 416


@pytest_twisted.ensureDeferred
async def test_put_of_64_mib_needs_no_temp_file_and_is_durable_in_part_midway(env, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("a request body must never be spilled to a temp file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    data = payload(64 * MiB)
    body = GatedBody(reactor_(), data, gate_at=24 * MiB)
    opened = hook(env.transfers, "open_write")
    response = env.request("PUT", "/huge.bin", data=body)
    session = await opened
    checkpointed = arrived(session, 20 * MiB)
    await body.reached_gate
    await checkpointed
    # The first may be a checkpoint already in flight, begun before 20 MiB
    # arrived; the second starts after it, so it covers all of them.
    await session.checkpoint()
    await session.checkpoint()
    upload = await env.catalog.find_upload("/alice/huge.bin")
    assert 20 * MiB <= upload.checkpoint < len(data)
    entry = await env.catalog.stat("/alice/huge.bin")
    assert entry.version is None
    body.open_gate()
    r = await response
    assert r.code == 201, await r.text()
    assert session.received == len(data)
    r = await env.request("GET", "/huge.bin")
    digest = hashlib.sha256()
    await r.collect(digest.update)
    assert digest.hexdigest() == sha(data)


@pytest_twisted.ensureDeferred
async def test_the_owner_sees_the_committed_file_and_the_pending_offset_side_by_side(env):
    r = await env.request("PUT", "/cp", data=b"old content")
    assert r.code == 201
    r = await env.request("PUT", "/cp", data=b"new c", headers={"Content-Range": "bytes 0-4/20"})
    assert r.code == 202
    r, body = await get(env, "/cp")
    assert (r.code, body, r.headers.getRawHeaders("Upload-Offset")) == (200, b"old content", ["5"])
    await env.catalog.add_user("bob", "bobpass", root="/alice", adopt_files=True)
    r = await env.request(
        "GET",
        "/cp",
        auth=False,
        headers={"Authorization": "Basic " + base64.b64encode(b"bob:bobpass").decode()},
    )
    assert (r.code, await r.content(), r.headers.getRawHeaders("Upload-Offset")) == (
        200,
        b"old content",
        None,
    )


@pytest_twisted.ensureDeferred
async def test_an_early_refusal_reaches_a_client_already_sending_its_body(env):
    from twisted.internet.error import ConnectionDone

    client = await connect(reactor_(), env.port.getHost().port)
    client.send(b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n" + b"z" * 600_000)
    got = await client.until(b"authentication required\n")
    status, headers = head_of(got)
    assert (status, headers["connection"]) == (401, "close")
    client.send(b"z" * 600_000)
    await client.closed
    assert client.reason.check(ConnectionDone), client.reason


@pytest_twisted.ensureDeferred
async def test_a_chunked_upload_that_outgrows_the_quota_is_507_and_not_committed(env):
    await env.catalog.set_quota("alice", MiB, None)
    env.authenticator.forget("alice")
    r = await env.request("PUT", "/grow", data=ChunkedBody(reactor_(), payload(3 * MiB)))
    assert r.code == 507
    r, _ = await get(env, "/grow")
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_a_large_put_reads_its_socket_in_bigger_pieces_only_while_the_body_streams(
    env, monkeypatch
):
    from wsfront.http import request as request_module
    from wsfront.http import upload

    seen = []

    def recording(req, *a, **kw):
        restore = request_module.wider_reads(req, *a, **kw)
        seen.append(req.channel.transport)
        return restore

    monkeypatch.setattr(upload, "wider_reads", recording)
    data = payload(2 * MiB)
    client, session = await start_put(env, "/big.bin", len(data))
    [transport] = seen
    default = type(transport).bufferSize
    assert transport.bufferSize == request_module.BODY_READ_SIZE > default
    got_half = arrived(session, MiB)
    client.send(data[:MiB])
    await got_half
    assert transport.bufferSize == request_module.BODY_READ_SIZE
    client.send(data[MiB:])
    answer = await client.until(b"HTTP/1.1 201 Created\r\n")
    assert b"HTTP/1.1 201 Created" in answer
    assert transport.bufferSize == default  # back for the next request
    client.close()
    r, body = await get(env, "/big.bin")
    assert sha(body) == sha(data)
    r = await env.request("PUT", "/small.bin", data=b"tiny")  # left as it is
    assert r.code == 201 and len(seen) == 2
