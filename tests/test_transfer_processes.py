"""The transfer layer against real storage processes killed or frozen at
exact moments, and a real front-end process fenced by a takeover."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.migration_cluster import process_state, wait_until
from tests.storage_procs import StorageProcess
from tests.support import python_env, start_all
from tests.transfer_env import Feeder, PausingCollector, sha256
from tests.transfer_writer_proc import pattern
from wsfront.catalog import open_catalog
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.service import Transfers, TransferSettings

MiB = 1 << 20
pytestmark = pytest.mark.slow


class Cluster:
    """Three ``twistd -n wsstorage`` processes, a SQLite catalog, user alice."""

    def __init__(self, reactor, tmp_path):
        self.reactor = reactor
        self.tmp = tmp_path
        self.procs = {n: StorageProcess(tmp_path, n) for n in ("s1", "s2", "s3")}
        self.catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        self.catalogs = []
        self.pools = []

    async def start(self):
        """Start the storage processes together (one that fails stops the
        others), register them and add alice; if anything fails, stop what
        started before raising: the fixture's teardown does not run when
        its setup raises."""
        start_all(self.procs.values())
        try:
            self.catalog = self.open_catalog()
            for name, proc in self.procs.items():
                await self.catalog.register_node(name, proc.endpoint)
            self.user = await self.catalog.add_user("alice", "pw-alice-123")
        except BaseException:
            await self.stop()
            raise
        return self

    def open_catalog(self):
        c = open_catalog(self.reactor, self.catalog_url)
        self.catalogs.append(c)
        return c

    async def front_end(self, name: str, idle_timeout: float = 2.0, **settings) -> Transfers:
        pool = StoragePool(self.reactor, probe_interval=0.5)
        for n, proc in self.procs.items():
            pool.add(n, proc.endpoint, proc.client(self.reactor, idle_timeout=idle_timeout))
        self.pools.append(pool)
        await pool.start()
        catalog = self.open_catalog()
        return Transfers(self.reactor, catalog, pool, name, TransferSettings(**settings))

    async def stop(self):
        """Stop whatever ``start`` and the test opened, the processes last."""
        try:
            for pool in self.pools:
                pool.stop()
                for node in pool.nodes():
                    await node.client.close()
            for c in self.catalogs:
                await c.close()
        finally:
            for proc in self.procs.values():
                proc.stop()


@pytest.fixture
def cluster(tmp_path):
    from twisted.internet import reactor

    c = pytest_twisted.blockon(defer.ensureDeferred(Cluster(reactor, tmp_path).start()))
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


def sigkill(proc: StorageProcess) -> None:
    proc.proc.send_signal(signal.SIGKILL)
    assert proc.proc.wait(30) == -signal.SIGKILL


@pytest_twisted.ensureDeferred
async def test_download_survives_sigkill_of_the_serving_replica(cluster):
    fe = await cluster.front_end("fe-a")
    data = pattern(24 * MiB, 1)
    session = await fe.open_write(cluster.user, "/f", 0)
    await Feeder(cluster.reactor, session, data, chunk=256 * 1024).start()
    await session.finish()
    handle = await fe.open_read(cluster.user, "/f")
    sink = PausingCollector(pause_at=2 * MiB)
    done = handle.stream.start(sink)
    await sink.paused
    serving = handle.stream.serving
    sigkill(cluster.procs[serving])
    delivered_at_kill = sink.received
    sink.producer.resumeProducing()
    await done
    assert 0 < delivered_at_kill < len(data)
    assert sha256(sink.data) == sha256(data)
    assert handle.stream.failovers == 1


@pytest_twisted.ensureDeferred
async def test_upload_survives_sigkill_of_a_replica_and_is_under_replicated(cluster):
    fe = await cluster.front_end("fe-a", checkpoint_bytes=MiB)
    data = pattern(8 * MiB, 2)
    session = await fe.open_write(cluster.user, "/f", 0)
    feeder = Feeder(cluster.reactor, session, data, chunk=128 * 1024, stop_at=3 * MiB)
    await feeder.start()
    victim = session.replicas[0]
    sigkill(cluster.procs[victim])
    rest = Feeder(cluster.reactor, session, data[3 * MiB :], chunk=128 * 1024)
    await rest.start()
    version = await session.finish()
    assert victim not in session.replicas
    assert version.size == len(data)
    assert await cluster.catalog.count_under_replicated() == 1
    handle = await fe.open_read(cluster.user, "/f")
    sink = PausingCollector(pause_at=len(data) + 1)
    await handle.stream.start(sink)
    assert sha256(sink.data) == sha256(data)


def wait_for_line(path, needle: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """Wait until the failpoint log holds ``needle`` (the process froze)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early with {proc.returncode}")
        time.sleep(0.02)  # polling the log file, not a synchronisation guess
    raise AssertionError(f"{needle!r} never appeared in {path}")


def wait_stopped(pid: int) -> None:
    """The failpoint logs before it sends itself SIGSTOP: wait for the stop."""
    wait_until(lambda: process_state(pid) == "T", f"process {pid} to stop", timeout=30)


@pytest_twisted.ensureDeferred
async def test_frozen_writer_is_fenced_after_a_takeover(cluster, tmp_path):
    size, stop_at = 16 * MiB, 2 * MiB
    data = pattern(size, 3)
    fp_log = tmp_path / "failpoints.log"
    # Freeze the writer right after it recorded a checkpoint of >= 2 MiB.
    spec = f"transfer.after_checkpoint=stop@{stop_at}"
    env = python_env({"WSFS_FAILPOINTS": spec, "WSFS_FAILPOINT_LOG": str(fp_log)})
    nodes = [f"{n}={p.endpoint}" for n, p in cluster.procs.items()]
    out_path, err_path = tmp_path / "writer.out", tmp_path / "writer.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.transfer_writer_proc", cluster.catalog_url,
             str(tmp_path / "secret"), "/f", str(size), "3", *nodes],
            env=env, stdout=out, stderr=err, text=True,
        )  # fmt: skip
    try:
        line = wait_for_line(fp_log, "transfer.after_checkpoint fired", writer)
        checkpoint = int(line.split("count=")[1].split()[0])
        wait_stopped(writer.pid)
        fe_b = await cluster.front_end("fe-b")
        session = await fe_b.open_write(cluster.user, "/f", append=True)
        resumed_at = session.offset
        assert resumed_at == checkpoint >= stop_at
        assert checkpoint <= size // 2 + 256 * 1024  # mid-transfer: the writer checkpoints at half
        await Feeder(cluster.reactor, session, data[resumed_at:], chunk=256 * 1024).start()
        await session.finish()
        assert session.received == size - resumed_at < size
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        try:
            writer.wait(timeout=60)
        finally:
            if writer.poll() is None:  # never leave the writer running
                writer.kill()
                writer.wait()
    out, err = out_path.read_text(), err_path.read_text()
    assert writer.returncode == 3, (out, err)
    assert out.startswith("ERROR SessionFenced"), (out, err)
    assert "COMMITTED" not in out
    handle = await fe_b.open_read(cluster.user, "/f")
    sink = PausingCollector(pause_at=size + 1)
    await handle.stream.start(sink)
    assert hashlib.sha256(sink.data).hexdigest() == hashlib.sha256(data).hexdigest()
