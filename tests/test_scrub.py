"""Scrub: damaged blobs on disk are found, quarantined, and healed by repair."""

from __future__ import annotations

import os
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from tests.maintenance_env import check_full_strength, full_path, populate
from tests.test_blobstore import read_all
from tests.transfer_env import TransferEnv
from wsfront.maintenance.repair import RepairSettings
from wsfront.maintenance.service import MaintenanceService, MaintenanceSettings
from wsstorage._interfaces import IScrubbedStore
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import BlobPaths, FormatError
from wsstorage.errors import BlobNotFound
from wsstorage.fsops import OsFileSystem
from wsstorage.scrub import QUARANTINE_DIR, Scrubber, inline


def put(store: BlobStore, blob_id: str, data: bytes) -> None:
    handle = store.open_write(blob_id, 1, 0, {"path": "/x"})
    handle.write(data)
    handle.seal()


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def store(tmp_path):
    s = BlobStore.open(tmp_path / "data", block_size=4096)
    yield s
    s.close()


def test_the_blob_store_provides_what_scrub_needs_of_it(store):
    """Scrub calls these unconditionally (no ``getattr`` fallbacks): a store
    it is given must have them all."""
    assert verifyObject(IScrubbedStore, store)


@pytest_twisted.ensureDeferred
async def test_a_flipped_byte_of_a_put_kept_in_its_record_is_found_and_quarantined(store):
    """A small put keeps its bytes in its record (no ``.data``): scrub
    checks them and quarantines the record."""
    for i in range(2):
        handle = store.open_put(f"small{i}", 1, {"path": "/x"}, 6000)
        handle.write(os.urandom(6000))
        handle.seal()
    store.checkpoint()  # the records get their files (resident until then)
    meta = BlobPaths.of(store.root, "small1").meta
    flip(meta, os.path.getsize(meta) - 6000 + 5000)  # rot in place, in the data
    reported = []
    clock = task.Clock()
    scrubber = Scrubber(
        clock, store, bytes_per_second=10**12, run_blocking=inline, on_damaged=reported.append
    )
    d = defer.ensureDeferred(scrubber.scrub_pass())
    while not d.called:
        clock.advance(1)
    assert (await d) == {"checked": 2, "damaged": 1, "bytes": 12_000}
    assert [r.blob_id for r in reported] == ["small1"] and reported[0].quarantined
    assert not os.path.exists(meta)
    with pytest.raises(BlobNotFound):
        store.stat("small1")
    assert store.count_blobs() == 1


@pytest_twisted.ensureDeferred
async def test_scrub_checks_a_resident_put_once_from_memory(tmp_path):
    """A small put not yet checkpointed has no record file (resident):
    scrub finds it through list_blobs, once, and checks its bytes."""
    store = BlobStore.open(tmp_path / "data", block_size=4096, checkpoint_after=None)
    try:
        handle = store.open_put("small", 1, {"path": "/x"}, 6000)
        handle.write(os.urandom(6000))
        handle.seal()
        assert not os.path.exists(BlobPaths.of(store.root, "small").meta)
        put(store, "big", b"b" * 3000)
        result, reported = await scrub(store)
        assert result == {"checked": 2, "damaged": 0, "bytes": 9000} and reported == []
    finally:
        store.close()


async def scrub(store: BlobStore, **kwargs) -> tuple[dict, list]:
    reported: list = []
    clock = task.Clock()
    scrubber = Scrubber(
        clock,
        store,
        bytes_per_second=10**12,
        run_blocking=inline,
        on_damaged=reported.append,
        **kwargs,
    )
    d = defer.ensureDeferred(scrubber.scrub_pass())
    while not d.called:
        clock.advance(1)
    return await d, reported


def small_put(store: BlobStore, blob_id: str, data: bytes) -> None:
    handle = store.open_put(blob_id, 1, {"path": "/x"}, len(data))
    handle.write(data)
    handle.seal()


@pytest.mark.parametrize("how", ["put", "write"])
@pytest_twisted.ensureDeferred
async def test_a_record_that_no_longer_decodes_is_reported_and_quarantined(store, how):
    """A flipped bit in a record's JSON (of a small put's record, or of any
    record) makes it undecodable: it is not listed nor counted, and scrub
    reports and quarantines it, so a new copy of the blob can be stored."""
    (small_put if how == "put" else put)(store, "good", b"g" * 3000)
    (small_put if how == "put" else put)(store, "bad", b"b" * 3000)
    store.checkpoint()  # a small put's record gets its file (resident until then)
    meta = BlobPaths.of(store.root, "bad").meta
    with open(meta, "rb") as f:
        flip(meta, f.read().index(b'"epoch"') + 1)
    assert [i.blob_id for i in store.list_blobs()] == ["good"]
    assert store.count_blobs() == 1 and store.damaged == ["bad"]
    result, reported = await scrub(store)
    assert result["damaged"] == 1
    assert [r.blob_id for r in reported] == ["bad"] and reported[0].quarantined
    assert "FormatError" in reported[0].error
    assert not os.path.exists(meta) and store.damaged == []
    small_put(store, "bad", b"new")  # the id is free again
    assert store.count_blobs() == len(list(store.list_blobs())) == 2


@pytest_twisted.ensureDeferred
async def test_a_record_damaged_before_the_store_opened_is_quarantined_too(tmp_path):
    store = BlobStore.open(tmp_path / "data", block_size=4096)
    put(store, "bad", b"x" * 100)
    store.close()
    with open(BlobPaths.of(store.root, "bad").meta, "wb") as f:
        f.write(b"{not json")
    store = BlobStore.open(tmp_path / "data")
    assert store.damaged == ["bad"]
    result, reported = await scrub(store, quarantine=False)
    assert result["damaged"] == 1 and not reported[0].quarantined
    assert store.damaged == ["bad"]  # report-only: left for a human
    result, reported = await scrub(store)
    assert [r.blob_id for r in reported] == ["bad"] and reported[0].quarantined
    assert store.damaged == [] and store.count_blobs() == 0
    assert sorted(os.listdir(os.path.join(store.root, QUARANTINE_DIR)))[0].endswith(".data")
    store.close()


@pytest_twisted.ensureDeferred
async def test_a_flipped_byte_is_found_and_the_blob_quarantined(store):
    for i in range(3):
        put(store, f"blob{i}", os.urandom(50_000))
    flip(BlobPaths.of(store.root, "blob1").data, 30_000)
    reported = []
    clock = task.Clock()
    scrubber = Scrubber(
        clock, store, bytes_per_second=10**12, run_blocking=inline, on_damaged=reported.append
    )
    d = defer.ensureDeferred(scrubber.scrub_pass())
    while not d.called:
        clock.advance(1)
    result = await d
    assert result == {"checked": 3, "damaged": 1, "bytes": 150_000}
    assert [r.blob_id for r in reported] == ["blob1"] and reported[0].quarantined
    assert "ChecksumError" in reported[0].error
    with pytest.raises(BlobNotFound):
        store.stat("blob1")
    assert sorted(i.blob_id for i in store.list_blobs()) == ["blob0", "blob2"]
    kept = os.listdir(os.path.join(store.root, QUARANTINE_DIR))
    # Its record and data (a blob put at once has its checksums in the record).
    assert all(name.startswith("blob1.") for name in kept)
    assert sorted(name.rsplit(".", 1)[1] for name in kept) == ["data", "meta"]


@pytest_twisted.ensureDeferred
async def test_a_truncated_data_file_is_damage_too(store):
    put(store, "short", os.urandom(20_000))
    os.truncate(BlobPaths.of(store.root, "short").data, 10_000)
    clock = task.Clock()
    scrubber = Scrubber(clock, store, bytes_per_second=10**12, run_blocking=inline)
    d = defer.ensureDeferred(scrubber.scrub_pass())
    while not d.called:
        clock.advance(1)
    assert (await d)["damaged"] == 1


@pytest_twisted.ensureDeferred
async def test_scrub_reads_no_faster_than_its_pace(store):
    put(store, "big", os.urandom(1024 * 1024))
    clock = task.Clock()
    scrubber = Scrubber(
        clock, store, bytes_per_second=256 * 1024, chunk=64 * 1024, run_blocking=inline
    )
    d = defer.ensureDeferred(scrubber.scrub_pass())
    steps = 0
    while not d.called:
        clock.advance(0.01)
        steps += 1
    # 1 MiB at 256 KiB/s takes 4 s (16 chunks, each rounded up to a step).
    assert 4.0 <= steps * 0.01 <= 4.0 + 16 * 0.011
    assert (await d)["damaged"] == 0


@pytest_twisted.ensureDeferred
async def test_report_only_mode_leaves_the_blob_in_place(store):
    put(store, "bad", os.urandom(10_000))
    flip(BlobPaths.of(store.root, "bad").data, 5)
    clock = task.Clock()
    scrubber = Scrubber(clock, store, bytes_per_second=10**12, quarantine=False,
                        run_blocking=inline)  # fmt: skip
    d = defer.ensureDeferred(scrubber.scrub_pass())
    while not d.called:
        clock.advance(1)
    await d
    assert [x.blob_id for x in scrubber.damaged] == ["bad"]
    assert store.stat("bad").sealed


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_flipped_bytes_on_a_replica_are_found_by_scrub_and_healed_by_repair(env):
    from twisted.internet import reactor

    files = await populate(env, count=3)
    entry = await env.catalog.stat(full_path(env, "/f2.bin"))
    [extent] = entry.version.extents
    bad_node = extent.replicas[0].node
    flip(env.nodes[bad_node].blob_path(extent.blob_id), extent.length // 2)

    scrubber = Scrubber(reactor, env.nodes[bad_node].store, bytes_per_second=10**12)
    result = await scrubber.scrub_pass()
    assert result["damaged"] == 1
    assert scrubber.damaged[0].blob_id == extent.blob_id

    clock = task.Clock()
    settings = MaintenanceSettings(repair=RepairSettings(bytes_per_second=None),
                                   audit_every=60.0)  # fmt: skip
    svc = MaintenanceService(clock, env.catalog, env.transfers.pool, "fe-a", settings)
    await svc.lease.renew()
    clock.advance(60)
    await svc.lease.renew()
    ran = await svc.tick()
    assert "audit" in ran and "repair" in ran
    blob = await env.catalog.get_blob(extent.blob_id)
    assert len(blob.ok_replicas) == 2 and bad_node not in blob.ok_replicas
    await check_full_strength(env, files)


# -- quarantine racing writers and deletes -------------------------------------


class WatchedLock:
    """Stands in for the store's registry lock (``watch``) and sets
    ``progress`` when a thread has to wait for it: a test learns that a
    thread it started got as far as the store lets it, without sleeping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.progress = threading.Event()

    def __enter__(self) -> WatchedLock:
        if not self._lock.acquire(blocking=False):
            self.progress.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def watch(store: BlobStore) -> WatchedLock:
    """Give a store just opened a ``WatchedLock`` for its registry lock."""
    lock = WatchedLock()
    store._registry_lock = lock
    return lock


def start_until_done_or_blocked(lock: WatchedLock, f) -> tuple[threading.Thread, list]:
    """Run ``f`` in a thread and return once it is done or waits for the
    store's registry lock (``watch``); the list receives its error, if
    any."""
    progress = lock.progress
    progress.clear()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            f()
        except BaseException as e:  # reported by the test
            errors.append(e)
        finally:
            progress.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert progress.wait(30)
    return thread, errors


def damage_record(store: BlobStore, blob_id: str) -> None:
    with open(BlobPaths.of(store.root, blob_id).meta, "wb") as f:
        f.write(b"{not json")
    with pytest.raises(FormatError):
        store.stat(blob_id)
    assert store.damaged == [blob_id]


def listed(store: BlobStore) -> list[str]:
    return sorted(i.blob_id for i in store.list_blobs())


def test_a_blob_created_while_scrub_quarantines_its_damaged_id_keeps_its_files_and_count(
    store, monkeypatch
):
    """Scrub moved a damaged record to quarantine by path, with no lock of
    the store; a writer then created the same id (its ``.data`` opened,
    truncated, over the damaged blob's), then scrub moved that ``.data``
    too and took the id out of the count a second time: the new blob had
    no data and ``count_blobs`` was one too low.  Now the moves and the
    count change are one step under the store's registry lock: the
    writer waits, and creates its blob after."""
    lock = watch(store)
    put(store, "keep", b"k" * 10)
    put(store, "x", b"old" * 10)
    damage_record(store, "x")
    new = os.urandom(3 * 4096)
    meta = BlobPaths.of(store.root, "x").meta
    real_rename = os.rename
    started: list[tuple[threading.Thread, list]] = []

    def rename(src, dst) -> None:
        real_rename(src, dst)
        if src == meta and not started:  # scrub just moved the record
            started.append(start_until_done_or_blocked(lock, lambda: put(store, "x", new)))

    monkeypatch.setattr(os, "rename", rename)
    clock = task.Clock()
    scrubber = Scrubber(clock, store, bytes_per_second=10**12, run_blocking=inline)
    result = defer.ensureDeferred(scrubber.scrub_pass())
    while not result.called:
        clock.advance(1)
    [(writer, errors)] = started
    writer.join(30)
    assert not writer.is_alive() and errors == []
    assert [d.blob_id for d in scrubber.damaged] == ["x"] and scrubber.damaged[0].quarantined
    assert read_all(store, "x") == new
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 2


class HookedUnlinkOrRename(OsFileSystem):
    """Runs ``hook`` once, just before the store first unlinks or renames
    the file ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hook = None

    def _maybe(self, path: str) -> None:
        hook = self.hook
        if hook is not None and os.path.basename(path) == self.name:
            self.hook = None
            hook()

    def unlink(self, path: str) -> None:
        self._maybe(path)
        super().unlink(path)

    def rename(self, src: str, dst: str) -> None:
        self._maybe(src)
        super().rename(src, dst)


def test_a_delete_of_a_damaged_blob_racing_its_quarantine_leaves_the_count_right(tmp_path):
    """A delete of a damaged blob found its record undecodable, then scrub
    moved the files to quarantine, then the delete found nothing to
    unlink and took the id out of ``damaged``; scrub, finding it no longer
    there, took it out of the count as well: one too low.  Now scrub's
    moves wait for the delete (or the delete for them)."""
    fs = HookedUnlinkOrRename("x.meta")
    store = BlobStore.open(tmp_path / "data", block_size=4096, fs=fs)
    lock = watch(store)
    put(store, "keep", b"k" * 10)
    put(store, "x", b"old" * 10)
    damage_record(store, "x")
    scrubber = Scrubber(None, store, run_blocking=inline)
    started: list[tuple[threading.Thread, list]] = []

    def quarantine_now() -> None:
        started.append(start_until_done_or_blocked(lock, lambda: scrubber._move_to_quarantine("x")))

    fs.hook = quarantine_now
    store.delete("x")
    [(mover, errors)] = started
    mover.join(30)
    assert not mover.is_alive() and errors == []
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 1
    store.close()


def _run_then(name: str, act):
    """A ``run_blocking`` that does ``act()`` just before scrub's call of
    the function named ``name`` runs (inline), as another pool thread
    would at that moment."""

    def run(f, *args):
        if getattr(f, "__name__", "") == name:
            act()
        return inline(f, *args)

    return run


async def _scrub_with(store: BlobStore, run_blocking) -> tuple[dict, list]:
    reported: list = []
    clock = task.Clock()
    scrubber = Scrubber(
        clock, store, bytes_per_second=10**12, run_blocking=run_blocking, on_damaged=reported.append
    )
    d = defer.ensureDeferred(scrubber.scrub_pass())
    while not d.called:
        clock.advance(1)
    return await d, reported


@pytest.mark.parametrize("damage", ["data", "record"])
@pytest_twisted.ensureDeferred
async def test_a_good_copy_written_after_scrub_judged_the_damaged_one_is_not_quarantined(
    store, damage
):
    """Scrub found ``x`` damaged; before it moved the files, repair
    deleted that copy and wrote a good one under the same id (it discards
    an untrusted replica, then copies one in).  The quarantine moved the
    good copy, and the catalog counted a replica the node no longer had."""
    put(store, "keep", b"k" * 10)
    put(store, "x", os.urandom(3 * 4096))
    if damage == "data":
        flip(BlobPaths.of(store.root, "x").data, 5000)
    else:
        damage_record(store, "x")
    good = os.urandom(3 * 4096)

    def repair() -> None:
        store.delete("x")
        put(store, "x", good)

    result, reported = await _scrub_with(store, _run_then("_move_to_quarantine", repair))
    # Nor is it reported: what is there now is not what was found damaged.
    assert result["damaged"] == 0 and reported == []
    assert read_all(store, "x") == good
    assert store.count_blobs() == len(listed(store)) == 2
    assert store.damaged == []


@pytest_twisted.ensureDeferred
async def test_a_store_closed_under_a_pass_ends_it_without_reporting_damage(tmp_path):
    """The service stops: the store closes while scrub is between blobs.
    Its 'closed' errors were reported as damage, and the quarantine's
    error escaped the pass."""
    store = BlobStore.open(tmp_path / "data", block_size=4096)
    put(store, "a", os.urandom(5000))
    put(store, "b", os.urandom(5000))
    opened: list[str] = []

    def run(f, *args):
        if getattr(f, "__name__", "") == "_open":
            opened.append(args[0])
            if len(opened) == 2:
                store.close()
        return inline(f, *args)

    result, reported = await _scrub_with(store, run)
    assert sorted(opened) == ["a", "b"]
    assert reported == []
    assert result == {"checked": 1, "damaged": 0, "bytes": 5000}
    assert os.path.exists(BlobPaths.of(store.root, opened[1]).data)


@pytest_twisted.ensureDeferred
async def test_scrub_asks_the_store_about_its_judgements_off_the_reactor_thread(tmp_path):
    """``judging``, ``judged`` and ``judgement_holds`` take the store's
    registry lock, which a thread may hold while it reads a record from
    the disk: scrub called them in the reactor thread, twice per blob.
    Now they run in the threads that open each blob or read its record;
    only the pass's last ``judged`` is the reactor's.  Every judgement
    still ends."""
    from twisted.internet import reactor
    from twisted.python import threadable

    store = BlobStore.open(tmp_path / "data", block_size=4096)
    for name in ("a", "b", "c"):
        put(store, name, os.urandom(10_000))
    flip(BlobPaths.of(store.root, "b").data, 5)
    put(store, "bad", b"x" * 10)
    damage_record(store, "bad")
    in_reactor: list[str] = []
    calls: list[tuple[str, str]] = []

    def watched(name: str):
        real = getattr(store, name)

        def call(blob_id, *args):
            calls.append((name, blob_id))
            if threadable.isInIOThread():
                in_reactor.append(name)
            return real(blob_id, *args)

        return call

    for name in ("judging", "judged", "judgement_holds"):
        setattr(store, name, watched(name))
    scrubber = Scrubber(reactor, store, bytes_per_second=10**12, quarantine=False)
    result = await scrubber.scrub_pass()
    assert result["damaged"] == 2
    assert sorted(d.blob_id for d in scrubber.damaged) == ["b", "bad"]
    judging = [b for n, b in calls if n == "judging"]
    assert sorted(judging[:3]) == ["a", "b", "c"] and judging[3:] == ["bad"]
    assert [b for n, b in calls if n == "judged"] == judging
    assert sorted(b for n, b in calls if n == "judgement_holds") == ["b", "bad"]
    assert in_reactor == ["judged"]  # the last blob's, once per pass
    assert store._judged == {}
    store.close()
