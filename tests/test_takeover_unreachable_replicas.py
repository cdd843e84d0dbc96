"""A takeover that reaches no replica of the current blob must not cost the
upload its durable bytes.

Found by hand (chaos testing, two wsstorage processes SIGKILLed under an
HTTP PUT): the resume that came while both replicas were still down got 503,
as it should, but it had marked both replicas stale for missing the fence.
Once they were back, every later resume got the same 503 ("no replica ...
could be fenced") for ever, while HEAD still offered the old Upload-Offset;
only a PUT from byte 0 got through.  A replica that misses a fence leaves
the replica set only when another one was fenced: with none fenced, the
next takeover's fence (at a higher epoch) does the job.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.transfer_env import Feeder, TransferEnv, sha256
from wsfront.transfer.errors import NoReplicasAvailable

MiB = 1 << 20


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend="real")
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def revive(env, transfers, name):
    port = int(env.endpoints[name].rsplit(":", 1)[1])
    await env.nodes[name].listen(port)
    await transfers.pool.probe_all()
    assert transfers.pool.is_up(name)


@pytest_twisted.ensureDeferred
async def test_a_resume_while_every_replica_is_down_leaves_the_upload_resumable(env):
    data = os.urandom(3 * MiB)
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, data[:MiB]).start()
    await session.checkpoint()
    await session.interrupt()
    upload = await env.catalog.find_upload("/alice/f")
    replicas = [r.node for r in upload.replicas]
    assert len(replicas) == 2
    for node in replicas:
        await env.kill(node)
    fe_b = await env.front_end("fe-b")
    await fe_b.pool.probe_all()
    with pytest.raises(NoReplicasAvailable):
        await fe_b.open_write(env.user, "/f", append=True)
    upload = await env.catalog.find_upload("/alice/f")
    assert (upload.state, upload.checkpoint) == ("interrupted", MiB)
    assert sorted(r.node for r in upload.replicas if r.state == "ok") == sorted(replicas)
    for node in replicas:
        await revive(env, fe_b, node)
    resumed = await fe_b.open_write(env.user, "/f", append=True)
    assert resumed.offset == MiB
    await Feeder(env.reactor, resumed, data[MiB:]).start()
    await resumed.finish()
    got, _ = await env.download("/f", transfers=fe_b)
    assert sha256(got) == sha256(data)
