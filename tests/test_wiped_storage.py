"""A storage server restarted on a wiped data directory: real ``twistd -n
wsstorage`` processes on real disks, a front end running the maintenance
service, the ``wsfs`` CLI as a subprocess.

Its new store answers health probes with another identity than the one the
catalog knows (``wsstorage.diskformat.StoreIdentity``): the maintenance
lease holder warns once, marks the replicas the catalog listed there lost,
and repair copies them back; ``wsfs status`` says so.  A server's first
identity, and one an older store is given when opened, raise nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher

from tests.maintenance_env import ProcessCluster, all_sha256, check_full_strength, full_path
from tests.maintenance_env import populate as upload_files
from wsfront.catalog.records import REPLICA_OK

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    from twisted.internet import reactor

    # Repair only when something asks for it (not a periodic pass that
    # would heal without the identity check having marked anything).
    c = ProcessCluster(reactor, tmp_path)
    pytest_twisted.blockon(defer.ensureDeferred(c.start(repair_every=3600.0)))
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


@pytest.fixture
def warnings():
    """The text of every warning logged meanwhile."""
    seen: list[str] = []

    def observe(event) -> None:
        if event.get("log_level") is not None and event["log_level"].name in ("warn", "error"):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def eventually(check, what: str, timeout: float = 30.0) -> None:
    """Poll the async ``check`` on the reactor until it is true."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


def identity(cluster, name: str) -> str:
    return json.loads((cluster.procs[name].data / "IDENTITY").read_text())["store_id"]


async def registry(cluster) -> dict[str, object]:
    return {n.name: n for n in await cluster.catalog.list_nodes()}


async def all_known(cluster) -> bool:
    """Every server's store id is the one its IDENTITY file holds."""
    nodes = await registry(cluster)
    return all(nodes[name].store_id == identity(cluster, name) for name in cluster.procs)


async def ok_replicas_on(cluster, files, node: str) -> set[str]:
    blobs = set()
    for vpath in files:
        entry = await cluster.catalog.stat(full_path(cluster, vpath))
        for extent in entry.version.extents:
            blob = await cluster.catalog.get_blob(extent.blob_id)
            if any(r.node == node and r.state == REPLICA_OK for r in blob.replicas):
                blobs.add(extent.blob_id)
    return blobs


def restart(cluster, name: str, wipe: bool = False, forget_identity: bool = False) -> None:
    """Stop ``name``'s process, wipe its data directory (or only remove its
    IDENTITY, as a store made by older code has none), start it again on
    its registered port."""
    proc = cluster.procs[name]
    port = proc.port
    proc.stop()
    if wipe:
        shutil.rmtree(proc.data)
        proc.data.mkdir()
    if forget_identity:
        (proc.data / "IDENTITY").unlink()
    proc.start(port=port)


@pytest_twisted.ensureDeferred
async def test_a_server_back_on_a_wiped_directory_is_noticed_and_its_replicas_repaired(
    cluster, warnings
):
    files = await upload_files(cluster, count=6, size=150_000)
    before = all_sha256(files)
    await eventually(lambda: all_known(cluster), "every server's store id in the catalog")
    entry = await cluster.catalog.stat(full_path(cluster, "/f0.bin"))
    victim = entry.version.extents[0].replicas[0].node
    old = identity(cluster, victim)
    listed = await ok_replicas_on(cluster, files, victim)
    assert listed
    assert not [w for w in warnings if "data directory" in w]

    restart(cluster, victim, wipe=True)
    new = identity(cluster, victim)
    assert new != old
    # Read at once: the wiped server answers not_found, the read goes on
    # from the other replica.
    for vpath in files:
        got, _ = await cluster.download(vpath)
        assert hashlib.sha256(got).hexdigest() == before[vpath], vpath

    async def warned() -> bool:
        return any(victim in w and "another data directory" in w for w in warnings)

    await eventually(warned, "the warning about the wiped server")
    [warning] = [w for w in warnings if "another data directory" in w]
    assert f"storage server {victim} " in warning
    assert f"store {new}" in warning and f"store {old}" in warning
    assert f"lists {len(listed)} replica(s) there; {len(listed)} of them are gone" in warning

    node = (await registry(cluster))[victim]
    assert (node.store_id, node.store_replaced, node.store_lost) == (new, old, len(listed))

    async def repaired() -> bool:
        return await cluster.catalog.count_under_replicated() == 0

    await eventually(repaired, "repair to bring every blob back to strength", timeout=60.0)
    await check_full_strength(cluster, files)
    assert all_sha256(files) == before

    out, err, code = await cluster.wsfs("status")
    assert code == 0, err
    [line] = [x for x in out.splitlines() if x.startswith(f"{victim}: came back")]
    assert f"(store {old} -> {new})" in line and f"{len(listed)} replica(s)" in line, out
    assert "under-replicated: 0" in out
    # One warning, not one per tick.
    assert len([w for w in warnings if "another data directory" in w]) == 1


@pytest_twisted.ensureDeferred
async def test_new_servers_and_stores_older_than_identities_raise_no_alarm(cluster, warnings):
    """Three new servers report their first store ids: taken silently.  A
    store made before identities (no IDENTITY), on a server the catalog
    knows no id for (as a catalog from before schema 8), gets one at start,
    which is taken as its own: no warning, no replica marked."""
    files = await upload_files(cluster, count=3, size=100_000)
    await eventually(lambda: all_known(cluster), "every server's store id in the catalog")
    cluster.catalog._runner.run_sync(
        lambda tx: tx.execute("UPDATE nodes SET store_id = NULL WHERE name = 's1'")
    )
    restart(cluster, "s1", forget_identity=True)
    upgraded = identity(cluster, "s1")

    async def adopted() -> bool:
        return (await registry(cluster))["s1"].store_id == upgraded

    await eventually(adopted, "the upgraded store's id in the catalog")
    node = (await registry(cluster))["s1"]
    assert (node.store_replaced, node.store_replaced_at, node.store_lost) == (None, None, None)
    assert not [w for w in warnings if "data directory" in w], warnings
    assert await cluster.catalog.count_under_replicated() == 0
    await check_full_strength(cluster, files)
    out, err, code = await cluster.wsfs("status")
    assert code == 0, err
    assert "came back" not in out, out


@pytest_twisted.ensureDeferred
async def test_an_older_store_on_a_full_disk_serves_and_its_first_id_is_no_replacement(
    cluster, warnings, tmp_path
):
    """s1 is upgraded (restarted by newer code) on a store made before
    identities (no IDENTITY, none in the catalog) whose disk is full: a
    real tmpfs filled to the last block (skipped where one cannot be
    mounted).  The process starts anyway and serves reads and deletes;
    its health answers name no store; StoreWatch marks nothing.  A delete
    gives room back: the next health answer writes IDENTITY and names it,
    and the catalog takes it as s1's first id, no replacement."""
    from twisted.internet import reactor

    from tests.catalog_outage import fill, tmpfs
    from tests.storage_procs import read_sha
    from wsfront.maintenance.identity import StoreWatch
    from wsfront.transfer.pool import StoragePool

    files = await upload_files(cluster, count=3, size=100_000)
    before = all_sha256(files)
    await eventually(lambda: all_known(cluster), "every server's store id in the catalog")
    proc = cluster.procs["s1"]
    listed = await ok_replicas_on(cluster, files, "s1")
    assert listed
    client = proc.client(reactor)
    stray = "e" * 32  # a blob no file refers to: the delete that gives room back
    await client.put(stray, 1, {}, b"z" * 200_000)
    await client.close()
    # As from before schema 8 and identities: no id in the catalog, none on disk.
    cluster.catalog._runner.run_sync(
        lambda tx: tx.execute("UPDATE nodes SET store_id = NULL WHERE name = 's1'")
    )
    port = proc.port
    proc.stop()
    saved = tmp_path / "saved-s1"
    shutil.copytree(proc.data, saved)
    with tmpfs(proc.data, "16m"):
        try:
            shutil.copytree(saved, proc.data, dirs_exist_ok=True)
            (proc.data / "IDENTITY").unlink()
            fill(proc.data)
            proc.start(port=port)  # exited with ENOSPC before
            assert "no IDENTITY file yet" in proc.run_log()
            assert "the disk is full (No space left on device)" in proc.run_log()
            assert not (proc.data / "IDENTITY").exists()

            client = proc.client(reactor)
            # A front end that never heard an id from s1 (the cluster's own
            # pool keeps the one this test's removal took away).
            pool = StoragePool(reactor, probe_interval=0.5, probe_timeout=2.0)
            for name, p in cluster.procs.items():
                c = p.client(reactor)
                cluster.clients.append(c)
                pool.add(name, p.endpoint, c)
            await pool.probe_all()
            watch = StoreWatch(cluster.catalog, pool)
            try:
                health = await client.health()
                assert (health.store_id, health.store_created) == (None, None)
                for blob_id in listed:
                    blob = await cluster.catalog.get_blob(blob_id)
                    other = next(r.node for r in blob.replicas if r.node != "s1")
                    here = await read_sha(client, blob_id)
                    assert here == await read_sha(pool.client(other), blob_id)
                for vpath in files:
                    got, _ = await cluster.download(vpath)
                    assert hashlib.sha256(got).hexdigest() == before[vpath], vpath
                assert await watch.check() == []
                assert (await registry(cluster))["s1"].store_id is None
                assert await ok_replicas_on(cluster, files, "s1") == listed

                await client.delete(stray)  # room again
                health = await client.health()
                written = identity(cluster, "s1")
                assert health.store_id == written
                await pool.probe_all()
                assert await watch.check() == []
                node = (await registry(cluster))["s1"]
                assert (node.store_id, node.store_replaced, node.store_lost) == (
                    written,
                    None,
                    None,
                )
                assert await ok_replicas_on(cluster, files, "s1") == listed
                assert await cluster.catalog.count_under_replicated() == 0
                assert proc.run_log().count("no IDENTITY file yet") == 1
                assert f"IDENTITY written, this store is {written}" in proc.run_log()
                assert not [w for w in warnings if "another data directory" in w], warnings
            finally:
                pool.stop()
                await client.close()
        finally:
            proc.stop()  # before the tmpfs goes
