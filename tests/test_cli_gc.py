"""``wsfs gc`` end to end: real ``twistd -n wsstorage`` processes, a front end
running the maintenance service, and the CLI as a subprocess.  The pass it
queues keeps the front end's grace periods: what is past them is freed on
the storage servers, what is not is kept."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import ProcessCluster, check_full_strength, full_path, payload
from tests.test_cli import wsfs
from wsfront.catalog import errors as catalog_errors
from wsfront.maintenance.gc import GCSettings

JOB = ("--poll", "0.1", "--timeout", "60")


def start_cluster(tmp_path, gc: GCSettings):
    from twisted.internet import reactor

    c = ProcessCluster(reactor, tmp_path)
    # The scheduled pass (every 10 minutes) is not due in a test: whatever
    # is collected, the job collected.
    pytest_twisted.blockon(defer.ensureDeferred(c.start(gc=gc)))
    return c


@pytest.fixture
def past_grace(tmp_path):
    """A front end whose garbage is past its grace as soon as it is seen."""
    c = start_cluster(tmp_path, GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0))
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


@pytest.fixture
def in_grace(tmp_path):
    """A front end with the default grace periods (an hour)."""
    c = start_cluster(tmp_path, GCSettings())
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


async def upload_and_delete(cluster, keep: int = 2) -> tuple[dict[str, bytes], set[str]]:
    """Upload ``keep`` files and one more, then delete that one; return the
    kept files and the blob ids of the deleted one."""
    files = {}
    for i in range(keep + 1):
        data = payload(150_000 + 1000 * i)
        await cluster.upload(f"/f{i}.bin", data)
        files[f"/f{i}.bin"] = data
    doomed = f"/f{keep}.bin"
    entry = await cluster.catalog.stat(full_path(cluster, doomed))
    await cluster.transfers.delete(cluster.user, doomed)
    del files[doomed]
    return files, {extent.blob_id for extent in entry.version.extents}


async def put_orphan(cluster, node: str, blob_id: str) -> None:
    """A blob no catalog row references on ``node`` (a delete it missed)."""
    writer = await cluster.pool.client(node).write(blob_id, 1, 0, {})
    writer.write(b"junk")
    await writer.commit()


async def stored(cluster) -> set[str]:
    found = set()
    for name in cluster.procs:
        found |= {info.blob_id for info in await cluster.pool.client(name).list_blobs()}
    return found


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_wsfs_gc_frees_a_deleted_files_blobs_past_their_grace_and_prints_a_summary(
    past_grace,
):
    cluster = past_grace
    files, doomed = await upload_and_delete(cluster)
    assert doomed <= await stored(cluster)
    await put_orphan(cluster, "s2", "borphan42")
    out, err, code = await cluster.wsfs("gc", *JOB)
    assert code == 0, err + out
    summary = out.strip().splitlines()[-1]
    assert summary == (
        f"gc done: {len(doomed)} blobs collected (0 kept in their grace period, 0 copies "
        "left on unreachable servers), 1 orphan and 0 stray copies deleted (0 kept in their "
        "grace period), 0 uploads expired, 0 purged"
    ), out
    left = await stored(cluster)
    assert not doomed & left and "borphan42" not in left
    for blob_id in doomed:
        with pytest.raises(catalog_errors.NotFound):
            await cluster.catalog.get_blob(blob_id)
    await check_full_strength(cluster, files)
    # Nothing left to do; --json gives the job and the pass's stats.
    out, err, code = await cluster.wsfs("--json", "gc", *JOB)
    assert code == 0, err + out
    job = json.loads(out)
    assert job["kind"] == "gc" and job["state"] == "done"
    assert job["result"]["forgotten"] == 0 and job["result"]["orphans_deleted"] == 0


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_wsfs_gc_keeps_a_deleted_files_blobs_and_an_orphan_within_their_grace_period(
    in_grace,
):
    """The deleted file's blobs and a blob no catalog row references (an
    orphan: a delete a server missed) were first seen by this pass: both
    are kept, counted as in their grace period, and stay on the servers."""
    cluster = in_grace
    files, doomed = await upload_and_delete(cluster)
    await put_orphan(cluster, "s2", "borphan42")
    out, err, code = await cluster.wsfs("--json", "gc", *JOB)
    assert code == 0, err + out
    result = json.loads(out)["result"]
    assert result["forgotten"] == 0 and result["waiting"] == len(doomed), result
    assert result["orphans_deleted"] == 0 and result["orphans_waiting"] == 1, result
    assert result["guarded"] == [], result
    assert doomed <= await stored(cluster)
    assert "borphan42" in await stored(cluster)
    for blob_id in doomed:
        assert (await cluster.catalog.get_blob(blob_id)).blob_id == blob_id
    out, err, code = await cluster.wsfs("gc", *JOB)
    assert code == 0, err + out
    assert f"gc done: 0 blobs collected ({len(doomed)} kept in their grace period" in out
    assert "0 orphan and 0 stray copies deleted (1 kept in their grace period)" in out
    assert doomed <= await stored(cluster)
    assert "borphan42" in await stored(cluster)
    await check_full_strength(cluster, files)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_wsfs_gc_grace_zero_frees_a_deleted_files_blobs_now(in_grace):
    """An operator freeing a full cluster: ``--grace 0`` collects the blobs
    of a file deleted just now, though the front end's grace is an hour;
    the orphan keeps its own grace (a sweep's, not asked for); the next
    plain pass keeps the front end's grace again."""
    cluster = in_grace
    files, doomed = await upload_and_delete(cluster)
    await put_orphan(cluster, "s2", "borphan42")
    out, err, code = await cluster.wsfs("--json", "gc", "--grace", "0", *JOB)
    assert code == 0, err + out
    result = json.loads(out)["result"]
    assert result["forgotten"] == len(doomed) and result["waiting"] == 0, result
    assert result["orphans_waiting"] == 1, result
    assert not doomed & await stored(cluster)
    assert "borphan42" in await stored(cluster)
    await check_full_strength(cluster, files)
    _, more = await upload_and_delete(cluster, keep=3)  # f0, f1 overwritten too
    out, err, code = await cluster.wsfs("--json", "gc", *JOB)
    assert code == 0, err + out
    result = json.loads(out)["result"]
    assert result["forgotten"] == 0 and result["waiting"] == len(more) + 2, result
    assert more <= await stored(cluster)
    _, err, code = await cluster.wsfs("gc", "--grace", "-1", *JOB)
    assert code == 2 and "must be 0 or more" in err


def test_wsfs_gc_with_no_front_end_says_so_and_the_job_stays_queued(tmp_path):
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n")
    proc = wsfs(catalog, "gc", "--timeout", "5", "--poll", "0.05", "--no-taker-after", "0.5")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "no front end is running to run the gc job" in lines[0], proc.stderr
    assert "still queued after" in lines[1] and "no front end has taken it" in lines[1]
    assert "Traceback" not in proc.stderr


@pytest_twisted.ensureDeferred
async def test_wsfs_gc_prints_a_question_mark_for_counts_an_older_lease_holder_did_not_report():
    """A rolling upgrade: the lease holder still runs a release whose pass
    has no ``orphans_waiting``/``strays_waiting``; the CLI prints what the
    pass did, with "?" for them, not a KeyError after the pass ran."""
    import argparse
    import io
    from types import SimpleNamespace

    from wsfront.cli import Commands

    old_result = {
        "forgotten": 2, "waiting": 1, "left_behind": 0, "orphans_deleted": 3,
        "strays_deleted": 0, "expired_uploads": 4, "purged_uploads": 5,
    }  # fmt: skip

    class OlderHolder(Commands):
        async def _job(self, kind, args):
            return SimpleNamespace(kind=kind, result=old_result)

    out = io.StringIO()
    await OlderHolder(None, argparse.Namespace(json=False), out).gc()
    assert out.getvalue() == (
        "gc done: 2 blobs collected (1 kept in their grace period, 0 copies left on "
        "unreachable servers), 3 orphan and 0 stray copies deleted (? kept in their "
        "grace period), 4 uploads expired, 5 purged\n"
    )
