"""An upload whose size the client says up front (HTTP Content-Length, tus
Upload-Length, FTP ALLO) goes only to storage servers with room for it;
with room nowhere the client is told so before it sends the body (HTTP
507, FTP 452 before the 150) and nothing stored changes.

Real disks: each storage server's data directory is a tmpfs of its own
(the tests are skipped where one cannot be mounted), real sockets, curl
and ftplib."""

from __future__ import annotations

import ftplib
from contextlib import ExitStack

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.catalog_outage import tmpfs
from tests.ftp_env import FTPEnv
from tests.http_clients_support import GatedBody
from tests.http_env import HttpEnv, payload
from tests.support import require_tool
from tests.transfer_env import PASSWORD
from tests.tus_env import start_env

MiB = 1 << 20


@pytest.fixture
def disks(tmp_path):
    """``disks(s1="1m", ...)`` mounts a tmpfs of that size for each
    storage server's data directory (unmounted at the end)."""
    with ExitStack() as stack:

        def mount(**sizes: str) -> None:
            for name, size in sizes.items():
                stack.enter_context(tmpfs(tmp_path / name, size))

        yield mount


async def _env(tmp_path) -> HttpEnv:
    """An HttpEnv with the tus endpoint mounted too."""
    from twisted.internet import reactor

    return await start_env(reactor, tmp_path)


def _blobs(env) -> dict[str, int]:
    """Sealed blobs each storage server holds."""
    nodes = env.transfer.nodes if isinstance(env, HttpEnv) else env.env.nodes
    return {
        name: sum(1 for info in node.store.list_blobs() if info.sealed)
        for name, node in nodes.items()
    }


async def _curl(env, *args: str) -> tuple[str, str]:
    out, err, code = await env.run([require_tool("curl"), "-sS", "-u", f"alice:{PASSWORD}", *args])
    assert code == 0, err
    return out.decode(), err.decode()


@pytest_twisted.ensureDeferred
async def test_a_put_of_known_size_skips_a_server_too_full_for_it(tmp_path, disks):
    # s1 has 1 MiB; s2 and s3 16.  All three are "about as free" (within
    # SIMILAR_FREE), so placement rotates over them: without the size,
    # two uploads in three chose s1, failed there on ENOSPC and were
    # committed on one replica.
    disks(s1="1m", s2="16m", s3="16m")
    env = await _env(tmp_path)
    try:
        src = tmp_path / "two.bin"
        src.write_bytes(payload(2 * MiB))
        for i in range(3):
            out, _ = await _curl(env, "-T", str(src), "-w", "%{http_code}", env.url(f"/f{i}"))
            assert out.endswith("201"), out
        assert _blobs(env) == {"s1": 0, "s2": 3, "s3": 3}
        for i in range(3):
            r = await env.request("GET", f"/f{i}")
            assert r.code == 200
            assert await r.content() == src.read_bytes()
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_put_too_big_for_every_server_is_507_before_its_body(tmp_path, disks):
    disks(s1="1m", s2="1m", s3="1m")
    env = await _env(tmp_path)
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(payload(4 * MiB))
        out, _ = await _curl(
            env, "-T", str(src), "-o", "/dev/null",
            "-w", "%{http_code} %{size_upload}", env.url("/big"),
        )  # fmt: skip
        code, sent = out.split()
        # curl waits for 100-continue before a body this big: the answer
        # came first, and it sent nothing.
        assert (code, sent) == ("507", "0")
        # tus: the creation itself is refused, with the length it announces.
        out, _ = await _curl(
            env, "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", "Tus-Resumable: 1.0.0", "-H", f"Upload-Length: {4 * MiB}",
            "-H", "Upload-Metadata: filename YmlnLXR1cw==", env.url("/-/uploads/"),
        )  # fmt: skip
        assert out == "507"
        # Nothing stored changed: no upload began, no byte reached a server.
        assert await env.catalog.list_uploads() == []
        assert env.transfers.stats.write_bytes == 0
        assert _blobs(env) == {"s1": 0, "s2": 0, "s3": 0}
        r = await env.request("GET", "/big")
        assert r.code == 404
        # An upload that fits still goes through.
        r = await env.request("PUT", "/small", data=b"x" * 1000)
        assert r.code == 201
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_stor_after_allo_too_big_for_every_server_is_452_before_150(tmp_path, disks):
    from twisted.internet import reactor

    disks(s1="1m", s2="1m", s3="1m")
    env = await FTPEnv(reactor, tmp_path).start()
    try:

        def session() -> tuple[str, str, str, bytes]:
            c = ftplib.FTP()
            c.connect("127.0.0.1", env.port, timeout=30)
            c.login("alice", PASSWORD)
            try:
                c.voidcmd("TYPE I")
                allo = c.sendcmd(f"ALLO {4 * MiB}")
                with pytest.raises(ftplib.error_temp) as refused:
                    # transfercmd returns once the server says 150: it
                    # must not, the size being known to fit nowhere.
                    c.transfercmd("STOR big.bin").close()
                # ALLO held for that STOR only: one with no size is placed
                # as before, and fits.
                c.storbinary("STOR small.bin", _bytes_io(b"y" * 1000))
                got = bytearray()
                c.retrbinary("RETR small.bin", got.extend)
                return allo, str(refused.value), c.sendcmd("NOOP"), bytes(got)
            finally:
                c.close()

        allo, refused, noop, small = await threads.deferToThread(session)
        assert allo.startswith("202")
        assert refused.startswith("452 Insufficient storage"), refused
        assert noop.startswith("200")
        assert small == b"y" * 1000
        uploads = await env.catalog.list_uploads()
        assert [u.path for u in uploads if u.state != "committed"] == []
        assert all(u.path.endswith("/small.bin") for u in uploads)
    finally:
        await env.stop()


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


@pytest_twisted.ensureDeferred
async def test_a_put_placed_a_probe_after_another_that_took_the_room_is_507_before_its_body(
    tmp_path, disks
):
    """Two PUTs of 8 MiB to servers of 12 MiB, the second started once the
    first streams and a health probe has answered since: the first holds
    the room it has still to fill until it ends (not only until that
    answer), so the second is refused before its body, where it was placed
    on the same servers and one of the two failed mid-body for space."""
    from twisted.internet import defer, reactor

    disks(s1="12m", s2="12m")
    env = await start_env(reactor, tmp_path, nodes=2, replicas=2)
    try:
        pool = env.transfers.pool
        opened: defer.Deferred = defer.Deferred()
        new_session = env.transfers._new_session

        def new_session_and_tell(*args, **kw):
            session = new_session(*args, **kw)
            if not opened.called:
                opened.callback(session)
            return session

        env.transfers._new_session = new_session_and_tell
        first_data = payload(8 * MiB)
        body = GatedBody(reactor, first_data, gate_at=MiB)
        first = env.request("PUT", "/first", data=body)
        await opened
        await body.reached_gate
        await pool.probe_all()  # a probe interval later: an answer since
        src = tmp_path / "second.bin"
        src.write_bytes(payload(8 * MiB))
        out, _ = await _curl(
            env, "-T", str(src), "-o", "/dev/null",
            "-w", "%{http_code} %{size_upload}", env.url("/second"),
        )  # fmt: skip
        assert out.split() == ["507", "0"]
        body.open_gate()
        r = await first
        assert r.code == 201
        r = await env.request("GET", "/first")
        assert await r.content() == first_data
        assert _blobs(env) == {"s1": 1, "s2": 1}
        # It ended: its room is free again for a placement's purposes,
        # what it wrote being in the servers' free space from now on.
        assert pool._placements == {}
        assert all(n.holds == {} for n in pool.nodes())
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_wslocal_charges_its_stores_on_one_disk_together(tmp_path, disks):
    """wslocal's stores share the data folder's file system: its pool
    charges a placement on one to them all; a store whose folder is a
    file system of its own is charged alone."""
    from tests.test_local_sockets import options, started

    disks(**{"data/storage/s3": "16m"})
    cluster = await started(options(tmp_path / "data", "--nodes", "3"))
    try:
        shares = {n.name: n.shares for n in cluster.frontend.pool.nodes()}
        assert [n.name for n in shares["s1"]] == ["s1", "s2"]
        assert shares["s2"] is shares["s1"]
        assert shares["s3"] is None
    finally:
        await cluster.stopService()
