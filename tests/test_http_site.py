"""wsfront's HTTP site over the real transfer layer, driven with treq.

Downloads (headers, ranges, preconditions), uploads (streamed PUT, resume
with Content-Range, bad lengths), the namespace methods, listings and
authentication; every body checked byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv, MiB, another_put_first, payload
from tests.http_raw import connect, head_of
from tests.transfer_env import PASSWORD


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else values[0]


@pytest_twisted.ensureDeferred
async def test_put_then_get_returns_the_same_bytes(env):
    data = payload(3 * MiB + 17)
    r = await env.request("PUT", "/dir-less.bin", data=data)
    assert r.code == 201, await r.text()
    r = await env.request("GET", "/dir-less.bin")
    assert r.code == 200
    body = await r.content()
    assert sha(body) == sha(data)
    assert r.length == len(data)
    assert header(r, "Accept-Ranges") == "bytes"
    assert header(r, "X-Content-Type-Options") == "nosniff"
    assert header(r, "Content-Security-Policy") == "sandbox"
    assert header(r, "ETag").startswith('"')


async def put(env, path, data, headers=None):
    r = await env.request("PUT", path, data=data, headers=headers or {})
    await r.content()
    return r


async def get(env, path, headers=None, method="GET"):
    r = await env.request(method, path, headers=headers or {})
    return r, await r.content()


async def raw_exchange(env, request: bytes, marker: bytes = b"\r\n\r\n") -> bytes:
    """Send ``request`` on a fresh connection; what came back once ``marker`` did."""
    from twisted.internet import reactor

    client = await connect(reactor, env.port.getHost().port)
    client.send(request)
    received = await client.until(marker)
    client.close()
    await client.closed
    return received


def basic(name: str = "alice", password: str = PASSWORD) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{name}:{password}".encode()) + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_head_answers_the_headers_of_get_without_a_body(env):
    data = payload(100_000)
    await put(env, "/page.html", data)
    ask = b" /page.html HTTP/1.1\r\nHost: x\r\n" + basic() + b"\r\n"
    got = await raw_exchange(env, b"GET" + ask, marker=data[-100:])
    g_status, g_headers = head_of(got)
    assert got.endswith(data)
    got = await raw_exchange(env, b"HEAD" + ask)
    h_status, h_headers = head_of(got)
    assert got.endswith(b"\r\n\r\n")
    g_headers.pop("date"), h_headers.pop("date")
    assert (h_status, h_headers) == (g_status, g_headers) == (200, h_headers)
    assert h_headers["content-length"] == str(len(data))
    assert h_headers["content-type"] == "text/html; charset=utf-8"
    assert h_headers["x-content-type-options"] == "nosniff"


@pytest_twisted.ensureDeferred
async def test_single_suffix_and_open_ranges_get_206(env):
    data = payload(10_000)
    await put(env, "/r.bin", data)
    r, body = await get(env, "/r.bin", {"Range": "bytes=100-199"})
    assert (r.code, body, header(r, "Content-Range")) == (206, data[100:200], "bytes 100-199/10000")
    r, body = await get(env, "/r.bin", {"Range": "bytes=-300"})
    assert (r.code, body) == (206, data[-300:])
    r, body = await get(env, "/r.bin", {"Range": "bytes=9000-"})
    assert (r.code, body) == (206, data[9000:])
    r, body = await get(env, "/r.bin", {"Range": "bytes=-20000"})
    assert (r.code, body, header(r, "Content-Range")) == (206, data, "bytes 0-9999/10000")


@pytest_twisted.ensureDeferred
async def test_suffix_range_longer_than_a_small_file_is_the_whole_file(env):
    await put(env, "/ten", b"0123456789")
    r, body = await get(env, "/ten", {"Range": "bytes=-20"})
    assert r.code == 206 and body == b"0123456789"


@pytest_twisted.ensureDeferred
async def test_several_ranges_come_as_multipart_byteranges(env):
    data = payload(50_000)
    await put(env, "/m.bin", data)
    r, body = await get(env, "/m.bin", {"Range": "bytes=0-9,20000-20009,-5"})
    assert r.code == 206
    ctype = header(r, "Content-Type")
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    assert r.length == len(body)
    parts = body.split(b"--" + boundary)[1:-1]
    got = []
    for part in parts:
        head, _, data_part = part.partition(b"\r\n\r\n")
        got.append((head.split(b"Content-Range: ")[1].split(b"\r\n")[0], data_part[:-2]))
    assert got == [
        (b"bytes 0-9/50000", data[:10]),
        (b"bytes 20000-20009/50000", data[20000:20010]),
        (b"bytes 49995-49999/50000", data[-5:]),
    ]


@pytest_twisted.ensureDeferred
async def test_unsatisfiable_range_gets_416_with_the_size(env):
    await put(env, "/s", b"abc")
    r, _ = await get(env, "/s", {"Range": "bytes=5-9"})
    assert (r.code, header(r, "Content-Range")) == (416, "bytes */3")
    await put(env, "/empty", b"")
    r, _ = await get(env, "/empty", {"Range": "bytes=0-0"})
    assert (r.code, header(r, "Content-Range")) == (416, "bytes */0")


@pytest_twisted.ensureDeferred
async def test_malformed_range_is_ignored(env):
    await put(env, "/s", b"abcdef")
    for value in ("bytes=5-2", "bytes=x-y", "lines=1-2", "bytes="):
        r, body = await get(env, "/s", {"Range": value})
        assert (r.code, body) == (200, b"abcdef"), value


@pytest_twisted.ensureDeferred
async def test_if_range_with_the_current_etag_allows_the_range_and_a_stale_one_sends_all(env):
    await put(env, "/f", b"hello world")
    r, _ = await get(env, "/f")
    etag = header(r, "ETag")
    r, body = await get(env, "/f", {"Range": "bytes=6-", "If-Range": etag})
    assert (r.code, body) == (206, b"world")
    r, body = await get(env, "/f", {"Range": "bytes=6-", "If-Range": '"stale"'})
    assert (r.code, body) == (200, b"hello world")
    r, body = await get(env, "/f", {"Range": "bytes=6-", "If-Range": header(r, "Last-Modified")})
    assert (r.code, body) == (206, b"world")


@pytest_twisted.ensureDeferred
async def test_conditional_get_answers_304_and_412(env):
    await put(env, "/c", b"content")
    r, _ = await get(env, "/c")
    etag, modified = header(r, "ETag"), header(r, "Last-Modified")
    r, body = await get(env, "/c", {"If-None-Match": etag})
    assert (r.code, body, header(r, "ETag")) == (304, b"", etag)
    got = await raw_exchange(
        env,
        b"GET /c HTTP/1.1\r\nHost: x\r\nIf-None-Match: "
        + etag.encode()
        + b"\r\n"
        + basic()
        + b"\r\n",
    )
    status, headers = head_of(got)
    assert status == 304 and "content-length" not in headers
    assert headers["last-modified"] == modified
    r, _ = await get(env, "/c", {"If-Modified-Since": modified})
    assert r.code == 304
    r, _ = await get(env, "/c", {"If-Match": '"other"'})
    assert r.code == 412
    r, _ = await get(env, "/c", {"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"})
    assert r.code == 412
    r, body = await get(env, "/c", {"If-Match": etag})
    assert (r.code, body) == (200, b"content")


@pytest_twisted.ensureDeferred
async def test_zero_length_put_commits_an_empty_file(env):
    r = await put(env, "/zero", b"")
    assert r.code == 201
    r, body = await get(env, "/zero")
    assert (r.code, body, r.length) == (200, b"", 0)


@pytest_twisted.ensureDeferred
async def test_put_over_an_existing_file_replaces_it_with_204(env):
    await put(env, "/x", b"old")
    r = await put(env, "/x", b"new content")
    assert r.code == 204
    _, body = await get(env, "/x")
    assert body == b"new content"


@pytest_twisted.ensureDeferred
async def test_put_preconditions_protect_the_current_version(env):
    await put(env, "/p", b"one")
    r, _ = await get(env, "/p")
    etag = header(r, "ETag")
    r = await put(env, "/p", b"two", {"If-None-Match": "*"})
    assert r.code == 412
    r = await put(env, "/p", b"two", {"If-Match": '"nope"'})
    assert r.code == 412
    _, body = await get(env, "/p")
    assert body == b"one"
    r = await put(env, "/p", b"two", {"If-Match": etag})
    assert r.code == 204
    r = await put(env, "/new", b"x", {"If-None-Match": "*"})
    assert r.code == 201


async def etag_of_race(env) -> str:
    await put(env, "/race", b"one")
    r, _ = await get(env, "/race")
    return header(r, "ETag")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("condition", ["If-Match", "If-None-Match"])
async def test_a_put_whose_precondition_held_loses_to_a_commit_before_its_start(
    env, monkeypatch, condition
):
    """The precondition is judged on one catalog read, the upload started
    in another transaction: another client's PUT committing in between
    must not be overwritten (a lost update, or a "create only" PUT
    replacing a file that appeared).  The start finds the version changed,
    the precondition is judged again and fails: 412, their bytes kept."""
    value = await etag_of_race(env) if condition == "If-Match" else "*"
    theirs = another_put_first(env, monkeypatch, "begin_upload")
    r = await put(env, "/race", b"mine", {condition: value})
    assert theirs and theirs[0].code in (201, 204)
    assert r.code == 412
    _, body = await get(env, "/race")
    assert body == b"theirs"


@pytest_twisted.ensureDeferred
async def test_a_plain_put_that_looked_again_answers_for_the_file_it_replaced(env, monkeypatch):
    """A PUT to a new path whose start found a file created meanwhile looks
    again and replaces it: 204 (a file was there), not the 201 of its
    first look."""
    theirs = another_put_first(env, monkeypatch, "begin_upload")
    r = await put(env, "/race", b"mine")
    assert theirs[0].code == 201
    assert r.code == 204
    assert header(r, "Location") is None
    _, body = await get(env, "/race")
    assert body == b"mine"


@pytest_twisted.ensureDeferred
async def test_a_delete_whose_if_match_held_loses_to_a_commit_before_it_runs(env, monkeypatch):
    """If-Match is judged on one catalog read, the removal runs in another
    transaction: a PUT committing in between must not be deleted with the
    version the client meant.  The removal finds the version changed, the
    precondition is judged again and fails: 412, the new file kept."""
    etag = await etag_of_race(env)
    theirs = another_put_first(env, monkeypatch, "delete")
    r = await env.request("DELETE", "/race", headers={"If-Match": etag})
    assert theirs[0].code == 204
    assert r.code == 412
    _, body = await get(env, "/race")
    assert body == b"theirs"


@pytest_twisted.ensureDeferred
async def test_a_move_whose_if_match_held_loses_to_a_commit_before_it_runs(env, monkeypatch):
    """As for DELETE: a PUT committing between If-Match's look and the
    rename is not moved away under the version the client judged: 412,
    the new file stays where it was."""
    etag = await etag_of_race(env)
    theirs = another_put_first(env, monkeypatch, "rename")
    r = await env.request("MOVE", "/race", headers={"Destination": "/moved", "If-Match": etag})
    assert theirs[0].code == 204
    assert r.code == 412
    _, body = await get(env, "/race")
    assert body == b"theirs"
    r, _ = await get(env, "/moved")
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_delete_removes_a_file_and_honours_if_match(env):
    await put(env, "/d", b"bye")
    r = await env.request("DELETE", "/d", headers={"If-Match": '"nope"'})
    assert r.code == 412
    r = await env.request("DELETE", "/d")
    assert r.code == 204
    r, _ = await get(env, "/d")
    assert r.code == 404
    r = await env.request("DELETE", "/d")
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_mkcol_move_and_listings(env):
    r = await env.request("MKCOL", "/docs")
    assert r.code == 201
    r = await env.request("MKCOL", "/docs")
    assert r.code == 405
    await put(env, "/docs/a.txt", b"aaa")
    await put(env, "/docs/b <&>.txt", b"bb")
    r = await env.request("MOVE", "/docs/a.txt", headers={"Destination": env.url("/docs/c.txt")})
    assert r.code == 201
    r, body = await get(env, "/docs/c.txt")
    assert body == b"aaa"
    r, _ = await get(env, "/docs")
    assert (r.code, header(r, "Location")) == (301, "/docs/")
    r, body = await get(env, "/docs/", {"Accept": "application/json"})
    listing = json.loads(body)
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("b <&>.txt", "file", 2),
        ("c.txt", "file", 3),
    ]
    r, body = await get(env, "/docs/", {"Accept": "text/html,application/xhtml+xml"})
    assert header(r, "Content-Type") == "text/html; charset=utf-8"
    assert b'href="/docs/b%20%3C%26%3E.txt"' in body
    assert b"b &lt;&amp;&gt;.txt" in body


@pytest.mark.parametrize(
    ("accept", "ctype"),
    [
        ("application/json, text/html;q=0.1", "application/json"),
        ("text/html;q=0, application/json", "application/json"),
        ("application/json;q=0.5, text/html", "text/html; charset=utf-8"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_listings_follow_the_accept_q_values(env, accept, ctype):
    await put(env, "/f", b"f")
    r, body = await get(env, "/", {"Accept": accept})
    assert header(r, "Content-Type") == ctype
    assert header(r, "Vary") == "Accept"
    if ctype == "application/json":
        assert [e["name"] for e in json.loads(body)["entries"]] == ["f"]


@pytest_twisted.ensureDeferred
async def test_listing_of_a_large_directory_pages_through_the_catalog(env):
    env.site.context.settings = attrs.evolve(env.site.context.settings, listing_page=7)
    await env.request("MKCOL", "/many")
    names = [f"f{i:03d}" for i in range(30)]
    for name in names:
        await put(env, f"/many/{name}", name.encode())
    r, body = await get(env, "/many/", {"Accept": "application/json"})
    assert r.code == 200
    assert [e["name"] for e in json.loads(body)["entries"]] == names


@pytest_twisted.ensureDeferred
async def test_requests_without_valid_credentials_get_a_basic_challenge(env):
    await put(env, "/secret", b"s")
    r = await env.request("GET", "/secret", auth=False)
    assert r.code == 401
    assert header(r, "WWW-Authenticate").startswith('Basic realm="wsfs"')
    r = await env.request(
        "GET", "/secret", auth=False, headers={"Authorization": "Basic YWxpY2U6d3Jvbmc="}
    )
    assert r.code == 401


@pytest_twisted.ensureDeferred
async def test_paths_that_try_to_escape_the_root_are_refused(env):
    for path in ("/%2e%2e/etc", "/a%2fb", "/a/../../x", "/x%5c..%5cy"):
        r, _ = await get(env, path)
        assert r.code == 400, path
    r, _ = await get(env, "/-/nothing")
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_chunked_put_without_a_length_is_stored_whole(env):
    from twisted.internet import reactor

    from tests.http_clients_support import ChunkedBody

    data = payload(2 * MiB + 5)
    r = await env.request("PUT", "/chunked", data=ChunkedBody(reactor, data))
    assert r.code == 201, await r.text()
    _, body = await get(env, "/chunked")
    assert sha(body) == sha(data)


@pytest_twisted.ensureDeferred
async def test_another_users_pending_upload_makes_put_409(env):
    from twisted.internet import reactor

    await env.catalog.add_user("bob", "bobpass", root="/alice", adopt_files=True)
    opened = watch_sessions(env)
    bob = await connect(reactor, env.port.getHost().port)
    bob.send(
        b"PUT /shared HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        + basic("bob", "bobpass")
        + b"\r\n"
        + b"x" * 1000
    )
    await opened
    r = await put(env, "/shared", b"mine")
    assert r.code == 409
    bob.close()
    await bob.closed


def watch_sessions(env) -> defer.Deferred:
    """Fires with the next WriteSession the transfer layer opens (the pending
    upload is in the catalog by then)."""
    d: defer.Deferred = defer.Deferred()
    original = env.transfers._open_session

    def wrapped(*a, **kw):
        def opened(session):
            env.transfers._open_session = original
            if not d.called:
                d.callback(session)
            return session

        return original(*a, **kw).addCallback(opened)

    env.transfers._open_session = wrapped
    return d


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_download_stops_the_upstream_read(env):
    from twisted.internet import reactor

    data = payload(32 * MiB)
    await env.upload("/long.bin", data)
    opened: defer.Deferred = defer.Deferred()
    stopped: defer.Deferred = defer.Deferred()
    original = env.transfers.open_read

    def open_read(*a, **kw):
        def watch(handle):
            stream, stop = handle.stream, handle.stream.stopProducing

            def stop_and_tell():
                stop()
                if not stopped.called:
                    stopped.callback(stream.delivered)

            stream.stopProducing = stop_and_tell
            opened.callback(handle)
            return handle

        return original(*a, **kw).addCallback(watch)

    env.transfers.open_read = open_read
    client = await connect(reactor, env.port.getHost().port)
    client.send(b"GET /long.bin HTTP/1.1\r\nHost: x\r\n" + basic() + b"\r\n")
    await opened
    await client.until(b"\r\n\r\n")
    client.close()
    delivered = await stopped
    assert delivered < len(data) // 2


@pytest_twisted.ensureDeferred
async def test_a_user_without_write_permission_gets_403_before_sending_the_body(env):
    await env.catalog.set_permissions("alice", frozenset({"read"}))
    env.authenticator.forget("alice")
    got = await raw_exchange(
        env,
        b"PUT /ro HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n"
        + basic()
        + b"\r\n",
    )
    assert head_of(got)[0] == 403
    assert b"100 Continue" not in got


@pytest_twisted.ensureDeferred
async def test_no_storage_server_left_means_503(env):
    # Bigger than an extent cache entry (a small upload's bytes stay in the
    # front end's cache as it commits): the GET needs a storage server.
    await put(env, "/kept", b"data" * 20_000)
    for node in env.transfer.nodes.values():
        await node.kill()
    r = await put(env, "/new", b"data")
    assert r.code == 503
    r, _ = await get(env, "/kept")
    assert r.code == 503
    assert header(r, "ETag") is None


@pytest_twisted.ensureDeferred
async def test_anonymous_reads_when_configured_but_never_writes(env):
    await put(env, "/public.txt", b"hello all")
    env.site.context.settings = attrs.evolve(env.site.context.settings, anonymous_user="alice")
    r = await env.request("GET", "/public.txt", auth=False)
    assert (r.code, await r.content()) == (200, b"hello all")
    r = await env.request("PUT", "/public.txt", auth=False, data=b"defaced")
    assert r.code == 401
    r = await env.request("DELETE", "/public.txt", auth=False)
    assert r.code == 401
