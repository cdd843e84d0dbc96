"""Schema versions: an older catalog is upgraded in place, a newer one is
refused, on both backends."""

import pytest
import pytest_twisted
from twisted.internet import reactor

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
