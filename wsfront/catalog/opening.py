"""Choosing and opening a catalog backend from its URL, migrating it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

from twisted.logger import Logger

from wsfront.catalog._db import Backend, Runner, Tx
from wsfront.catalog.catalog import SqlCatalog
from wsfront.catalog.errors import CatalogUnavailable
from wsfront.catalog.schema import LATEST, migrate
from wsfront.urls import masked_url

log = Logger()

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
        raise ValueError(f"{masked_url(url)!r}: not a catalog URL; expected {URL_FORMS}")
    path = unquote(parsed.path)
    if parsed.netloc or not path.startswith("/"):
        raise ValueError(
            f"{masked_url(url)!r}: a SQLite catalog needs an absolute path, "
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
    newer than this code.  A SQLite catalog that another process is
    upgrading is waited for (``_upgrade``)."""
    backend = backend_for(url)
    runner = Runner(reactor, backend, threads=threads)
    try:
        found = _upgrade(runner, backend, schema_version)
        if found < schema_version:
            backend.migrated()
    except BaseException:
        runner.close()
        raise
    return SqlCatalog(runner, clock=clock)


def _upgrade(runner: Runner, backend: Backend, target: int) -> int:
    """Migrate the database to ``target``; return the version found.

    A migration that copies tables (SQLite's schema 6) holds the write
    lock for about 16 s per million files: another front end starting
    meanwhile would give up after the busy timeout.  While the lock stays
    busy and the schema committed so far is older than ``target`` (what
    an upgrade in progress looks like), it tries again, one busy timeout
    at a time, for up to ``backend.upgrade_wait`` seconds, saying so in
    the log.  A lock held over a current schema is an ordinary busy
    database: CatalogUnavailable after one busy timeout, as before."""

    def upgrade(tx: Tx) -> int:
        backend.prepare(tx)
        return migrate(tx, backend.dialect, target)

    began = time.monotonic()
    waited = False
    while True:
        try:
            found = runner.run_sync(upgrade, write=True)
        except CatalogUnavailable as e:
            if not backend.upgrade_wait or not backend.is_busy(e.__cause__):
                raise
            seen = _committed_version(runner)
            elapsed = time.monotonic() - began
            if seen is None or seen >= target or elapsed >= backend.upgrade_wait:
                raise
            log.info(
                "catalog locked at schema {seen}, older than this wsfs's {target}: "
                "waiting for another process's upgrade of it ({elapsed:.0f} s so far, "
                "up to {limit:.0f} s)",
                seen=seen,
                target=target,
                elapsed=elapsed,
                limit=backend.upgrade_wait,
            )
            waited = True
            continue
        if waited:
            log.info(
                "catalog no longer locked after {elapsed:.0f} s; it was at schema {found}",
                elapsed=time.monotonic() - began,
                found=found,
            )
        return found


def _committed_version(runner: Runner) -> int | None:
    """The schema version last committed, read without the write lock (a
    reader of SQLite's WAL waits for no writer; the backends with an
    ``upgrade_wait`` are SQLite's); 0 before any, None if it cannot be
    read."""

    def read(tx: Tx) -> int:
        if not tx.one("SELECT name FROM sqlite_master WHERE name = 'schema_version'"):
            return 0
        return int(tx.value("SELECT version FROM schema_version") or 0)

    try:
        return runner.run_sync(read, write=False)
    except CatalogUnavailable:
        return None
