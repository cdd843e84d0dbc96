"""A storage server frozen (SIGSTOP) after fsck listed it: the stats of
its suspect copies hang until the client's idle timeout, and fsck must
then skip it, not wait out one timeout per copy (or per batch of copies
confirmed at once).  Real ``twistd wsstorage`` processes, on SQLite and
on PostgreSQL."""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.catalog_fixtures import BACKENDS, postgres_schema_url
from tests.maintenance_env import ProcessCluster, payload
from wsfront.catalog.records import REPLICA_OK
from wsfront.maintenance import fsck as fsck_module
from wsfront.maintenance.fsck import check
from wsfront.maintenance.fsck_confirm import CONFIRM_CONCURRENCY
from wsfront.maintenance.gc import GarbageCollector

#: The storage clients' idle timeout in ``ProcessCluster``: how long a
#: stat to the frozen server waits before it fails.
IDLE_TIMEOUT = 3.0
#: Files committed after the listing: their copies are all suspects, more
#: on the frozen server than are asked for at once.
LATE = 60


@pytest.fixture(params=BACKENDS)
def cluster(request, tmp_path):
    urls = iter([None]) if request.param == "sqlite" else postgres_schema_url()
    for url in urls:
        c = ProcessCluster(reactor, tmp_path, catalog_url=url)
        pytest_twisted.blockon(defer.ensureDeferred(c.start()))
        try:
            # No audit, repair or GC of its own beside the check under test.
            pytest_twisted.blockon(defer.maybeDeferred(c.service.stopService))
            yield c
        finally:
            for proc in c.procs.values():
                if proc.proc is not None and proc.proc.poll() is None:
                    os.kill(proc.proc.pid, signal.SIGCONT)
            pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


async def ok_nodes(cluster, blob_id: str) -> list[str]:
    blob = await cluster.catalog.get_blob(blob_id)
    return [r.node for r in blob.replicas if r.state == REPLICA_OK]


@pytest_twisted.ensureDeferred
async def test_a_server_frozen_after_its_listing_costs_one_timeout_not_one_per_copy(
    cluster, monkeypatch
):
    for i in range(3):
        await cluster.upload(f"/f{i}.bin", payload(8 * 1024))
    real = fsck_module._listing
    frozen: dict[str, object] = {}

    async def listing_then_commit_and_freeze(pool):
        listed = await real(pool)
        blobs = []
        for i in range(LATE):
            await cluster.upload(f"/late{i}.bin", payload(4096 + i))
            entry = await cluster.catalog.stat(
                cluster.transfers.full_path(cluster.user, f"/late{i}.bin")
            )
            blobs.extend(extent.blob_id for extent in entry.version.extents)
        holders = [n for b in blobs for n in await ok_nodes(cluster, b)]
        victim = max(sorted(cluster.procs), key=holders.count)
        frozen["victim"], frozen["copies"] = victim, holders.count(victim)
        os.kill(cluster.procs[victim].proc.pid, signal.SIGSTOP)
        frozen["at"] = reactor.seconds()
        return listed

    monkeypatch.setattr(fsck_module, "_listing", listing_then_commit_and_freeze)
    gc = GarbageCollector(task.Clock(), cluster.catalog, cluster.pool)
    report = await check(cluster.catalog, cluster.pool, gc)
    took = reactor.seconds() - frozen["at"]

    assert frozen["copies"] > CONFIRM_CONCURRENCY, frozen  # more than asked for at once
    assert report["unreachable_nodes"] == [frozen["victim"]], report
    assert (report["missing"], report["wrong"], report["_bad"]) == ([], [], []), report
    assert report["unknown"] >= frozen["copies"], (report, frozen)  # none judged
    # One round of timeouts (the stats in flight when it froze), not one
    # per copy nor per batch of stats; room left for a loaded machine.
    assert took < 2 * IDLE_TIMEOUT, (took, frozen)
