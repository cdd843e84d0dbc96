"""tus uploads refused for room (every storage server's disk full: 507).

A creation-with-upload POST whose body finds no room gives its client no
URL (the 201 and its Location go out once the body ended): nothing of it
is durable, so the upload is discarded, not left interrupted at 0 where
no client can resume it, counted toward ``--max-pending-uploads-per-user``
(a cap of 1 here: the user's next upload would be refused).  One that
made part of its body durable first keeps it, and its 507 gives the
URL to resume it at.  Every failure is answered once the catalog has
recorded what is left of the upload.  A PATCH of
an upload whose URL was given keeps it where it was, and says that its
bytes were not kept (507, not 204).

Real storage servers on tmpfs disks filled behind the front end's back
(``tests.full_disks``), raw tus requests over treq, both catalog backends.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.ftp_env import until
from tests.full_disks import fill_all, free_all, small_disks
from tests.http_env import payload
from tests.http_raw import connect, head_of
from tests.tus_env import OCTETS, b64, create, start_env, stop_env, tus
from wsfront.catalog.records import INTERRUPTED

pytest_plugins = ["tests.catalog_fixtures"]

KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture
def env(tmp_path, catalog_url):
    from twisted.internet import reactor

    with small_disks(tmp_path):
        started = start_env(
            reactor, tmp_path, catalog_url=catalog_url, max_pending_uploads_per_user=1,
            checkpoint_seconds=3600.0,  # no timer makes bytes durable meanwhile
            checkpoint_bytes=256 * KiB,
        )  # fmt: skip
        e = pytest_twisted.blockon(defer.ensureDeferred(started))
        yield e
        pytest_twisted.blockon(stop_env(e))


#: (Upload-Length, body) of a creation-with-upload POST.
CREATIONS = {
    # Held within put_limit; keeping them as the body ends opens the
    # streams, which the full disks refuse.
    "part-held": (64 * KiB, 32 * KiB),
    # The whole upload within put_limit: its commit's puts are refused.
    "whole-held": (64 * KiB, 64 * KiB),
    # Past put_limit: the streams open at the start, and are refused.
    "streamed": (MiB, MiB),
}


@pytest.mark.parametrize("creation", list(CREATIONS))
@pytest_twisted.ensureDeferred
async def test_a_creation_whose_body_finds_no_room_leaves_no_upload(env, tmp_path, creation):
    length, body = CREATIONS[creation]
    fill_all(tmp_path, env.transfers.pool)
    status, headers, _ = await create(env, length, {"filename": "new.bin"}, payload(body))
    assert status == 507
    assert "location" not in headers
    assert await env.catalog.list_uploads() == []
    assert env.transfers.pending_per_user.count("alice") == 0
    # With room again, the user's next upload is not refused for the cap
    # of one pending upload.
    await free_all(tmp_path, env.transfers.pool)
    status, headers, _ = await create(env, 3, {"filename": "other.bin"}, b"abc")
    assert status == 201, headers


@pytest_twisted.ensureDeferred
async def test_a_patch_that_finds_no_room_keeps_the_upload_where_it_was(env, tmp_path):
    status, headers, _ = await create(env, 96 * KiB, {"filename": "part.bin"})
    assert status == 201
    url = headers["location"]
    first = payload(32 * KiB)
    status, headers, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, first)
    assert (status, headers["upload-offset"]) == (204, str(len(first)))
    fill_all(tmp_path, env.transfers.pool)
    more = {**OCTETS, "Upload-Offset": str(len(first))}
    status, _, _ = await tus(env, "PATCH", url, more, payload(32 * KiB))
    assert status == 507
    [upload] = await env.catalog.list_uploads()
    assert (upload.state, upload.checkpoint) == (INTERRUPTED, len(first))
    status, headers, _ = await tus(env, "HEAD", url)
    assert (status, headers["upload-offset"]) == (200, str(len(first)))


@pytest_twisted.ensureDeferred
async def test_a_creation_that_ran_out_of_room_after_a_checkpoint_gives_its_url(env, tmp_path):
    """Part of the body is durable (a checkpoint recorded it) when the
    disks fill and every replica runs out of room for the rest: that part
    stays pending, so the 507 names the upload's URL, for its client to
    resume it once there is room."""
    from twisted.internet import reactor

    length = 2 * MiB
    body = payload(length)
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"POST /-/uploads/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(k + b": " + v[0] + b"\r\n" for k, v in env.auth_header.items())
        + b"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
        + f"Upload-Length: {length}\r\nContent-Length: {length}\r\n".encode()
        + f"Upload-Metadata: filename {b64('big.bin')}\r\n\r\n".encode()
        + body[: 512 * KiB]
    )
    await until(
        lambda: any(s.durable >= 256 * KiB for s in env.transfers.sessions.values()),
        "a checkpoint of part of the body",
    )
    fill_all(tmp_path, env.transfers.pool)
    client.send(body[512 * KiB :])
    status, headers = head_of(await client.until(b"\r\n\r\n"))
    client.close()
    assert status == 507
    [upload] = await env.catalog.list_uploads()
    assert (upload.state, upload.checkpoint >= 256 * KiB) == (INTERRUPTED, True)
    assert headers["location"] == f"/-/uploads/{upload.upload_id}"
    status, headers, _ = await tus(env, "HEAD", headers["location"])
    assert (status, headers["upload-offset"]) == (200, str(upload.checkpoint))
