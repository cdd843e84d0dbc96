"""An FTP STOR, APPE or REST + STOR refused for room (every storage
server's disk full: 452) before any of its bytes was durable.

One that began a new upload is discarded: kept, it stood as an
interrupted upload at its start that SIZE showed its owner, that counted
toward ``--max-pending-uploads-per-user`` and held its blob until it
expired.  One that resumed a pending upload keeps that upload as it was,
and a file the refused upload would have replaced or extended stays as
it was.

Real storage servers on tmpfs disks filled behind the front end's back
(``tests.full_disks``), a real FTP client over sockets, both catalog
backends.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.ftp_env import FTPEnv, payload, sha256, until
from tests.full_disks import fill_all, free_all, small_disks
from tests.transfer_env import Feeder
from wsfront.catalog.records import INTERRUPTED

pytest_plugins = ["tests.catalog_fixtures"]

KiB = 1 << 10
MiB = 1 << 20
FULL = (452, "Insufficient storage")


@pytest.fixture
def env(tmp_path, catalog_url):
    import pytest_twisted as pt
    from twisted.internet import defer, reactor

    with small_disks(tmp_path):
        e = FTPEnv(
            reactor, tmp_path, catalog_url=catalog_url, max_pending_uploads_per_user=1,
            checkpoint_seconds=3600.0,  # no timer makes bytes durable meanwhile
        )  # fmt: skip
        pt.blockon(defer.ensureDeferred(e.start()))
        yield e
        pt.blockon(defer.ensureDeferred(e.stop()))


async def live_uploads(env: FTPEnv) -> list:
    return await env.catalog.list_uploads()


async def stor(client, path: str, data: bytes, verb: str = "STOR", rest: int | None = None):
    if rest is not None:
        assert (await client.cmd("TYPE I"))[0] == 200
        assert (await client.cmd(f"REST {rest}"))[0] == 350
    return await client.stor(path, data, verb)


@pytest.mark.parametrize("size", [32 * KiB, MiB], ids=["small", "1MiB"])
@pytest.mark.parametrize("verb", ["STOR", "APPE"])
@pytest_twisted.ensureDeferred
async def test_a_new_upload_refused_for_room_leaves_no_pending_upload(env, tmp_path, verb, size):
    c = await env.client()
    fill_all(tmp_path, env.transfers.pool)
    assert await stor(c, "new.bin", payload(size), verb) == FULL
    assert await live_uploads(env) == []
    assert env.transfers.pending_per_user.count("alice") == 0
    assert (await c.cmd("SIZE new.bin"))[0] == 550
    # With room again, the user's next upload is not refused for the cap
    # of one pending upload.
    await free_all(tmp_path, env.transfers.pool)
    assert (await stor(c, "other.bin", b"other"))[0] == 226


@pytest.mark.parametrize(
    ("verb", "rest"), [("STOR", None), ("STOR", 40 * KiB), ("APPE", None)],
    ids=["STOR", "REST+STOR", "APPE"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_a_refused_upload_leaves_the_stored_file_as_it_was(env, tmp_path, verb, rest):
    c = await env.client()
    kept = payload(100 * KiB)
    assert (await stor(c, "kept.bin", kept))[0] == 226
    fill_all(tmp_path, env.transfers.pool)
    assert await stor(c, "kept.bin", payload(32 * KiB), verb, rest) == FULL
    assert await live_uploads(env) == []
    assert await c.cmd("SIZE kept.bin") == (213, str(len(kept)))
    assert sha256(await c.retr("kept.bin")) == sha256(kept)


@pytest.mark.parametrize(("verb", "rest"), [("APPE", None), ("STOR", 32 * KiB)])
@pytest_twisted.ensureDeferred
async def test_a_refused_resume_keeps_its_pending_upload_as_it_was(env, tmp_path, verb, rest):
    first = payload(32 * KiB)
    session = await env.transfers.open_write(env.env.user, "/part.bin", 0)
    await Feeder(env.reactor, session, first).start()
    await session.interrupt()
    [before] = await live_uploads(env)
    assert (before.state, before.checkpoint) == (INTERRUPTED, len(first))
    c = await env.client()
    fill_all(tmp_path, env.transfers.pool)
    rest_of_it = payload(32 * KiB)
    assert await stor(c, "part.bin", rest_of_it, verb, rest) == FULL
    [after] = await live_uploads(env)
    assert (after.upload_id, after.state, after.checkpoint) == (
        before.upload_id, INTERRUPTED, len(first),
    )  # fmt: skip
    assert await c.cmd("SIZE part.bin") == (213, str(len(first)))
    # Resumed once there is room, it completes from where it was.
    await free_all(tmp_path, env.transfers.pool)
    assert (await stor(c, "part.bin", rest_of_it, verb, rest))[0] == 226
    assert await c.retr("part.bin") == first + rest_of_it


@pytest_twisted.ensureDeferred
async def test_a_new_upload_whose_abor_finds_no_room_leaves_no_pending_upload(env, tmp_path):
    """ABOR after bytes that were only held (within put_limit, no stream
    open yet): keeping them opens the streams, which the full disks
    refuse, so nothing of the upload is durable and it is discarded; the
    426 says no upload is kept."""
    c = await env.client()
    fill_all(tmp_path, env.transfers.pool)
    await c.cmd("TYPE I")
    peer = await c.data_connection(await c.epsv())
    assert (await c.cmd("STOR held.bin"))[0] == 150
    peer.transport.write(payload(32 * KiB))
    await until(
        lambda: any(s.received == 32 * KiB for s in env.transfers.sessions.values()),
        "the bytes reach the upload",
    )
    aborted = await c.cmd("ABOR")
    assert (await c.reply())[0] == 226
    assert await live_uploads(env) == []
    assert env.transfers.pending_per_user.count("alice") == 0
    assert (await c.cmd("SIZE held.bin"))[0] == 550
    assert aborted == (426, "Transfer aborted; no room to keep what arrived, no upload is kept")
