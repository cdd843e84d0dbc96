"""Ctrl-C (SIGINT) while ``wsfs`` waits for a job exits 130 and says what
becomes of the job: the CLI stops waiting, the job stays the cluster's
(queued until a front end takes it, or running to its end).  It exited 0
with no word, so ``wsfs drain s1 && retire s1`` went on."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.support import python_env
from wsfront.catalog import open_catalog
from wsfront.cli import EXIT_INTERRUPTED
from wsfront.maintenance.lease import LEASE_NAME


@pytest.fixture
def catalog_url(tmp_path):
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


def start(url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wsfront.cli", "--catalog", url, *args,
         "--poll", "0.05", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
    )  # fmt: skip


async def line_of(stream, words: str) -> str:
    """The next line of ``stream`` holding ``words`` (the CLI is then
    waiting on the job, whatever else it printed before)."""
    while True:
        line = await threads.deferToThread(stream.readline)
        assert line, f"the CLI ended before saying {words!r}"
        if words in line:
            return line


async def interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = await threads.deferToThread(proc.communicate, timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, out, err)
    assert "Traceback" not in err, err
    return out, err


@pytest_twisted.ensureDeferred
async def test_ctrl_c_on_a_queued_drain_exits_130_and_the_job_stays_queued(catalog_url):
    from twisted.internet import reactor

    catalog = open_catalog(reactor, catalog_url)
    try:
        await catalog.add_user("ann", "pw-123456")
        await catalog.register_node("s1", "tcp:127.0.0.1:1")
        proc = start(catalog_url, "drain", "s1")
        try:
            await line_of(proc.stderr, "no front end is running")
            _, err = await interrupt(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        last = err.strip().splitlines()[-1]
        assert "interrupted" in last and "still queued" in last, err
        assert "wsfs undrain s1" in last, err
        [job] = await catalog.list_jobs(["queued"])
        assert (job.kind, job.args) == ("drain", {"node": "s1"})
    finally:
        await catalog.close()


@pytest_twisted.ensureDeferred
async def test_ctrl_c_on_a_running_repair_says_it_goes_on(catalog_url):
    """A stand-in front end (the lease, the claim, a progress update)."""
    from twisted.internet import reactor

    catalog = open_catalog(reactor, catalog_url)
    try:
        await catalog.add_user("ann", "pw-123456")
        assert await catalog.acquire_lease(LEASE_NAME, "fe-a", 600.0)
        proc = start(catalog_url, "repair")
        try:
            await line_of(proc.stdout, "queued")
            job = await catalog.claim_job("fe-a", ["repair"])
            await catalog.update_job(job.job_id, "fe-a", {"phase": "copying"})
            await line_of(proc.stdout, "copying")
            _, err = await interrupt(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        last = err.strip().splitlines()[-1]
        assert f"repair job {job.job_id} is still running" in last, err
        assert "goes on in the cluster" in last, err
        assert (await catalog.get_job(job.job_id)).state == "running"
    finally:
        await catalog.close()
