"""A storage server keeps a reserve of free space back from new blobs
(``--reserve``, 1 % of the disk by default): below it, its health answer
names the problem, front ends place nothing new there and ``wsfs status``
shows it "unwritable", the store itself refuses to create a blob, and
what it holds stays readable and deletable.

Real disks (a tmpfs per storage server; skipped where one cannot be
mounted), real sockets."""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest
import pytest_twisted
from twisted.python import usage

from tests.catalog_outage import fill, tmpfs
from tests.http_env import HttpEnv, payload
from tests.transfer_env import Collector
from wsfront.service import _node_state
from wsfront.transfer.service import new_blob_id
from wsstorage.errors import DiskFull
from wsstorage.reserve import DEFAULT_RESERVE, Reserve

KiB = 1 << 10
MiB = 1 << 20
META = {"path": "/alice/x", "owner": "alice"}


def leave_free(directory, free: int) -> None:
    """Fill ``directory``'s file system but for about ``free`` bytes."""
    filler = fill(directory)
    with open(filler, "r+b") as f:
        f.truncate(max(0, os.path.getsize(filler) - free))


@pytest.fixture
def small_disks(tmp_path):
    with ExitStack() as stack:
        for name in ("s1", "s2", "s3"):
            stack.enter_context(tmpfs(tmp_path / name, "8m"))
        yield tmp_path


@pytest_twisted.ensureDeferred
async def test_a_server_below_its_reserve_takes_no_new_blob_but_serves_and_deletes(small_disks):
    from twisted.internet import reactor

    env = await HttpEnv(reactor, small_disks).start()
    try:
        nodes = env.transfer.nodes
        for node in nodes.values():
            node.store.reserve = Reserve.parse("2MiB")
        pool = env.transfers.pool
        kept = payload(100 * KiB)
        r = await env.request("PUT", "/kept", data=kept)
        assert r.code == 201
        [held] = [i.blob_id for i in nodes["s1"].store.list_blobs()]  # turn 0: s1 and s2

        leave_free(small_disks / "s1", 1 * MiB)  # 1 MiB free, below the 2 MiB reserve
        await pool.probe_all()
        client = pool.client("s1")
        health = await client.health()
        assert health.reserve_bytes == 2 * MiB
        assert health.problem is not None and "below the reserve" in health.problem
        [s1] = [n for n in pool.nodes() if n.name == "s1"]
        assert _node_state(s1) == "unwritable"  # what `wsfs status` shows
        assert not s1.takes_new_blobs

        # New uploads, of known size or not, go elsewhere (s1 would have
        # had room for each).
        for i in range(3):
            r = await env.request("PUT", f"/new{i}", data=payload(10 * KiB))
            assert r.code == 201
        assert [i.blob_id for i in nodes["s1"].store.list_blobs()] == [held]

        # The store itself creates no blob either (a front end whose view
        # is a probe old); a fence may still create its empty one.
        with pytest.raises(DiskFull, match="below the reserve"):
            await (await client.write(new_blob_id(), 1, 0, META)).commit()
        with pytest.raises(DiskFull, match="below the reserve"):
            await client.put(new_blob_id(), 1, META, b"p" * 1000)
        fenced = await client.fence(new_blob_id(), 1, 0)
        assert fenced.size == 0

        # What it holds is still read, and deleted.
        sink = Collector()
        await client.read(held, 0, None, sink)
        assert sink.data == kept
        await client.delete(held)
        assert held not in [i.blob_id for i in nodes["s1"].store.list_blobs()]

        # Space back above the reserve: it takes new blobs again.
        os.unlink(small_disks / "s1" / "filler")
        await pool.probe_all()
        assert (await client.health()).problem is None
        assert _node_state(s1) == "up"
    finally:
        await env.stop()


def test_reserve_option_of_wsstorage_and_wslocal(tmp_path):
    from wsfront.local import LocalOptions
    from wsstorage.service import Options

    base = ["--listen", "tcp:0", "--data", str(tmp_path / "d"), "--name", "s1"]
    base += ["--secret-file", str(tmp_path / "secret")]
    opts = Options()
    opts.parseOptions(base)
    assert opts["reserve"] == Reserve.parse(DEFAULT_RESERVE) == Reserve(fraction=0.01)
    opts = Options()
    opts.parseOptions([*base, "--reserve", "512MiB"])
    assert opts["reserve"] == Reserve(fixed=512 * MiB)
    for bad in ("lots", "60%", "-1", "5 parsecs"):
        with pytest.raises(usage.UsageError, match="--reserve"):
            Options().parseOptions([*base, "--reserve", bad])
    local = LocalOptions()
    local.parseOptions(["--reserve", "2G"])
    assert local["reserve"].bytes_of(10 << 30) == 2 << 30


def test_reserve_of_a_fraction_and_of_bytes():
    assert Reserve.parse("1%").bytes_of(100 * MiB) == MiB
    assert Reserve.parse("2.5%").bytes_of(1000) == 25
    assert Reserve.parse("0").bytes_of(1 << 40) == 0
    assert Reserve.parse("64k").bytes_of(0) == 64 * KiB
    assert Reserve.parse("1.5 GiB").bytes_of(0) == 3 << 29


def test_a_store_refuses_a_reserve_of_its_whole_disk_or_more(tmp_path) -> None:
    """``--reserve 20T`` meant as 20G: a store that could never take a new
    blob, whatever is deleted, is refused when it opens (the storage
    server does not start), not run refusing every write.  A reserve the
    disk can hold, or a percentage, opens as ever."""
    from wsstorage.blobstore import BlobStore
    from wsstorage.fsops import OsFileSystem
    from wsstorage.reserve import ReserveTooLarge

    class OneGiBDisk(OsFileSystem):
        def statvfs(self, path: str) -> tuple[int, int]:
            return 1 << 29, 1 << 30

    fs = OneGiBDisk()
    for spec in ("1G", "2G"):
        with pytest.raises(ReserveTooLarge) as refused:
            BlobStore.open(tmp_path / "d", fs=fs, reserve=Reserve.parse(spec))
        message = str(refused.value)
        assert "--reserve" in message and "1.0 GiB" in message, message
        assert "whole disk" in message, message
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["LOCK"]  # nothing prepared
    for spec in ("1023M", "10%", "0"):
        BlobStore.open(tmp_path / f"d{spec}", fs=fs, reserve=Reserve.parse(spec)).close()
