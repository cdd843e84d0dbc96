"""The starters of the plugin and cluster tests: a child is ready only on
ports it holds itself, and a start that fails leaves no process behind.

``LoggedChild`` and ``running_wsfront`` start the front ends and ``wslocal``
of those tests; ``ProcessCluster`` and the transfer tests' ``Cluster`` start
storage processes for a fixture whose teardown never runs when it fails.
"""

from __future__ import annotations

import signal
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests import test_harness_procs
from tests.maintenance_env import ProcessCluster
from tests.support import RUNNING, LoggedChild, listening_ports, twistd_argv
from tests.test_harness_procs import children, gone, port_of, still_accepts
from tests.test_transfer_processes import Cluster
from tests.wsfront_procs import running_wsfront

pytestmark = pytest.mark.slow

#: The fixture: a listening socket held by this process, "another process".
foreign = test_harness_procs.foreign

#: A child that says it serves on the port in argv[1] and then just waits.
CLAIMS = (
    "import sys, time\n"
    "print('fake serves http on port=' + sys.argv[1], flush=True)\n"
    "time.sleep(600)\n"
)

#: A child that listens on a port the system picks and says which.
LISTENS = (
    "import socket, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print('fake serves http on port=%d' % s.getsockname()[1], flush=True)\n"
    "time.sleep(600)\n"
)

SERVES = r"fake serves (\w+) on port=(\d+)"


def python_child(tmp_path, script: str, *args: str) -> LoggedChild:
    return LoggedChild("fake", [sys.executable, "-c", script, *args], tmp_path / "fake.log")


def test_a_child_is_ready_on_the_port_it_announced_and_holds(tmp_path):
    child = python_child(tmp_path, LISTENS).start()
    try:
        assert child in RUNNING
        port = child.wait_ports(SERVES, {"http"})["http"]
        assert port in listening_ports(child.proc.pid)
    finally:
        assert child.stop() == -signal.SIGTERM
    assert child not in RUNNING and gone(child.proc.pid)


def test_a_port_named_in_the_log_but_held_by_another_process_is_not_ready(tmp_path, foreign):
    """Reading the log alone (as these starters did) passed here."""
    before = children()
    child = python_child(tmp_path, CLAIMS, str(port_of(foreign))).start()
    claim = f"port={port_of(foreign)}"
    # The claim is in the log before the 2 s start (a loaded machine can
    # take that long to start a Python): wait_ports then had the log line
    # and the foreign listener all along, and still did not call it ready.
    deadline = time.monotonic() + 60
    while claim not in child.log():
        if time.monotonic() > deadline or child.proc.poll() is not None:
            child.stop()
            raise AssertionError(f"the child never claimed the port:\n{child.log()}")
        time.sleep(0.02)  # polling the log, not a synchronisation
    with pytest.raises(AssertionError, match="did not listen on"):
        child.wait_ports(SERVES, {"http"}, timeout=2)
    assert child.proc.poll() is not None and gone(child.proc.pid)
    assert child not in RUNNING and children() <= before
    still_accepts(foreign)


def test_a_child_that_ignores_sigterm_is_killed_and_reaped(tmp_path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + LISTENS
    child = python_child(tmp_path, script).start()
    child.wait_ports(SERVES, {"http"})
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert gone(child.proc.pid)


def test_a_front_end_that_cannot_listen_fails_its_start_and_leaves_no_process(tmp_path, foreign):
    """wsfront told to listen where another process does: an error with its
    log, not a front end taken for ready on the foreign listener."""
    (tmp_path / "secret").write_text("x" * 32)
    argv = twistd_argv(
        "wsfront", "--name", "fe1", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}",
        "--secret-file", str(tmp_path / "secret"),
        "--http", f"tcp:{port_of(foreign)}:interface=127.0.0.1",
    )  # fmt: skip
    before = children()
    with (
        pytest.raises(AssertionError, match="Address already in use"),
        running_wsfront(tmp_path, argv, {"http"}),
    ):
        pytest.fail("a front end without its port was taken for ready")
    assert children() <= before
    assert not [c for c in RUNNING if isinstance(c, LoggedChild)]
    still_accepts(foreign)


@pytest.mark.parametrize("make", [Cluster, ProcessCluster])
@pytest_twisted.ensureDeferred
async def test_a_cluster_whose_start_fails_after_its_storage_started_stops_it(tmp_path, make):
    from twisted.internet import reactor

    cluster = make(reactor, tmp_path)
    cluster.catalog_url = "bogus://no-such-catalog"
    before = children()
    with pytest.raises(ValueError, match="catalog URL"):
        await defer.ensureDeferred(cluster.start())
    procs = list(cluster.procs.values())
    assert all(p.proc is not None for p in procs), "the storage processes had started"
    assert all(gone(p.proc.pid) for p in procs)
    assert children() <= before and not RUNNING & set(procs)
