"""A storage server that was away long enough for its replicas to be marked
lost comes back: repair reads each of its copies back (every block checked
by the server) and compares it with a verified one; an intact copy counts
ok again where it lies, with no byte copied anywhere, and a copy that is
torn, shorter or holds other bytes is never counted ok: it is replaced by
a copy as before.  Real in-process storage servers over TCP on real disks;
SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.catalog_fixtures import postgres_schema_url
from tests.maintenance_env import check_full_strength, full_path, populate
from tests.test_maintenance_postgres import PostgresTransferEnv
from tests.transfer_env import TransferEnv
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK, REPLICA_STALE
from wsfront.maintenance.nodes import drain
from wsfront.maintenance.repair import STAT_TIMEOUT, Repairer, RepairSettings


def make_env(request, tmp_path, nodes: int):
    from twisted.internet import reactor

    def run(e):
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        return e

    if request.param == "sqlite":
        e = run(TransferEnv(reactor, tmp_path, nodes=nodes))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))
        return
    for url in postgres_schema_url():
        e = run(PostgresTransferEnv(reactor, tmp_path, url, nodes=nodes))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def env2(request, tmp_path):
    """Two servers, two replicas: while one is away no copy can be made."""
    yield from make_env(request, tmp_path, nodes=2)


@pytest.fixture(params=BACKENDS)
def env3(request, tmp_path):
    yield from make_env(request, tmp_path, nodes=3)


@pytest.fixture(params=BACKENDS)
def env4(request, tmp_path):
    yield from make_env(request, tmp_path, nodes=4)


def repairer(env, clock=None, concurrency: int = 2) -> Repairer:
    from twisted.internet import reactor

    settings = RepairSettings(bytes_per_second=None, concurrency=concurrency)
    return Repairer(clock or reactor, env.catalog, env.transfers.pool, settings)


def disk_files(env) -> dict[str, tuple[int, int, int]]:
    """Every blob data file of every server: (inode, mtime_ns, size).  A
    copy made or replaced anywhere shows as a new or changed file."""
    found = {}
    for node in env.nodes.values():
        for root, _dirs, files in os.walk(node.path):
            for f in files:
                if f.endswith(".data"):
                    st = os.stat(os.path.join(root, f))
                    found[os.path.join(root, f)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


async def go_away(env, names: list[str]) -> dict[str, int]:
    """The servers ``names`` stop (connections cut, port closed); their ports."""
    ports = {}
    for name in names:
        ports[name] = env.nodes[name].port.getHost().port
        await env.nodes[name].kill()
    await env.transfers.pool.probe_all()
    assert not any(env.transfers.pool.is_up(n) for n in names)
    return ports


async def come_back(env, ports: dict[str, int]) -> None:
    for name, port in ports.items():
        await env.nodes[name].listen(port)
    await env.transfers.pool.probe_all()
    assert all(env.transfers.pool.is_up(n) for n in ports)


async def blob_of(env, vpath: str):
    entry = await env.catalog.stat(full_path(env, vpath))
    [extent] = entry.version.extents
    return await env.catalog.get_blob(extent.blob_id)


async def lose(env, names: list[str]) -> tuple[dict[str, int], dict]:
    """``names`` go away and ``wsfs repair`` marks their replicas lost
    (nothing can be copied meanwhile); their ports and the pass's stats."""
    ports = await go_away(env, names)
    marking = await repairer(env).run_pass(now=True)
    assert sorted(marking["lost_nodes"]) == sorted(names)
    assert marking["copied"] == 0 and marking["under_replicated"] > 0, marking
    return ports, marking


@pytest_twisted.ensureDeferred
async def test_a_returning_servers_intact_replicas_count_ok_again_with_no_byte_copied(env2):
    files = await populate(env2, count=3, size=200 * 1024)
    before = disk_files(env2)
    ports, marking = await lose(env2, ["s1"])
    assert marking["marked_lost"] == 3
    await come_back(env2, ports)
    stats = await repairer(env2).run_pass()
    assert stats["reclaimed"] == 3, stats
    assert stats["copied"] == 0 and stats["bytes"] == 0 and stats["failed"] == 0
    assert stats["under_replicated"] == 0
    assert disk_files(env2) == before  # no copy made, none replaced
    for vpath in files:
        blob = await blob_of(env2, vpath)
        assert {r.node: r.state for r in blob.replicas} == {"s1": REPLICA_OK, "s2": REPLICA_OK}
    await check_full_strength(env2, files)  # same sha256, from every replica


@pytest_twisted.ensureDeferred
async def test_two_servers_back_together_vouch_for_each_other_and_nothing_goes_to_the_third(
    env3,
):
    """Two of three servers (a rack) were away: blobs they both held have
    no ok replica left, only two lost copies, which, read back equal, count
    ok again; the others match their ok replica on the server that stayed."""
    files = await populate(env3, count=6, size=150 * 1024)
    before = disk_files(env3)
    ports, marking = await lose(env3, ["s1", "s3"])
    await come_back(env3, ports)
    stats = await repairer(env3).run_pass()
    assert stats["reclaimed"] == marking["marked_lost"], stats
    assert stats["copied"] == 0 and stats["from_stale"] == [] and stats["under_replicated"] == 0
    assert disk_files(env3) == before
    await check_full_strength(env3, files)


async def damage(env, node: str, blob, how: str) -> None:
    """Spoil ``node``'s copy of ``blob`` while its server is away: a
    flipped byte (its block fails its CRC), a shorter sealed copy, or a
    sealed copy of the same length holding other bytes (CRCs good)."""
    if how == "torn":
        env.corrupt(node, blob.blob_id, blob.length // 2)
        return
    store = env.nodes[node].store
    length = blob.length // 2 if how == "shorter" else blob.length
    data = os.urandom(length)
    store.delete(blob.blob_id)
    handle = store.open_write(blob.blob_id, 1, 0, {})
    handle.write(data)
    handle.seal()
    handle.close()


@pytest_twisted.ensureDeferred
async def test_a_returning_servers_damaged_replicas_are_copied_never_counted_ok(env2):
    files = await populate(env2, count=4, size=200 * 1024)
    ports, _ = await lose(env2, ["s1"])
    spoiled = {}
    for vpath, how in zip(["/f0.bin", "/f1.bin", "/f2.bin"], ["torn", "shorter", "other"]):
        blob = await blob_of(env2, vpath)
        await damage(env2, "s1", blob, how)
        spoiled[blob.blob_id] = blob.length
    intact = await blob_of(env2, "/f3.bin")
    await come_back(env2, ports)
    stats = await repairer(env2).run_pass()
    assert stats["reclaimed"] == 1, stats  # /f3.bin only
    assert stats["copied"] == 3 and stats["bytes"] == sum(spoiled.values())
    assert stats["under_replicated"] == 0
    after = await env2.catalog.get_blob(intact.blob_id)
    assert sorted(after.ok_replicas) == ["s1", "s2"]
    await check_full_strength(env2, files)  # s1's copies are the right bytes now


@pytest_twisted.ensureDeferred
async def test_a_copy_that_differs_from_its_ok_replica_is_not_counted_even_if_whole(env3):
    """The comparison, not the CRCs, rules out a copy holding other bytes:
    an ok replica is there to compare with, the lost copy is sealed, of the
    catalog's length, and reads clean, and still it is not kept."""
    files = await populate(env3, count=1, size=200 * 1024)
    blob = await blob_of(env3, "/f0.bin")
    away = sorted(blob.ok_replicas)[0]
    # Marked lost while away and back before a pass could copy it (a third
    # server was there to copy to): as the other tests, but on three.
    await damage(env3, away, blob, "other")
    await env3.catalog.mark_replica(blob.blob_id, away, REPLICA_LOST)
    stats = await repairer(env3).run_pass()
    assert stats["reclaimed"] == 0 and stats["copied"] == 1, stats
    await check_full_strength(env3, files)


@pytest_twisted.ensureDeferred
async def test_a_returned_server_whose_read_never_comes_is_given_up_on_once_a_pass(env2):
    """The returned server answers its ``stat`` but its read of a copy
    brings no byte (a disk hung mid-read, keepalives still sent): at the
    first progress check (one every ``STAT_TIMEOUT`` on repair's clock) to
    find no byte came since the last, the read is given up on and the blob
    copied, as before; the rest of the pass reads nothing
    more from that server, so it costs one timeout, not one per blob."""
    from twisted.internet import reactor

    files = await populate(env2, count=3, size=200 * 1024)
    ports, _ = await lose(env2, ["s1"])
    await come_back(env2, ports)
    clock = task.Clock()
    client = env2.transfers.pool.client("s1")
    reads = []

    def hung_read(blob_id, offset, length, consumer):
        reads.append(blob_id)
        reactor.callLater(0, clock.advance, STAT_TIMEOUT)
        return defer.Deferred()

    client.read = hung_read
    try:
        # One blob at a time: the first timeout comes before any other ask.
        stats = await repairer(env2, clock=clock, concurrency=1).run_pass()
    finally:
        del client.read
    assert stats["reclaimed"] == 0 and stats["copied"] == 3, stats
    assert len(reads) == 1
    await check_full_strength(env2, files)


@pytest_twisted.ensureDeferred
async def test_a_returned_server_whose_stat_never_answers_is_asked_once_a_pass(env2):
    """Its ``stat`` never answers: after ``STAT_TIMEOUT`` the pass goes on
    (the blob copied as before) and asks that server of no other blob."""
    from twisted.internet import reactor

    files = await populate(env2, count=3, size=200 * 1024)
    ports, _ = await lose(env2, ["s1"])
    await come_back(env2, ports)
    clock = task.Clock()
    client = env2.transfers.pool.client("s1")
    asked = []

    def hung_stat(blob_id):
        asked.append(blob_id)
        reactor.callLater(0, clock.advance, STAT_TIMEOUT)
        return defer.Deferred()

    client.stat = hung_stat
    try:
        # One blob at a time: the first timeout comes before any other ask.
        stats = await repairer(env2, clock=clock, concurrency=1).run_pass()
    finally:
        del client.stat
    assert stats["reclaimed"] == 0 and stats["copied"] == 3, stats
    assert len(asked) == 1
    await check_full_strength(env2, files)


@pytest_twisted.ensureDeferred
async def test_a_copy_re_marked_meanwhile_is_left_as_it_is(env2):
    """Another repairer recorded the copy ok between this one's reading and
    its mark (or GC forgot the blob): the conditional mark changes nothing,
    counts nothing, and the pass goes on."""
    files = await populate(env2, count=1, size=200 * 1024)
    blob = await blob_of(env2, "/f0.bin")
    ports, _ = await lose(env2, ["s1"])
    await come_back(env2, ports)
    catalog = env2.catalog
    real = catalog.reclaim_replica

    async def raced(blob_id, node):
        await catalog.add_replica(blob_id, node)  # the other repairer's
        return await real(blob_id, node)

    catalog.reclaim_replica = raced
    try:
        stats = await repairer(env2).run_pass()
    finally:
        del catalog.reclaim_replica
    assert stats["reclaimed"] == 0 and stats["copied"] == 0 and stats["failed"] == 0, stats
    after = await catalog.get_blob(blob.blob_id)
    assert {r.node: r.state for r in after.replicas} == {"s1": REPLICA_OK, "s2": REPLICA_OK}
    await check_full_strength(env2, files)


@pytest_twisted.ensureDeferred
async def test_a_lost_copy_on_a_server_being_drained_is_not_counted_ok_again(env3):
    """The server is being drained: drain passes over a blob whose copy
    there is lost while an ok replica is elsewhere, so counting that copy
    ok again would leave the blob at full strength with one replica on a
    server about to go.  It stays lost; the blob is copied to the third."""
    files = await populate(env3, count=1, size=200 * 1024)
    blob = await blob_of(env3, "/f0.bin")
    leaving, staying = sorted(blob.ok_replicas)
    [spare] = {"s1", "s2", "s3"} - {leaving, staying}
    await env3.catalog.mark_replica(blob.blob_id, leaving, REPLICA_LOST)
    await env3.catalog.set_node_draining(leaving, True)
    drained = await drain(env3.catalog, env3.transfers.pool, repairer(env3), leaving)
    assert drained["moved"] == 0 and drained["stuck"] == []  # nothing of it counts there
    client = env3.transfers.pool.client(leaving)
    reads = []

    def read(blob_id, *args):
        reads.append(blob_id)
        return type(client).read(client, blob_id, *args)

    client.read = read
    try:
        stats = await repairer(env3).run_pass()
    finally:
        del client.read
    assert stats["reclaimed"] == 0 and stats["copied"] == 1, stats
    assert reads == []  # not even read: it could only have been counted
    after = await env3.catalog.get_blob(blob.blob_id)
    assert {r.node: r.state for r in after.replicas} == {
        leaving: REPLICA_LOST,
        staying: REPLICA_OK,
        spare: REPLICA_OK,
    }
    await check_full_strength(env3, files)


@pytest_twisted.ensureDeferred
async def test_a_lost_copy_on_a_server_being_drained_vouches_but_is_not_counted(env3):
    """No ok replica: the two lost copies read the same, one of them on a
    server being drained.  That one vouches for the other (its bytes are
    no less whole for the server leaving), which counts ok again; it stays
    lost itself, and the blob's second replica is copied to the third."""
    files = await populate(env3, count=1, size=200 * 1024)
    blob = await blob_of(env3, "/f0.bin")
    leaving, staying = sorted(blob.ok_replicas)
    [spare] = {"s1", "s2", "s3"} - {leaving, staying}
    for node in (leaving, staying):
        await env3.catalog.mark_replica(blob.blob_id, node, REPLICA_LOST)
    await env3.catalog.set_node_draining(leaving, True)
    stats = await repairer(env3).run_pass()
    assert stats["reclaimed"] == 1 and stats["copied"] == 1 and stats["from_stale"] == [], stats
    after = await env3.catalog.get_blob(blob.blob_id)
    assert {r.node: r.state for r in after.replicas} == {
        leaving: REPLICA_LOST,
        staying: REPLICA_OK,
        spare: REPLICA_OK,
    }
    await check_full_strength(env3, files)


@pytest_twisted.ensureDeferred
async def test_reclaim_refuses_a_server_whose_drain_began_after_the_pass_read_the_registry(
    env3,
):
    """``wsfs drain`` begins while the pass runs (it read the registry
    before): the catalog's conditional mark refuses the copy there."""
    files = await populate(env3, count=1, size=200 * 1024)
    blob = await blob_of(env3, "/f0.bin")
    leaving = sorted(blob.ok_replicas)[0]
    await env3.catalog.mark_replica(blob.blob_id, leaving, REPLICA_LOST)
    catalog = env3.catalog
    real = catalog.reclaim_replica

    async def drain_begins(blob_id, node):
        await catalog.set_node_draining(leaving, True)
        return await real(blob_id, node)

    catalog.reclaim_replica = drain_begins
    try:
        stats = await repairer(env3).run_pass()
    finally:
        del catalog.reclaim_replica
    assert stats["reclaimed"] == 0 and stats["copied"] == 1, stats
    after = await catalog.get_blob(blob.blob_id)
    assert {r.node: r.state for r in after.replicas}[leaving] == REPLICA_LOST
    await check_full_strength(env3, files)


async def lost_copies(env, blob, bytes_on: dict[str, bytes]) -> None:
    """Sealed copies of ``blob`` holding ``bytes_on[node]`` (each of the
    catalog's length, CRCs good) on those servers, recorded as replicas;
    then every replica of the blob is marked lost: no ok replica is left."""
    for node, data in bytes_on.items():
        store = env.nodes[node].store
        handle = store.open_write(blob.blob_id, 1, 0, {})
        handle.write(data)
        handle.seal()
        handle.close()
        await env.catalog.add_replica(blob.blob_id, node)
    for node in sorted(set(blob.ok_replicas) | set(bytes_on)):
        await env.catalog.mark_replica(blob.blob_id, node, REPLICA_LOST)


@pytest_twisted.ensureDeferred
async def test_lost_copies_in_two_equal_groups_vouch_for_none(env4):
    """No ok replica; two lost copies read X, two others Y (same length,
    CRCs good).  Nothing says which is the file: none is counted ok (never
    one of each, whose bytes differ), and nothing is guessed."""
    await populate(env4, count=1, size=200 * 1024)
    blob = await blob_of(env4, "/f0.bin")
    others = sorted({"s1", "s2", "s3", "s4"} - set(blob.ok_replicas))
    other = os.urandom(blob.length)
    await lost_copies(env4, blob, {n: other for n in others})
    stats = await repairer(env4).run_pass()
    assert stats["reclaimed"] == 0 and stats["copied"] == 0, stats
    [report] = stats["no_verified_replica"]
    assert report["blob"] == blob.blob_id
    after = await env4.catalog.get_blob(blob.blob_id)
    assert {r.state for r in after.replicas} == {REPLICA_LOST}


@pytest_twisted.ensureDeferred
async def test_of_lost_copies_that_disagree_the_largest_group_counts(env3):
    """No ok replica; two lost copies read the file's bytes, a third reads
    others: the two count ok again, the third stays lost."""
    files = await populate(env3, count=1, size=200 * 1024)
    blob = await blob_of(env3, "/f0.bin")
    [odd] = {"s1", "s2", "s3"} - set(blob.ok_replicas)
    await lost_copies(env3, blob, {odd: os.urandom(blob.length)})
    stats = await repairer(env3).run_pass()
    assert stats["reclaimed"] == 2 and stats["copied"] == 0, stats
    after = await env3.catalog.get_blob(blob.blob_id)
    assert sorted(after.ok_replicas) == sorted(blob.ok_replicas)
    assert {r.node: r.state for r in after.replicas}[odd] == REPLICA_LOST
    await check_full_strength(env3, files)


@pytest_twisted.ensureDeferred
async def test_a_copy_that_failed_a_check_while_lost_is_never_counted_ok_again(env2):
    """While its server was counted lost, a reader (or compaction) got a
    ChecksumError from that copy and marked it stale: the damage mark
    sticks, so when the server is back and the copy happens to read back
    equal, it is still replaced by a copy, not counted ok."""
    files = await populate(env2, count=2, size=200 * 1024)
    ports, _ = await lose(env2, ["s1"])
    damaged = await blob_of(env2, "/f0.bin")
    await env2.catalog.mark_replica(damaged.blob_id, "s1", REPLICA_STALE)
    await come_back(env2, ports)
    stats = await repairer(env2).run_pass()
    assert stats["reclaimed"] == 1 and stats["copied"] == 1, stats  # /f1.bin kept
    assert stats["bytes"] == damaged.length
    await check_full_strength(env2, files)


@pytest_twisted.ensureDeferred
async def test_a_lost_copy_whose_read_stalled_is_no_source_of_the_copy(env3):
    """No ok replica; of the two lost copies, the first in read order
    brings no byte when read back (a disk hung mid-read) and is given up
    on.  The other has nothing to agree with, so a copy is made, from it,
    never from the server known to hang."""
    from twisted.internet import reactor

    files = await populate(env3, count=1, size=200 * 1024)
    blob = await all_lost(env3, "/f0.bin")
    pool = env3.transfers.pool
    hung, good = pool.order_for_read(sorted(blob.ok_replicas))
    [spare] = {"s1", "s2", "s3"} - {hung, good}
    clock = task.Clock()
    client = pool.client(hung)

    def hung_read(blob_id, offset, length, consumer):
        reactor.callLater(0, clock.advance, STAT_TIMEOUT)
        return defer.Deferred()

    sources = []
    target = pool.client(spare)

    def copy_from(blob_id, source_endpoint):
        sources.append(source_endpoint)
        return type(target).copy_from(target, blob_id, source_endpoint)

    client.read = hung_read
    target.copy_from = copy_from
    try:
        stats = await repairer(env3, clock=clock).run_pass()
    finally:
        del client.read
        del target.copy_from
    assert stats["reclaimed"] == 0 and stats["from_stale"] == [blob.blob_id], stats
    assert sources == [pool.endpoint(good)]
    await check_full_strength(env3, files)


@pytest_twisted.ensureDeferred
async def test_with_every_lost_copy_stalled_the_report_says_so(env3):
    from twisted.internet import reactor

    await populate(env3, count=1, size=200 * 1024)
    blob = await all_lost(env3, "/f0.bin")
    pool = env3.transfers.pool
    clock = task.Clock()
    clients = [pool.client(n) for n in sorted(blob.ok_replicas)]

    def hung_read(blob_id, offset, length, consumer):
        reactor.callLater(0, clock.advance, STAT_TIMEOUT)
        return defer.Deferred()

    for client in clients:
        client.read = hung_read
    try:
        stats = await repairer(env3, clock=clock).run_pass()
    finally:
        for client in clients:
            del client.read
    assert stats["copied"] == 0 and stats["reclaimed"] == 0, stats
    [report] = stats["no_verified_replica"]
    hung = ", ".join(pool.order_for_read(sorted(blob.ok_replicas)))
    assert report["why"] == f"{hung} stalled reading its copy (asked again next pass)"


async def all_lost(env, vpath: str):
    """Every replica of the file's blob marked lost, their servers up."""
    blob = await blob_of(env, vpath)
    for node in blob.ok_replicas:
        await env.catalog.mark_replica(blob.blob_id, node, REPLICA_LOST)
    return blob
