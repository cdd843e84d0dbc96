"""The queries for uploads by state (or by the blob of a live one) read the
index of live uploads (schema 5), never the whole table, which keeps every
upload ever committed: on both backends, with the statements the catalog
really runs."""

import re

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.catalog_fixtures import with_current_columns, without_current_columns
from wsfront.catalog import _accounts, _blobs, _uploads, open_catalog
from wsfront.catalog._db import Tx
from wsfront.catalog.errors import Exists, NotFound
from wsfront.catalog.records import INTERRUPTED

pytest_plugins = ["tests.catalog_fixtures"]


class RecordingTx(Tx):
    """A Tx that keeps every statement it runs, with its parameters."""

    def __init__(self, tx: Tx) -> None:
        super().__init__(tx.backend, tx._cursor)
        self.statements: list[tuple[str, tuple]] = []

    def execute(self, sql, *params):
        self.statements.append((sql, params))
        return super().execute(sql, *params)

    def all(self, sql, *params):
        self.statements.append((sql, params))
        return super().all(sql, *params)

    def one(self, sql, *params):
        self.statements.append((sql, params))
        return super().one(sql, *params)


#: A plan step reading every row of uploads (aliased ``u`` in some
#: queries), where a scan of a partial index of live uploads reads only
#: those; or reading all live uploads again for each row of another table
#: (SQLite's steps under a correlated subquery are marked so by ``plan``).
WHOLE_TABLE = re.compile(
    r"Seq Scan on uploads|SCAN (uploads|u)\b(?! USING (COVERING )?INDEX uploads_live)"
    r"|CORRELATED .*(SCAN|SEARCH) (uploads|u) USING (COVERING )?INDEX uploads_live\b"
)


def plan(tx: Tx, sql: str, params: tuple) -> str:
    """How the database runs ``sql``: its plan as text, scans forbidden
    where an index could serve (PostgreSQL), so a full scan in it means no
    index could."""
    if tx.backend.name == "sqlite":
        steps = tx.all("EXPLAIN QUERY PLAN " + sql, *params)
        details = {r["id"]: (r["parent"], r["detail"]) for r in steps}

        def correlated(step: int) -> bool:
            while step in details:
                step, detail = details[step]
                if detail.startswith("CORRELATED"):
                    return True
            return False

        return "\n".join(
            ("CORRELATED " if correlated(r["parent"]) else "") + r["detail"] for r in steps
        )
    tx.execute("SET LOCAL enable_seqscan = off")
    return "\n".join(next(iter(r.values())) for r in tx.all("EXPLAIN " + sql, *params))


def full_scans_of_uploads(cat, fn) -> list[str]:
    """The plans that read all of ``uploads``, of the statements ``fn(tx)``
    runs on it."""

    def run(tx: Tx) -> list[str]:
        recording = RecordingTx(tx)
        fn(recording)
        scans = []
        for sql, params in recording.statements:
            if "FROM uploads" not in sql or not sql.lstrip().startswith("SELECT"):
                continue
            text = plan(tx, sql, params)
            if WHOLE_TABLE.search(text):
                scans.append(f"{sql}\n{text}")
        return scans

    return cat._runner.run_sync(run, write=False)


async def some_uploads(cat) -> None:
    """Committed uploads (what the index leaves out), a live one and an
    interrupted one."""
    await cat.add_user("alice", "pw")
    for n in range(3):
        started = await cat.start_upload(
            "alice", f"/alice/f{n}", offset=0, blob_id=f"b{n}", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=cat._clock() + 60,
        )  # fmt: skip
        if n == 0:
            await cat.commit_upload(started.upload.upload_id, 1, 0)
        elif n == 1:
            await cat.interrupt_upload(started.upload.upload_id, 1)


@pytest_twisted.ensureDeferred
async def test_the_queries_on_uploads_by_state_use_an_index(catalog, clock):
    await some_uploads(catalog)
    now = clock()
    queries = {
        "list_uploads": lambda tx: _uploads.list_uploads(tx, None, None),
        "list_uploads of a front end": lambda tx: _uploads.list_uploads(tx, [INTERRUPTED], "fe1"),
        "active_upload_owners": _uploads.active_upload_owners,
        "interrupt_sessions_of": lambda tx: _uploads.interrupt_sessions_of(tx, now, "fe9"),
        "expire_uploads": lambda tx: _uploads.expire_uploads(tx, now, 10),
        "a user's live uploads": lambda tx: _accounts._live_uploads(tx, "alice"),
        "a user's live uploads under a directory": lambda tx: _accounts._uploads_under(
            tx, "alice", 1
        ),
        "collectable_blobs": lambda tx: _blobs.collectable_blobs(tx, 10),
        "under_replicated": lambda tx: _blobs.under_replicated(tx, 10),
        "count_under_replicated": _blobs.count_under_replicated,
        "replica_health (metrics, status page, wsfs status)": _blobs.replica_health,
    }
    for name, fn in queries.items():
        assert full_scans_of_uploads(catalog, fn) == [], name


@pytest_twisted.ensureDeferred
async def test_listing_finished_uploads_still_finds_them(catalog):
    await some_uploads(catalog)
    [committed] = await catalog.list_uploads(states=["committed"])
    assert committed.path == "/alice/f0"
    both = await catalog.list_uploads(states=["committed", "interrupted"])
    assert sorted(u.path for u in both) == ["/alice/f0", "/alice/f1"]


@pytest_twisted.ensureDeferred
async def test_uploads_begun_before_schema_5_are_found_by_state_after_it(catalog_url, clock):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=4)
    with_current_columns(old)
    try:
        await some_uploads(old)
    finally:
        without_current_columns(old)
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        assert sorted((u.path, u.state) for u in await new.list_uploads()) == [
            ("/alice/f1", "interrupted"),
            ("/alice/f2", "active"),
        ]
        assert await new.active_upload_owners() == {"fe1": clock()}
        assert [u.path for u in await new.interrupt_sessions_of("fe1")] == ["/alice/f2"]
        clock.advance(61)
        expired = await new.expire_uploads()
        assert sorted(u.path for u in expired) == ["/alice/f1", "/alice/f2"]
        assert await new.list_uploads() == []
    finally:
        await new.close()


def reads_uploads_other_than_by_blob(backend: str, text: str) -> list[str]:
    """The steps of plan ``text`` that read uploads otherwise than the live
    uploads of one blob through their index (``uploads_live_blob``): a
    scan of any index or of the table (PostgreSQL's hashed subplan of all
    live uploads' blobs scans its index without a condition on blob_id)."""
    lines = text.splitlines()
    if backend == "sqlite":
        return [
            line
            for line in lines
            if re.search(r"(SCAN|SEARCH) (uploads|u)\b", line)
            and not re.search(
                r"SEARCH (uploads|u) USING (COVERING )?INDEX uploads_live_blob \(blob_id=\?\)",
                line,
            )
        ]
    bad = []
    for n, line in enumerate(lines):
        if not re.search(r"Scan (using \w+ )?on (uploads|uploads_\w+)\b", line):
            continue
        details = []
        for later in lines[n + 1 :]:
            if "->" in later or "SubPlan" in later:
                break
            details.append(later)
        if line.lstrip("-> ").startswith("Bitmap Heap Scan"):
            continue  # its Bitmap Index Scan below says which entries
        if "uploads_live_blob" in line and any(
            re.search(r"Index Cond: \(blob_id = ", d) for d in details
        ):
            continue
        bad.append(line.strip())
    return bad


async def many_live_uploads(cat, count: int) -> None:
    """``count`` live uploads of blobs of their own, and the database's
    statistics of them, so PostgreSQL plans as for a catalog in use."""

    def fill(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO uploads (upload_id, inode, path, username, blob_id, blob_start,"
            " checkpoint, owner, epoch, state, declared_length, meta, created_at,"
            " updated_at, expires_at)"
            " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " SELECT 'live' || i, 1000 + i, '/alice/l' || i, 'alice', 'lb' || i, 0, 0,"
            " 'fe1', 1, 'interrupted', NULL, '{}', 0, 0, 1e12 FROM n",
            count,
        )
        tx.execute("ANALYZE")

    cat._runner.run_sync(fill)


def plans_reading_uploads_other_than_by_blob(cat, fn, write: bool = False) -> list[str]:
    """The plans of the statements ``fn(tx)`` runs on uploads that read
    them otherwise than by one blob's live uploads."""

    def run(tx: Tx) -> list[str]:
        recording = RecordingTx(tx)
        fn(recording)
        return [
            f"{sql}\n{text}"
            for sql, params in recording.statements
            if "FROM uploads" in sql and sql.lstrip().startswith("SELECT")
            for text in [plan(tx, sql, params)]
            if reads_uploads_other_than_by_blob(tx.backend.name, text)
        ]

    return cat._runner.run_sync(run, write=write)


@pytest_twisted.ensureDeferred
async def test_whether_one_blob_is_referenced_reads_only_its_live_uploads(catalog):
    """forget_blob, per blob GC or compaction deletes, looks its blob up in
    the index of live uploads' blobs: reading every live upload per call
    (one per interrupted upload kept for a day) made it 29 ms, not 0.01."""
    await some_uploads(catalog)
    await many_live_uploads(catalog, 2000)
    await catalog.add_blob("lone", ["s1"], 1)

    def forget(tx: Tx) -> None:
        _blobs.forget_blob(tx, "lone")
        with pytest.raises(Exists):
            _blobs.forget_blob(tx, "b2")  # the blob of a live upload

    assert plans_reading_uploads_other_than_by_blob(catalog, forget, write=True) == []
    with pytest.raises(NotFound):
        await catalog.get_blob("lone")
    assert (await catalog.get_blob("b2")).blob_id == "b2"


@pytest_twisted.ensureDeferred
async def test_collectable_blobs_look_each_blob_up_in_the_index_of_live_uploads(catalog):
    await some_uploads(catalog)
    await many_live_uploads(catalog, 2000)
    await catalog.add_blob("lone", ["s1"], 1)
    queries = {
        "collectable_blobs": lambda tx: _blobs.collectable_blobs(tx, 10),
        "under_replicated": lambda tx: _blobs.under_replicated(tx, 10),
    }
    for name, fn in queries.items():
        assert plans_reading_uploads_other_than_by_blob(catalog, fn) == [], name
    collectable = [b.blob_id for b in await catalog.collectable_blobs()]
    assert "lone" in collectable and "b2" not in collectable and "lb7" not in collectable
