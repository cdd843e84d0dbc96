"""The process harness itself: readiness means *our* child listens on the
ports this run of it logged, and a failed start leaves no process.

CI runs many suites on one host, so a port once free can be taken by
another process; these tests take ports on purpose with a listener in this
process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.migration_cluster import MigrationCluster
from tests.storage_procs import StorageProcess
from tests.support import RUNNING, listening_ports


@pytest.fixture
def foreign() -> Iterator[socket.socket]:
    """A listening socket held by this process: the "other process"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def port_of(s: socket.socket) -> int:
    return s.getsockname()[1]


def children() -> set[int]:
    """Live (not yet reaped) child processes of this test process."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            found.add(int(entry))
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def still_accepts(s: socket.socket) -> None:
    """The foreign listener was left alone: it still takes connections."""
    with socket.create_connection(("127.0.0.1", port_of(s)), 5):
        conn, _ = s.accept()
        conn.close()


def test_storage_server_reports_the_port_it_holds_itself(tmp_path):
    proc = StorageProcess(tmp_path, "s1").start()
    try:
        assert proc.port != 0
        assert proc.port in listening_ports(proc.proc.pid)
        assert proc in RUNNING
    finally:
        proc.stop()
    assert proc not in RUNNING and gone(proc.proc.pid)


def test_a_port_another_process_listens_on_is_not_taken_for_ready(tmp_path, foreign):
    """The old readiness check connected to the port and passed on anyone's
    listener; here the log of an earlier run even names that very port."""
    before = children()
    earlier = StorageProcess(tmp_path, "s1").start()
    earlier.stop()
    foreign.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", earlier.port))
        taken.listen()
        proc = StorageProcess(tmp_path, "s1")
        with pytest.raises(AssertionError, match="Address already in use"):
            proc.start(port=earlier.port)
        assert proc.proc.poll() is not None and gone(proc.proc.pid)
        assert proc not in RUNNING
        still_accepts(taken)
    assert children() <= before


def test_a_front_end_serves_on_ports_it_holds_and_a_restart_reads_its_own(tmp_path):
    """Port 0, and the ports read back from this run's log: a restart must
    not take the ports the previous run logged."""
    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cluster.storage = cluster.storage[:1]
    cluster.start()
    try:
        fe = cluster.a.start()
        first_http = fe.http_port
        assert 0 not in {fe.ftp_port, first_http}
        assert {fe.ftp_port, first_http} <= listening_ports(fe.proc.pid)
        fe.stop()
        with socket.socket() as held:  # the first run's HTTP port, taken by another
            held.bind(("127.0.0.1", first_http))
            held.listen()
            fe.start()
            assert fe.http_port != first_http
            assert {fe.ftp_port, fe.http_port} <= listening_ports(fe.proc.pid)
            still_accepts(held)
    finally:
        cluster.stop()


def test_a_front_end_that_cannot_listen_fails_and_leaves_no_process(tmp_path, foreign):
    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cluster.storage = cluster.storage[:1]
    cluster.start()
    try:
        before = children()
        fe = cluster.a
        taken = f"tcp:{port_of(foreign)}:interface=127.0.0.1"  # the last --ftp wins
        with pytest.raises(AssertionError, match="Address already in use"):
            fe.start(None, "--ftp", taken)
        assert fe.proc.poll() is not None and gone(fe.proc.pid)
        assert children() <= before and fe not in RUNNING
        still_accepts(foreign)
    finally:
        cluster.stop()


def test_a_failed_second_storage_start_stops_the_first(tmp_path):
    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    first, second, third = cluster.storage
    second.secret_file = tmp_path / "empty-secret"
    second.secret_file.write_text("\n")  # a clear start-up error of that server
    before = children()
    with pytest.raises(AssertionError, match="is empty"):
        cluster.start()
    assert first.proc is not None and gone(first.proc.pid)
    assert second.proc is not None and gone(second.proc.pid)
    assert third.proc is None
    assert children() <= before
    assert not RUNNING & {first, second, third}
