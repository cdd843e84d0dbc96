"""The queries for uploads by state (or by the blob of a live one) read the
index of live uploads (schema 5), never the whole table, which keeps every
upload ever committed: on both backends, with the statements the catalog
really runs."""

import re

import pytest_twisted
from twisted.internet import reactor

from wsfront.catalog import _accounts, _blobs, _uploads, open_catalog
from wsfront.catalog._db import Tx
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
    try:
        await some_uploads(old)
    finally:
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
