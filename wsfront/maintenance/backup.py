"""``wsfs backup FILE``: a consistent copy of the catalog, taken online.

The catalog is the one thing a lost storage server cannot give back quickly
(``fsck --rebuild-catalog`` recovers files, not users, quotas or renames).
SQLite: the online backup API copies a consistent snapshot while front ends
keep writing; the copy is fsync'd under a temporary name and renamed into
place, so FILE is either the old backup or a complete new one.  PostgreSQL:
``pg_dump --format=custom`` (restore with ``pg_restore``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from urllib.parse import unquote, urlparse

from wsfront.catalog.errors import CatalogError


class BackupFailed(CatalogError):
    """The backup could not be written (``wsfs`` says why in one line)."""


def check_destination(dest: str) -> None:
    """Refuse, before anything is copied, a FILE the copy could not be
    renamed to: a directory, or one in a directory that is not there (the
    SQLite copy would otherwise blame the catalog, pg_dump fail unseen)."""
    if os.path.isdir(dest):
        raise BackupFailed(f"{dest} is a directory; give the backup's file name")
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise BackupFailed(f"no directory {directory} for the backup {dest}")


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sqlite(source: str, dest: str) -> int:
    """Copy the SQLite database ``source`` to ``dest``; return its size."""
    if not os.path.exists(source):
        raise FileNotFoundError(f"no catalog at {source}")
    tmp = dest + ".tmp"
    src = sqlite3.connect(source, timeout=30.0)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    _fsync_dir(dest)
    return os.path.getsize(dest)


def backup_postgres(url: str, dest: str) -> int:
    """``pg_dump`` the database at ``url`` into ``dest``; return its size."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupFailed("pg_dump is not installed; it is needed to back up PostgreSQL")
    tmp = dest + ".tmp"
    done = subprocess.run(
        [pg_dump, "--format=custom", f"--file={tmp}", url], capture_output=True, text=True
    )
    if done.returncode != 0:
        if os.path.exists(tmp):
            os.unlink(tmp)
        said = done.stderr.strip().splitlines()
        # Its error, not a warning it printed first.
        said = [line for line in said if "error:" in line] or said
        raise BackupFailed(f"pg_dump failed: {said[0] if said else f'exit {done.returncode}'}")
    os.replace(tmp, dest)
    _fsync_dir(dest)
    return os.path.getsize(dest)


def backup_catalog(url: str, dest: str) -> int:
    """Back up the catalog at ``url`` into the file ``dest``."""
    check_destination(dest)
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return backup_sqlite(unquote(parsed.path), dest)
    if parsed.scheme in ("postgresql", "postgres"):
        return backup_postgres(url, dest)
    raise ValueError(f"{url!r}: not a catalog URL")
