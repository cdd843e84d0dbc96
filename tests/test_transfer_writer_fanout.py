"""How a WriteSession fans a client's chunks out to its replicas.

A large client read (an HTTP PUT reads 1 MiB a turn) goes to every
replica's writer whole; each frames it with views of the same bytes.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.transfer_env import Collector, Feeder, TransferEnv, sha256

MiB = 1 << 20


@pytest.fixture(params=["real", "fake"])
def env(request, tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend=request.param)
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_chunks_larger_than_a_frame_reach_both_replicas_intact(env):
    data = os.urandom(5 * MiB + 3)
    session = await env.transfers.open_write(env.user, "/wide.bin", 0)
    assert len(session.replicas) == 2
    # 1 MiB + 7: every chunk spans several frames and ends mid-frame.
    await Feeder(env.reactor, session, data, chunk=MiB + 7).start()
    version = await session.finish()
    assert version.size == len(data)
    assert version.sha256 == sha256(data)
    [extent] = version.extents
    assert len(extent.replicas) == 2
    for node in (r.node for r in extent.replicas):
        sink = Collector()
        await env.transfers.pool.client(node).read(extent.blob_id, 0, None, sink)
        assert sha256(sink.data) == sha256(data), node
