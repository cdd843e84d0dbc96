"""End to end with processes: a ``twistd -n wsstorage`` child is SIGKILLed,
``wsfs repair`` marks its replicas lost (the other server already holds
each blob: nothing to copy to), the child is started again on its intact
data directory, and the next ``wsfs repair`` counts its copies ok again
with no byte copied: no blob file on any server is written or replaced,
and every file reads back with its sha256."""

from __future__ import annotations

import json
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import ProcessCluster, check_full_strength, payload


@pytest.fixture
def cluster(tmp_path):
    from twisted.internet import reactor

    c = ProcessCluster(reactor, tmp_path, nodes=2, replicas=2)
    # Only the CLI's jobs repair here: no scheduled pass in between.
    pytest_twisted.blockon(defer.ensureDeferred(c.start(repair_every=3600.0)))
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


def blob_files(cluster) -> dict[str, tuple[int, int, int]]:
    found = {}
    for proc in cluster.procs.values():
        for root, _dirs, files in os.walk(proc.data):
            for f in files:
                if f.endswith(".data"):
                    st = os.stat(os.path.join(root, f))
                    found[os.path.join(root, f)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


@pytest_twisted.ensureDeferred
async def test_wsfs_repair_counts_a_restarted_servers_intact_copies_ok_again(cluster):
    files = {f"/f{i}.bin": payload(200_000 + 1000 * i) for i in range(4)}
    for vpath, data in files.items():
        await cluster.upload(vpath, data)
    before = blob_files(cluster)
    victim = cluster.procs["s1"]
    port = victim.port
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(30) == -signal.SIGKILL
    out, err, code = await cluster.wsfs("--json", "repair", "--poll", "0.1", "--timeout", "60")
    assert code == 4, err  # work left: every blob still under-replicated (EXIT_UNFINISHED)
    marking = json.loads(out)["result"]
    assert marking["lost_nodes"] == ["s1"] and marking["marked_lost"] == len(files)
    assert marking["copied"] == 0 and marking["under_replicated"] == len(files)

    victim.start(port=port)
    await cluster.pool.probe_all()
    assert cluster.pool.is_up("s1")
    out, err, code = await cluster.wsfs("repair", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err
    [done] = [line for line in out.splitlines() if line.startswith("repair done: ")]
    assert "0 replicas copied" in done and "0 blobs still under-replicated" in done, done
    assert f"{len(files)} lost replicas on servers back up read back intact" in done, done
    assert blob_files(cluster) == before  # nothing written, nothing replaced
    await check_full_strength(cluster, files)  # downloads: the same sha256
