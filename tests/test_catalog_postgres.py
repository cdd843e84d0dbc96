"""PostgreSQL-only behaviour: a lost server connection (a connection the
server ended is replaced without a failure: test_catalog_pg_resilience)."""

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.catalog_fixtures import postgres_schema_url
from wsfront.catalog import open_catalog
from wsfront.catalog.errors import CatalogUnavailable

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url():
    yield from postgres_schema_url()


@pytest_twisted.ensureDeferred
async def test_a_server_that_refuses_connections_is_unavailable_until_it_is_back(pg_url):
    # The connection is lost and the server cannot be reached again: each
    # call fails as unavailable (HTTP 503, FTP 451), not with the driver's
    # own connection error (a 500 and a traceback), until it is back.
    cat = open_catalog(reactor, pg_url, threads=1)
    backend = cat._runner.backend
    try:
        pid = await cat._runner.run(lambda tx: tx.value("SELECT pg_backend_pid() AS pid"))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        backend.url, url = "postgresql://127.0.0.1:1/test?connect_timeout=2", backend.url
        for _ in range(2):
            with pytest.raises(CatalogUnavailable):
                await cat.mkdir("/b")
        backend.url = url
        await cat.mkdir("/b")
        assert [e.name for e in await cat.list_dir("/")] == ["b"]
    finally:
        await cat.close()
