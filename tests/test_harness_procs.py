"""The process harness itself: readiness means *our* child listens, a port
clash is retried or fails cleanly, and a failed start leaves no process.

CI runs many suites on one host, so a port picked as free can be taken
before the child binds it; these tests take it on purpose with a listener
in this process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import migration_cluster
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


def test_a_front_end_moves_to_new_ports_when_another_process_holds_one(tmp_path, foreign):
    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cluster.storage = cluster.storage[:1]
    cluster.start()
    try:
        fe = cluster.a
        fe.ftp_port = port_of(foreign)
        fe.start()
        assert fe.ftp_port != port_of(foreign)
        assert {fe.ftp_port, fe.http_port} <= listening_ports(fe.proc.pid)
        assert "Address already in use" in fe.log()  # the first try clashed
        still_accepts(foreign)
    finally:
        cluster.stop()


def test_a_front_end_that_clashes_on_every_try_fails_and_leaves_no_process(
    tmp_path, foreign, monkeypatch
):
    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cluster.storage = cluster.storage[:1]
    cluster.start()
    try:
        before = children()
        monkeypatch.setattr(migration_cluster, "free_port", lambda: port_of(foreign))
        fe = cluster.a
        fe.ftp_port = port_of(foreign)
        with pytest.raises(AssertionError):
            fe.start(attempts=2)
        assert fe.log().count("Address already in use") >= 2  # tried twice
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
