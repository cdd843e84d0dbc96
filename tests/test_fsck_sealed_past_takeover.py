"""A blob its old writer sealed past the offset a takeover resumed at is
sound: fsck must not call its replicas wrong, and repair must copy it.

Found by hand (chaos testing): a front end frozen (SIGSTOP) or killed after
sealing an upload's replicas but before its catalog commit; the client
resumed on the other front end, which kept those sealed replicas (their
first bytes are the extent's, ``_fence_current_blob``), so the blob's
catalog length is the resume offset (253100032) and each replica holds all
the bytes the old writer sealed (314572800).  ``wsfs fsck`` reported both
replicas "wrong", the hourly audit (and ``fsck --fix``) marked them stale,
and repair could never copy them ("none of them copies clean"): the file
stayed under-replicated for good, its only copies stale.  Repair copying
such a blob after a server loss failed the same way, and marked its last
good source stale.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.transfer_env import Feeder, TransferEnv, sha256
from wsfront.catalog.records import REPLICA_LOST
from wsfront.maintenance.fsck import check
from wsfront.maintenance.gc import GarbageCollector
from wsfront.maintenance.repair import Repairer, RepairSettings

MiB = 1 << 20


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def sealed_past_the_resume(env) -> tuple[str, list[str], bytes]:
    """/f, whose first extent is the first MiB of a blob its old writer
    sealed at 2 MiB on every replica before a takeover resumed at 1 MiB."""
    data = os.urandom(2 * MiB)
    session_a = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session_a, data[:MiB]).start()
    await session_a.checkpoint()
    await Feeder(env.reactor, session_a, data[MiB:]).start()
    blob, epoch, replicas = session_a.blob_id, session_a.epoch, list(session_a.replicas)
    for node in replicas:  # what A's finish does before its catalog commit
        await env.transfers.pool.client(node).commit(blob, epoch)
    fe_b = await env.front_end("fe-b")
    session_b = await fe_b.open_write(env.user, "/f", append=True)
    assert session_b.offset == MiB
    rest = os.urandom(MiB // 2)
    await Feeder(env.reactor, session_b, rest).start()
    await session_b.finish()
    assert (await env.catalog.get_blob(blob)).length == MiB
    for node in replicas:
        assert (await env.transfers.pool.client(node).stat(blob)).size == 2 * MiB
    return blob, replicas, data[:MiB] + rest


@pytest_twisted.ensureDeferred
async def test_fsck_finds_nothing_wrong_with_a_blob_sealed_past_the_resume(env):
    await sealed_past_the_resume(env)
    gc = GarbageCollector(task.Clock(), env.catalog, env.transfers.pool)
    report = await check(env.catalog, env.transfers.pool, gc)
    assert report["wrong"] == []
    assert report["_bad"] == []


@pytest_twisted.ensureDeferred
async def test_repair_copies_a_blob_sealed_past_the_resume(env):
    blob, replicas, content = await sealed_past_the_resume(env)
    victim, survivor = replicas
    await env.kill(victim)
    await env.transfers.pool.probe_all()
    await env.catalog.mark_replica(blob, victim, REPLICA_LOST)
    repairer = Repairer(
        task.Clock(), env.catalog, env.transfers.pool, RepairSettings(bytes_per_second=None)
    )
    stats = await repairer.run_pass(now=True)
    assert stats["copied"] >= 1
    record = await env.catalog.get_blob(blob)
    assert survivor in record.ok_replicas and len(record.ok_replicas) == 2
    got, _ = await env.download("/f")
    assert sha256(got) == sha256(content)
