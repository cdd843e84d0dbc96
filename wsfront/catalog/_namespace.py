"""Namespace operations: stat, list, mkdir, rmdir, delete, rename.

Each function runs inside one transaction.  Changes lock the directories
they touch (row locks on PostgreSQL; SQLite's BEGIN IMMEDIATE already
serialises writers), so two front ends creating the same name cannot both
succeed.  A file with only a pending upload is hidden from listings unless
asked for, but still holds its name.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._roots import refuse_user_roots
from wsfront.catalog._rows import (
    INODE_COLUMNS,
    ROOT,
    child,
    end_upload,
    judged_version,
    live_upload_row,
    load_upload,
    load_version,
    lock_dirs,
    locked_live_upload_row,
    remove_file_inode,
    resolve,
    resolve_existing,
    resolve_parent,
    touch,
)
from wsfront.catalog.errors import (
    Exists,
    InvalidMove,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    PendingUploadExists,
)
from wsfront.catalog.names import join_path, split_path
from wsfront.catalog.records import (
    ABORTED,
    DIR,
    EXPIRED,
    FILE,
    INTERRUPTED,
    Entry,
    NothingCommitted,
)

#: Advisory-lock key taken by directory moves (PostgreSQL).
DIRECTORY_MOVE_LOCK = 0x77736D76


def full_entry(tx: Tx, parts: tuple[str, ...], row: Any) -> Entry:
    """The Entry of an inode row with its version extents and live upload."""
    name = parts[-1] if parts else ""
    if row["kind"] == DIR:
        return Entry(join_path(parts), name, DIR, row["inode"], 0, row["mtime"])
    version = load_version(tx, row["version_id"]) if row["version_id"] is not None else None
    up = live_upload_row(tx, row["inode"])
    return Entry(
        path=join_path(parts),
        name=name,
        kind=FILE,
        inode=row["inode"],
        size=version.size if version else 0,
        mtime=version.mtime if version else row["mtime"],
        etag=version.etag if version else None,
        pending=version is None,
        version=version,
        upload=load_upload(tx, up) if up is not None else None,
    )


def stat(tx: Tx, path: str) -> Entry:
    parts = split_path(path)
    return full_entry(tx, parts, resolve_existing(tx, parts))


def list_dir(
    tx: Tx, path: str, after: str | None, limit: int, include_pending: bool
) -> list[Entry]:
    parts = split_path(path)
    row = resolve_existing(tx, parts)
    if row["kind"] != DIR:
        raise NotADirectory(f"{path} is not a directory")
    if limit < 1:
        raise ValueError("limit must be positive")
    sql = (
        "SELECT d.name, i.inode, i.kind, i.mtime AS imtime, i.version_id, "
        "v.size, v.mtime AS vmtime, v.etag "
        "FROM dirents d JOIN inodes i ON i.inode = d.inode "
        "LEFT JOIN versions v ON v.version_id = i.version_id WHERE d.parent = ?"
    )
    params: list[Any] = [row["inode"]]
    if after is not None:
        sql += " AND d.name > ?"
        params.append(after)
    if not include_pending:
        sql += " AND (i.kind = 'dir' OR i.version_id IS NOT NULL)"
    sql += " ORDER BY d.name LIMIT ?"
    params.append(limit)
    base = join_path(parts)
    prefix = base if base.endswith("/") else base + "/"
    entries = []
    for r in tx.all(sql, *params):
        is_file = r["kind"] == FILE
        entries.append(
            Entry(
                path=prefix + r["name"],
                name=r["name"],
                kind=r["kind"],
                inode=r["inode"],
                size=(r["size"] or 0) if is_file else 0,
                mtime=r["vmtime"] if r["vmtime"] is not None else r["imtime"],
                etag=r["etag"],
                pending=is_file and r["version_id"] is None,
            )
        )
    return entries


def make_dir(tx: Tx, parent: int, name: str, now: float) -> int:
    inode = tx.value("INSERT INTO inodes (kind, mtime) VALUES ('dir', ?) RETURNING inode", now)
    tx.execute("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)", parent, name, inode)
    touch(tx, parent, now)
    return inode


def mkdir(tx: Tx, path: str, now: float) -> Entry:
    parts = split_path(path)
    if not parts:
        raise Exists("/ exists")
    parent = resolve_parent(tx, parts)
    lock_dirs(tx, parent)
    if child(tx, parent, parts[-1]) is not None:
        raise Exists(f"{path} exists")
    inode = make_dir(tx, parent, parts[-1], now)
    return Entry(join_path(parts), parts[-1], DIR, inode, 0, now)


def makedirs(tx: Tx, parts: tuple[str, ...], now: float) -> None:
    """Create ``parts`` and any missing ancestors (user roots)."""
    parent = ROOT
    for depth, name in enumerate(parts):
        row = child(tx, parent, name)
        if row is None:
            lock_dirs(tx, parent)
            if not tx.backend.locks_at_begin:
                # A mkdir that held the lock may have made it meanwhile
                # (PostgreSQL): a second one would be a unique violation.
                row = child(tx, parent, name)
        if row is None:
            parent = make_dir(tx, parent, name, now)
        elif row["kind"] != DIR:
            raise NotADirectory(f"{join_path(parts[: depth + 1])} is not a directory")
        else:
            parent = row["inode"]


def rmdir(tx: Tx, path: str, now: float) -> None:
    parts = split_path(path)
    if not parts:
        raise InvalidMove("the root cannot be removed")
    parent = resolve_parent(tx, parts)
    row = resolve_existing(tx, parts)
    if row["kind"] != DIR:
        raise NotADirectory(f"{path} is not a directory")
    lock_dirs(tx, parent, row["inode"])
    if not tx.backend.locks_at_begin:
        # Read before the locks (PostgreSQL): a rename that held the
        # parent's may have moved the directory away (removing it would
        # remove it there) or put another one at the name, locked after
        # (rare; the parent and the one read first were locked in one
        # statement, in the order lock_dirs always takes).
        again = child(tx, parent, parts[-1])
        if again is None:
            raise NotFound(f"{path} does not exist")
        if again["kind"] != DIR:
            raise NotADirectory(f"{path} is not a directory")
        if again["inode"] != row["inode"]:
            lock_dirs(tx, again["inode"])
            row = again
    refuse_user_roots(tx, parts, "removed")
    if tx.one("SELECT inode FROM dirents WHERE parent = ? LIMIT 1", row["inode"]) is not None:
        raise NotEmpty(f"{path} is not empty")
    tx.execute("DELETE FROM dirents WHERE inode = ?", row["inode"])
    tx.execute("DELETE FROM inodes WHERE inode = ?", row["inode"])
    touch(tx, parent, now)


def unlink_file(
    tx: Tx,
    row: Any,
    abort_pending: bool,
    now: float,
    path: str,
    user: str | None = None,
    spare: Collection[str] = (),
) -> str | None:
    """Remove a file inode (locked by the caller); a live upload on it
    refuses, unless expired (it is expired) or ``abort_pending`` (it is
    aborted), or unless it is ``user``'s own and interrupted: ``user`` is
    who removes the file (a DELETE, or a rename replacing it), and they
    could take the upload over with a STOR or PUT anyway; it must not keep
    them from removing their file until it expires, so it is abandoned
    (aborted) with it.  Another user's upload, or a live one (active: a
    client is sending), still refuses, as does one whose id is in
    ``spare``: held by a session of the caller's front end, whose row
    another front end may have marked interrupted while it paused, though
    its client is still sending.  Returns the id of the upload abandoned
    so, if any."""
    abandoned = None
    up = live_upload_row(tx, row["inode"])
    if up is not None and _fate(up, abort_pending, now, user, spare) is not None:
        # Decided on under the row's lock only (see locked_live_upload_row);
        # a refusal needs none, and taking it would make a DELETE racing
        # the upload's commit (upload row, then inode) deadlock.
        up = locked_live_upload_row(tx, row["inode"])
    if up is not None:
        fate = _fate(up, abort_pending, now, user, spare)
        if fate is None:
            raise PendingUploadExists(f"an upload is pending on {path}")
        end_upload(tx, up, fate, now)
        if fate == ABORTED and not abort_pending:
            abandoned = up["upload_id"]
    row = tx.one("SELECT * FROM inodes WHERE inode = ?", row["inode"])
    if row is not None:
        remove_file_inode(tx, row)
    return abandoned


def _fate(
    up: Any, abort_pending: bool, now: float, user: str | None, spare: Collection[str]
) -> str | None:
    """The final state ``unlink_file`` gives the live upload ``up``, or
    None: it refuses."""
    if up["expires_at"] <= now:
        return EXPIRED
    if abort_pending:
        return ABORTED
    if (
        user is not None
        and up["username"] == user
        and up["state"] == INTERRUPTED
        and up["upload_id"] not in spare
    ):
        return ABORTED
    return None


def delete(
    tx: Tx,
    path: str,
    abort_pending: bool,
    now: float,
    user: str | None = None,
    spare: Collection[str] = (),
    expected_etag: str | NothingCommitted | None = None,
) -> str | None:
    """Remove the file at ``path`` for ``user`` (see ``unlink_file``);
    returns the id of the upload abandoned with it, if any.
    ``expected_etag``: only while its committed version still has it
    (VersionChanged), as a DELETE's If-Match judged it; NOTHING_COMMITTED:
    only while it still has none (``judged_version``)."""
    parts = split_path(path)
    if not parts:
        raise IsADirectory("/ is a directory")
    parent = resolve_parent(tx, parts)
    lock_dirs(tx, parent)
    # Read under the parent's lock: one read before it could name an inode
    # a rename that held the lock has since moved elsewhere, which this
    # delete would then remove there (PostgreSQL).
    row = child(tx, parent, parts[-1])
    if row is None:
        raise NotFound(f"{join_path(parts)} does not exist")
    if row["kind"] == DIR:
        raise IsADirectory(f"{path} is a directory")
    if expected_etag is not None:
        judged_version(tx, row["inode"], expected_etag)
    tx.lock_rows("inodes", "inode", [row["inode"]])
    abandoned = unlink_file(tx, row, abort_pending, now, path, user, spare)
    touch(tx, parent, now)
    return abandoned


def rename(
    tx: Tx,
    src: str,
    dst: str,
    replace: bool,
    now: float,
    user: str | None = None,
    spare: Collection[str] = (),
    expected_etag: str | NothingCommitted | None = None,
) -> Entry:
    """Move ``src`` to ``dst``; with ``replace``, a file may replace a file.
    ``expected_etag``: only while the file ``src`` still has that committed
    version (VersionChanged), as a MOVE's If-Match judged it;
    NOTHING_COMMITTED: only while it still has none (``judged_version``).

    The file replaced goes as a DELETE by ``user`` would take it
    (``unlink_file``): their own interrupted upload on it is abandoned with
    it, as a client that uploads to a temporary name and renames it over
    the real one (WinSCP) needs after a transfer was cut short there.

    Nothing else is ever replaced, so a rename never deletes more than the
    one file its destination names: a directory destination is ``Exists``
    (replacing it would drop its subtree), a directory onto a file is
    ``NotADirectory`` (as POSIX rename(2) answers ENOTDIR).  A directory
    into its own subtree is InvalidMove; a file to a path under itself
    (``f`` to ``f/x``) is NotADirectory, as rename(2) answers ENOTDIR.
    """
    s, d = split_path(src), split_path(dst)
    if not s or not d:
        raise InvalidMove("the root cannot be moved or replaced")
    if s == d:
        row = resolve_existing(tx, s)
        if row["kind"] == FILE:
            # Read whole, as a move's answer is (below): under the file's
            # lock, then its row again where the lock came after the read
            # (PostgreSQL: a commit may have replaced its version before).
            tx.lock_rows("inodes", "inode", [row["inode"]])
            if not tx.backend.locks_at_begin:
                row = resolve_existing(tx, s)
        return full_entry(tx, s, row)
    row = resolve_existing(tx, s)
    moves_dir = row["kind"] == DIR
    if d[: len(s)] == s:
        if moves_dir:
            raise InvalidMove(f"{src} cannot move into its own subtree")
        # ``f`` to ``f/x``: a file has no subtree; the destination's parent
        # is a file (a directory into itself was the misleading answer).
        raise NotADirectory(f"{src} is not a directory")
    if moves_dir:
        tx.lock_global(DIRECTORY_MOVE_LOCK)
    src_parent = resolve_parent(tx, s)
    dst_parent = resolve_parent(tx, d)
    lock_dirs(tx, src_parent, dst_parent)
    row = child(tx, src_parent, s[-1])
    if row is None:
        raise NotFound(f"{src} was removed meanwhile")
    if row["kind"] == DIR and not moves_dir:
        # A file when read before the locks (PostgreSQL), a directory
        # since: its move needs the lock as well (add_user making a root
        # in it, another move making a cycle).  Taken after the
        # directories' here, against the usual order, so this can be a
        # deadlock (retried); the name only changes kind in this window.
        tx.lock_global(DIRECTORY_MOVE_LOCK)
    if expected_etag is not None:
        judged_version(tx, row["inode"], expected_etag)
    elif row["kind"] == FILE:
        # The entry answered at the end reads the file's version, then its
        # extents: under the file's lock no commit replaces them between
        # the two (PostgreSQL, where each statement sees the newest commit:
        # a missing version, or its size with no extents).
        tx.lock_rows("inodes", "inode", [row["inode"]])
    if row["kind"] == DIR:
        refuse_user_roots(tx, s, "moved")
        ancestor = dst_parent
        while ancestor != ROOT:
            if ancestor == row["inode"]:
                raise InvalidMove(f"{src} cannot move into its own subtree")
            ancestor = tx.value("SELECT parent FROM dirents WHERE inode = ?", ancestor)
    existing = child(tx, dst_parent, d[-1])
    if existing is not None:
        if not replace:
            raise Exists(f"{dst} exists")
        if existing["kind"] == DIR:
            raise Exists(f"{dst} is a directory and is never replaced")
        if row["kind"] == DIR:
            # POSIX rename(2) refuses this too (ENOTDIR); replacing would
            # delete the file to make room for a directory's name.
            raise NotADirectory(f"{dst} is a file and is never replaced by a directory")
        tx.lock_rows("inodes", "inode", [existing["inode"]])
        unlink_file(tx, existing, False, now, dst, user, spare)
    tx.execute(
        "UPDATE dirents SET parent = ?, name = ? WHERE inode = ?", dst_parent, d[-1], row["inode"]
    )
    touch(tx, src_parent, now)
    touch(tx, dst_parent, now)
    return full_entry(tx, d, resolve_existing(tx, d))


__all__ = ["delete", "list_dir", "makedirs", "mkdir", "rename", "resolve", "rmdir", "stat"]


def set_mtime(tx: Tx, path: str, mtime: float) -> Entry:
    """Set the modification time a path shows (MFMT): a file's committed
    version, or a directory's inode.  A file with only a pending upload has
    no committed time to set (NotFound); its upload sets one on commit."""
    parts = split_path(path)
    row = resolve_existing(tx, parts)
    tx.lock_rows("inodes", "inode", [row["inode"]])
    if not tx.backend.locks_at_begin:
        # Read again under the lock (PostgreSQL): a commit that held it
        # replaced the version read above, whose time would be set nowhere.
        row = tx.one(f"SELECT {INODE_COLUMNS} FROM inodes i WHERE i.inode = ?", row["inode"])
        if row is None:
            raise NotFound(f"{path} was removed meanwhile")
    if row["kind"] == DIR:
        tx.execute("UPDATE inodes SET mtime = ? WHERE inode = ?", mtime, row["inode"])
    elif row["version_id"] is None:
        raise NotFound(f"{path} has no committed version")
    else:
        tx.execute("UPDATE versions SET mtime = ? WHERE version_id = ?", mtime, row["version_id"])
    return full_entry(tx, parts, resolve_existing(tx, parts))


__all__.append("set_mtime")
