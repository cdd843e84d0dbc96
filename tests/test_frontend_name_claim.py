"""One live ``twistd wsfront`` per front-end name, on SQLite and PostgreSQL.

Found by a tester: two front ends started with the same --name both held
"the" maintenance lease (leases went by owner name, so each renewed the
other's), ran maintenance side by side, and restarting the second marked
the first one's streaming upload interrupted as its own previous life.
A start now claims the name (``wsfront.maintenance.name_claim``): refused
while another process renews the name's liveness lease, taken over once a
frozen one stops renewing it, at once after a clean stop or when the
previous process is provably gone from this host (killed).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog_fixtures import BACKENDS, postgres_schema_url
from tests.migration_cluster import wait_until
from tests.storage_procs import StorageProcess
from tests.support import LoggedChild, python_env, require_tool, start_all, twistd_argv
from tests.wsfront_procs import ANY_PORT, PASSWORD, SERVES, USER

#: Renewed every 3 s; a start watches a held one for 9 s (``watch_seconds``).
TTL = "9"

pytestmark = pytest.mark.slow


@pytest.fixture(params=BACKENDS)
def catalog_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog.sqlite"
    else:
        yield from postgres_schema_url()


def _argv(tmp: Path, catalog: str, storage: str = "tcp:127.0.0.1:1") -> list[str]:
    secret = tmp / "secret"
    if not secret.exists():
        secret.write_text("s" * 32)
    return twistd_argv(
        "wsfront", "--name", "fe", "--catalog", catalog, "--secret-file", str(secret),
        "--storage", f"s1={storage}", "--replicas", "1", "--http", ANY_PORT,
        "--liveness-lease-seconds", TTL,
    )  # fmt: skip


def _catalog_writable(catalog: str) -> bool:
    """Whether another process can write the catalog's leases now: not if
    the frozen front end holds SQLite's write lock, or a PostgreSQL row
    lock on its lease, frozen mid-renewal."""
    if catalog.startswith("sqlite:///"):
        import sqlite3

        db = sqlite3.connect(catalog[len("sqlite:///") :], timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            db.close()
    import psycopg

    with psycopg.connect(catalog) as conn:
        try:
            conn.execute("SELECT 1 FROM leases FOR UPDATE NOWAIT")
            return True
        except psycopg.errors.LockNotAvailable:
            return False


def _freeze_outside_a_transaction(fe: LoggedChild, catalog: str) -> None:
    """SIGSTOP ``fe`` at a moment it holds no catalog lock: frozen within a
    renewal's transaction it would hold the next start's writes too (a
    real hazard of freezing a process, not what this test is about)."""
    for _ in range(100):
        fe.proc.send_signal(signal.SIGSTOP)
        if _catalog_writable(catalog):
            return
        fe.proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)  # let it finish its transaction: a retry's pause
    raise AssertionError("the front end held a catalog lock at every try")


def _start(tmp: Path, catalog: str, log: str, storage: str = "tcp:127.0.0.1:1") -> LoggedChild:
    """A front end named ``fe``, once it serves HTTP."""
    fe = LoggedChild(log, _argv(tmp, catalog, storage), tmp / f"{log}.log", cwd=tmp).start()
    fe.wait_ports(SERVES, {"http"})
    return fe


def _wsfs(catalog: str, *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        input=stdin, capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _sessions(catalog: str) -> list[tuple[str, int]]:
    """The state and checkpoint of each upload session (``wsfs sessions``)."""
    return [(u["state"], u["checkpoint"]) for u in json.loads(_wsfs(catalog, "--json", "sessions"))]


def _stop(fe: LoggedChild) -> None:
    """SIGTERM: twistd ends by it (status -15) after a clean shutdown."""
    assert fe.stop() == -signal.SIGTERM, fe.log()[-3000:]


def test_a_second_process_with_the_same_name_is_refused_while_the_first_runs(tmp_path, catalog_url):
    """And the first one's streaming upload goes on unharmed: the refused
    start did nothing in the name (not marked interrupted as its "previous
    life"'s, as a second process with the same --name once did)."""
    (tmp_path / "secret").write_text("s" * 32)
    [storage] = start_all([StorageProcess(tmp_path, "s1")])
    upload = None
    try:
        _wsfs(catalog_url, "user", "add", USER, stdin=PASSWORD)
        first = _start(tmp_path, catalog_url, "first", storage.endpoint)
        try:
            port = first.wait_ports(SERVES, {"http"})["http"]
            # Streaming (curl sends stdin chunked) while the second one starts.
            upload = subprocess.Popen(
                [require_tool("curl"), "-sS", "-f", "-T", "-",
                 f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/streaming.bin"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            upload.stdin.write(b"x" * 65536)
            upload.stdin.flush()
            wait_until(
                lambda: _sessions(catalog_url) == [("active", 65536)], "the upload checkpointed"
            )
            [before] = json.loads(_wsfs(catalog_url, "--json", "sessions"))
            second = subprocess.run(
                _argv(tmp_path, catalog_url, storage.endpoint), env=python_env(), cwd=tmp_path,
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            out = second.stdout + second.stderr
            assert second.returncode == 1, out[-3000:]
            assert "front end name 'fe' is in use by another live process" in out, out[-3000:]
            assert f"pid {first.proc.pid}," in out and "Traceback" not in out, out[-3000:]
            assert first.proc.poll() is None  # the first one goes on
            # Not marked interrupted, even for a moment: the mark, or the
            # live writer's checkpoint setting it active again, would show.
            assert json.loads(_wsfs(catalog_url, "--json", "sessions")) == [before]
            assert upload.poll() is None, upload.stderr.read()
            upload.stdin.write(b"y" * 65536)
            upload.stdin.close()
            assert upload.wait(timeout=60) == 0, upload.stderr.read()
            url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/streaming.bin"
            got = subprocess.run([require_tool("curl"), "-sS", "-f", url], capture_output=True)
            assert got.stdout == b"x" * 65536 + b"y" * 65536, got.stderr
        finally:
            _stop(first)
    finally:
        if upload is not None and upload.poll() is None:
            upload.kill()
            upload.wait()
        storage.stop()


def test_a_start_after_the_first_was_killed_takes_the_name_over_at_once(tmp_path, catalog_url):
    """The killed one ran on this host (same boot and pid namespace): its
    pid is gone, so its lease is taken over without the ttl's watch (a
    restart after a crash, as by systemd, waited 30 s for nothing)."""
    first = _start(tmp_path, catalog_url, "first")
    pid = first.proc.pid
    first.stop(signal.SIGKILL)
    second = _start(tmp_path, catalog_url, "second")
    try:
        log = second.log()
        assert "watching its lease" not in log, log[-3000:]
        assert "that is dead on this host (" in log, log[-3000:]
        assert "taking its lease over at once" in log, log[-3000:]
        assert "its previous life (host " in log and f"pid {pid}," in log, log[-3000:]
    finally:
        _stop(second)


def test_a_clean_restart_does_not_wait(tmp_path, catalog_url):
    first = _start(tmp_path, catalog_url, "first")
    _stop(first)
    second = _start(tmp_path, catalog_url, "second")
    try:
        assert "watching its lease" not in second.log(), second.log()[-3000:]
    finally:
        _stop(second)


def test_a_frozen_life_whose_name_was_taken_over_stops_when_it_wakes(tmp_path, catalog_url):
    """SIGSTOP past the watch of a new start: the new one takes the name
    over; the old one, continued, finds its renewals refused and exits 1,
    saying why, rather than serve on under a name another process has."""
    first = _start(tmp_path, catalog_url, "first")
    try:
        _freeze_outside_a_transaction(first, catalog_url)
        second = _start(tmp_path, catalog_url, "second")
        try:
            # Frozen is not dead: its pid still runs, so it was watched.
            said = second.log()
            assert "watching its lease for a renewal" in said, said[-3000:]
            assert f"not provably dead: pid {first.proc.pid} still runs" in said, said[-3000:]
            first.proc.send_signal(signal.SIGCONT)
            assert first.proc.wait(timeout=60) == 1, first.log()[-3000:]
            assert "took this front end's name over" in first.log(), first.log()[-3000:]
            assert second.proc.poll() is None
        finally:
            _stop(second)
    finally:
        first.proc.send_signal(signal.SIGCONT)
        first.stop()
