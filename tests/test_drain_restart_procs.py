"""``wsfs drain`` says so when its job restarts after its front end died.

Found by chaos testing (the front end running a drain SIGKILLed): the job
was re-queued and run again by the next maintenance lease holder, and the
waiting ``wsfs drain`` showed its progress going back to 0 replicas moved,
then "drain of s1 done: N replicas moved" counting only the second run,
with nothing saying the job had restarted, or why.  Now the CLI says it on
stderr, the runner logs it, and the summary says what the second run moved
since the restart and why, and what the first had recorded (a lower bound:
a move may land after its last progress record).

Real processes: three ``twistd -n wsstorage``, two ``twistd -n wsfront``
(fe-a killed by a failpoint after its second move), ``curl`` and ``wsfs``.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import pytest

from tests.migration_cluster import MigrationCluster, wait_until
from tests.support import python_env, require_tool

pytestmark = pytest.mark.slow

LEASE = ("--liveness-lease-seconds", "20")  # the least: fe-b takes over sooner


@pytest.fixture
def cluster(tmp_path):
    c = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}").start()
    yield c
    c.stop()


def ok_replicas_on(db_path, node: str) -> int:
    with sqlite3.connect(db_path) as db:
        [(n,)] = db.execute(
            "SELECT COUNT(*) FROM replicas WHERE node = ? AND state = 'ok'", (node,)
        ).fetchall()
    return n


def test_a_drain_whose_front_end_is_sigkilled_says_it_restarted_and_counts_both_runs(
    cluster, tmp_path
):
    a, b = cluster.a, cluster.b
    a.start("maintenance.drain_move=kill@2", *LEASE)
    wait_until(lambda: "fe-a holds the maintenance lease" in a.log(), "fe-a's lease", proc=a.proc)
    curl = require_tool("curl")
    src = tmp_path / "small.bin"
    src.write_bytes(b"d" * 20_000)
    for i in range(9):
        subprocess.run([curl, "-sSf", "-T", str(src), f"{a.http}/f{i}.bin"], check=True, timeout=60)
    db = tmp_path / "catalog.sqlite"
    on_s1 = ok_replicas_on(db, "s1")
    assert on_s1 >= 3  # two of three servers hold each file
    b.start(None, *LEASE)
    cli = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", cluster.catalog_url,
         "drain", "s1", "--timeout", "150"],
        capture_output=True, text=True, env=python_env(), timeout=180,
    )  # fmt: skip
    assert a.proc.poll() is not None  # the failpoint killed it
    a.wait_killed()
    assert cli.returncode == 0, (cli.stdout, cli.stderr, b.log()[-3000:])
    assert ok_replicas_on(db, "s1") == 0
    why = "interrupted: front end fe-a stopped; re-queued"
    assert re.search(rf"wsfs: drain job \d+ restarted \({re.escape(why)}\)", cli.stderr), cli.stderr
    last = cli.stdout.strip().splitlines()[-1]
    m = re.fullmatch(
        rf"drain of s1 done: (\d+) replicas moved since the job restarted \({re.escape(why)}\); "
        r"its first run had moved at least (\d+)",
        last,
    )
    assert m is not None, cli.stdout
    assert int(m.group(1)) == on_s1 - 2  # the failpoint killed fe-a after its second move
    assert 1 <= int(m.group(2)) <= 2  # what it recorded: progress is saved every 0.5 s
    assert re.search(rf"job \d+ \(drain\) started again by fe-b \({re.escape(why)}\)", b.log())
