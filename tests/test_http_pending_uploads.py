"""HTTP methods on a file that has the user's own pending upload on it.

The user's pending upload is their private view of the path (HEAD's
``Upload-Offset``); the committed version is what everyone, and every
precondition, sees.  These tests pin what must not leak from one into the
other: preconditions, 201-or-204, lengths announced by an abandoned
upload, and who may delete the file.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def put(env, path: str, data: bytes, **headers: str):
    r = await env.request("PUT", path, data=data, headers=headers)
    return r, await r.text()


async def body_of(env, path: str) -> tuple[int, bytes]:
    r = await env.request("GET", path)
    return r.code, await r.content()


async def leave_pending(env, path: str, data: bytes = b"ne") -> None:
    """Leave the user's interrupted upload on ``path``, of no announced
    length (a PUT or STOR whose client went away after ``data``)."""
    session = await env.transfers.open_write(env.user, path, 0)
    session.write(data)
    await session.checkpoint()
    await session.interrupt()
    upload = await env.catalog.find_upload("/alice" + path)
    assert (upload.state, upload.checkpoint) == ("interrupted", len(data))


async def leave_segment(env, path: str, data: bytes = b"01", total: int = 10) -> None:
    """Leave the user's interrupted upload on ``path`` with a declared
    total: a segment that ends before it, as ``curl -C`` sends."""
    r, text = await put(env, path, data, **{"Content-Range": f"bytes 0-{len(data) - 1}/{total}"})
    assert (r.code, r.headers.getRawHeaders("Upload-Offset")) == (202, [str(len(data))]), text


def etag_of(r) -> str:
    return r.headers.getRawHeaders("ETag")[0]


@pytest_twisted.ensureDeferred
async def test_if_none_match_star_does_not_overwrite_a_file_with_a_pending_upload(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    assert r.code == 201
    await leave_pending(env, "/f")
    r, text = await put(env, "/f", b"new body", **{"If-None-Match": "*"})
    assert r.code == 412, text
    assert await body_of(env, "/f") == (200, b"ORIGINAL")
    upload = await env.catalog.find_upload("/alice/f")
    assert (upload.state, upload.checkpoint) == ("interrupted", 2)


@pytest_twisted.ensureDeferred
async def test_if_match_the_current_etag_holds_whatever_upload_is_pending(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    etag = etag_of(r)
    await leave_pending(env, "/f")
    r, text = await put(env, "/f", b"stale", **{"If-Match": '"not-the-etag"'})
    assert r.code == 412, text
    r, text = await put(env, "/f", b"second", **{"If-Match": etag})
    assert r.code in (201, 204), text
    assert await body_of(env, "/f") == (200, b"second")
    etag = etag_of(r)
    await leave_pending(env, "/f")
    r = await env.request("MOVE", "/f", headers={"Destination": "/g", "If-Match": '"nope"'})
    assert r.code == 412
    r = await env.request("MOVE", "/f", headers={"Destination": "/g", "If-Match": etag})
    assert r.code == 201, await r.text()
    assert await body_of(env, "/g") == (200, b"second")


@pytest_twisted.ensureDeferred
async def test_a_resumed_put_onto_an_existing_file_is_204_and_onto_a_new_one_201(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    assert r.code == 201
    await leave_pending(env, "/f", b"ne")
    r, text = await put(env, "/f", b"w body", **{"Content-Range": "bytes 2-7/8"})
    assert (r.code, r.headers.getRawHeaders("Location")) == (204, None), text
    assert await body_of(env, "/f") == (200, b"new body")
    await leave_pending(env, "/n", b"ne")
    r, text = await put(env, "/n", b"w", **{"Content-Range": "bytes 2-2/3"})
    assert (r.code, r.headers.getRawHeaders("Location")) == (201, ["/n"]), text
    assert await body_of(env, "/n") == (200, b"new")
