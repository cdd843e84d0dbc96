"""Which failures are the operator's to fix, for the CLI and the front end
alike: said in one line, where a bug shows its traceback."""

from __future__ import annotations

import sqlite3

from wsfront.catalog.errors import CatalogError


def driver_error(error: BaseException) -> bool:
    """Whether ``error`` is the catalog database driver's own (sqlite3's or
    psycopg's, which is only looked at by name, never imported for it)."""
    if isinstance(error, sqlite3.Error):
        return True
    return type(error).__module__.split(".")[0] == "psycopg" and isinstance(error, Exception)


def operator_error(error: BaseException) -> bool:
    """Whether ``error`` is the operator's environment rather than a bug: a
    catalog that refuses or cannot be reached (a CatalogError, or its
    driver's error: a refused connection, an unknown database or role), or
    the system refusing (OSError: a port already taken, a missing
    directory)."""
    return isinstance(error, (CatalogError, OSError)) or driver_error(error)
