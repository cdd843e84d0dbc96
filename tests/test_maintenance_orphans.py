"""Jobs and uploads a dead front end leaves behind, on SQLite and PostgreSQL.

A front end killed while running ``wsfs repair`` cannot fail its own job,
nor mark its uploads interrupted.  Every front end holds a liveness lease
(``front-end:NAME``); once that lapses, the maintenance lease holder ends
what the dead one left: a job is re-queued (if its kind can simply run
again) or failed, an upload marked interrupted.  Clock-driven: the catalog
and the services share one ``task.Clock``.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from wsfront.catalog import open_catalog
from wsfront.catalog.errors import CatalogUnavailable, NotFound
from wsfront.catalog.records import ACTIVE, INTERRUPTED, JOB_FAILED, JOB_QUEUED, JOB_RUNNING
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

pytest_plugins = ["tests.catalog_fixtures"]

TTL = 30.0


@pytest.fixture
def tclock() -> task.Clock:
    c = task.Clock()
    c.advance(1_000_000.0)
    return c


@pytest.fixture
def cat(catalog_url, tclock):
    c = open_catalog(reactor, catalog_url, clock=tclock.seconds)
    yield c
    c.close()


def front_end(cat, clock, name: str) -> MaintenanceService:
    """A maintenance service not started: the test renews its leases."""
    settings = MaintenanceSettings(lease_ttl=TTL)
    return MaintenanceService(clock, cat, None, name, settings)


async def running(cat, owner: str, kind: str, args=None):
    job = await cat.enqueue_job(kind, args or {})
    claimed = await cat.claim_job(owner, [kind])
    assert claimed.job_id == job.job_id
    return claimed


async def alive(*services) -> None:
    for svc in services:
        assert await svc.liveness.renew()


@pytest_twisted.ensureDeferred
async def test_the_dead_holders_repair_is_requeued_and_its_rebalance_failed(cat, tclock):
    a, b = front_end(cat, tclock, "fe-a"), front_end(cat, tclock, "fe-b")
    await alive(a, b)
    assert await a.lease.renew()
    repair = await running(cat, "fe-a", "repair", {"now": True})
    rebalance = await running(cat, "fe-a", "rebalance", {"max_bytes": 10})
    assert await b.fail_abandoned_jobs() == 0  # fe-a is alive
    # fe-a is SIGKILLed: it renews nothing any more.
    tclock.advance(TTL + 1)
    await alive(b)
    assert await b.lease.renew()
    assert await b.fail_abandoned_jobs() == 2
    job = await cat.get_job(repair.job_id)
    assert job.state == JOB_QUEUED and job.owner is None
    assert "interrupted: front end fe-a stopped" in job.error
    job = await cat.get_job(rebalance.job_id)
    assert job.state == JOB_FAILED and job.error == "interrupted: front end fe-a stopped"
    # The same job (its CLI waits on its id) runs again, on fe-b.
    again = await cat.claim_job("fe-b", ["repair"])
    assert again.job_id == repair.job_id
    done = await cat.finish_job(again.job_id, "fe-b", again.claim, result={"copied": 0})
    assert done.error is None


@pytest_twisted.ensureDeferred
async def test_a_job_requeued_once_is_failed_when_interrupted_again(cat, tclock):
    b, c = front_end(cat, tclock, "fe-b"), front_end(cat, tclock, "fe-c")
    await alive(b, c)
    repair = await running(cat, "fe-a", "repair")  # fe-a never took a liveness lease
    tclock.advance(TTL + 1)
    await alive(b, c)
    assert await b.fail_abandoned_jobs() == 1
    assert (await cat.claim_job("fe-b", ["repair"])).job_id == repair.job_id
    tclock.advance(TTL + 1)  # fe-b dies too
    await alive(c)
    assert await c.fail_abandoned_jobs() == 1
    job = await cat.get_job(repair.job_id)
    assert job.state == JOB_FAILED
    assert job.error.startswith("interrupted: front end fe-b stopped (earlier: ")
    assert "fe-a stopped" in job.error


@pytest_twisted.ensureDeferred
async def test_a_live_front_ends_job_and_a_just_claimed_one_are_left_alone(cat, tclock):
    a, b = front_end(cat, tclock, "fe-a"), front_end(cat, tclock, "fe-b")
    await alive(a, b)
    mine = await running(cat, "fe-a", "repair")
    fresh = await running(cat, "fe-new", "drain-free-kind")  # no liveness lease yet
    tclock.advance(TTL - 1)
    await alive(a, b)
    assert await b.fail_abandoned_jobs() == 0
    for job in (mine, fresh):
        assert (await cat.get_job(job.job_id)).state == JOB_RUNNING
    # A cleanly stopped front end gives its liveness lease back; then it,
    # like fe-new, is dead once its job has not been touched for a lease's life.
    await a.liveness.stop()
    assert await b.fail_abandoned_jobs() == 0
    tclock.advance(2)
    await alive(b)
    assert await b.fail_abandoned_jobs() == 2
    assert (await cat.get_job(fresh.job_id)).state == JOB_FAILED
    assert (await cat.get_job(mine.job_id)).state == JOB_QUEUED


@pytest_twisted.ensureDeferred
async def test_a_restarted_front_end_requeues_its_repair_and_fails_its_rebalance(cat, tclock):
    repair = await running(cat, "fe-a", "repair")
    rebalance = await running(cat, "fe-a", "rebalance")
    a = front_end(cat, tclock, "fe-a")
    assert await a.fail_abandoned_jobs(mine=True) == 2
    job = await cat.get_job(repair.job_id)
    assert job.state == JOB_QUEUED and "fe-a restarted" in job.error
    job = await cat.get_job(rebalance.job_id)
    assert job.state == JOB_FAILED and job.error == "interrupted: front end fe-a restarted"


@pytest_twisted.ensureDeferred
async def test_a_drain_of_an_unknown_node_is_refused_when_queued(cat):
    with pytest.raises(NotFound, match="nosuchnode"):
        await cat.enqueue_job("drain", {"node": "nosuchnode"})
    assert await cat.list_jobs() == []
    await cat.register_node("s1", "tcp:127.0.0.1:1")
    assert (await cat.enqueue_job("drain", {"node": "s1"})).state == JOB_QUEUED


def begin(cat, clock, path: str, owner: str):
    return cat.begin_upload(
        "alice", path, base_length=0, blob_id="b" + path.strip("/"), replicas=["s1", "s2"],
        wanted_replicas=2, owner=owner, expires_at=clock.seconds() + 3600,
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_uploads_of_a_dead_front_end_are_marked_interrupted(cat, tclock):
    a, b = front_end(cat, tclock, "fe-a"), front_end(cat, tclock, "fe-b")
    await alive(a, b)
    dead = await begin(cat, tclock, "/x", "fe-a")
    own = await begin(cat, tclock, "/y", "fe-b")
    assert await b.interrupt_orphaned_uploads() == 0
    assert (await cat.get_upload(dead.upload_id)).state == ACTIVE
    tclock.advance(TTL + 1)  # fe-a was killed
    await alive(b)
    assert await b.interrupt_orphaned_uploads() == 1
    assert (await cat.get_upload(dead.upload_id)).state == INTERRUPTED
    assert (await cat.get_upload(own.upload_id)).state == ACTIVE


@pytest_twisted.ensureDeferred
async def test_a_longer_liveness_lease_keeps_a_slow_front_end_alive_that_long(cat, tclock):
    a = MaintenanceService(tclock, cat, None, "fe-a", MaintenanceSettings(liveness_ttl=90.0))
    b = front_end(cat, tclock, "fe-b")
    await alive(a, b)
    repair = await running(cat, "fe-a", "repair", {"now": True})
    tclock.advance(TTL + 1)  # past the default life, within fe-a's own
    await alive(b)
    assert await b.lease.renew()
    assert await b.fail_abandoned_jobs() == 0
    assert (await cat.get_job(repair.job_id)).state == JOB_RUNNING
    tclock.advance(90 - TTL)
    await alive(b)
    assert await b.lease.renew()
    assert await b.fail_abandoned_jobs() == 1
    assert (await cat.get_job(repair.job_id)).state == JOB_QUEUED


@pytest_twisted.ensureDeferred
async def test_a_requeued_job_runs_again_saying_it_restarted_and_what_the_first_run_recorded(
    cat, tclock
):
    """Its counts start from 0 in the second run: the progress and the
    result carry ``restarted`` (why, the first run's last progress), so
    ``wsfs`` can say so instead of showing the counts fall back."""
    from wsfront.maintenance.jobs import JobRunner

    b = front_end(cat, tclock, "fe-b")
    await alive(b)
    gc = await running(cat, "fe-a", "gc")  # fe-a never took a liveness lease
    await cat.update_job(gc.job_id, "fe-a", gc.claim, {"moved": 3})
    tclock.advance(TTL + 1)
    await alive(b)
    assert await b.fail_abandoned_jobs() == 1
    seen = []

    async def handler(args, report):
        await report({"moved": 1})
        seen.append((await cat.get_job(gc.job_id)).progress)
        return {"moved": 2}

    done = await JobRunner(tclock, cat, "fe-b", {"gc": handler}).run_one()
    restarted = {"why": "interrupted: front end fe-a stopped; re-queued", "before": {"moved": 3}}
    assert seen == [{"moved": 1, "restarted": restarted}]
    assert (done.state, done.error, done.result) == (
        "done", None, {"moved": 2, "restarted": restarted}
    )  # fmt: skip

    # A first run says nothing of the kind.
    fresh = await cat.enqueue_job("gc", {})
    done = await JobRunner(tclock, cat, "fe-b", {"gc": handler}).run_one()
    assert done.job_id == fresh.job_id and done.result == {"moved": 2}


@pytest.mark.parametrize("failing", ["list_jobs", "requeue_job"])
@pytest_twisted.ensureDeferred
async def test_a_startup_cleanup_that_failed_is_tried_again_before_anything_is_claimed(
    cat, tclock, monkeypatch, failing
):
    """The catalog out of reach at startup, while listing the jobs or while
    re-queueing one: the previous life's jobs are re-queued by the retry at
    the next tick, not left to the stale rule (the periodic sweep leaves
    another life's claims alone)."""
    job = await running(cat, "fe-a", "repair")
    a = front_end(cat, tclock, "fe-a")
    real = getattr(cat, failing)
    calls = []

    def out_of_reach_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            return defer.fail(CatalogUnavailable("the catalog is out of reach"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cat, failing, out_of_reach_once)
    monkeypatch.setattr(a.repairer, "observe", lambda: None)  # no storage pool here
    monkeypatch.setattr(a.lease, "start", lambda: None)  # no passes: no pool
    a.startService()
    try:
        assert await a.tick() == []
        if a._cleanup is not None:
            await a._cleanup
        again = await cat.get_job(job.job_id)
        assert again.state == JOB_QUEUED and len(calls) == 2
    finally:
        await a.stopService()
