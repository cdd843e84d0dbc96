"""Schema versions: an older catalog is upgraded in place, a newer one is
refused, on both backends."""

import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from tests.catalog_fixtures import with_current_columns, without_current_columns
from wsfront.catalog import open_catalog
from wsfront.catalog._db import Tx
from wsfront.catalog.errors import CatalogUnavailable, LeaseHeld, SchemaTooNew
from wsfront.catalog.schema import LATEST, migrate
from wsfront.catalog.sqlite import SQLiteBackend

pytest_plugins = ["tests.catalog_fixtures"]


def schema_version(cat):
    return cat._runner.run_sync(lambda tx: tx.value("SELECT version FROM schema_version"))


@pytest_twisted.ensureDeferred
async def test_an_older_schema_is_upgraded_and_keeps_its_data(catalog_url, clock):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=1)
    try:
        assert schema_version(old) == 1
        await old.mkdir("/kept")
        with pytest.raises(Exception, match="users"):
            await old.get_user("alice")  # table of migration 2 not there yet
    finally:
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        assert schema_version(new) == LATEST
        assert (await new.stat("/kept")).kind == "dir"
        await new.add_user("alice", "pw")
        assert (await new.get_user("alice")).root == "/alice"
    finally:
        await new.close()


@pytest_twisted.ensureDeferred
async def test_reopening_a_current_schema_changes_nothing(catalog_url, clock):
    first = open_catalog(reactor, catalog_url, clock=clock)
    await first.mkdir("/a")
    await first.close()
    again = open_catalog(reactor, catalog_url, clock=clock)
    try:
        assert schema_version(again) == LATEST
        assert [e.name for e in await again.list_dir("/")] == ["a"]
    finally:
        await again.close()


def test_a_newer_schema_is_refused(catalog_url, clock):
    cat = open_catalog(reactor, catalog_url, clock=clock)
    cat._runner.run_sync(lambda tx: tx.execute("UPDATE schema_version SET version = ?", LATEST + 1))
    cat.close()
    with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}"):
        open_catalog(reactor, catalog_url, clock=clock)


@pytest_twisted.ensureDeferred
async def test_storage_servers_registered_before_last_error_existed_keep_their_rows(
    catalog_url, clock
):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=3)
    try:
        # As the code of schema 3 registered it (this code reads last_error).
        old._runner.run_sync(
            lambda tx: tx.execute(
                "INSERT INTO nodes (name, endpoint, state, free_bytes) "
                "VALUES ('s1', 'tcp:127.0.0.1:7001', 'up', 5)"
            )
        )
    finally:
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        [node] = await new.list_nodes()
        assert (node.name, node.state, node.free_bytes, node.last_error) == ("s1", "up", 5, None)
        node = await new.set_node_health("s1", "down", None, None, None, "connection refused")
        assert node.last_error == "connection refused"
    finally:
        await new.close()


@pytest_twisted.ensureDeferred
async def test_storage_servers_of_schema_7_keep_their_rows_and_have_no_store_id(catalog_url, clock):
    """Schema 8 adds the store id columns: a server registered before has
    none (NULL), so the first id it reports is taken as its own, not as a
    wiped data directory (``maintenance.identity``)."""
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=7)
    try:
        # As the code of schema 7 registered it (this code reads store_id).
        old._runner.run_sync(
            lambda tx: tx.execute(
                "INSERT INTO nodes (name, endpoint, state, free_bytes, seen_at) "
                "VALUES ('s1', 'tcp:127.0.0.1:7001', 'up', 5, 3.0)"
            )
        )
    finally:
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        [node] = await new.list_nodes()
        assert (node.name, node.state, node.free_bytes, node.seen_at) == ("s1", "up", 5, 3.0)
        assert (node.store_id, node.store_replaced, node.store_replaced_at, node.store_lost) == (
            None, None, None, None,
        )  # fmt: skip
        assert await new.set_node_store("s1", None, "ab" * 16)
        assert (await new.list_nodes())[0].store_id == "ab" * 16
    finally:
        await new.close()


@pytest_twisted.ensureDeferred
async def test_jobs_of_schema_8_keep_their_rows_and_their_next_claim_is_1(catalog_url, clock):
    """Schema 9 numbers the claims of a job: one running across the
    upgrade has claim 0 (its sweep names that to re-queue it), and the
    claim after is 1, which an update naming claim 0 no longer matches."""
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=8)
    try:
        # As the code of schema 8 queued and claimed them (this code reads claim).
        for state, owner in (("running", "fe-a"), ("queued", None)):
            old._runner.run_sync(
                lambda tx, state=state, owner=owner: tx.execute(
                    "INSERT INTO jobs (kind, args, state, owner, progress, created_at, "
                    "updated_at) VALUES ('repair', '{}', ?, ?, '{\"n\": 1}', 3.0, 3.0)",
                    state,
                    owner,
                )
            )
    finally:
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        running, queued = await new.list_jobs()
        assert (running.state, running.owner, running.claim, running.progress) == (
            "running", "fe-a", 0, {"n": 1},
        )  # fmt: skip
        assert (queued.state, queued.owner, queued.claim) == ("queued", None, 0)
        await new.requeue_job(running.job_id, "fe-a", 0, "fe-a restarted; re-queued")
        again = await new.claim_job("fe-a", ["repair"])
        assert (again.job_id, again.claim) == (running.job_id, 1)
        with pytest.raises(LeaseHeld):
            await new.update_job(running.job_id, "fe-a", 0, {"n": 2})
        assert (await new.claim_job("fe-b", ["repair"])).claim == 1  # the other job's first
    finally:
        await new.close()


def stored_without_rowid(cat) -> set[str]:
    """The tables SQLite keeps in their primary key's b-tree."""
    rows = cat._runner.run_sync(
        lambda tx: tx.all("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
    )
    return {r["name"] for r in rows if "WITHOUT ROWID" in r["sql"]}


@pytest_twisted.ensureDeferred
async def test_files_and_uploads_of_schema_5_are_kept_by_schema_6(catalog_url, clock):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=5)
    with_current_columns(old)
    try:
        await old.add_user("alice", "pw")
        started = await old.start_upload(
            "alice", "/alice/f", offset=0, blob_id="b1", replicas=["s1", "s2"],
            wanted_replicas=2, owner="fe1", expires_at=clock() + 60,
        )  # fmt: skip
        first = await old.commit_upload(started.upload.upload_id, 1, 100)
        again = await old.begin_upload(
            "alice", "/alice/f", base_length=50, blob_id="b2", replicas=["s1"],
            wanted_replicas=2, owner="fe1", expires_at=clock() + 60,
        )  # fmt: skip
        await old.mkdir("/alice/d")
    finally:
        without_current_columns(old)
        await old.close()
    new = open_catalog(reactor, catalog_url, clock=clock)
    try:
        if catalog_url.startswith("sqlite"):
            assert stored_without_rowid(new) == {
                "dirents", "blobs", "replicas", "version_extents", "upload_extents",
            }  # fmt: skip
        assert [e.name for e in await new.list_dir("/alice")] == ["d", "f"]
        entry = await new.stat("/alice/f")
        assert entry.version == first and entry.upload == again
        assert [(e.blob_id, e.length) for e in again.base_extents] == [("b1", 50)]
        assert (await new.get_blob("b1")).replicas == first.extents[0].replicas
        version = await new.commit_upload(again.upload_id, 1, 80)
        assert [(e.blob_id, e.blob_offset, e.length, e.file_offset) for e in version.extents] == [
            ("b1", 0, 50, 0),
            ("b2", 0, 30, 50),
        ]
        # The keys still hold: one entry per name, one name per inode.
        with pytest.raises(Exception, match="exists"):
            await new.mkdir("/alice/d")
        await new.rename("/alice/f", "/alice/g")
        assert [e.name for e in await new.list_dir("/alice")] == ["d", "g"]
        assert [b.blob_id for b in await new.collectable_blobs()] == []
    finally:
        await new.close()


def test_a_sqlite_migration_leaves_no_log_behind(tmp_path, clock):
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    open_catalog(reactor, url, clock=clock, schema_version=5).close()
    wal = tmp_path / "catalog.sqlite-wal"
    cat = open_catalog(reactor, url, clock=clock)
    try:
        # Schema 6 copied tables through the log; it is in the database now.
        assert wal.stat().st_size == 0
        assert schema_version(cat) == LATEST
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_sqlite_blob_row_without_a_blob_id_is_dropped_by_schema_6(tmp_path, clock):
    """SQLite let the old blobs table hold a NULL blob_id (a TEXT PRIMARY
    KEY may be NULL there); its WITHOUT ROWID copy may not.  Nothing can
    refer to such a row, so the upgrade deletes it and says so, rather
    than stopping at version 4 on an IntegrityError."""
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    old = open_catalog(reactor, url, clock=clock, schema_version=4)
    try:
        await old.add_blob("kept", ["s1"], 1)
        old._runner.run_sync(
            lambda tx: tx.execute(
                "INSERT INTO blobs (blob_id, length, sealed, wanted, created_at)"
                " VALUES (NULL, 0, 0, 1, 0), (NULL, 0, 0, 1, 0)"
            )
        )
    finally:
        await old.close()
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        new = open_catalog(reactor, url, clock=clock)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    try:
        assert schema_version(new) == LATEST
        count = new._runner.run_sync(lambda tx: tx.value("SELECT COUNT(*) AS n FROM blobs"))
        assert count == 1
        assert [b.blob_id for b in await new.collectable_blobs()] == ["kept"]
        [note] = [e for e in logged if "without a blob_id" in (e.get("log_format") or "")]
        assert note["count"] == 2 and note["log_level"].name == "warn"
        lines = [formatEvent(e) for e in logged]
        assert f"catalog schema 4 is older than this wsfs's {LATEST}: upgrading it" in lines
    finally:
        await new.close()


class Opener:
    """``open_catalog`` in a thread of its own; ``event`` is set when it
    ended or logged a line containing ``watch``."""

    def __init__(self, url: str, clock, watch: str) -> None:
        self.event = threading.Event()
        self.catalog = self.error = None
        self.lines: list[str] = []
        self._watch = watch
        globalLogPublisher.addObserver(self._observe)
        self._thread = threading.Thread(target=self._open, args=(url, clock))
        self._thread.start()

    def _observe(self, event: dict) -> None:
        line = formatEvent(event)
        if self._watch in line:
            self.lines.append(line)
            self.event.set()

    def _open(self, url: str, clock) -> None:
        try:
            self.catalog = open_catalog(reactor, url, clock=clock)
        except BaseException as e:
            self.error = e
        finally:
            self.event.set()

    def join(self) -> None:
        self._thread.join(60)
        globalLogPublisher.removeObserver(self._observe)
        assert not self._thread.is_alive()


def hold_write_lock(path) -> tuple[SQLiteBackend, Any, Tx]:
    """Another process's write transaction on the SQLite catalog at
    ``path`` (a connection of its own), as a migration holds it."""
    backend = SQLiteBackend(str(path))
    conn = backend.connect()
    return backend, conn, Tx(backend, backend.begin(conn, write=True))


def test_opening_a_sqlite_catalog_waits_for_another_process_upgrading_it(
    tmp_path, clock, monkeypatch
):
    """A migration that copies tables holds SQLite's write lock for
    minutes on a large catalog: a front end starting meanwhile waits for
    it, saying so, instead of failing after the busy timeout."""
    monkeypatch.setattr(SQLiteBackend, "busy_timeout", 0.1, raising=False)
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    open_catalog(reactor, url, clock=clock, schema_version=4).close()
    backend, conn, tx = hold_write_lock(tmp_path / "catalog.sqlite")
    try:
        opener = Opener(url, clock, "upgrade")
        assert opener.event.wait(60)
        assert opener.error is None and opener.catalog is None  # still waiting
        assert "locked at schema 4" in opener.lines[0]
        migrate(tx, backend.dialect)
        backend.commit(conn, tx._cursor)
    finally:
        conn.close()
    opener.join()
    assert opener.error is None
    try:
        assert schema_version(opener.catalog) == LATEST
    finally:
        opener.catalog.close()


def test_a_sqlite_catalog_locked_at_the_current_schema_is_not_waited_for(
    tmp_path, clock, monkeypatch
):
    """Only an older schema means an upgrade may be under way: a lock held
    over a current one is a busy catalog, unavailable after the busy
    timeout as before; and an upgrade is waited for up to a bound."""
    monkeypatch.setattr(SQLiteBackend, "busy_timeout", 0.1, raising=False)
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    open_catalog(reactor, url, clock=clock).close()
    backend, conn, tx = hold_write_lock(tmp_path / "catalog.sqlite")
    try:
        with pytest.raises(CatalogUnavailable, match="locked"):
            open_catalog(reactor, url, clock=clock)
        tx.execute("UPDATE schema_version SET version = 4")
        backend.commit(conn, tx._cursor)
        tx = Tx(backend, backend.begin(conn, write=True))  # an upgrade that never ends
        monkeypatch.setattr(SQLiteBackend, "upgrade_wait", 0.3, raising=False)
        with pytest.raises(CatalogUnavailable, match="locked"):
            open_catalog(reactor, url, clock=clock)
    finally:
        conn.close()
