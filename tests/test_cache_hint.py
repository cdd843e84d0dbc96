"""One replica of a new blob keeps the page cache; the writer asks the
others to drop it behind what they sync, and a lone reader starts on that
one (wsfront/transfer/cache_hint.py, ``drop_cache`` in the wire protocol)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.storage_loopback import Rig
from tests.test_blobstore_drop_behind import data, read_blob
from tests.test_storage_server import read_all
from tests.transfer_env import TransferEnv, sha256
from wsfront.transfer.cache_hint import advise_drop_behind, cached_replica
from wsstorage import blobstore
from wsstorage.blobstore import BlobStore
from wsstorage.fsshims import RecordingFileSystem

MIB = 1 << 20


@pytest.fixture
def small_run(monkeypatch):
    """Hinted blobs drop behind from their first MiB (64 MiB in service)."""
    monkeypatch.setattr(blobstore, "HINTED_DROP_AFTER", MIB)


def test_the_cached_replica_is_one_of_them_and_stays_when_another_leaves() -> None:
    nodes = ["s1", "s2", "s3", "s4"]
    picks = {cached_replica(f"blob{i}", nodes) for i in range(64)}
    assert picks == set(nodes)  # spread over the nodes, blob by blob
    for i in range(64):
        blob = f"blob{i}"
        keep = cached_replica(blob, nodes)
        assert cached_replica(blob, reversed(nodes)) == keep  # order does not matter
        others = [n for n in nodes if n != keep]
        assert cached_replica(blob, [keep, others[0]]) == keep
    assert cached_replica("b", []) is None


def test_every_writer_but_the_cached_replicas_gets_the_hint() -> None:
    class Writer:
        hinted = False

        def drop_cache_behind(self) -> None:
            self.hinted = True

    writers = {name: Writer() for name in ("s1", "s2", "s3")}
    writers["s4"] = object()  # takes no hints: left alone
    advise_drop_behind("b", writers)
    keep = cached_replica("b", writers)
    hinted = {name for name, w in writers.items() if getattr(w, "hinted", False)}
    assert hinted == {"s1", "s2", "s3", "s4"} - {keep, "s4"}


def test_the_hint_turns_drop_behind_on_for_one_blob_of_a_store_without_it(
    tmp_path, small_run
) -> None:
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs)  # drop_behind off
    assert store.drop_behind == 0
    plain = store.open_write("plain", 1, 0, {})
    hinted = store.open_write("hinted", 1, 0, {})
    hinted.drop_cache_behind()
    for w in (plain, hinted):
        w.write(data(3 * MIB + 100))
        w.sync()
    # Synced whole pages only, as drop-behind does; nothing of the other.
    assert fs.drops == [("hinted.data", 0, 3 * MIB + 100 - 100 % 4096)]
    for w in (plain, hinted):
        w.write(data(MIB, seed=1))
        w.seal()
    assert [name for name, _, _ in fs.drops] == ["hinted.data"] * 2
    assert sum(length for _, _, length in fs.drops) == 4 * MIB + 100
    for blob in ("plain", "hinted"):
        assert read_blob(store, blob) == data(3 * MIB + 100) + data(MIB, seed=1)
    store.close()


def test_a_hinted_blob_drops_nothing_below_its_first_64_mib(tmp_path) -> None:
    """Most files are smaller than that and stay cached on every replica,
    for concurrent readers spread over them; a bigger one drops behind in
    runs of 1 MiB from there."""
    assert blobstore.HINTED_DROP_AFTER == 64 * MIB
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs)
    small = store.open_write("small", 1, 0, {})
    small.drop_cache_behind()
    for _ in range(7):
        small.write(data(9 * MIB))
        small.sync()
    small.seal()
    assert fs.drops == []
    big = store.open_write("big", 1, 0, {})
    big.drop_cache_behind()
    for _ in range(8):
        big.write(data(8 * MIB))
        big.sync()
    assert fs.drops == [("big.data", 0, 64 * MIB)]
    big.write(data(MIB + 5))
    big.sync()
    assert fs.drops[1:] == [("big.data", 64 * MIB, MIB)]
    big.seal()
    assert fs.drops[2:] == [("big.data", 65 * MIB, 5)]
    store.close()


def test_the_hint_keeps_the_stores_own_run(tmp_path) -> None:
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs, drop_behind=4 * MIB)
    w = store.open_write("b", 1, 0, {})
    w.drop_cache_behind()
    assert store._blob("b").drop_behind == 4 * MIB
    assert store._blob("b").drop_after == 0
    w.write(data(2 * MIB))
    w.sync()
    assert fs.drops == []  # below the store's run
    store.close()


def test_the_hint_does_not_wait_for_a_sync_holding_the_blob(tmp_path) -> None:
    """The storage server passes the hint from its reactor thread, while a
    sync in its thread pool may hold the blob's lock over an fsync."""
    import threading

    store = BlobStore.open(tmp_path / "d")
    w = store.open_write("b", 1, 0, {})
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._blob("b").lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    caller = threading.Thread(target=w.drop_cache_behind)
    caller.start()
    caller.join(30)
    returned = not caller.is_alive()
    release.set()
    holder.join()
    caller.join()
    assert returned, "the hint waited for the blob's lock"
    assert store._blob("b").drop_after == blobstore.HINTED_DROP_AFTER
    w.close()
    store.close()


@pytest.mark.parametrize("hint", [True, False])
def test_a_stream_with_the_hint_drops_behind_its_flushes_and_commit(
    tmp_path, small_run, hint
) -> None:
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs)
    rig = Rig(store=store)
    body = data(4 * MIB + 3)
    w = rig.result(rig.client.write("b1", 1, 0, {}))
    if hint:
        w.drop_cache_behind()
    w.write(body[: 3 * MIB])
    rig.result(w.flush())
    w.write(body[3 * MIB :])
    rig.result(w.commit())
    expected = [("b1.data", 0, 3 * MIB), ("b1.data", 3 * MIB, MIB + 3)] if hint else []
    assert fs.drops == expected
    assert read_all(rig, "b1") == body
    store.close()


@pytest.fixture
def env(tmp_path):
    e = TransferEnv(reactor, tmp_path, nodes=3, replicas=2)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_an_upload_leaves_one_replica_cached_and_a_download_reads_it(env, small_run):
    drops: dict[str, list] = {name: [] for name in env.nodes}
    for name, node in env.nodes.items():
        node.store.fs.drop_cache = lambda fd, offset, length, name=name: drops[name].append(
            (offset, length)
        )
    body = data(3 * MIB + 5)
    version = await env.upload("/f", body)
    [extent] = version.extents
    replicas = [r.node for r in extent.replicas]
    keep = cached_replica(extent.blob_id, replicas)
    [other] = [n for n in replicas if n != keep]
    assert drops[keep] == []
    assert sum(length for _, length in drops[other]) == len(body)
    for _ in range(3):  # a lone reader goes to the cached replica every time
        got, stream = await env.download("/f")
        assert sha256(got) == sha256(body)
        assert stream.serving == keep and stream.failovers == 0
