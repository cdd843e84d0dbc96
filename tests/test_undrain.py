"""``wsfs undrain``: a drained (or draining) server comes back.

The catalog's ``draining`` mark is the drain: queueing a drain job sets it,
``set_node_draining(name, False)`` clears it, a front end's health record
never changes it, and a drain job that finds it gone stops before its next
move.  Catalog contract on SQLite and PostgreSQL; the job and the CLI with
real storage servers and a real ``wsfs`` process."""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.maintenance_env import blobs_on, check_full_strength, populate
from tests.support import python_env
from tests.transfer_env import TransferEnv
from wsfront.catalog.errors import NotFound
from wsfront.catalog.records import JOB_DONE, JOB_FAILED, JOB_QUEUED
from wsfront.maintenance.nodes import drain
from wsfront.maintenance.repair import Repairer, RepairSettings

pytest_plugins = ["tests.catalog_fixtures"]


async def state(catalog, name: str) -> str:
    return {n.name: n.state for n in await catalog.list_nodes()}[name]


@pytest_twisted.ensureDeferred
async def test_only_drain_and_undrain_change_the_draining_mark(catalog):
    await catalog.register_node("s1", "tcp:127.0.0.1:7001")
    await catalog.register_node("s2", "tcp:127.0.0.1:7002")
    job = await catalog.enqueue_job("drain", {"node": "s1"})
    assert await state(catalog, "s1") == "draining"  # at once, no front end needed
    # A front end records what its pool saw (up), read before the drain.
    await catalog.set_node_health("s1", "up", 10, 100, 5.0)
    s1 = (await catalog.list_nodes())[0]
    assert (s1.state, s1.free_bytes, s1.seen_at) == ("draining", 10, 5.0)
    # ... and, read before an undrain, its stale "draining" is not written back.
    await catalog.set_node_health("s2", "draining", 20, 100, 6.0)
    assert await state(catalog, "s2") == "unknown"
    node = await catalog.set_node_draining("s1", False)
    assert node.state == "unknown"
    await catalog.set_node_health("s1", "draining", 10, 100, 7.0)
    assert await state(catalog, "s1") == "unknown"
    await catalog.set_node_health("s1", "up", 10, 100, 8.0)
    assert await state(catalog, "s1") == "up"
    assert (await catalog.set_node_draining("s2", False)).state == "unknown"  # no-op
    with pytest.raises(NotFound):
        await catalog.set_node_draining("s9", False)
    # A queued job can be cancelled, once; a running one cannot.
    assert await catalog.cancel_job(job.job_id, "cancelled by wsfs undrain s1")
    failed = await catalog.get_job(job.job_id)
    assert (failed.state, failed.error) == (JOB_FAILED, "cancelled by wsfs undrain s1")
    assert not await catalog.cancel_job(job.job_id, "again")
    other = await catalog.enqueue_job("drain", {"node": "s2"})
    await catalog.claim_job("fe-a", ["drain"])
    assert not await catalog.cancel_job(other.job_id, "too late")
    assert (await catalog.get_job(other.job_id)).state == "running"


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def repairer(env) -> Repairer:
    return Repairer(
        task.Clock(), env.catalog, env.transfers.pool, RepairSettings(bytes_per_second=None)
    )


@pytest_twisted.ensureDeferred
async def test_an_undrain_stops_a_running_drain_before_its_next_move(env):
    files = await populate(env, count=6, size=64 * 1024)
    held = await blobs_on(env, "s1")
    assert len(held) >= 3
    await env.catalog.enqueue_job("drain", {"node": "s1"})

    async def undrain_after_the_first_move(stats):
        if stats["moved"] == 1:
            await env.catalog.set_node_draining("s1", False)

    stats = await drain(
        env.catalog, env.transfers.pool, repairer(env), "s1", undrain_after_the_first_move
    )
    assert stats["cancelled"] and stats["moved"] == 1
    assert await state(env.catalog, "s1") == "unknown"
    await check_full_strength(env, files)


@pytest_twisted.ensureDeferred
async def test_a_drain_job_run_after_an_undrain_moves_nothing(env):
    """A drain job a front end had claimed, or one queued again after its
    front end died, runs after the operator's undrain: it must not bring
    the drain back."""
    await populate(env, count=4, size=64 * 1024)
    held = await blobs_on(env, "s1")
    job = await env.catalog.enqueue_job("drain", {"node": "s1"})
    await env.catalog.claim_job("fe-a", ["drain"])
    await env.catalog.set_node_draining("s1", False)
    stats = await drain(env.catalog, env.transfers.pool, repairer(env), "s1")
    assert stats["cancelled"] and stats["moved"] == 0
    assert await state(env.catalog, "s1") == "unknown"
    assert await blobs_on(env, "s1") == held
    assert (await env.catalog.get_job(job.job_id)).state == "running"


async def wsfs(env, *args: str) -> tuple[str, str, int]:
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "wsfront.cli", "--catalog", env.catalog_url, *args],
        env=python_env(),
        path=str(env.tmp_path),
        reactor=reactor,
    )
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_wsfs_undrain_cancels_queued_drains_and_refuses_an_unknown_server(env):
    first = await env.catalog.enqueue_job("drain", {"node": "s2"})
    second = await env.catalog.enqueue_job("drain", {"node": "s2"})
    other = await env.catalog.enqueue_job("drain", {"node": "s3"})
    out, err, code = await wsfs(env, "undrain", "s2")
    assert code == 0, err
    assert "s2 is no longer draining" in out
    assert f"queued drain jobs cancelled: {first.job_id}, {second.job_id}" in out
    for job in (first, second):
        ended = await env.catalog.get_job(job.job_id)
        assert (ended.state, ended.error) == (JOB_FAILED, "cancelled by wsfs undrain s2")
    assert (await env.catalog.get_job(other.job_id)).state == JOB_QUEUED
    assert await state(env.catalog, "s2") == "unknown"
    assert await state(env.catalog, "s3") == "draining"

    out, err, code = await wsfs(env, "--json", "undrain", "s2")
    assert code == 0, err
    assert json.loads(out) == {"node": "s2", "state": "unknown", "cancelled": [], "running": []}

    out, err, code = await wsfs(env, "undrain", "s9")
    assert code == 1 and out == ""
    assert err == "wsfs: no storage node 's9'\n"


@pytest_twisted.ensureDeferred
async def test_a_drain_job_requeued_after_an_undrain_ends_cancelled_having_moved_nothing(env):
    from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

    await populate(env, count=3, size=64 * 1024)
    clock = task.Clock()
    settings = MaintenanceSettings(repair=RepairSettings(bytes_per_second=None))
    svc = MaintenanceService(clock, env.catalog, env.transfers.pool, "fe-a", settings)
    await svc.lease.renew()
    job = await env.catalog.enqueue_job("drain", {"node": "s1"})
    claimed = await env.catalog.claim_job("fe-b", ["drain"])  # as if fe-b had it, then died
    await env.catalog.set_node_draining("s1", False)
    await env.catalog.requeue_job(job.job_id, "fe-b", claimed.claim, "fe-b died; re-queued")
    assert await svc.tick() == ["job"]
    done = await env.catalog.get_job(job.job_id)
    assert done.state == JOB_DONE and done.result["cancelled"] and done.result["moved"] == 0


@pytest_twisted.ensureDeferred
async def test_wsfs_drain_exits_with_an_error_when_its_drain_was_cancelled():
    import argparse
    import io
    from types import SimpleNamespace

    from wsfront.cli import Commands

    commands = Commands(None, argparse.Namespace(json=False, name="s1"), io.StringIO())

    async def job(kind, args):
        assert (kind, args) == ("drain", {"node": "s1"})
        return SimpleNamespace(result={"moved": 2, "stuck": [], "busy": 0, "cancelled": True})

    commands._job = job
    with pytest.raises(SystemExit) as exit:
        await commands.drain()
    assert exit.value.code == "wsfs: drain of s1 cancelled (`wsfs undrain`) after 2 replicas moved"
