"""fsck --rebuild-catalog and compaction copies that were never swapped in.

A compaction that loses its compare-and-set (the file was overwritten
meanwhile) abandons its copy; if the storage servers could not delete it,
the copy survives beside the newer version.  A rebuild must not let that
copy (whose ``created_at`` comes from the compacting front end's clock)
outrank the newer version, whatever the clocks say.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.maintenance_env import payload
from tests.test_fsck_rebuild import lose_and_rebuild
from tests.transfer_env import Collector, TransferEnv, sha256
from wsfront.maintenance.compact import CHANGED, Compactor, CompactSettings
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.rebuild import LOST_FOUND
from wsfront.transfer.reader import ReadStream
from wsfront.transfer.service import _read_extent


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


class SkewedClock:
    """The reactor's clock, ``ahead`` seconds fast (another host's clock)."""

    def __init__(self, reactor, ahead: float) -> None:
        self._reactor = reactor
        self._ahead = ahead

    def seconds(self) -> float:
        return self._reactor.seconds() + self._ahead

    def __getattr__(self, name):
        return getattr(self._reactor, name)


class DeletesFail(Compactor):
    """A compactor whose abandoned copies cannot be deleted (the storage
    servers were unreachable then): the copy survives on every server."""

    async def _abandon(self, blob_id, targets):
        await self._catalog.forget_blob(blob_id)


async def build_in_pieces(env, vpath: str, count: int = 4) -> bytes:
    content = b""
    for i in range(count):
        piece = payload(20_000 + 1000 * i)
        await env.upload(vpath, piece, offset=len(content))
        content += piece
    return content


async def lose_the_race(env, compactor, vpath: str, racer):
    """Compact ``vpath`` while ``racer()`` changes it just before the swap."""
    catalog = env.catalog
    swap = catalog.replace_extents

    async def replace_extents(*args, **kw):
        await racer()
        return await swap(*args, **kw)

    catalog.replace_extents = replace_extents
    try:
        [candidate] = await catalog.compaction_candidates(3, 10, None)
        assert candidate.path.endswith(vpath)
        assert await compactor.compact(candidate) == CHANGED
    finally:
        del catalog.replace_extents


async def read_path(env, path: str) -> bytes:
    """The committed bytes at a catalog path (outside the user's home too)."""
    from twisted.internet import reactor

    entry = await env.catalog.stat(path)
    sink = Collector()
    stream = ReadStream(
        reactor, env.transfers.pool, [_read_extent(e) for e in entry.version.extents]
    )
    await stream.start(sink)
    return sink.data


async def collect_garbage(env) -> None:
    from twisted.internet import task

    clock = task.Clock()
    gc = GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(grace_seconds=1))
    await gc.collect()
    clock.advance(1)
    await gc.collect()


@pytest.mark.parametrize("ahead", [600.0, 0.0], ids=["compactor-clock-fast", "same-clock"])
@pytest.mark.parametrize("collected", [False, True], ids=["old-blobs-kept", "old-blobs-collected"])
@pytest_twisted.ensureDeferred
async def test_an_abandoned_compaction_copy_never_outranks_a_newer_overwrite(env, ahead, collected):
    from twisted.internet import reactor

    old = await build_in_pieces(env, "/f.bin")
    new = payload(33_000)
    fe_b = await env.front_end("fe-b")
    compactor = DeletesFail(
        SkewedClock(reactor, ahead),
        env.catalog,
        env.transfers.pool,
        CompactSettings(min_extents=3, bytes_per_second=None),
    )

    async def overwrite_through_b():
        await env.upload("/f.bin", new, transfers=fe_b)

    await lose_the_race(env, compactor, "/f.bin", overwrite_through_b)
    if collected:
        await collect_garbage(env)  # the old version's blobs are gone

    report = await lose_and_rebuild(env)
    got, _ = await env.download("/f.bin")
    assert sha256(got) == sha256(new), report
    # The old content is not lost: the old version (or, once its blobs were
    # collected, the surviving copy of it) is in /lost+found.
    [moved] = [p["moved_to"] for p in report["problems"] if p.get("why") == "ambiguous"]
    assert moved.startswith(LOST_FOUND)
    assert sha256(await read_path(env, moved)) == sha256(old)
