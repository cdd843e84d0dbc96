"""A storage server whose disk takes no writes says so in its health answer,
and front ends stop placing new blobs on it until it takes writes again.

A disk remounted read-only or a data directory removed under a running
server used to leave it healthy (free space and a blob count were all its
health answer checked), so every new upload committed on one replica fewer.
Failures are injected through the store's file-system seam, by removing the
blobs directory of a real store, and (as root) by remounting a bind mount
of a real server's data directory read-only.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.storage_loopback import Rig
from tests.storage_procs import StorageProcess, write_blob
from tests.test_transfer_pool_and_reads import NAMES, run
from tests.transfer_env import TransferEnv, disk_problem
from wsfront.catalog.records import REPLICA_OK
from wsfront.transfer.pool import StoragePool
from wsstorage.blobstore import BlobStore
from wsstorage.errors import StorageError
from wsstorage.fsops import OsFileSystem
from wsstorage.testing import FakeStorageCluster


class ReadOnlyFileSystem(OsFileSystem):
    """Fails every open for writing with EROFS while ``read_only``."""

    def __init__(self) -> None:
        self.read_only = False
        self.probes = 0

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if path.endswith("health-probe.tmp"):
            self.probes += 1
        if self.read_only and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return super().open(path, flags, mode)


def test_the_store_tells_a_read_only_disk_and_a_lost_blobs_directory(tmp_path) -> None:
    fs = ReadOnlyFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs)
    assert store.wait_fanned_out(30)  # no mkdir racing the rmtree below
    assert store.disk_problem() is None
    assert not os.path.exists(tmp_path / "d" / "health-probe.tmp")
    fs.read_only = True
    problem = store.disk_problem()
    assert problem == "the data directory is not writable: read-only file system"
    fs.read_only = False
    assert store.disk_problem() is None
    shutil.rmtree(tmp_path / "d" / "blobs")
    problem = store.disk_problem()
    assert problem is not None and "blobs" in problem and str(tmp_path) not in problem
    store.close()


def test_health_answers_the_disk_problem_and_probes_the_disk_at_most_once_per_ttl(tmp_path):
    fs = ReadOnlyFileSystem()
    rig = Rig(store=BlobStore.open(tmp_path / "d", fs=fs))
    ttl = rig.factory.disk_check.ttl
    assert rig.result(rig.client.health()).problem is None
    for _ in range(5):
        assert rig.result(rig.client.health()).problem is None
    assert fs.probes == 1
    fs.read_only = True
    assert rig.result(rig.client.health()).problem is None  # the verdict still holds
    rig.clock.advance(ttl)
    assert rig.result(rig.client.health()).problem == (
        "the data directory is not writable: read-only file system"
    )
    assert fs.probes == 2
    fs.read_only = False
    rig.clock.advance(ttl)
    assert rig.result(rig.client.health()).problem is None
    rig.store.close()


def test_a_slow_probe_does_not_hold_health_answers_and_a_hung_one_is_the_problem(tmp_path):
    """After the first verdict, health answers from the last one while a
    probe runs; a probe that never comes back is reported after ``stuck``."""
    store = BlobStore.open(tmp_path / "d")
    pending: list[defer.Deferred] = []
    calls = iter([lambda f, *a: defer.succeed(f(*a))])

    def run_blocking(f, *args):
        first = next(calls, None)
        if first is not None:
            return first(f, *args)
        d: defer.Deferred = defer.Deferred()
        pending.append(d)
        return d

    from wsstorage.diskcheck import DiskCheck

    clock = task.Clock()
    check = DiskCheck(clock, store.disk_problem, run_blocking, ttl=5.0, stuck=30.0)
    got: list = []
    check.problem().addCallback(got.append)
    clock.advance(5.0)
    check.problem().addCallback(got.append)  # starts a probe that hangs
    clock.advance(29.0)
    check.problem().addCallback(got.append)
    clock.advance(1.0)
    check.problem().addCallback(got.append)
    assert got[:3] == [None, None, None] and len(pending) == 1
    assert "hangs" in got[3]
    pending[0].callback(None)
    check.problem().addCallback(got.append)
    assert got[4] is None
    store.close()


def test_the_pool_chooses_no_server_with_a_disk_problem_until_it_is_gone() -> None:
    clock = task.Clock()
    cluster = FakeStorageCluster(clock, NAMES)
    pool = StoragePool(clock, probe_interval=1.0, probe_timeout=0.5)
    for n in NAMES:
        pool.add(n, cluster.endpoint(n), cluster.node(n).client())
    run(clock, pool.start())
    cluster.node("s2").disk_problem = "the data directory is not writable: read-only file system"
    run(clock, pool.probe_all())
    for _ in range(6):
        assert "s2" not in pool.choose(3)
    assert pool.is_up("s2") and disk_problem(pool, "s2") is not None
    assert pool.order_for_read(["s2"]) == ["s2"]  # reads still go there
    [node] = [n for n in pool.nodes() if n.name == "s2"]
    assert node.last_error == "the data directory is not writable: read-only file system"
    cluster.node("s2").disk_problem = None
    run(clock, pool.probe_all())
    assert sorted(pool.choose(3)) == NAMES and disk_problem(pool, "s2") is None
    pool.stop()


async def _until(condition, reactor, timeout: float = 15.0) -> None:
    deadline = reactor.seconds() + timeout
    while not await condition():
        assert reactor.seconds() < deadline, "condition not reached"
        await task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_uploads_avoid_a_server_whose_blobs_directory_was_removed(tmp_path) -> None:
    """Real servers on real disks: ``rm -rf <data>/blobs`` under one of three
    servers makes its health answer name the problem; uploads then commit
    on the two others with two replicas each, and the server stays up."""
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path, nodes=3, replicas=2).start()
    try:
        pool = env.transfers.pool
        victim = "s1"
        env.nodes[victim].factory.disk_check.ttl = 0.0
        # Its fan-out thread done: a mkdir would race the rmtree (ENOTEMPTY).
        assert env.nodes[victim].store.wait_fanned_out(30)
        shutil.rmtree(tmp_path / victim / "blobs")

        async def sick() -> bool:
            await pool.probe_all()
            return disk_problem(pool, victim) is not None

        await _until(sick, reactor)
        assert pool.is_up(victim)
        for i in range(6):
            version = await env.upload(f"/f{i}", os.urandom(1000 + i))
            [extent] = version.extents
            assert sorted(r.node for r in extent.replicas) == ["s2", "s3"]
        assert await env.catalog.count_under_replicated() == 0
    finally:
        await env.stop()


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


class ReadOnlyOverlay:
    """Makes a directory read-only under a running server, as a remount
    ``ro`` of its disk does to every new open: a bind mount of the
    directory onto itself, remounted read-only.  (The server's own lock
    file, open for writing, keeps the kernel from remounting the mount it
    was opened on, so the read-only mount goes on top: files already open
    stay writable, as they would not after a real remount.)"""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.mounted = False

    def on(self) -> None:
        done = _run("mount", "--bind", self.path, self.path)
        assert done.returncode == 0, done.stderr
        self.mounted = True
        # The kernel refuses the remount ("mount point is busy") while a
        # write through the new mount is in progress: the server's fan-out
        # thread making its directories, a put journal being created, a
        # health probe.  Those end on their own; an operator tries again.
        for _ in range(100):
            done = _run("mount", "-o", "remount,bind,ro", self.path)
            if done.returncode == 0 or "busy" not in done.stderr:
                break
            time.sleep(0.05)
        assert done.returncode == 0, done.stderr

    def off(self) -> None:
        if self.mounted:
            done = _run("umount", self.path)
            if done.returncode != 0:
                done = _run("umount", "-l", self.path)
            assert done.returncode == 0, done.stderr
            self.mounted = False


@pytest.fixture
def read_only_overlay(tmp_path):
    """``tmp_path/data-s1`` to be made read-only (``ReadOnlyOverlay``)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    data = tmp_path / "data-s1"
    data.mkdir()
    probe = tmp_path / "probe"
    probe.mkdir()
    done = _run("mount", "--bind", str(probe), str(probe))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    _run("umount", str(probe))
    overlay = ReadOnlyOverlay(data)
    yield overlay
    overlay.off()


@pytest_twisted.ensureDeferred
async def test_a_real_server_on_a_disk_remounted_read_only_reports_it(tmp_path, read_only_overlay):
    from twisted.internet import reactor

    proc = StorageProcess(tmp_path).start()
    client = proc.client(reactor)
    try:
        await write_blob(client, "before", b"x" * 5000)
        assert (await client.health()).problem is None
        read_only_overlay.on()
        with pytest.raises(StorageError) as caught:
            await write_blob(client, "after", b"y" * 5000)
        assert str(tmp_path) not in str(caught.value)

        async def problem() -> str | None:
            return (await client.health()).problem

        async def read_only() -> bool:
            return await problem() == "the data directory is not writable: read-only file system"

        await _until(read_only, reactor)
        await client.close()
        read_only_overlay.off()
        client = proc.client(reactor)

        async def writable() -> bool:
            return await problem() is None

        await _until(writable, reactor)
        log = proc.run_log()
        assert "Traceback" not in log and "takes no writes: the data directory is not" in log
    finally:
        await client.close()
        proc.stop()


def ok_replicas(version) -> list[str]:
    return sorted(r.node for r in version.extents[0].replicas if r.state == REPLICA_OK)


@pytest_twisted.ensureDeferred
async def test_a_writers_disk_failure_takes_the_server_out_of_placement_at_once(tmp_path) -> None:
    """A server's disk check runs only now and then, so its health answers
    can say "fine" for a while after its disk failed.  The first upload that
    loses its replica there to a disk error takes the server out of
    placement at once (it stays up for reads), and a health answer that
    still says "fine" does not put it back within the hold."""
    from twisted.internet import reactor

    env = await TransferEnv(reactor, tmp_path, nodes=2, replicas=2).start()
    try:
        pool = env.transfers.pool
        victim = "s1"
        env.nodes[victim].factory.disk_check.ttl = 3600.0  # its answers stay "fine"
        await pool.probe_all()
        assert pool.is_up(victim) and disk_problem(pool, victim) is None
        fs = ReadOnlyFileSystem()
        fs.read_only = True
        env.nodes[victim].store.fs = fs  # its disk turns read-only
        first = await env.upload("/first", os.urandom(200_000))
        assert ok_replicas(first) == ["s2"]
        assert disk_problem(pool, victim) is not None and pool.is_up(victim)
        await pool.probe_all()  # answers "no problem" from its old check
        assert disk_problem(pool, victim) is not None
        second = await env.upload("/second", os.urandom(1000))
        assert [r.node for r in second.extents[0].replicas] == ["s2"]  # s1 never tried
    finally:
        await env.stop()
