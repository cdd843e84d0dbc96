"""Fixtures for the catalog tests: one URL per backend, each test on a fresh
database (a SQLite file in tmp_path, or its own PostgreSQL schema, dropped
afterwards).  Import the fixtures into a test module to use them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from twisted.internet import reactor

from tests.support import postgres_url
from wsfront.catalog import open_catalog

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class FakeClock:
    """A clock tests move by hand, so expiry needs no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    import psycopg

    base = postgres_url()
    schema = "wsfs_test_" + secrets.token_hex(6)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options={quote('-csearch_path=' + schema)}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def catalog_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog.sqlite"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def catalog(catalog_url, clock):
    cat = open_catalog(reactor, catalog_url, clock=clock)
    yield cat
    cat.close()


#: Columns of later schemas that every account and upload operation of the
#: current code writes (``users.pending_bytes``, schema 12: each commit's
#: charge), as (table, column, type): a test that fills an older schema
#: through the current catalog adds them for the while (``with_current_columns``).
CURRENT_COLUMNS = [("users", "pending_bytes", "INTEGER NOT NULL DEFAULT 0")]


def with_current_columns(cat) -> None:
    """Let the current code fill ``cat``, opened at an older schema: add
    ``CURRENT_COLUMNS``; ``without_current_columns`` takes them away again
    before the catalog is upgraded, whose migrations add them."""
    for table, column, kind in CURRENT_COLUMNS:
        sql = f"ALTER TABLE {table} ADD COLUMN {column} {kind}"
        cat._runner.run_sync(lambda tx, sql=sql: tx.execute(sql))


def without_current_columns(cat) -> None:
    """Undo ``with_current_columns``: the schema is the older one again."""
    for table, column, _ in CURRENT_COLUMNS:
        sql = f"ALTER TABLE {table} DROP COLUMN {column}"
        cat._runner.run_sync(lambda tx, sql=sql: tx.execute(sql))
