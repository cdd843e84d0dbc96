"""A takeover does not wait for a replica on a server the pool knows is down.

Found by chaos testing (one wsstorage process SIGSTOPped, a client resuming
its upload on another front end): the takeover fenced every replica of the
current blob, and the fence to the frozen server waited out the storage
client's whole idle timeout (10 s in wsfront) before the resume could go
on, although that front end's pool had marked the server down seconds
before.  A replica on a server the pool marks down now misses the fence at
once, with the outcome the timeout gave: it leaves the replica set (stale),
the upload resumes on the others.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import pytest_twisted

from tests.migration_cluster import process_state, wait_until
from tests.test_transfer_processes import cluster  # noqa: F401 (fixture)
from tests.transfer_env import Feeder, PausingCollector, sha256
from tests.transfer_writer_proc import pattern

MiB = 1 << 20
pytestmark = pytest.mark.slow

#: The storage clients' idle timeout here: what the old takeover waited.
IDLE = 30.0


@pytest_twisted.ensureDeferred
async def test_a_takeover_fences_a_replica_on_a_down_server_without_waiting(cluster):  # noqa: F811
    data = pattern(3 * MiB, 7)
    fe_a = await cluster.front_end("fe-a")
    session = await fe_a.open_write(cluster.user, "/f", 0)
    await Feeder(cluster.reactor, session, data[:MiB]).start()
    await session.checkpoint()
    await session.interrupt()
    upload = await cluster.catalog.find_upload("/alice/f")
    old_blob = upload.blob_id
    victim, survivor = (r.node for r in upload.replicas)
    proc = cluster.procs[victim].proc
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(proc.pid) == "T", f"{victim} to stop")
        fe_b = await cluster.front_end("fe-b", idle_timeout=IDLE)
        await fe_b.pool.probe_all()  # no answer within its 2 s probe timeout
        assert not fe_b.pool.is_up(victim)
        started = time.monotonic()
        resumed = await fe_b.open_write(cluster.user, "/f", append=True)
        took = time.monotonic() - started
        assert resumed.offset == MiB
        # Before: IDLE seconds (the fence's connection timing out).
        assert took < IDLE / 2, took
        await Feeder(cluster.reactor, resumed, data[MiB:]).start()
        await resumed.finish()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    blob = await cluster.catalog.get_blob(old_blob)
    assert {r.node: r.state for r in blob.replicas} == {victim: "stale", survivor: "ok"}
    handle = await fe_b.open_read(cluster.user, "/f")
    sink = PausingCollector(pause_at=len(data) + 1)
    await handle.stream.start(sink)
    assert sha256(sink.data) == sha256(data)
