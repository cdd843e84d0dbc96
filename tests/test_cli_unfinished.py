"""A job that ends with part of its work undone exits ``EXIT_UNFINISHED``
(4), not 0: ``wsfs drain s1 && retire s1`` must stop when replicas are
still on s1.  And the CLI says "run again" only where running again can
help.  Real ``twistd -n wsstorage`` processes, the CLI as a subprocess."""

from __future__ import annotations

import json
import signal

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import ProcessCluster, payload
from wsfront.cli import EXIT_UNFINISHED

pytestmark = pytest.mark.slow

JOB = ("--poll", "0.1", "--timeout", "60")


def start(tmp_path, nodes: int, replicas: int) -> ProcessCluster:
    from twisted.internet import reactor

    c = ProcessCluster(reactor, tmp_path, nodes=nodes, replicas=replicas)
    return pytest_twisted.blockon(defer.ensureDeferred(c.start()))


@pytest.fixture
def alone(tmp_path):
    """One storage server: a drain of it has nowhere to go."""
    c = start(tmp_path, nodes=1, replicas=1)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


@pytest.fixture
def three(tmp_path):
    c = start(tmp_path, nodes=3, replicas=2)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


@pytest_twisted.ensureDeferred
async def test_a_drain_with_nowhere_to_go_exits_4_and_does_not_say_run_again(alone):
    await alone.upload("/a.bin", payload(50_000))
    out, err, code = await alone.wsfs("drain", "s1", *JOB)
    assert code == EXIT_UNFINISHED, (code, out, err)
    assert "0 replicas moved; 1 could not move" in out, out
    assert "no server to go to: there is no other storage server" in out, out
    assert "run again" not in out, out
    out, err, code = await alone.wsfs("--json", "drain", "s1", *JOB)
    assert code == EXIT_UNFINISHED, (code, err)
    assert json.loads(out)["result"]["stuck"]
    assert "still on s1" in err


@pytest_twisted.ensureDeferred
async def test_draining_two_of_three_servers_leaves_replicas_and_exits_4(three):
    """The second drain's blobs that the third server already holds have
    nowhere to go (the first drained server takes nothing)."""
    for i in range(4):
        await three.upload(f"/f{i}.bin", payload(40_000 + i))
    out, err, code = await three.wsfs("drain", "s1", *JOB)
    assert code == 0, (out, err)
    out, err, code = await three.wsfs("drain", "s2", *JOB)
    assert code == EXIT_UNFINISHED, (code, out, err)
    assert "could not move" in out, out
    assert "no server to go to: every other storage server is draining" in out, out
    assert "run again" not in out, out


@pytest_twisted.ensureDeferred
async def test_a_repair_that_leaves_blobs_under_replicated_exits_4(three):
    for i in range(3):
        await three.upload(f"/f{i}.bin", payload(40_000 + i))
    for name in ("s2", "s3"):
        proc = three.procs[name].proc
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    out, err, code = await three.wsfs("repair", *JOB)
    assert code == EXIT_UNFINISHED, (code, out, err)
    assert "still under-replicated" in out, out


@pytest_twisted.ensureDeferred
async def test_a_drain_stuck_on_a_server_that_is_down_says_run_again(three):
    """s3 could take s1's replicas once it is back: running again helps."""
    for i in range(4):
        await three.upload(f"/f{i}.bin", payload(40_000 + i))
    proc = three.procs["s3"].proc
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    await three.pool.probe_all()
    on_s1_and_s2 = 0
    for i in range(4):
        entry = await three.catalog.stat(f"{three.user.root}/f{i}.bin")
        blob = await three.catalog.get_blob(entry.version.extents[0].blob_id)
        on_s1_and_s2 += set(blob.ok_replicas) == {"s1", "s2"}
    assert on_s1_and_s2, "placement spreads 4 files over all three pairs of servers"
    out, err, code = await three.wsfs("drain", "s1", *JOB)
    assert code == EXIT_UNFINISHED, (code, out, err)
    assert "run again once the servers that could take them are up" in out, out
    assert "no server to go to" not in out, out


@pytest_twisted.ensureDeferred
async def test_a_rebalance_stopped_by_a_failed_copy_exits_4():
    """A failed copy ends a rebalance pass early (``nodes.rebalance``)."""
    import argparse
    import io
    from types import SimpleNamespace

    from wsfront.cli import Commands

    for failed, code in ((0, None), (1, EXIT_UNFINISHED)):
        out = io.StringIO()
        commands = Commands(None, argparse.Namespace(json=False, max_bytes=None), out)
        result = {"moved": 2, "copied": 2, "bytes": 2048, "failed": failed}

        async def job(kind, args, result=result):
            return SimpleNamespace(result=result)

        commands._job = job
        try:
            await commands.rebalance()
        except SystemExit as e:
            assert e.code == code
        else:
            assert code is None
        assert ("stopped early: 1 copies failed" in out.getvalue()) == bool(failed)


@pytest_twisted.ensureDeferred
async def test_an_fsck_fix_that_leaves_blobs_under_replicated_exits_4_as_repair_does(three):
    """Status 3 is for what fsck without --fix finds; --fix repairs it, and
    what the repair cannot do is unfinished work (it exited 0)."""
    for i in range(3):
        await three.upload(f"/f{i}.bin", payload(40_000 + i))
    for name in ("s2", "s3"):
        proc = three.procs[name].proc
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    out, err, code = await three.wsfs("fsck", "--fix", *JOB)
    assert code == EXIT_UNFINISHED, (code, out, err)
    assert "not fixed: 3 blobs still under-replicated" in out, out
