"""Ctrl-C (SIGINT) while ``wsfs`` waits for a job says what becomes of the
job and dies by SIGINT (130 in a shell, and a script stops there too): the
CLI stops waiting, the job stays the cluster's (queued until a front end
takes it, or running to its end).  It exited 0 with no word, so ``wsfs
drain s1 && retire s1`` went on.  Ctrl-C elsewhere in a command is one
line and death by SIGINT too; an ignored SIGINT (a non-interactive shell's
background job) stays ignored.

Each child starts with SIGINT's disposition set explicitly (``start``): a
pytest run in the background of a non-interactive shell has it ignored,
and its children inherit that."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.support import python_env
from wsfront.catalog import open_catalog
from wsfront.maintenance.lease import LEASE_NAME


@pytest.fixture
def catalog_url(tmp_path):
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


def start(url: str, *args: str, sigint=signal.SIG_DFL, **popen) -> subprocess.Popen:
    """``wsfs --catalog url *args`` with SIGINT at ``sigint`` (the default
    action unless told), whatever this process has."""
    return subprocess.Popen(
        [sys.executable, "-m", "wsfront.cli", "--catalog", url, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint), **popen,
    )  # fmt: skip


def job_args(*args: str) -> tuple[str, ...]:
    return (*args, "--poll", "0.05", "--timeout", "120")


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
    # Killed by SIGINT, as the shell's Ctrl-C would: not exit(130), after
    # which a script's next command ran.
    assert proc.returncode == -signal.SIGINT, (proc.returncode, out, err)
    assert "Traceback" not in err, err
    return out, err


@pytest_twisted.ensureDeferred
async def test_ctrl_c_on_a_queued_drain_dies_by_sigint_and_the_job_stays_queued(catalog_url):
    from twisted.internet import reactor

    catalog = open_catalog(reactor, catalog_url)
    try:
        await catalog.add_user("ann", "pw-123456")
        await catalog.register_node("s1", "tcp:127.0.0.1:1")
        proc = start(catalog_url, *job_args("drain", "s1"))
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
        proc = start(catalog_url, *job_args("repair"))
        try:
            await line_of(proc.stdout, "queued")
            job = await catalog.claim_job("fe-a", ["repair"])
            await catalog.update_job(job.job_id, "fe-a", job.claim, {"phase": "copying"})
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


@pytest_twisted.ensureDeferred
async def test_an_ignored_sigint_stays_ignored(catalog_url):
    """``wsfs drain s1 &`` in a non-interactive script starts with SIGINT
    ignored: a Ctrl-C at the terminal is not for it, and it follows the job
    to its end (it exited 130 there)."""
    from twisted.internet import reactor

    catalog = open_catalog(reactor, catalog_url)
    try:
        await catalog.add_user("ann", "pw-123456")
        await catalog.register_node("s1", "tcp:127.0.0.1:1")
        proc = start(catalog_url, *job_args("drain", "s1"), sigint=signal.SIG_IGN)
        try:
            await line_of(proc.stderr, "no front end is running")
            proc.send_signal(signal.SIGINT)  # ignored: discarded as it is sent
            assert await catalog.acquire_lease(LEASE_NAME, "fe-a", 600.0)
            claimed = await catalog.claim_job("fe-a", ["drain"])
            await catalog.finish_job(claimed.job_id, "fe-a", claimed.claim, {"moved": 0})
            out, err = await threads.deferToThread(proc.communicate, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (proc.returncode, out, err)
        assert "drain of s1 done: 0 replicas moved" in out, out
        assert "interrupted" not in err, err
    finally:
        await catalog.close()


#: The number of read(2) on this machine, as /proc/PID/syscall shows it.
READ = {"x86_64": 0, "aarch64": 63}.get(platform.machine())


def reading_stdin(pid: int) -> bool:
    """Whether ``pid``'s main thread is blocked in read(2) on fd 0."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return fields[:2] == [str(READ), "0x0"]


@pytest.mark.skipif(READ is None, reason="read(2)'s number on this machine is not known here")
def test_ctrl_c_while_the_password_is_read_dies_by_sigint(catalog_url, tmp_path):
    """Outside a job: Twisted's handler left the read going, so nothing
    happened until a line came, and the user was then added."""
    proc = start(catalog_url, "user", "add", "ann", stdin=subprocess.PIPE)
    try:
        while not reading_stdin(proc.pid):
            assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGINT, (proc.returncode, out, err)
    assert err == "wsfs: interrupted\n", err
    listed = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog_url, "user", "list"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip
    assert "ann" not in listed.stdout, listed.stdout


@pytest.mark.postgres
def test_ctrl_c_while_a_query_waits_dies_by_sigint():
    """Outside a job, in the reactor: ``user list`` waits for a lock this
    test holds on the users table.  It exited 0 with no word (Twisted's
    handler stopped the reactor)."""
    import psycopg

    from tests.catalog_fixtures import postgres_schema_url

    for url in postgres_schema_url():
        assert subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", url, "user", "add", "ann"],
            input="pw-123456\n", capture_output=True, text=True, env=python_env(), timeout=60,
        ).returncode == 0  # fmt: skip
        schema = url.rpartition("search_path%3D")[2]
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            proc = start(url, "user", "list")
            try:
                with psycopg.connect(url, autocommit=True) as watcher:
                    while not watcher.execute(
                        # Blocked by this test's lock, not any backend
                        # waiting on a "users" table: another suite on the
                        # same server had one, and SIGINT came before the
                        # CLI had even started.
                        "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                        (holder.info.backend_pid,),
                    ).fetchone():
                        assert proc.poll() is None, proc.communicate()
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            holder.rollback()
        assert proc.returncode == -signal.SIGINT, (proc.returncode, out, err, schema)
        assert err == "wsfs: interrupted\n", err
