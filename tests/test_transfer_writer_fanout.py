"""How a WriteSession fans a client's chunks out to its replicas.

A large client read (an HTTP PUT reads 1 MiB a turn) is cut once into
pieces of at most one DATA frame, shared by every replica, instead of being
sliced again by each replica's writer.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.transfer_env import Collector, Feeder, TransferEnv, sha256
from wsfront.transfer.writer import frame_pieces
from wsstorage.framing import MAX_DATA

MiB = 1 << 20


def test_a_chunk_that_fits_one_frame_is_passed_as_it_is():
    data = os.urandom(MAX_DATA)
    (piece,) = frame_pieces(data)
    assert piece is data


def test_a_large_chunk_is_cut_into_frames_that_rebuild_it():
    data = os.urandom(3 * MAX_DATA + 5)
    pieces = frame_pieces(data)
    assert [len(p) for p in pieces] == [MAX_DATA] * 3 + [5]
    assert b"".join(pieces) == data


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
