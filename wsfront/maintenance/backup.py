"""``wsfs backup FILE``: a consistent copy of the catalog, taken online.

The catalog is the one thing a lost storage server cannot give back quickly
(``fsck --rebuild-catalog`` recovers files, not users, quotas or renames).
SQLite: the online backup API copies a consistent snapshot while front ends
keep writing; the copy is fsync'd under a new temporary name and renamed
into place, so FILE is either the old backup or a complete new one.
PostgreSQL: ``pg_dump --format=custom`` (restore with ``pg_restore``).

Renaming over FILE replaces whatever FILE is, so FILE is checked first: the
live catalog or one of its side files (a server would keep writing to the
unlinked inode and lose every later change at its restart), or anything
not a regular file (``/dev/null`` would become a regular file), is refused.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from wsfront.catalog.errors import CatalogError
from wsfront.urls import masked_url


class BackupFailed(CatalogError):
    """The backup could not be written (``wsfs`` says why in one line)."""


#: The files a SQLite catalog is made of: the database, its write-ahead
#: log and shared-memory index (WAL mode), its rollback journal.
SQLITE_FILES = ("", "-wal", "-shm", "-journal")


def _same_file(dest: str, dest_stat: os.stat_result | None, other: str) -> bool:
    """Whether ``dest`` names ``other``: by resolved path (a file not made
    yet, say the -wal of an idle catalog, reached through a symlink or
    ``..``), and by device and inode where both exist (a hard link)."""
    if os.path.realpath(dest) == os.path.realpath(other):
        return True
    if dest_stat is None:
        return False
    try:
        return os.path.samestat(dest_stat, os.stat(other))
    except OSError:
        return False


def check_destination(dest: str, catalog_path: str | None = None) -> None:
    """Refuse, before anything is copied, a FILE the copy must not replace
    or could not be renamed to: the catalog itself or one of its files, a
    directory or anything else not a regular file, one in a directory that
    is not there (the SQLite copy would otherwise blame the catalog,
    pg_dump fail unseen)."""
    if not dest:
        raise BackupFailed("no backup FILE given (an empty name)")
    try:
        dest_stat: os.stat_result | None = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        dest_stat = None
    if catalog_path is not None:
        # SQLite keeps the side files beside the database's resolved path
        # (a --catalog through a symlink has its -wal by the real file), a
        # hard link's beside the name given: both spellings are the catalog's.
        bases = dict.fromkeys((catalog_path, os.path.realpath(catalog_path)))
        for base in bases:
            for suffix in SQLITE_FILES:
                if _same_file(dest, dest_stat, base + suffix):
                    raise BackupFailed(
                        f"{dest} is the catalog's own file {os.path.realpath(base + suffix)}; "
                        "the backup must go to another file"
                    )
    if dest_stat is not None and stat.S_ISDIR(dest_stat.st_mode):
        raise BackupFailed(f"{dest} is a directory; give the backup's file name")
    if dest_stat is not None and not stat.S_ISREG(dest_stat.st_mode):
        raise BackupFailed(
            f"{dest} is not a regular file (a device, fifo or socket); the backup "
            "would replace it: give a file name"
        )
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise BackupFailed(f"no directory {directory} for the backup {dest}")


#: The temporary copies being written now: a Ctrl-C during a backup ends
#: the process (``wsfront.cli.die_of_sigint``), which removes them first.
_TEMPORARIES: set[str] = set()


def remove_temporaries() -> None:
    """Remove the temporary copies being written (the process is dying)."""
    for tmp in list(_TEMPORARIES):
        # SQLite writes a rollback journal beside the copy while it fills it.
        for path in (tmp, tmp + "-journal"):
            try:
                os.unlink(path)
            except OSError:
                pass
    _TEMPORARIES.clear()


def _new_temporary(dest: str) -> str:
    """A new empty file beside ``dest`` to write the copy into: made here
    (``O_EXCL``), never an existing ``dest + ".tmp"``, which could be
    anything, the live catalog included.  Mode 0600: a catalog holds the
    users' password hashes."""
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    _TEMPORARIES.add(tmp)
    return tmp


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
    tmp = _new_temporary(dest)
    try:
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        _TEMPORARIES.discard(tmp)
    _fsync_dir(dest)
    return os.path.getsize(dest)


def _catalog_schema(url: str) -> str | None:
    """The schema the catalog at ``url`` lives in when the URL names one
    (``options=-csearch_path=NAME``, the first of the path: where its
    tables were created), else None (the whole database is the catalog's).

    A catalog sharing a database with others is dumped alone: the whole
    database held other people's data, and a dump of it failed whenever
    another schema was dropped while pg_dump ran ("schema ... does not
    exist", seen with two test suites on one server)."""
    for key, _, value in (item.partition("=") for item in urlsplit(url).query.split("&")):
        if key != "options":
            continue
        for option in unquote(value).replace("-c ", "-c").split():
            name, _, path = option.removeprefix("-c").partition("=")
            if name.strip() == "search_path" and option.startswith("-c"):
                first = path.split(",")[0].strip()
                if first and first != '"$user"':
                    return first
    return None


def _password_apart(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (None if it has
    none): in ``user:password@host`` or a ``password=`` parameter, as
    libpq reads them (the parameter, read last, wins)."""
    parts = urlsplit(url)
    netloc, query, password = parts.netloc, parts.query, None
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        password = unquote(password)
        netloc = f"{user}@{host}"
    # libpq decodes %XX only, never "+" as a space (parse_qsl would): the
    # other parameters are kept exactly as typed.
    pairs = [item.partition("=") for item in query.split("&") if item]
    if any(key == "password" for key, _, _ in pairs):
        password = unquote([value for key, _, value in pairs if key == "password"][-1])
        query = "&".join(k + eq + v for k, eq, v in pairs if k != "password")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), password


def backup_postgres(url: str, dest: str) -> int:
    """``pg_dump`` the database at ``url`` into ``dest``; return its size.

    The password goes to pg_dump in its environment (PGPASSWORD, readable
    by its user only), never on its command line, which every local user
    can read (``ps``, ``/proc/PID/cmdline``)."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupFailed("pg_dump is not installed; it is needed to back up PostgreSQL")
    bare, password = _password_apart(url)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    tmp = _new_temporary(dest)
    try:
        schema = _catalog_schema(bare)
        only = [f"--schema={schema}"] if schema is not None else []
        done = subprocess.run(
            [pg_dump, "--format=custom", f"--file={tmp}", *only, bare],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            # Its error, not a warning it printed first.
            said = [line for line in said if "error:" in line] or said
            raise BackupFailed(f"pg_dump failed: {said[0] if said else f'exit {done.returncode}'}")
        os.replace(tmp, dest)
    except BaseException:
        # A failed dump, pg_dump not started, a failed rename: no copy left.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        _TEMPORARIES.discard(tmp)
    _fsync_dir(dest)
    return os.path.getsize(dest)


def backup_catalog(url: str, dest: str) -> int:
    """Back up the catalog at ``url`` into the file ``dest``."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        source = unquote(parsed.path)
        check_destination(dest, source)
        return backup_sqlite(source, dest)
    check_destination(dest)
    if parsed.scheme in ("postgresql", "postgres"):
        return backup_postgres(url, dest)
    raise ValueError(f"{masked_url(url)!r}: not a catalog URL")
