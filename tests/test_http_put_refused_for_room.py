"""An HTTP PUT refused for room (every storage server's disk full: 507)
before any of its bytes was durable.

A new upload (a PUT that began it, not a resume) is discarded then: kept,
it stood as an interrupted upload at offset 0 that HEAD showed its owner
(``Upload-Offset: 0``), that counted toward
``--max-pending-uploads-per-user`` and held its blob until it expired,
for nothing a client could resume.  A resume that is refused keeps the
pending upload it resumed, and a file the refused PUT would have replaced
stays as it was.

Real storage servers on tmpfs disks filled behind the front end's back
(``tests.full_disks``), a real HTTP client, both catalog backends.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.full_disks import fill_all, free_all, small_disks
from tests.http_clients_support import ChunkedBody
from tests.http_env import HttpEnv, payload
from wsfront.catalog.records import INTERRUPTED

pytest_plugins = ["tests.catalog_fixtures"]

KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture
def env(tmp_path, catalog_url):
    from twisted.internet import reactor

    with small_disks(tmp_path):
        e = HttpEnv(
            reactor, tmp_path, catalog_url=catalog_url, max_pending_uploads_per_user=1,
            checkpoint_seconds=3600.0,  # no timer makes bytes durable meanwhile
        )  # fmt: skip
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def reactor_():
    from twisted.internet import reactor

    return reactor


async def put(env: HttpEnv, path: str, data, headers=None) -> tuple[int, bytes]:
    response = await env.request("PUT", path, data=data, headers=headers)
    return response.code, await response.content()


async def upload_offset(env: HttpEnv, path: str) -> str | None:
    """What HEAD tells the owner of ``path`` to resume its upload at."""
    response = await env.request("HEAD", path)
    await response.content()
    return response.headers.getRawHeaders("Upload-Offset", [None])[0]


async def live_uploads(env: HttpEnv) -> list:
    return await env.catalog.list_uploads()


BODIES = {
    "sized-small": lambda: payload(32 * KiB),  # within put_limit: one put per replica
    "sized-1MiB": lambda: payload(MiB),  # past put_limit: write streams
    "chunked-small": lambda: ChunkedBody(reactor_(), payload(32 * KiB)),
    "chunked-1MiB": lambda: ChunkedBody(reactor_(), payload(MiB)),
}


@pytest.mark.parametrize("body", list(BODIES))
@pytest_twisted.ensureDeferred
async def test_a_new_put_refused_for_room_leaves_no_pending_upload(env, tmp_path, body):
    fill_all(tmp_path, env.transfers.pool)
    code, text = await put(env, "/new.bin", BODIES[body]())
    assert (code, text) == (507, b"/new.bin: insufficient storage\n")
    assert await live_uploads(env) == []
    assert env.transfers.pending_per_user.count("alice") == 0
    assert await upload_offset(env, "/new.bin") is None
    assert (await env.request("HEAD", "/new.bin")).code == 404
    # With room again, the user's next upload is not refused for the cap
    # of one pending upload.
    await free_all(tmp_path, env.transfers.pool)
    assert (await put(env, "/other.bin", b"other"))[0] == 201


@pytest.mark.parametrize("body", ["sized-small", "chunked-1MiB"])
@pytest_twisted.ensureDeferred
async def test_a_refused_overwrite_leaves_the_stored_file_as_it_was(env, tmp_path, body):
    kept = payload(100 * KiB)
    assert (await put(env, "/kept.bin", kept))[0] == 201
    fill_all(tmp_path, env.transfers.pool)
    assert (await put(env, "/kept.bin", BODIES[body]()))[0] == 507
    assert await live_uploads(env) == []
    assert await upload_offset(env, "/kept.bin") is None
    response = await env.request("GET", "/kept.bin")
    assert response.code == 200
    assert hashlib.sha256(await response.content()).digest() == hashlib.sha256(kept).digest()


@pytest_twisted.ensureDeferred
async def test_a_refused_resume_keeps_its_pending_upload_as_it_was(env, tmp_path):
    first = payload(32 * KiB)
    code, _ = await put(
        env, "/part.bin", first, headers={"Content-Range": f"bytes 0-{len(first) - 1}/{64 * KiB}"}
    )
    assert code == 202
    [before] = await live_uploads(env)
    assert (before.state, before.checkpoint) == (INTERRUPTED, len(first))
    fill_all(tmp_path, env.transfers.pool)
    rest = payload(32 * KiB)
    code, _ = await put(
        env, "/part.bin", rest, headers={"Content-Range": f"bytes {len(first)}-{64 * KiB - 1}/*"}
    )
    assert code == 507
    [after] = await live_uploads(env)
    assert (after.upload_id, after.state, after.checkpoint) == (
        before.upload_id, INTERRUPTED, len(first),
    )  # fmt: skip
    assert await upload_offset(env, "/part.bin") == str(len(first))
    # Resumed once there is room, it completes from where it was.
    await free_all(tmp_path, env.transfers.pool)
    code, _ = await put(
        env, "/part.bin", rest, headers={"Content-Range": f"bytes {len(first)}-{64 * KiB - 1}/*"}
    )
    assert code == 201
    response = await env.request("GET", "/part.bin")
    assert await response.content() == first + rest


@pytest_twisted.ensureDeferred
async def test_a_new_partial_put_refused_for_room_is_507_not_202(env, tmp_path):
    """A PUT of the first part of an upload (a total past its body, within
    put_limit): its bytes are only held until the body ends, then keeping
    them opens the streams, which the full disks refuse.  The upload is
    discarded, and the client told so (507), not 202 Accepted with
    Upload-Offset: 0 for an upload that no longer exists."""
    fill_all(tmp_path, env.transfers.pool)
    first = payload(32 * KiB)
    code, text = await put(
        env, "/part.bin", first, headers={"Content-Range": f"bytes 0-{len(first) - 1}/{64 * KiB}"}
    )
    assert (code, text) == (507, b"/part.bin: insufficient storage\n")
    assert await live_uploads(env) == []
    assert env.transfers.pending_per_user.count("alice") == 0
    assert await upload_offset(env, "/part.bin") is None


@pytest_twisted.ensureDeferred
async def test_a_partial_resume_refused_for_room_is_507_and_keeps_its_upload(env, tmp_path):
    """The same for a resume that does not reach the total: 507, and its
    pending upload stays at its durable offset."""
    first = payload(32 * KiB)
    code, _ = await put(
        env, "/part.bin", first, headers={"Content-Range": f"bytes 0-{len(first) - 1}/{96 * KiB}"}
    )
    assert code == 202
    fill_all(tmp_path, env.transfers.pool)
    more = payload(32 * KiB)
    code, _ = await put(
        env, "/part.bin", more, headers={"Content-Range": f"bytes {len(first)}-{64 * KiB - 1}/*"}
    )
    assert code == 507
    [after] = await live_uploads(env)
    assert (after.state, after.checkpoint) == (INTERRUPTED, len(first))
    assert await upload_offset(env, "/part.bin") == str(len(first))
