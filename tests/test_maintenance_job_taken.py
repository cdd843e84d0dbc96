"""A job runner whose job was taken from it (re-queued by the new lease
holder and claimed by another front end) stops it with one log line: its
progress and its end are refused by the catalog (LeaseHeld), and it
changes nothing of the other front end's run.  On both catalog backends."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from wsfront.catalog.records import JOB_RUNNING
from wsfront.maintenance.jobs import JobRunner

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


async def taken_by_fe_b(catalog, job_id: int) -> None:
    """What the new lease holder and another front end do meanwhile."""
    job = await catalog.get_job(job_id)
    why = "fe-a lost the maintenance lease; re-queued"
    await catalog.requeue_job(job_id, "fe-a", job.claim, why)
    claimed = await catalog.claim_job("fe-b", ["repair"])
    assert claimed.job_id == job_id


def warnings_and_worse(events: list[dict]) -> list[dict]:
    return [e for e in events if e["log_level"] >= LogLevel.warn]


@pytest_twisted.ensureDeferred
async def test_a_runner_whose_job_was_taken_stops_at_its_next_progress_report(catalog, runner_log):
    job = await catalog.enqueue_job("repair", {})
    steps = []

    async def repair(args, report):
        await report({"step": 1})
        steps.append(1)
        await taken_by_fe_b(catalog, job.job_id)
        await report({"step": 2})
        steps.append(2)  # never reached: the report is refused
        return {"copied": 2}

    runner = JobRunner(task.Clock(), catalog, "fe-a", {"repair": repair}, progress_interval=0)
    now = await runner.run_one()
    assert steps == [1]
    assert (now.state, now.owner, now.result) == (JOB_RUNNING, "fe-b", None)
    assert now.progress == {"step": 1}  # fe-a's last accepted report
    [line] = warnings_and_worse(runner_log)
    assert line["log_level"] == LogLevel.warn
    assert "no longer this run's" in line["log_format"] and "owned by fe-b" in str(line["why"])
    assert runner.current is None


@pytest_twisted.ensureDeferred
async def test_a_runner_whose_job_was_taken_cannot_finish_it(catalog, runner_log):
    job = await catalog.enqueue_job("repair", {})

    async def repair(args, report):
        await taken_by_fe_b(catalog, job.job_id)
        return {"copied": 2}

    runner = JobRunner(task.Clock(), catalog, "fe-a", {"repair": repair})
    now = await runner.run_one()
    assert (now.state, now.owner, now.result) == (JOB_RUNNING, "fe-b", None)
    [line] = warnings_and_worse(runner_log)
    assert "no longer this run's" in line["log_format"]
    assert not [e for e in runner_log if "done" in e.get("log_format", "")]
