"""The tester's data loss, end to end: a second front end with its own
catalog (PostgreSQL) pointed at the same storage servers (same secret) as a
running SQLite cluster.  Real ``twistd -n wsstorage`` processes on real
disks, in-process front ends running maintenance, the ``wsfs`` CLI as a
subprocess.

Before the fix the second catalog's ``fsck --fix`` deleted the first
cluster's blobs as orphans (under 8 blobs the orphan guard does not
apply) and GET /big failed.  Now the first front end binds the stores to
its cluster at first contact; the second sees them as foreign, uses them
for nothing, and deletes nothing.
"""

from __future__ import annotations

import hashlib
import json
import types

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from tests.catalog_fixtures import postgres_schema_url
from tests.maintenance_env import ProcessCluster
from tests.storage_procs import pattern
from wsfront.maintenance.failure_log import FailureLog
from wsfront.service import FrontendService
from wsstorage.diskformat import CLUSTER_FILE

pytestmark = pytest.mark.slow


@pytest.fixture
def errors():
    seen: list[str] = []

    def observe(event) -> None:
        level = event.get("log_level")
        if level is not None and level.name == "error":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def first(tmp_path):
    from twisted.internet import reactor

    c = ProcessCluster(reactor, tmp_path)
    pytest_twisted.blockon(defer.ensureDeferred(c.start()))
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


@pytest.fixture
def second_url():
    yield from postgres_schema_url()


async def blobs_on_disk(cluster: ProcessCluster) -> dict[str, set[str]]:
    """Each server's blobs, as its own listing says (not any catalog)."""
    out = {}
    for name in cluster.procs:
        infos = await cluster.pool._nodes[name].client.list_blobs()
        out[name] = {i.blob_id for i in infos}
    return out


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_a_second_catalog_on_the_same_servers_deletes_nothing(
    first, second_url, tmp_path, errors
) -> None:
    from twisted.internet import reactor

    big = pattern(3 * 1024 * 1024 + 17, seed=5)
    await first.upload("/big", big)
    await first.upload("/small", b"tiny")
    ours = await first.catalog.cluster_id()
    # Bound at first contact: each store's CLUSTER names the first cluster.
    for proc in first.procs.values():
        with open(proc.data / CLUSTER_FILE, "rb") as f:
            assert json.loads(f.read())["cluster_id"] == ours
    before = await blobs_on_disk(first)
    assert sum(map(len, before.values())) >= 4  # under the orphan guard's 8

    second = ProcessCluster(
        reactor, tmp_path, catalog_url=second_url, procs=first.procs, name="fe-b"
    )
    await second.start()
    try:
        theirs = await second.catalog.cluster_id()
        assert theirs != ours
        # Every server is foreign to the second cluster, said once each,
        # naming both ids.
        assert all(n.foreign == ours and not n.up for n in second.pool.nodes())
        foreign_lines = [e for e in errors if "bound to another cluster" in e]
        assert len(foreign_lines) == 3
        assert all(ours in e and theirs in e for e in foreign_lines)

        out, err, code = await second.wsfs("fsck", "--fix", "--json")
        assert code == 0, err
        fsck = json.loads(out)["result"]
        assert fsck["gc"]["orphans_deleted"] == fsck["gc"]["strays_deleted"] == 0
        assert sorted(fsck["unreachable_nodes"]) == ["s1", "s2", "s3"]
        out, err, code = await second.wsfs("gc", "--grace", "0", "--json")
        assert code == 0, err
        gc = json.loads(out)["result"]
        assert gc["orphans_deleted"] == gc["strays_deleted"] == 0

        # What a front end records of its probes (FrontendService's own
        # method, on the second cluster's catalog and pool): wsfs status
        # shows each server foreign, and why, naming both ids.
        # Its pool already holds every registered server: following the
        # registry reads it and changes nothing.
        recorder = types.SimpleNamespace(
            catalog=second.catalog,
            pool=second.pool,
            _registry_failures=FailureLog(reactor, "storage registry update"),
            refresh_registry=lambda: second.catalog.list_nodes().addCallback(
                lambda nodes: {n.name: n for n in nodes}
            ),
        )
        await FrontendService.record_node_health(recorder)
        out, err, code = await second.wsfs("status", "--json")
        assert code == 0, err
        nodes = json.loads(out)["nodes"]
        assert [n["state"] for n in nodes] == ["foreign"] * 3
        assert all(ours in n["last_error"] and theirs in n["last_error"] for n in nodes)
        out, _, _ = await second.wsfs("status")
        assert "foreign" in out and "bound to another cluster" in out
    finally:
        await second.stop()

    assert await blobs_on_disk(first) == before
    data, _ = await first.download("/big")
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(big).hexdigest()
    assert all(n.up and n.foreign is None for n in first.pool.nodes())


@pytest_twisted.ensureDeferred
async def test_a_rebuilt_catalog_adopts_the_stores_cluster_and_can_use_them(
    first, tmp_path
) -> None:
    """``fsck --rebuild-catalog`` into a new catalog takes the stores'
    cluster id (an unbound store is bound to it), so a front end of the
    rebuilt catalog uses them; stores of two clusters are refused."""
    from twisted.internet import reactor

    from wsfront.catalog import open_catalog
    from wsfront.transfer.pool import StoragePool
    from wsstorage.client import StorageClient

    data = pattern(200_000, seed=9)
    await first.upload("/kept", data)
    ours = await first.catalog.cluster_id()
    first.pool.stop()  # its probes would bind s3 again before the rebuild does
    # s3 unbound, as a server added by hand, or upgraded, would be.
    s3 = first.procs["s3"]
    port = s3.port
    s3.stop()
    (s3.data / CLUSTER_FILE).unlink()
    s3.start(port=port)
    specs = [a for n, p in first.procs.items() for a in ("--storage", f"{n}={p.endpoint}")]
    secret = ["--secret-file", str(s3.secret_file)]

    url = f"sqlite:///{tmp_path / 'rebuilt.sqlite'}"
    rebuilt = ProcessCluster(reactor, tmp_path, catalog_url=url, procs=first.procs)
    out, err, code = await rebuilt.wsfs("fsck", "--rebuild-catalog", *specs, *secret)
    assert code == 0, err
    assert "rebuilt: 1 files" in out
    # The operator is told the old catalog's front ends must stay stopped
    # and this one's running ones be restarted (the id is shared now).
    assert "stop every front end of the old catalog for good" in err
    assert "restart any front end of this catalog" in err
    cat = open_catalog(reactor, url)
    try:
        assert await cat.cluster_id() == ours
    finally:
        await cat.close()
    assert json.loads((s3.data / CLUSTER_FILE).read_bytes())["cluster_id"] == ours

    # A front end of the rebuilt catalog: every server is its own.
    pool = StoragePool(reactor, cluster_id=ours)
    clients = []
    for name, proc in first.procs.items():
        clients.append(proc.client(reactor))
        pool.add(name, proc.endpoint, clients[-1])
    await pool.probe_all()
    try:
        assert all(n.up and n.foreign is None for n in pool.nodes())
    finally:
        for c in clients:
            await c.close()

    # s3 rebound to another cluster: a rebuild from all three is refused.
    port = s3.port
    s3.stop()
    (s3.data / CLUSTER_FILE).unlink()
    s3.start(port=port)
    other = StorageClient(reactor, "s3", s3.endpoint, s3.secret())
    try:
        await other.bind_cluster("e" * 32)
    finally:
        await other.close()
    url2 = f"sqlite:///{tmp_path / 'rebuilt2.sqlite'}"
    again = ProcessCluster(reactor, tmp_path, catalog_url=url2, procs=first.procs)
    out, err, code = await again.wsfs("fsck", "--rebuild-catalog", *specs, *secret)
    assert code != 0
    assert "bound to different clusters" in err and ours in err and "e" * 32 in err
