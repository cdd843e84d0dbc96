"""A job re-queued and claimed again under the same front end name (a
restart) is the new run's alone: the old run, still going in a process
that was frozen past its lease (SIGSTOP) and then woke, has its progress,
its end, its failure and its re-queue refused, and the new run's row
stays as the new run left it; the new run goes on to the end.  The old
life's sweep (it renews the maintenance lease, granted by name) does not
end the new run's claim as its own either.  The owner name cannot tell
the two runs apart; the claim each run got can.  On both catalog
backends."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from wsfront.catalog.records import JOB_DONE, JOB_FAILED, JOB_RUNNING
from wsfront.maintenance.jobs import JobInterrupted, JobRunner
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings

pytest_plugins = ["tests.catalog_fixtures"]


@pytest.fixture
def runner_log():
    """The jobs module's log events, as they come."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "wsfront.maintenance.jobs":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def old_run_waking_to(action: str, started: Deferred, frozen: Deferred, went_on: list[str]):
    """The old run's handler: reports once, then is frozen until ``frozen``
    fires, then does ``action`` with the job it held."""

    async def repair(args: dict[str, Any], report) -> dict[str, Any]:
        await report({"run": "old", "step": 1})
        started.callback(None)
        await frozen
        if action == "report":
            await report({"run": "old", "step": 2})
        elif action == "fail":
            raise RuntimeError("old run failed")
        elif action == "interrupted":
            raise JobInterrupted("the maintenance lease was lost")
        went_on.append(action)
        return {"run": "old"}

    return repair


def new_run(started: Deferred, release: Deferred):
    """The new run's handler: reports, waits for ``release``, reports, ends."""

    async def repair(args: dict[str, Any], report) -> dict[str, Any]:
        await report({"run": "new", "step": 1})
        started.callback(None)
        await release
        await report({"run": "new", "step": 2})
        return {"run": "new"}

    return repair


@pytest.mark.parametrize("action", ["report", "finish", "fail", "interrupted"])
@pytest_twisted.ensureDeferred
async def test_an_old_run_woken_after_a_restart_of_the_same_name_changes_nothing(
    catalog, runner_log, action
):
    job = await catalog.enqueue_job("repair", {})
    old_started, frozen, went_on = Deferred(), Deferred(), []
    old = JobRunner(
        task.Clock(),
        catalog,
        "fe-a",
        {"repair": old_run_waking_to(action, old_started, frozen, went_on)},
        progress_interval=0,
    )
    old_done = ensureDeferred(old.run_one())
    await old_started
    # fe-a is frozen past its lease; a process of the same name starts, ends
    # the old life's jobs (re-queued), and claims the job again.
    new_started, release = Deferred(), Deferred()
    restarted = MaintenanceService(
        task.Clock(),
        catalog,
        None,
        "fe-a",
        extra_handlers={"repair": new_run(new_started, release)},
    )
    assert await restarted.fail_abandoned_jobs(mine=True) == 1
    new_done = ensureDeferred(restarted.jobs.run_one())
    await new_started
    before = await catalog.get_job(job.job_id)
    assert (before.state, before.owner, before.progress["run"]) == (JOB_RUNNING, "fe-a", "new")

    frozen.callback(None)  # the old process wakes
    now = await old_done
    # Only a handler that finished reaches its end; the catalog refuses it.
    assert went_on == (["finish"] if action == "finish" else [])
    assert await catalog.get_job(job.job_id) == before  # the new run's row, untouched
    assert now == before
    said = [formatEvent(e) for e in runner_log if e["log_level"] >= LogLevel.warn]
    assert any("was claimed again by fe-a" in line for line in said), said

    release.callback(None)  # the new run goes on to its end
    done = await new_done
    assert (done.state, done.owner, done.error) == (JOB_DONE, "fe-a", None)
    assert done.result["run"] == "new" and done.progress["run"] == "new"
    assert done.progress["step"] == 2


def old_life(catalog, handler, clock=None, stale_job_seconds: float = 900.0) -> MaintenanceService:
    """fe-a's service before the restart, running ``handler`` for repair."""
    return MaintenanceService(
        clock or task.Clock(),
        catalog,
        None,
        "fe-a",
        MaintenanceSettings(stale_job_seconds=stale_job_seconds),
        extra_handlers={"repair": handler},
    )


async def restarted_and_claimed_again(catalog, job_id: int, handler) -> tuple[Deferred, Any]:
    """A new fe-a ends the old life's jobs and claims ``job_id`` again;
    fires with the new run (a Deferred) once its handler has started, and
    the job as the new run left it."""
    started = Deferred()
    new = MaintenanceService(
        task.Clock(), catalog, None, "fe-a", extra_handlers={"repair": handler(started)}
    )
    assert await new.fail_abandoned_jobs(mine=True) == 1
    done = ensureDeferred(new.jobs.run_one())
    await started
    job = await catalog.get_job(job_id)
    assert (job.state, job.owner, job.claim, job.progress["run"]) == (
        JOB_RUNNING, "fe-a", 2, "new",
    )  # fmt: skip
    return done, job


@pytest_twisted.ensureDeferred
async def test_the_old_life_s_sweep_leaves_the_new_run_s_claim_alone(catalog, runner_log):
    """The old fe-a woke, renewed the maintenance lease (granted by name:
    both lives think they hold it) and sweeps: the job under its name is
    not its run's (another claim), yet it must not end it as "ours, not
    running here", neither while its own run of the job is still going
    nor once that run stopped.  The new run goes on to its end."""
    job = await catalog.enqueue_job("repair", {})
    old_started, frozen, went_on = Deferred(), Deferred(), []
    old = old_life(catalog, old_run_waking_to("report", old_started, frozen, went_on))
    old_done = ensureDeferred(old.jobs.run_one())
    await old_started
    assert old.jobs.current == (job.job_id, 1)
    release = Deferred()
    new_done, before = await restarted_and_claimed_again(
        catalog, job.job_id, lambda started: new_run(started, release)
    )

    assert await old.fail_abandoned_jobs() == 0  # its run frozen mid-job
    assert await catalog.get_job(job.job_id) == before
    frozen.callback(None)  # the old run wakes: its report is refused, it stops
    assert await old_done == before
    assert old.jobs.current is None
    assert await old.fail_abandoned_jobs() == 0  # between jobs
    assert await catalog.get_job(job.job_id) == before

    release.callback(None)
    done = await new_done
    assert (done.state, done.owner, done.claim, done.error) == (JOB_DONE, "fe-a", 2, None)
    assert done.result["run"] == "new" and done.progress["step"] == 2


@pytest_twisted.ensureDeferred
async def test_another_life_s_job_without_progress_is_failed_by_the_stale_rule_only(catalog, clock):
    """The one rule the old life's sweep applies to a claim under its
    name it never took: like a live front end's, the job is failed after
    ``stale_job_seconds`` without progress (its runner may be stuck), not
    before, and not re-queued."""
    job = await catalog.enqueue_job("repair", {})
    old_started, frozen = Deferred(), Deferred()
    tclock = task.Clock()
    tclock.advance(clock.now)  # the sweep's clock and the catalog's agree
    old = old_life(catalog, old_run_waking_to("report", old_started, frozen, []), tclock, 600.0)
    old_done = ensureDeferred(old.jobs.run_one())
    await old_started
    stuck = Deferred()
    new_done, before = await restarted_and_claimed_again(
        catalog, job.job_id, lambda started: new_run(started, stuck)
    )
    frozen.callback(None)
    await old_done
    clock.advance(599)
    tclock.advance(599)
    assert await old.fail_abandoned_jobs() == 0
    assert await catalog.get_job(job.job_id) == before
    clock.advance(2)
    tclock.advance(2)
    assert await old.fail_abandoned_jobs() == 1
    failed = await catalog.get_job(job.job_id)
    assert (failed.state, failed.claim) == (JOB_FAILED, 2)
    assert failed.error.startswith("abandoned: no progress from front end fe-a")
    stuck.callback(None)  # the new run's end is refused: the job ended
    assert await new_done == failed
