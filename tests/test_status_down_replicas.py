"""``wsfs status`` counts replicas on servers that are up, and names the
files that have none.

Found by chaos testing (the two wsstorage processes holding a file
SIGKILLed, a front end still running): ``wsfs status`` showed both servers
``down`` and yet "under-replicated: 0", since the count went by the
catalog's replica states, which repair changes (to ``lost``) only after its
grace period (600 s).  The file could not be read meanwhile, and nothing
said so.  Now a replica counts only on a server the registry does not
record as down; a file with no such replica is counted, and named, as
unavailable.

Real processes: three ``twistd -n wsstorage``, one ``twistd -n wsfront``
recording their health, ``curl`` and the ``wsfs`` CLI.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess

import pytest

from tests.migration_cluster import MigrationCluster, wait_until
from tests.support import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    c = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}").start()
    yield c
    c.stop()


def status(cluster) -> dict:
    return json.loads(cluster.wsfs("--json", "status"))


def states(cluster) -> dict[str, str]:
    return {n["name"]: n["state"] for n in status(cluster)["nodes"]}


def test_a_file_whose_replicas_are_all_on_down_servers_is_under_replicated_and_unavailable(
    cluster, tmp_path
):
    fe = cluster.a.start()
    src = tmp_path / "f.bin"
    src.write_bytes(b"z" * 300_000)
    subprocess.run(
        [require_tool("curl"), "-sSf", "-T", str(src), f"{fe.http}/f.bin"], check=True, timeout=60
    )
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        holders = sorted(r[0] for r in db.execute("SELECT node FROM replicas"))
    assert len(holders) == 2
    wait_until(lambda: set(states(cluster).values()) == {"up"}, "every server recorded up")
    assert status(cluster)["under_replicated"] == 0

    procs = {s.name: s for s in cluster.storage}
    for name in holders:
        procs[name].proc.send_signal(signal.SIGKILL)
        procs[name].proc.wait(30)
    wait_until(
        lambda: all(states(cluster)[n] == "down" for n in holders), "the holders recorded down"
    )
    st = status(cluster)
    assert st["under_replicated"] == 1, st  # was 0
    assert st["under_replicated_files"] == 1, st
    assert st["unavailable"] == 1 and st["unavailable_files"] == 1, st
    assert st["unavailable_paths"] == ["/mia/f.bin"]
    text = cluster.wsfs("status")
    head = text.splitlines()[0]
    assert "under-replicated: 1 blob (1 file)  unavailable: 1 blob (1 file)" in head, text
    assert "unavailable (no replica on a server that is up): 1 blob (1 file): /mia/f.bin" in text, (
        text
    )

    # One holder back: readable again, still short of its two replicas.
    back = procs[holders[0]]
    back.start(port=back.port)
    wait_until(lambda: states(cluster)[holders[0]] == "up", f"{holders[0]} recorded up")
    st = status(cluster)
    assert (st["under_replicated"], st["unavailable"], st["unavailable_paths"]) == (1, 0, []), st
    assert "unavailable (" not in cluster.wsfs("status")
