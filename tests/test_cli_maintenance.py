"""``wsfs repair / fsck / drain / rebalance / backup`` end to end: real
``twistd -n wsstorage`` processes (one SIGKILLed), a front end running the
maintenance service, and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import (
    ProcessCluster,
    all_sha256,
    check_full_strength,
    full_path,
    payload,
)
from tests.transfer_env import disk_problem, sha256
from wsfront.catalog import open_catalog

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    from twisted.internet import reactor

    c = ProcessCluster(reactor, tmp_path)
    pytest_twisted.blockon(defer.ensureDeferred(c.start()))
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


async def populate(cluster, count=5, size=200_000) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        files[f"/f{i}.bin"] = payload(size + 1000 * i)
        await cluster.upload(f"/f{i}.bin", files[f"/f{i}.bin"])
    return files


@pytest_twisted.ensureDeferred
async def test_wsfs_repair_after_a_storage_process_is_sigkilled_restores_every_file(cluster):
    files = await populate(cluster)
    before = all_sha256(files)
    entry = await cluster.catalog.stat(full_path(cluster, "/f0.bin"))
    victim = entry.version.extents[0].replicas[0].node
    proc = cluster.procs[victim].proc
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    out, err, code = await cluster.wsfs("--json", "repair", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err
    job = json.loads(out)
    assert job["state"] == "done"
    assert job["result"]["lost_nodes"] == [victim]
    assert job["result"]["copied"] > 0 and job["result"]["under_replicated"] == 0
    await check_full_strength(cluster, files, dead=[victim])
    assert all_sha256(files) == before
    # The table form is a sentence an operator reads, not the result's dict.
    out, err, code = await cluster.wsfs("repair", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err
    [done] = [line for line in out.splitlines() if line.startswith("repair done: ")]
    assert "0 replicas copied" in done and "0 blobs still under-replicated" in done, done
    assert f"servers lost: {victim}" in done and "{" not in done, done


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_reports_problems_with_exit_3_and_fix_clears_them(cluster):
    files = await populate(cluster, count=3)
    out, err, code = await cluster.wsfs("fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err + out
    assert "missing replicas: 0" in out
    # A blob nobody references, left on a server (a delete it missed).
    await (
        cluster.pool.client("s2")
        .write("borphan42", 1, 0, {})
        .addCallback(lambda w: (w.write(b"junk"), w.commit())[1])
    )
    out, err, code = await cluster.wsfs("fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 3, err + out
    assert "orphans: 1" in out
    out, err, code = await cluster.wsfs("fsck", "--fix", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err + out
    assert "1 deleted" in out
    out, err, code = await cluster.wsfs("--json", "fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 0 and json.loads(out)["result"]["problems"] == 0
    await check_full_strength(cluster, files)


@pytest_twisted.ensureDeferred
async def test_wsfs_drain_empties_a_server_that_can_then_go(cluster):
    files = await populate(cluster, count=4)
    entry = await cluster.catalog.stat(full_path(cluster, "/f1.bin"))
    leaving = entry.version.extents[0].replicas[0].node
    out, err, code = await cluster.wsfs("drain", leaving, "--poll", "0.1", "--timeout", "60")
    assert code == 0, err
    assert f"drain of {leaving} done" in out
    await cluster.service.gc.sweep(grace=0)
    assert await cluster.pool.client(leaving).list_blobs() == []
    cluster.procs[leaving].stop()
    await check_full_strength(cluster, files, dead=[leaving])


async def drain_one(cluster) -> tuple[str, int]:
    """Drain a server holding a replica; fire with its name and how many
    copies it held (each now a stray, its replica marked stale)."""
    await populate(cluster, count=4)
    entry = await cluster.catalog.stat(full_path(cluster, "/f1.bin"))
    leaving = entry.version.extents[0].replicas[0].node
    held = len(await cluster.pool.client(leaving).list_blobs())
    out, err, code = await cluster.wsfs("drain", leaving, "--poll", "0.1", "--timeout", "60")
    assert code == 0, err + out
    return leaving, held


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_right_after_a_drain_exits_0_and_names_the_strays_in_their_grace(cluster):
    """``wsfs drain s1 && wsfs fsck``: the copies the drain moved off wait
    out GC's grace as strays; that is the expected state of a healthy
    cluster, said on its own line with when GC collects them, not exit 3."""
    _, held = await drain_one(cluster)
    before = time.time()
    out, err, code = await cluster.wsfs("fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err + out
    assert f"strays: {held} " in out, out
    [line] = [line for line in out.splitlines() if "waiting out their grace" in line]
    assert line.startswith(f"{held} stray copies waiting out their grace period, collected by GC "
                           "after "), line  # fmt: skip
    out, err, code = await cluster.wsfs("--json", "fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err + out
    r = json.loads(out)["result"]
    assert (r["strays"], r["strays_waiting"], r["problems"]) == (held, held, 0), r
    # The grace counts from the first fsck's sighting (GC's own clock), an hour.
    assert before < r["strays_collected_after"] <= time.time() + 3600
    # Once the sweep takes them, nothing is left to wait for.
    await cluster.service.gc.sweep(grace=0)
    out, err, code = await cluster.wsfs("--json", "fsck", "--poll", "0.1", "--timeout", "60")
    r = json.loads(out)["result"]
    assert (code, r["strays"], r["strays_waiting"], r["strays_collected_after"]) == (0, 0, 0, None)


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_fix_after_a_drain_deletes_the_strays_and_says_none_wait(cluster):
    """``--fix`` sweeps with no grace: the drain's strays are deleted, and
    no line says they still wait out their grace."""
    _, held = await drain_one(cluster)
    out, err, code = await cluster.wsfs("fsck", "--fix", "--poll", "0.1", "--timeout", "60")
    assert code == 0, err + out
    assert f"strays: {held} " in out and f", {held} deleted" in out, out
    assert "waiting out" not in out, out


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_counts_strays_past_their_grace_as_problems(tmp_path):
    """With a grace of 0 the drain's strays are overdue at once (GC's sweep
    has not run: its turn is 10 minutes away): problems, exit 3."""
    from twisted.internet import reactor

    from wsfront.maintenance.gc import GCSettings

    cluster = ProcessCluster(reactor, tmp_path)
    await cluster.start(gc=GCSettings(orphan_grace_seconds=0.0))
    try:
        _, held = await drain_one(cluster)
        out, err, code = await cluster.wsfs("--json", "fsck", "--poll", "0.1", "--timeout", "60")
        assert code == 3, err + out
        r = json.loads(out)["result"]
        assert (r["strays"], r["strays_waiting"], r["problems"]) == (held, 0, held), r
        out, err, code = await cluster.wsfs("fsck", "--poll", "0.1", "--timeout", "60")
        assert code == 3 and f"strays: {held} " in out and "waiting out" not in out, err + out
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_wsfs_backup_writes_a_catalog_that_opens_with_every_file(cluster, tmp_path):
    from twisted.internet import reactor

    files = await populate(cluster, count=2)
    dest = tmp_path / "backup.sqlite"
    out, err, code = await cluster.wsfs("backup", str(dest))
    assert code == 0, err
    assert "backed up" in out and dest.exists()
    copy = open_catalog(reactor, f"sqlite:///{dest}")
    try:
        for vpath in files:
            entry = await copy.stat(full_path(cluster, vpath))
            assert entry.size == len(files[vpath])
        assert (await copy.get_user("alice")).name == "alice"
    finally:
        await copy.close()


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_rebuild_catalog_after_the_sqlite_file_is_deleted(cluster):
    from twisted.internet import reactor

    from tests.transfer_env import PASSWORD
    from wsfront.transfer.service import Transfers

    files = await populate(cluster, count=4)
    await cluster.service.stopService()
    await cluster.catalog.close()
    path = cluster.catalog_url[len("sqlite://") :]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    args = ["fsck", "--rebuild-catalog", "--secret-file", str(cluster.tmp / "secret")]
    for name, proc in cluster.procs.items():
        args += ["--storage", f"{name}={proc.endpoint}"]
    out, err, code = await cluster.wsfs(*args)
    assert code == 0, err + out
    assert f"rebuilt: {len(files)} files" in out
    # The hint must work: a plain `user add` refuses a root holding files.
    assert "wsfs user add NAME --adopt-files" in out
    cluster.catalog = open_catalog(reactor, cluster.catalog_url)
    await cluster.catalog.add_user("alice", PASSWORD, adopt_files=True)
    cluster.user = await cluster.catalog.get_user("alice")
    cluster.transfers = Transfers(reactor, cluster.catalog, cluster.pool, "fe-a")
    for vpath, data in files.items():
        got, _ = await cluster.download(vpath)
        assert sha256(got) == sha256(data), vpath


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_rebuild_catalog_with_the_wrong_secret_says_it_was_refused(cluster):
    """A wrong --secret-file is an authentication failure the servers
    answered, not servers that are "unreachable" (that sends an operator
    to the network); each is named, and a server that is really gone is
    still called unreachable beside them.  Nothing is rebuilt."""
    await populate(cluster, count=1)
    gone = "s3"
    cluster.procs[gone].stop()
    wrong = cluster.tmp / "wrong-secret"
    wrong.write_bytes(b"not-the-cluster-secret-at-all-000000")
    fresh = cluster.tmp / "fresh.sqlite"
    args = ["--catalog", f"sqlite:///{fresh}", "fsck", "--rebuild-catalog"]
    args += ["--secret-file", str(wrong)]
    for name, proc in cluster.procs.items():
        args += ["--storage", f"{name}={proc.endpoint}"]
    out, err, code = await cluster.wsfs(*args)
    assert code == 1, err + out
    [line] = err.splitlines()
    assert line.startswith("wsfs: storage servers s1, s2 refused the secret of --secret-file "
                           "(authentication failed: is it the cluster's?)"), line  # fmt: skip
    assert line.endswith(f"; unreachable: {gone}; all are needed"), line
    assert "unreachable: s1" not in line and "s2;" not in line, line


@pytest_twisted.ensureDeferred
async def test_wsfs_compact_merges_resumed_files_and_a_rebuilt_catalog_reads_them_back(cluster):
    from twisted.internet import reactor

    from tests.transfer_env import PASSWORD, Feeder
    from wsfront.transfer.service import Transfers

    files = await populate(cluster, count=1)
    for name in ("/resumed-a.bin", "/resumed-b.bin"):
        content = b""
        for i in range(4):
            piece = payload(100_000 + 1000 * i)
            session = await cluster.transfers.open_write(cluster.user, name, len(content))
            await Feeder(reactor, session, piece).start()
            await session.finish()
            content += piece
        files[name] = content
    before = {v: await cluster.catalog.stat(full_path(cluster, v)) for v in files}
    out, err, code = await cluster.wsfs(
        "compact", "--min-extents", "3", "--poll", "0.1", "--timeout", "60"
    )
    assert code == 0, err + out
    assert "compact done: 2 of 2 files merged into one blob" in out, out
    for vpath, data in files.items():
        entry = await cluster.catalog.stat(full_path(cluster, vpath))
        assert len(entry.version.extents) == 1
        assert entry.version.etag == before[vpath].version.etag
        if vpath.startswith("/resumed"):
            assert entry.version.sha256 == sha256(data)
    await check_full_strength(cluster, files)
    # The catalog is lost before GC took the replaced blobs: a rebuild still
    # gives every file back, once, at its path.
    await cluster.service.stopService()
    await cluster.catalog.close()
    path = cluster.catalog_url[len("sqlite://") :]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    args = ["--json", "fsck", "--rebuild-catalog", "--secret-file", str(cluster.tmp / "secret")]
    for name, proc in cluster.procs.items():
        args += ["--storage", f"{name}={proc.endpoint}"]
    out, err, code = await cluster.wsfs(*args)
    assert code == 0, err + out
    report = json.loads(out)
    assert report["files"] == len(files) and report["problems"] == [], report
    assert report["replaced_by_compaction"] == 8
    cluster.catalog = open_catalog(reactor, cluster.catalog_url)
    await cluster.catalog.add_user("alice", PASSWORD, adopt_files=True)
    cluster.user = await cluster.catalog.get_user("alice")
    cluster.transfers = Transfers(reactor, cluster.catalog, cluster.pool, "fe-a")
    for vpath, data in files.items():
        got, _ = await cluster.download(vpath)
        assert sha256(got) == sha256(data), vpath


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_names_a_server_that_answers_but_cannot_list_its_blobs(cluster):
    """``rm -rf <data>/blobs`` under a running server: fsck's summary names
    it failing, with the reason, beside the replicas it counts missing."""
    import shutil

    from twisted.internet import reactor, task

    await populate(cluster, count=3)
    victim = "s2"
    shutil.rmtree(cluster.procs[victim].data / "blobs")
    deadline = reactor.seconds() + 20
    while disk_problem(cluster.pool, victim) is None:
        assert reactor.seconds() < deadline, "the disk problem was never seen"
        await cluster.pool.probe_all()
        await task.deferLater(reactor, 0.05, lambda: None)
    out, err, code = await cluster.wsfs("fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 3, err + out
    failing = [line for line in out.splitlines() if line.startswith("failing: ")]
    assert len(failing) == 1 and failing[0].startswith(f"failing: {victim} ("), out
    assert str(cluster.procs[victim].data) not in out


@pytest_twisted.ensureDeferred
async def test_wsfs_fsck_says_how_many_replicas_it_could_not_judge(cluster):
    """A server whose blobs directory is a file (its listing and every
    stat fail with a disk error): fsck's summary names it failing and
    says how many replicas it did not judge, none of them missing."""
    import shutil

    await populate(cluster, count=3)
    victim = "s2"
    blobs = cluster.procs[victim].data / "blobs"
    shutil.rmtree(blobs)
    blobs.write_bytes(b"not a directory\n")
    out, err, code = await cluster.wsfs("fsck", "--poll", "0.1", "--timeout", "60")
    assert code == 3, err + out
    assert f"failing: {victim} (" in out, out
    [line] = [line for line in out.splitlines() if line.startswith("not judged: ")]
    assert int(line.split()[2]) > 0, out
    assert "missing: blob" not in out, out
