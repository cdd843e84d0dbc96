"""Schema versions: an older catalog is upgraded in place, a newer one is
refused, on both backends."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from wsfront.catalog import open_catalog
from wsfront.catalog.errors import SchemaTooNew
from wsfront.catalog.schema import LATEST

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


def stored_without_rowid(cat) -> set[str]:
    """The tables SQLite keeps in their primary key's b-tree."""
    rows = cat._runner.run_sync(
        lambda tx: tx.all("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
    )
    return {r["name"] for r in rows if "WITHOUT ROWID" in r["sql"]}


@pytest_twisted.ensureDeferred
async def test_files_and_uploads_of_schema_5_are_kept_by_schema_6(catalog_url, clock):
    old = open_catalog(reactor, catalog_url, clock=clock, schema_version=5)
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
    finally:
        await new.close()
