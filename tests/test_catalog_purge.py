"""The purge of finished uploads' rows (``purge_uploads``), on both
backends: old finished rows go in bounded batches with their base extents;
live uploads and recently finished ones stay; a blob is kept or freed by
the same rule before and after; the readers of an upload by id find it
gone; the rows are found through the index of finished uploads (schema 7)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.catalog_fixtures import with_current_columns, without_current_columns
from tests.test_catalog_indexes import RecordingTx, plan
from wsfront.catalog import _uploads, open_catalog
from wsfront.catalog._db import Tx
from wsfront.catalog.errors import NotFound, UploadFinished
from wsfront.catalog.records import FINISHED_STATES, LIVE_STATES, UPLOAD_STATES
from wsfront.catalog.schema import FINISHED_SQL

pytest_plugins = ["tests.catalog_fixtures"]

DAY = 86400.0


async def start(cat, path: str, blob: str, offset: int | None = 0, expires_in: float = 100 * DAY):
    """An upload that expires in ``expires_in`` (by default never, here)."""
    started = await cat.start_upload(
        "alice", path, offset=offset, blob_id=blob, replicas=["s1"], wanted_replicas=1,
        owner="fe1", expires_at=cat._clock() + expires_in,
    )  # fmt: skip
    return started.upload


async def one_of_each(cat, tag: str) -> dict[str, str]:
    """A committed, an aborted, an expired, an interrupted and an active
    upload, each on its own path (``tag`` apart): state -> upload id."""
    ids = {}
    up = await start(cat, f"/alice/{tag}-c", f"{tag}-bc")
    await cat.commit_upload(up.upload_id, 1, 10)
    ids["committed"] = up.upload_id
    up = await start(cat, f"/alice/{tag}-a", f"{tag}-ba")
    await cat.abort_upload(up.upload_id)
    ids["aborted"] = up.upload_id
    up = await start(cat, f"/alice/{tag}-e", f"{tag}-be", expires_in=1)
    [gone] = await cat.expire_uploads(up.expires_at, 100)
    assert gone.upload_id == up.upload_id
    ids["expired"] = up.upload_id
    up = await start(cat, f"/alice/{tag}-i", f"{tag}-bi")
    await cat.interrupt_upload(up.upload_id, 1)
    ids["interrupted"] = up.upload_id
    ids["active"] = (await start(cat, f"/alice/{tag}-x", f"{tag}-bx")).upload_id
    return ids


def leave_extents(cat, upload_id: str, blob_id: str) -> None:
    """Base extents on a finished upload, which wsfs deletes when an upload
    ends but a row written otherwise (an older wsfs) may still have: the
    purge must take them with the row, and they pin ``blob_id`` meanwhile."""

    def run(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO blobs (blob_id, length, sealed, wanted, created_at) "
            "VALUES (?, 5, 1, 1, 0)",
            blob_id,
        )
        tx.execute(
            "INSERT INTO upload_extents (upload_id, idx, blob_id, blob_offset, length, "
            "file_offset) VALUES (?, 0, ?, 0, 5, 0)",
            upload_id,
            blob_id,
        )

    cat._runner.run_sync(run)


def extents_of(cat, upload_id: str) -> int:
    return cat._runner.run_sync(
        lambda tx: int(
            tx.value("SELECT COUNT(*) AS n FROM upload_extents WHERE upload_id = ?", upload_id)
        ),
        write=False,
    )


def test_the_index_predicate_names_exactly_the_finished_states():
    assert FINISHED_STATES == UPLOAD_STATES - LIVE_STATES
    assert "(" + ", ".join(f"'{s}'" for s in sorted(FINISHED_STATES)) + ")" == FINISHED_SQL


@pytest_twisted.ensureDeferred
async def test_old_finished_uploads_go_in_batches_and_live_and_recent_ones_stay(catalog, clock):
    await catalog.add_user("alice", "pw")
    old = await one_of_each(catalog, "old")
    leave_extents(catalog, old["committed"], "legacy-blob")
    # A live upload that builds on a committed file keeps its base extents.
    base = await start(catalog, "/alice/old-c", "resume-blob", offset=5)
    assert base.base_extents and extents_of(catalog, base.upload_id) == 1
    clock.advance(8 * DAY)
    cutoff = clock() - 7 * DAY
    recent = await one_of_each(catalog, "new")

    counts = [(await catalog.purge_uploads(cutoff, 2)).count for _ in range(3)]
    assert counts == [2, 1, 0]

    for state in FINISHED_STATES:
        with pytest.raises(NotFound):
            await catalog.get_upload(old[state])
    assert extents_of(catalog, old["committed"]) == 0
    for state in LIVE_STATES:
        assert (await catalog.get_upload(old[state])).state == state
    for state, upload_id in recent.items():
        assert (await catalog.get_upload(upload_id)).state == state
    kept = await catalog.get_upload(base.upload_id)
    assert kept.live and [e.blob_id for e in kept.base_extents] == ["old-bc"]
    assert extents_of(catalog, base.upload_id) == 1
    # The purged ones are no longer listed; the recent finished ones are.
    listed = await catalog.list_uploads(states=sorted(FINISHED_STATES))
    assert sorted(u.upload_id for u in listed) == sorted(recent[s] for s in FINISHED_STATES)
    # Without a limit, everything finished before the cutoff goes at once.
    clock.advance(8 * DAY)
    assert (await catalog.purge_uploads(clock() - 7 * DAY)).count == 3
    assert sorted(u.state for u in await catalog.list_uploads(states=sorted(UPLOAD_STATES))) == (
        sorted(["active", "active", "active", "interrupted", "interrupted"])
    )


@pytest_twisted.ensureDeferred
async def test_the_purge_changes_no_blobs_fate_but_for_extents_left_on_a_finished_row(
    catalog, clock
):
    """A finished upload's ``blob_id`` is no reference (GC counts live
    uploads only): the collectable blobs are the same before and after the
    purge, so the committed file's blob is kept and the aborted one's
    freed either way.  Only base extents left on a finished row pinned a
    blob, which its purge frees."""
    await catalog.add_user("alice", "pw")
    old = await one_of_each(catalog, "old")
    leave_extents(catalog, old["aborted"], "legacy-blob")
    before = {b.blob_id for b in await catalog.collectable_blobs(100)}
    assert {"old-ba", "old-be"} <= before
    assert not {"old-bc", "old-bi", "old-bx", "legacy-blob"} & before
    clock.advance(8 * DAY)
    assert (await catalog.purge_uploads(clock() - 7 * DAY, 100)).count == 3
    after = {b.blob_id for b in await catalog.collectable_blobs(100)}
    assert after == before | {"legacy-blob"}
    assert (await catalog.stat("/alice/old-c")).version.extents[0].blob_id == "old-bc"


@pytest_twisted.ensureDeferred
async def test_a_late_call_on_a_purged_upload_is_not_found(catalog, clock):
    """Within the retention a late commit or abort of a finished upload
    (a retry whose first answer was lost) learns it finished
    (UploadFinished, with the state); after its purge the upload is
    NotFound, as one that never existed: no row comes back to life."""
    await catalog.add_user("alice", "pw")
    old = await one_of_each(catalog, "old")
    with pytest.raises(UploadFinished) as finished:
        await catalog.commit_upload(old["committed"], 1, 10)
    assert finished.value.state == "committed"
    clock.advance(8 * DAY)
    await catalog.purge_uploads(clock() - 7 * DAY, 100)
    with pytest.raises(NotFound):
        await catalog.commit_upload(old["committed"], 1, 10)
    with pytest.raises(NotFound):
        await catalog.abort_upload(old["aborted"])
    with pytest.raises(NotFound):
        await catalog.checkpoint(old["expired"], 1, 0)
    with pytest.raises(NotFound):
        await catalog.get_upload(old["committed"])
    # The committed file is as it was; a new upload on any of the paths starts afresh.
    assert (await catalog.stat("/alice/old-c")).size == 10
    again = await start(catalog, "/alice/old-c", "again", offset=10)
    await catalog.commit_upload(again.upload_id, 1, 12)
    assert (await catalog.stat("/alice/old-c")).size == 12


def many_finished_uploads(cat, count: int, updated_at: float) -> None:
    """``count`` committed uploads that finished at ``updated_at`` and
    the database's statistics, so PostgreSQL plans as for a catalog in use."""

    def fill(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO uploads (upload_id, inode, path, username, blob_id, blob_start,"
            " checkpoint, owner, epoch, state, declared_length, meta, created_at,"
            " updated_at, expires_at)"
            " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " SELECT 'done' || i, 1000 + i, '/alice/d' || i, 'alice', 'db' || i, 0, 0,"
            " 'fe1', 1, 'committed', NULL, '{}', ?, ?, ? FROM n",
            count,
            updated_at,
            updated_at,
            updated_at + DAY,
        )
        tx.execute("ANALYZE")

    cat._runner.run_sync(fill)


def purge_plans(
    cat, before: float, limit: int, seqscan: bool, after: float | None = None
) -> list[tuple[str, str]]:
    """(statement, plan) of what a purge runs (rolled back)."""

    def run(tx: Tx) -> list[tuple[str, str]]:
        recording = RecordingTx(tx)
        _uploads.purge_uploads(recording, before, limit, after)
        plans = []
        for sql, params in recording.statements:
            if tx.backend.name == "postgresql":
                tx.execute(f"SET LOCAL enable_seqscan = {'on' if seqscan else 'off'}")
                text = "\n".join(next(iter(r.values())) for r in tx.all("EXPLAIN " + sql, *params))
            else:
                text = plan(tx, sql, params)
            plans.append((sql, text))
        raise _Plans(plans)

    try:
        cat._runner.run_sync(run)
    except _Plans as done:
        return done.plans
    raise AssertionError("unreachable")


class _Plans(Exception):
    """Carries the plans out of a transaction that must roll back."""

    def __init__(self, plans: list[tuple[str, str]]) -> None:
        self.plans = plans


@pytest_twisted.ensureDeferred
async def test_the_purge_finds_old_finished_rows_through_the_finished_index(catalog, clock):
    """Among 20,000 uploads finished recently and a few live ones, a purge
    of the old ones reads them off the index of finished uploads by
    ``updated_at`` (an index range, not a scan of the table or of the live
    index), even where PostgreSQL may choose freely; its deletes go by
    upload_id (the primary keys)."""
    await catalog.add_user("alice", "pw")
    old = await one_of_each(catalog, "old")
    clock.advance(8 * DAY)
    many_finished_uploads(catalog, 20_000, clock())
    cutoff = clock() - 7 * DAY
    for seqscan in (True, False):
        plans = purge_plans(catalog, cutoff, 100, seqscan)
        [select, *deletes] = plans
        sql, text = select
        assert sql.startswith("SELECT"), sql
        if catalog.backend_name == "sqlite":
            assert "SEARCH uploads USING INDEX uploads_finished (updated_at<?)" in text, text
            assert "SCAN" not in text and "TEMP B-TREE" not in text, text
        else:
            assert "Index Scan using uploads_finished on uploads" in text, text
            assert "Seq Scan" not in text and "Sort" not in text, text
        assert [s.split(" WHERE")[0] for s, _ in deletes] == [
            "DELETE FROM upload_extents",
            "DELETE FROM uploads",
        ]
        for sql, text in deletes:
            if catalog.backend_name == "sqlite":
                assert "SCAN" not in text, (sql, text)
            elif not seqscan:
                assert "Seq Scan" not in text, (sql, text)
    assert (await catalog.purge_uploads(cutoff, 100)).count == 3
    assert {u.upload_id for u in await catalog.list_uploads()} == {
        old["interrupted"],
        old["active"],
    }


@pytest_twisted.ensureDeferred
async def test_uploads_finished_before_schema_7_are_purged_after_it(catalog_url, clock):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=6)
    with_current_columns(old)
    try:
        await old.add_user("alice", "pw")
        ids = await one_of_each(old, "old")
    finally:
        without_current_columns(old)
        await old.close()
    clock.advance(8 * DAY)
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        assert (await new.purge_uploads(clock() - 7 * DAY, 10)).count == 3
        assert sorted(u.upload_id for u in await new.list_uploads()) == sorted(
            [ids["interrupted"], ids["active"]]
        )
    finally:
        await new.close()


@pytest_twisted.ensureDeferred
async def test_a_purge_of_more_than_a_statement_holds_deletes_them_all(catalog, clock):
    """Ids go to the deletes by pieces (``PURGE_PIECE``): a statement takes
    a bounded number of parameters, whatever batch GC is given."""
    await catalog.add_user("alice", "pw")
    count = 2 * _uploads.PURGE_PIECE + 5
    many_finished_uploads(catalog, count, clock())
    leave_extents(catalog, f"done{count}", "legacy-blob")
    live = await start(catalog, "/alice/live", "live-blob")
    clock.advance(8 * DAY)
    assert (await catalog.purge_uploads(clock() - 7 * DAY)).count == count
    assert extents_of(catalog, f"done{count}") == 0
    [left] = await catalog.list_uploads(states=sorted(UPLOAD_STATES))
    assert left.upload_id == live.upload_id


def finished_at(cat, tag: str, times: list[float]) -> list[str]:
    """A committed upload per time in ``times``, finished then: their ids."""

    def fill(tx: Tx) -> None:
        for i, at in enumerate(times):
            tx.execute(
                "INSERT INTO uploads (upload_id, inode, path, username, blob_id, blob_start,"
                " checkpoint, owner, epoch, state, declared_length, meta, created_at,"
                " updated_at, expires_at)"
                " VALUES (?, ?, ?, 'alice', ?, 0, 0, 'fe1', 1, 'committed', NULL, '{}', ?, ?, ?)",
                f"{tag}{i}", 5000 + i, f"/alice/{tag}{i}", f"{tag}b{i}", at, at, at + DAY,
            )  # fmt: skip

    cat._runner.run_sync(fill)
    return [f"{tag}{i}" for i in range(len(times))]


async def finished_ids(cat) -> set[str]:
    return {u.upload_id for u in await cat.list_uploads(states=sorted(FINISHED_STATES))}


@pytest_twisted.ensureDeferred
async def test_a_cursor_skips_nothing_and_purges_everything_in_order(catalog, clock):
    """Batches that each start at the previous one's last ``updated_at``
    (``after``) delete every row up to ``before``, earliest first, though
    several rows finished at the same instant and a batch ends among them
    (``>=``); rows after ``before`` stay; a cursor leaves earlier rows
    alone."""
    await catalog.add_user("alice", "pw")
    t = clock() - 30 * DAY
    times = [t, t, t, t + 1, t + 2, t + 2, t + 2, t + 2, t + 3, t + 5]
    ids = finished_at(catalog, "u", times)
    later = finished_at(catalog, "late", [t + 10])
    before = t + 5
    after = None
    batches = []
    while True:
        present = await finished_ids(catalog)
        result = await catalog.purge_uploads(before, 3, after)
        gone = present - await finished_ids(catalog)
        assert result.count == len(gone)
        if not gone:
            assert result.last_updated_at is None
            break
        batches.append(sorted(times[ids.index(i)] for i in gone))
        assert result.last_updated_at == max(batches[-1])
        if after is not None:
            assert min(batches[-1]) >= after
        after = result.last_updated_at
    flat = [at for batch in batches for at in batch]
    assert flat == sorted(times) and len(batches) == 4
    assert await finished_ids(catalog) == set(later)
    # The cursor is a bound: rows that finished before it are not taken.
    early = finished_at(catalog, "e", [t - 2, t - 1, t])
    result = await catalog.purge_uploads(before, 10, t)
    assert (result.count, result.last_updated_at) == (1, t)
    assert await finished_ids(catalog) == {*later, *early[:2]}


@pytest_twisted.ensureDeferred
async def test_a_purge_from_a_cursor_reads_an_index_range(catalog, clock):
    """With ``after`` the select is a range of the finished index between
    both bounds, not a scan from its oldest end."""
    await catalog.add_user("alice", "pw")
    many_finished_uploads(catalog, 20_000, clock() - 8 * DAY)
    cutoff = clock() - 7 * DAY
    for seqscan in (True, False):
        [(sql, text), *_] = purge_plans(catalog, cutoff, 100, seqscan, after=cutoff - DAY)
        assert "updated_at >= ?" in sql, sql
        if catalog.backend_name == "sqlite":
            assert (
                "SEARCH uploads USING INDEX uploads_finished (updated_at>? AND updated_at<?)"
                in text
            ), text
        else:
            assert "Index Scan using uploads_finished on uploads" in text, text
            assert "updated_at >=" in text and "updated_at <=" in text, text
