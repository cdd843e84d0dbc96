"""DELETE, MKCOL, MOVE and PUT against RFC 4918, over the real transfer layer.

What a black-box probe found: a directory MOVEd onto a file replaced it; a
Destination on another server moved locally; a trailing slash on a file
name was ignored by destructive methods; PUT into a missing parent was 404
where MKCOL was 409; a MKCOL body was 413 instead of 415.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def call(env, method, path, data=None, **headers) -> int:
    r = await env.request(method, path, data=data, headers=headers)
    await r.content()
    return r.code


async def body_of(env, path) -> tuple[int, bytes]:
    r = await env.request("GET", path)
    return r.code, await r.content()


async def move(env, src, dst, overwrite=None) -> int:
    headers = {"Destination": dst}
    if overwrite is not None:
        headers["Overwrite"] = overwrite
    return await call(env, "MOVE", src, **headers)


@pytest_twisted.ensureDeferred
async def test_move_never_replaces_a_file_with_a_directory_nor_the_reverse(env):
    assert await call(env, "MKCOL", "/dirX") == 201
    assert await call(env, "PUT", "/dirX/in", b"inside") == 201
    assert await call(env, "MKCOL", "/dirZ") == 201
    assert await call(env, "PUT", "/fileY", b"keep me") == 201
    for overwrite, status in ((None, 409), ("T", 409), ("F", 412)):
        assert await move(env, "/dirX", "/fileY", overwrite) == status, overwrite
        assert await move(env, "/fileY", "/dirX", overwrite) == status, overwrite
        assert await move(env, "/dirX", "/dirZ", overwrite) == status, overwrite
    assert await body_of(env, "/fileY") == (200, b"keep me")
    assert await body_of(env, "/dirX/in") == (200, b"inside")
    assert await call(env, "PUT", "/fileW", b"new") == 201
    assert await move(env, "/fileW", "/fileY", "F") == 412
    assert await move(env, "/fileW", "/fileY", "yes") == 400
    assert await body_of(env, "/fileY") == (200, b"keep me")
    assert await move(env, "/fileW", "/fileY") == 204  # a file replaces a file
    assert await body_of(env, "/fileY") == (200, b"new")


@pytest.mark.parametrize(
    ("destination", "status"),
    [
        ("ftp://127.0.0.1/moved", 502),
        ("//evil.example/moved", 502),
        ("http://evil.example:{port}/moved", 502),
        ("http://127.0.0.1:9999/moved", 502),
        ("http://127.0.0.1/moved", 502),  # port 80
        ("https://127.0.0.1:{port}/moved", 502),
        ("http:/moved", 400),
        ("http://127.0.0.1:99999/moved", 400),
    ],
)
@pytest_twisted.ensureDeferred
async def test_move_to_another_server_moves_nothing(env, destination, status):
    assert await call(env, "PUT", "/md", b"stay") == 201
    dst = destination.format(port=env.port.getHost().port)
    assert await move(env, "/md", dst) == status
    assert await body_of(env, "/md") == (200, b"stay")
    assert (await body_of(env, "/moved"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_move_to_this_server_by_url_is_local(env):
    assert await call(env, "PUT", "/md", b"stay") == 201
    port = env.port.getHost().port
    assert await move(env, "/md", f"HTTP://127.0.0.1:{port}/there") == 201
    assert await body_of(env, "/there") == (200, b"stay")
    assert await move(env, "/there", f"//127.0.0.1:{port}/back") == 201
    assert await body_of(env, "/back") == (200, b"stay")


async def raw_move(env, target: bytes, destination: bytes, host: bytes | None, version=b"1.1"):
    """The status of a MOVE written byte for byte (no Host header if None)."""
    from twisted.internet import reactor

    c = await connect(reactor, env.port.getHost().port)
    auth = env.auth_header[b"Authorization"][0]
    host_line = b"" if host is None else b"Host: " + host + b"\r\n"
    c.send(
        b"MOVE " + target + b" HTTP/" + version + b"\r\n" + host_line
        + b"Authorization: " + auth + b"\r\nDestination: " + destination + b"\r\n\r\n"
    )  # fmt: skip
    received = await c.until(b"\r\n\r\n")
    c.close()
    return head_of(received)[0]


@pytest_twisted.ensureDeferred
async def test_the_server_is_the_one_the_request_was_sent_to(env):
    """The Host header names it; an absolute-form target does instead; with
    neither (HTTP/1.0), the listening socket's address does."""
    me = b"127.0.0.1:%d" % env.port.getHost().port
    assert await call(env, "PUT", "/a", b"a") == 201
    assert await raw_move(env, b"/a", b"http://files.example/b", b"FILES.example") == 201
    assert await raw_move(env, b"/b", b"http://files.example/c", b"other.example") == 502
    absolute = b"http://files.example:81/b"
    assert await raw_move(env, absolute, b"http://files.example:81/c", b"other.example") == 201
    assert await raw_move(env, b"/c", b"http://" + me + b"/d", None, b"1.0") == 201
    assert await raw_move(env, b"/d", b"http://[::1]:1/e", None, b"1.0") == 502
    assert await body_of(env, "/d") == (200, b"a")
    # An IP literal is compared in its canonical form: the same address
    # written another way, or IPv4-mapped, is this server.
    port = b"%d" % env.port.getHost().port
    mapped = b"http://[::ffff:127.0.0.1]:" + port + b"/f"
    assert await raw_move(env, b"/d", mapped, b"127.0.0.1:" + port) == 201
    assert await raw_move(env, b"/f", b"http://[0:0::1]:1/g", b"[::1]:1") == 201
    # A zone names the client's own link (RFC 6874 keeps it out of Host).
    assert await raw_move(env, b"/g", b"http://[fe80::1%25eth0]:1/h", b"[fe80::1]:1") == 201
    assert await body_of(env, "/h") == (200, b"a")


@pytest_twisted.ensureDeferred
async def test_the_destination_fragment_and_query_are_not_part_of_the_name(env):
    assert await call(env, "PUT", "/md7", b"seven") == 201
    assert await move(env, "/md7", "/md8#frag") == 201
    assert await move(env, "/md8", env.url("/md9?x=1#frag")) == 201
    assert await body_of(env, "/md9") == (200, b"seven")
    assert (await body_of(env, "/md8%23frag"))[0] == 404
    assert await move(env, "/md9", "/md%2310") == 201  # an encoded # is a name's
    assert await body_of(env, "/md%2310") == (200, b"seven")


@pytest_twisted.ensureDeferred
async def test_a_trailing_slash_never_names_a_file(env):
    assert await call(env, "PUT", "/tfile", b"file") == 201
    assert await call(env, "DELETE", "/tfile/") == 404
    assert await move(env, "/tfile/", "/elsewhere") == 404
    assert await move(env, "/tfile", "/elsewhere/") == 409
    assert await call(env, "MKCOL", "/tfile/") == 409
    assert await call(env, "MKCOL", "/tfile") == 405
    assert await call(env, "PUT", "/tfile/", b"over") == 409
    assert await call(env, "PUT", "/new/", b"x") == 409
    assert await body_of(env, "/tfile") == (200, b"file")
    assert (await body_of(env, "/elsewhere"))[0] == 404
    assert (await body_of(env, "/new"))[0] == 404
    # A directory may be named with or without the slash.
    assert await call(env, "MKCOL", "/dir/") == 201
    assert await move(env, "/dir/", "/dir2/") == 201
    assert await move(env, "/dir2", "/dir3") == 201
    assert await call(env, "DELETE", "/dir3/") == 204


@pytest_twisted.ensureDeferred
async def test_a_missing_parent_is_409_for_put_mkcol_and_move(env):
    assert await call(env, "PUT", "/nowhere/f", b"x") == 409
    assert await call(env, "MKCOL", "/nowhere/d") == 409
    assert await call(env, "PUT", "/f", b"x") == 201
    assert await move(env, "/f", "/nowhere/f") == 409
    assert await call(env, "PUT", "/f/g", b"x") == 409  # the parent is a file
    assert await body_of(env, "/f") == (200, b"x")


@pytest_twisted.ensureDeferred
async def test_move_onto_itself_is_forbidden(env):
    assert await call(env, "PUT", "/same", b"s") == 201
    assert await move(env, "/same", "/same") == 403
    assert await body_of(env, "/same") == (200, b"s")


@pytest_twisted.ensureDeferred
async def test_a_move_to_or_of_the_root_says_which_it_is(env):
    """``MOVE /d1/`` to ``/`` was "the root cannot be moved", of a source
    that is not the root; the destination is what cannot be replaced."""
    assert await call(env, "MKCOL", "/d1") == 201
    r = await env.request("MOVE", "/d1/", headers={"Destination": "/"})
    body = await r.content()
    assert (r.code, body) == (403, b"the destination is the root, which cannot be replaced\n")
    r = await env.request("MOVE", "/", headers={"Destination": "/d2/"})
    assert (r.code, await r.content()) == (403, b"the root cannot be moved\n")
    assert (await body_of(env, "/d1/"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_a_file_moved_under_itself_is_409_not_a_directory(env):
    assert await call(env, "PUT", "/k1.bin", b"kept") == 201
    r = await env.request("MOVE", "/k1.bin", headers={"Destination": "/k1.bin/x"})
    assert (r.code, await r.content()) == (409, b"/k1.bin/x: not a directory\n")
    assert await body_of(env, "/k1.bin") == (200, b"kept")


@pytest_twisted.ensureDeferred
async def test_mkcol_with_a_body_is_415(env):
    from twisted.internet import reactor

    assert await call(env, "MKCOL", "/withbody", b"<xml/>") == 415
    c = await connect(reactor, env.port.getHost().port)
    auth = env.auth_header[b"Authorization"][0]
    c.send(
        b"MKCOL /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + auth + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    received = await c.until(b"\r\n\r\n")
    c.close()
    assert head_of(received)[0] == 415
    assert (await body_of(env, "/withbody/"))[0] == 404
    assert (await body_of(env, "/chunked/"))[0] == 404
    assert await call(env, "MKCOL", "/nobody") == 201


@pytest.mark.parametrize(
    ("destination", "named"),
    [
        ("/r.bin/x", "/r.bin/x"),
        ("/r.bin/x/y", "/r.bin/x/y"),
        ("/r.bin/a%20b", "/r.bin/a b"),
        ("/d/r.bin/x", "/d/r.bin/x"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_destination_under_a_file_is_409_naming_the_destination(env, destination, named):
    assert await call(env, "MKCOL", "/d") == 201
    for path in ("/t1.bin", "/r.bin", "/d/r.bin"):
        assert await call(env, "PUT", path, b"kept") == 201
    for overwrite in (None, "F"):
        headers = {"Destination": destination}
        if overwrite is not None:
            headers["Overwrite"] = overwrite
        r = await env.request("MOVE", "/t1.bin", headers=headers)
        assert (r.code, await r.content()) == (409, f"{named}: not a directory\n".encode())
    assert await body_of(env, "/t1.bin") == (200, b"kept")


@pytest_twisted.ensureDeferred
async def test_mkcol_on_an_existing_name_is_405_with_allow(env):
    """RFC 9110 (15.5.6): a 405 must say what the resource allows; MKCOL's
    405 on an existing file, directory or the root had no Allow."""
    assert await call(env, "PUT", "/afile", b"x") == 201
    assert await call(env, "MKCOL", "/adir") == 201
    for path in ("/afile", "/adir", "/adir/", "/"):
        r = await env.request("MKCOL", path)
        await r.content()
        assert r.code == 405, path
        allow = {m.strip() for m in r.headers.getRawHeaders(b"Allow", [b""])[0].decode().split(",")}
        assert {"GET", "PUT", "DELETE", "PROPFIND", "OPTIONS"} <= allow, path
        assert "MKCOL" not in allow, path
    assert await body_of(env, "/afile") == (200, b"x")
