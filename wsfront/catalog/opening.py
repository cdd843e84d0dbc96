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


def backend_for(url: str) -> Backend:
    """``sqlite:///abs/path`` or ``postgresql://user@host/db`` (also
    ``postgres://``); anything else is a ValueError."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        if parsed.netloc or not path.startswith("/"):
            raise ValueError(f"{url!r}: use sqlite:///absolute/path/catalog.sqlite")
        from wsfront.catalog.sqlite import SQLiteBackend

        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return SQLiteBackend(path)
    if parsed.scheme in ("postgresql", "postgres"):
        from wsfront.catalog.postgres import PostgresBackend

        return PostgresBackend(url)
    raise ValueError(f"{url!r}: a catalog URL starts with sqlite:/// or postgresql://")


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

        runner.run_sync(upgrade, write=True)
    except BaseException:
        runner.close()
        raise
    return SqlCatalog(runner, clock=clock)
