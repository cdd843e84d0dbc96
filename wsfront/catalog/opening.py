"""Choosing and opening a catalog backend from its URL, migrating it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

from wsfront.catalog._db import Backend, Runner, Tx
from wsfront.catalog.catalog import SqlCatalog
from wsfront.catalog.schema import LATEST, migrate

#: What a catalog URL may look like, in every message about a wrong one.
URL_FORMS = "sqlite:///absolute/path/catalog.sqlite or postgresql://user@host/db"


def catalog_location(url: str) -> tuple[str, str]:
    """``("sqlite", absolute path of the database file)`` for
    ``sqlite:///abs/path``, ``("postgresql", url)`` for
    ``postgresql://user@host/db`` (also ``postgres://``); anything else is a
    ValueError saying what is expected.  Opens and creates nothing."""
    parsed = urlparse(url)
    if parsed.scheme in ("postgresql", "postgres"):
        return "postgresql", url
    if parsed.scheme != "sqlite":
        raise ValueError(f"{url!r}: not a catalog URL; expected {URL_FORMS}")
    path = unquote(parsed.path)
    if parsed.netloc or not path.startswith("/"):
        raise ValueError(
            f"{url!r}: a SQLite catalog needs an absolute path, "
            "sqlite:///absolute/path/catalog.sqlite (three slashes)"
        )
    return "sqlite", path


def backend_for(url: str) -> Backend:
    """The backend of catalog ``url`` (``catalog_location``), a SQLite
    database's directory made if missing."""
    kind, where = catalog_location(url)
    if kind == "sqlite":
        from wsfront.catalog.sqlite import SQLiteBackend

        directory = os.path.dirname(where)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return SQLiteBackend(where)
    from wsfront.catalog.postgres import PostgresBackend

    return PostgresBackend(where)


def open_catalog(
    reactor: Any,
    url: str,
    *,
    clock: Callable[[], float] = time.time,
    threads: int = 4,
    schema_version: int = LATEST,
) -> SqlCatalog:
    """Open the catalog at ``url`` and bring its schema up to date (in the
    calling thread: call this at start-up).  ``schema_version`` below the
    latest is for migration tests only.  SchemaTooNew if the database is
    newer than this code."""
    backend = backend_for(url)
    runner = Runner(reactor, backend, threads=threads)
    try:

        def upgrade(tx: Tx) -> int:
            backend.prepare(tx)
            return migrate(tx, backend.dialect, schema_version)

        found = runner.run_sync(upgrade, write=True)
        if found < schema_version:
            backend.migrated()
    except BaseException:
        runner.close()
        raise
    return SqlCatalog(runner, clock=clock)
