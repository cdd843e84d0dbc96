"""The cache of verified small extents: what it keeps, and that the catalog
still decides what a read returns."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.transfer_env import Collector, TransferEnv
from wsfront.catalog.errors import NotFound
from wsfront.transfer.errors import NoReplicasAvailable
from wsfront.transfer.extent_cache import ExtentCache


def test_only_small_extents_are_kept_and_the_oldest_go_first():
    cache = ExtentCache(capacity=10, max_extent=4)
    cache.put(("a", 0, 5), b"12345")  # too big for an entry
    cache.put(("b", 0, 3), b"12")  # not the length its key says
    assert len(cache) == 0
    for name in "cde":
        cache.put((name, 0, 4), b"abcd")
    assert cache.size <= 10 and len(cache) == 2
    assert cache.get(("c", 0, 4)) is None  # the least recently used went
    assert cache.get(("e", 0, 4)) == b"abcd"
    assert (cache.hits, cache.misses) == (1, 1)
    assert not ExtentCache(capacity=0).wants(1)


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(TransferEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def forget_uploads(env) -> None:
    """Empty the cache, as after a restart: uploads put their small blobs
    in it as they seal (wsfront.transfer.write_through), and these tests
    are about what reads put there."""
    env.transfers.extent_cache = ExtentCache(env.transfers.extent_cache.capacity)


@pytest_twisted.ensureDeferred
async def test_a_small_file_read_once_is_served_without_its_storage_servers(env):
    data = b"small and hot " * 100
    await env.upload("/hot.txt", data)
    forget_uploads(env)
    assert (await env.download("/hot.txt"))[0] == data
    for name in list(env.nodes):
        await env.kill(name)
    got, stream = await env.download("/hot.txt")
    assert got == data and stream.failovers == 0
    assert env.transfers.extent_cache.hits == 1


@pytest_twisted.ensureDeferred
async def test_the_catalog_still_decides_overwritten_and_deleted_files(env):
    await env.upload("/f.txt", b"first version")
    assert (await env.download("/f.txt"))[0] == b"first version"
    await env.upload("/f.txt", b"second, longer version")
    assert (await env.download("/f.txt"))[0] == b"second, longer version"
    await env.transfers.delete(env.user, "/f.txt")
    with pytest.raises(NotFound):
        await env.transfers.open_read(env.user, "/f.txt")


@pytest_twisted.ensureDeferred
async def test_ranges_and_large_extents_still_go_to_storage(env):
    small = b"0123456789" * 10
    big = bytes(range(256)) * 1024  # 256 KiB: more than an entry may hold
    await env.upload("/small.bin", small)
    await env.upload("/big.bin", big)
    forget_uploads(env)
    assert (await env.download("/big.bin"))[0] == big
    assert (await env.download("/small.bin", offset=10))[0] == small[10:]  # a range
    assert len(env.transfers.extent_cache) == 0
    for name in list(env.nodes):
        await env.kill(name)
    for path in ("/big.bin", "/small.bin"):
        handle = await env.transfers.open_read(env.user, path, 10)
        with pytest.raises(NoReplicasAvailable):
            await handle.stream.start(Collector())


@pytest_twisted.ensureDeferred
async def test_a_read_that_failed_over_caches_the_whole_extent_once(env):
    data = b"x" * 5000 + b"y" * 5000
    await env.upload("/fo.bin", data)
    entry = await env.catalog.stat(env.transfers.full_path(env.user, "/fo.bin"))
    [extent] = entry.version.extents
    await env.kill(extent.replicas[0].node)
    got, _stream = await env.download("/fo.bin")
    assert got == data
    for replica in extent.replicas:
        await env.kill(replica.node)
    assert (await env.download("/fo.bin"))[0] == data
