"""Repair, GC and an admin job with the PostgreSQL catalog: the maintenance
code uses only the catalog interface, and this checks it keeps to the part
both backends share."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import postgres_schema_url
from tests.maintenance_env import blobs_on, check_full_strength, full_path, populate
from tests.transfer_env import TransferEnv
from wsfront.catalog import open_catalog
from wsfront.catalog.records import JOB_DONE
from wsfront.maintenance.gc import GCSettings
from wsfront.maintenance.inventory import referenced_blob_ids
from wsfront.maintenance.repair import RepairSettings
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

pytestmark = pytest.mark.postgres


class PostgresTransferEnv(TransferEnv):
    """TransferEnv whose catalog is a fresh PostgreSQL schema."""

    def __init__(self, reactor, tmp_path, url: str, **kw) -> None:
        super().__init__(reactor, tmp_path, **kw)
        self.pg_url = url

    def _open_catalog(self):
        self.catalog_url = self.pg_url
        catalog = open_catalog(self.reactor, self.pg_url)
        self.catalogs.append(catalog)
        return catalog


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    for url in postgres_schema_url():
        e = PostgresTransferEnv(reactor, tmp_path, url, nodes=3)
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_repair_job_and_gc_on_postgresql(env):
    files = await populate(env, count=5)
    entry = await env.catalog.stat(full_path(env, "/f0.bin"))
    victim = entry.version.extents[0].replicas[0].node
    await env.transfers.delete(env.user, "/f4.bin")
    del files["/f4.bin"]
    await env.nodes[victim].kill()
    await env.transfers.pool.probe_all()
    clock = task.Clock()
    settings = MaintenanceSettings(
        repair=RepairSettings(bytes_per_second=None),
        gc=GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0),
        gc_every=0.0,
        repair_every=3600.0,
    )
    svc = MaintenanceService(clock, env.catalog, env.transfers.pool, "fe-a", settings)
    await svc.lease.renew()
    job = await env.catalog.enqueue_job("repair", {"now": True})
    assert await svc.tick() == ["job", "gc"]
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["under_replicated"] == 0
    await check_full_strength(env, files, dead=[victim])
    referenced = await referenced_blob_ids(env.catalog)
    for name in env.nodes:
        if name != victim:
            assert await blobs_on(env, name) <= referenced


@pytest_twisted.ensureDeferred
async def test_compact_job_then_gc_on_postgresql(env):
    from tests.maintenance_env import payload
    from wsfront.maintenance.compact import CompactSettings

    files = {}
    for name in ("/a.bin", "/b.bin"):
        content = b""
        for i in range(4):
            piece = payload(40_000 + 100 * i)
            await env.upload(name, piece, offset=len(content))
            content += piece
        files[name] = content
    before = {v: await env.catalog.stat(full_path(env, v)) for v in files}
    clock = task.Clock()
    settings = MaintenanceSettings(
        gc=GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0),
        compact=CompactSettings(min_extents=4, bytes_per_second=None),
        gc_every=3600.0,
        repair_every=3600.0,
    )
    svc = MaintenanceService(clock, env.catalog, env.transfers.pool, "fe-a", settings)
    await svc.lease.renew()
    job = await env.catalog.enqueue_job("compact", {})
    assert await svc.tick() == ["job"]
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE, done.error
    assert done.result["compacted"] == 2
    for vpath, entry in before.items():
        after = await env.catalog.stat(full_path(env, vpath))
        assert len(after.version.extents) == 1 and after.etag == entry.etag
    assert len(await env.catalog.collectable_blobs(100)) == 8
    await svc.gc.run_pass()
    assert await env.catalog.collectable_blobs(100) == []
    await check_full_strength(env, files)
    referenced = await referenced_blob_ids(env.catalog)
    for name in env.nodes:
        assert await blobs_on(env, name) <= referenced
