"""Contract: a replica mark only raises distrust (ok < lost < stale), on
SQLite and PostgreSQL.

A reader that gets a ChecksumError from a fallback replica marks it stale;
when repair had already declared that replica lost, the reader's mark
must stick, whatever order the two marks reach the catalog in: repair may
count a lost copy ok again when its server comes back and it reads back
intact (``reclaim_replica``), never one that failed a check.
"""

from itertools import permutations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from wsfront.catalog import open_catalog
from wsfront.catalog.errors import NotFound
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK, REPLICA_STALE

pytest_plugins = ["tests.catalog_fixtures"]


async def states(catalog, blob_id: str) -> dict[str, str]:
    blob = await catalog.get_blob(blob_id)
    return {r.node: r.state for r in blob.replicas}


@pytest_twisted.ensureDeferred
async def test_a_damage_mark_on_a_lost_replica_sticks_and_it_is_never_reclaimed(catalog):
    await catalog.add_blob("b1", ["s1", "s2"], 2)
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)
    returned = await catalog.mark_replica("b1", "s1", REPLICA_STALE)
    assert {r.node: r.state for r in returned.replicas}["s1"] == REPLICA_STALE
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)  # a late lost mark
    assert await states(catalog, "b1") == {"s1": REPLICA_STALE, "s2": REPLICA_OK}
    assert await catalog.reclaim_replica("b1", "s1") is False
    assert await states(catalog, "b1") == {"s1": REPLICA_STALE, "s2": REPLICA_OK}


@pytest_twisted.ensureDeferred
async def test_marks_end_in_the_most_distrusted_state_in_any_order(catalog):
    marks = [REPLICA_LOST, REPLICA_STALE, REPLICA_LOST]
    orders = sorted(set(permutations(marks)))
    for i, order in enumerate(orders):
        await catalog.add_blob(f"b{i}", ["s1", "s2"], 2)
        for state in order:
            await catalog.mark_replica(f"b{i}", "s1", state)
        assert (await states(catalog, f"b{i}"))["s1"] == REPLICA_STALE, order
        assert (await states(catalog, f"b{i}"))["s2"] == REPLICA_OK


@pytest_twisted.ensureDeferred
async def test_ok_becomes_lost_then_stale_and_only_add_replica_makes_it_ok_again(catalog):
    await catalog.add_blob("b1", ["s1", "s2"], 2)
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)
    assert (await states(catalog, "b1"))["s1"] == REPLICA_LOST
    await catalog.mark_replica("b1", "s1", REPLICA_STALE)
    assert (await states(catalog, "b1"))["s1"] == REPLICA_STALE
    with pytest.raises(ValueError, match="add_replica"):
        await catalog.mark_replica("b1", "s1", REPLICA_OK)
    assert (await states(catalog, "b1"))["s1"] == REPLICA_STALE
    await catalog.add_replica("b1", "s1")
    assert (await states(catalog, "b1"))["s1"] == REPLICA_OK


@pytest_twisted.ensureDeferred
async def test_a_mark_that_changes_nothing_still_needs_the_replica_to_exist(catalog):
    await catalog.add_blob("b1", ["s1"], 1)
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)
    with pytest.raises(NotFound):
        await catalog.mark_replica("b1", "s9", REPLICA_STALE)
    with pytest.raises(NotFound):
        await catalog.mark_replica("nope", "s1", REPLICA_STALE)
    with pytest.raises(ValueError, match="unknown"):
        await catalog.mark_replica("b1", "s1", "gone")


@pytest_twisted.ensureDeferred
async def test_racing_marks_from_two_front_ends_leave_every_replica_stale(catalog_url, clock):
    """Two catalogs (two front ends) mark the same replicas at once, one
    stale, the other lost: the row-level rule holds under concurrency."""
    first = open_catalog(reactor, catalog_url, clock=clock)
    second = open_catalog(reactor, catalog_url, clock=clock)
    try:
        blobs = [f"b{i}" for i in range(40)]
        for blob_id in blobs:
            await first.add_blob(blob_id, ["s1", "s2"], 2)
        racing = []
        for i, blob_id in enumerate(blobs):
            pair = [(first, REPLICA_STALE), (second, REPLICA_LOST)]
            for cat, state in pair if i % 2 else reversed(pair):
                racing.append(cat.mark_replica(blob_id, "s1", state))
        await defer.gatherResults(racing, consumeErrors=True)
        for blob_id in blobs:
            assert (await states(first, blob_id))["s1"] == REPLICA_STALE, blob_id
    finally:
        first.close()
        second.close()


@pytest_twisted.ensureDeferred
async def test_reclaim_makes_only_a_still_lost_replica_ok_again(catalog):
    """Repair re-marks a lost replica its returned server still holds
    intact (``reclaim_replica``), conditional on the row being lost as it
    read it: a stale one (it failed a check) or one already ok again
    changes nothing, and says so."""
    await catalog.add_blob("b1", ["s1", "s2", "s3"], 3)
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)
    await catalog.mark_replica("b1", "s2", REPLICA_STALE)
    assert await catalog.reclaim_replica("b1", "s1") is True
    assert await catalog.reclaim_replica("b1", "s1") is False  # a second repairer's
    assert await catalog.reclaim_replica("b1", "s2") is False
    assert await catalog.reclaim_replica("b1", "s3") is False
    assert await catalog.reclaim_replica("b1", "s9") is False
    assert await states(catalog, "b1") == {
        "s1": REPLICA_OK,
        "s2": REPLICA_STALE,
        "s3": REPLICA_OK,
    }


@pytest_twisted.ensureDeferred
async def test_reclaim_of_a_forgotten_blob_records_nothing(catalog):
    """GC forgot the blob while repair read its lost copy back: NotFound,
    and no replica row without its blob is left behind."""
    await catalog.add_blob("b1", ["s1", "s2"], 2)
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)
    await catalog.forget_blob("b1")
    with pytest.raises(NotFound):
        await catalog.reclaim_replica("b1", "s1")
    with pytest.raises(NotFound):
        await catalog.get_blob("b1")


@pytest_twisted.ensureDeferred
async def test_reclaim_refuses_a_replica_on_a_server_being_drained(catalog):
    """Drain passes over a blob whose copy on the leaving server is lost:
    counted ok there again, it would leave with the server."""
    for name in ("s1", "s2"):
        await catalog.register_node(name, f"127.0.0.1:{name}")
    await catalog.add_blob("b1", ["s1", "s2"], 2)
    await catalog.mark_replica("b1", "s1", REPLICA_LOST)
    await catalog.set_node_draining("s1", True)
    assert await catalog.reclaim_replica("b1", "s1") is False
    assert (await states(catalog, "b1"))["s1"] == REPLICA_LOST
    await catalog.set_node_draining("s1", False)  # wsfs undrain
    assert await catalog.reclaim_replica("b1", "s1") is True
