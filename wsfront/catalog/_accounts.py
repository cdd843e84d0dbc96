"""Users: password hashes, roots, permissions, quotas and usage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._namespace import DIRECTORY_MOVE_LOCK, makedirs, unlink_file
from wsfront.catalog._rows import (
    end_upload,
    is_live,
    live_upload_row,
    lock_dirs,
    resolve,
    upload_row,
)
from wsfront.catalog.errors import (
    AuthFailed,
    CatalogError,
    Exists,
    InvalidName,
    NotEmpty,
    NotFound,
    RootInUse,
)
from wsfront.catalog.names import check_name, join_path, split_path
from wsfront.catalog.passwords import dummy_hash, hash_password, verify_password
from wsfront.catalog.records import ABORTED, DIR, FILE, PERMISSIONS, Login, User
from wsfront.catalog.schema import LIVE_SQL, PENDING_OF_USER_SQL

#: What ``delete_user`` does with the account's files and pending uploads.
REFUSE, PURGE, KEEP = "refuse", "purge", "keep"


def _permissions(permissions: Iterable[str] | None) -> list[str]:
    chosen = sorted(PERMISSIONS if permissions is None else set(permissions))
    unknown = set(chosen) - PERMISSIONS
    if unknown:
        raise ValueError(f"unknown permissions {sorted(unknown)}")
    return chosen


def user_from_row(row: Any) -> User:
    return User(
        name=row["name"],
        admin=bool(row["admin"]),
        root=row["root"],
        permissions=frozenset(json.loads(row["permissions"])),
        quota_bytes=row["quota_bytes"],
        quota_files=row["quota_files"],
        used_bytes=row["used_bytes"],
        used_files=row["used_files"],
        created_at=row["created_at"],
        pending_bytes=row["pending_bytes"],
    )


def get_user(tx: Tx, name: str) -> User:
    row = tx.one("SELECT * FROM users WHERE name = ?", name)
    if row is None:
        raise NotFound(f"no user {name!r}")
    return user_from_row(row)


#: Names FTP and HTTP give anonymous clients: an account under one of them
#: would share their session budget and their view.
RESERVED_NAMES = frozenset({"anonymous", "ftp"})


def add_user(
    tx: Tx,
    now: float,
    name: str,
    password_hash: str,
    admin: bool,
    root: str | None,
    permissions: Iterable[str] | None,
    quota_bytes: int | None,
    quota_files: int | None,
    adopt_files: bool = False,
) -> User:
    """Create the account and its root.

    A root that already holds entries (a deleted user's kept files, another
    account's tree) is refused unless ``adopt_files``: access is granted by
    path, so a name reused for another person would otherwise silently hand
    them the old person's files and let them resume the old pending uploads.

    Usage is what the account's committed files weigh (``inodes.owner``,
    charged at commit, refunded at delete), so it starts at what the new
    account owns: with ``adopt_files``, the committed files under the root
    that no account owns (a deleted user's, a rebuilt catalog's) become
    its own, and files its name still owns elsewhere count too; without,
    files a former account of the name owns are disowned, as the new
    person must be neither charged nor refunded for them.  Pending bytes
    start at what the live uploads made under the name hold (kept by a
    ``files=keep`` deletion): their end gives it back to this account.
    They are charged to the new account even without ``adopt_files``
    (an upload belongs to a user name, and its end refunds this account).
    """
    check_name(name)
    if name == "-":
        raise InvalidName("the user name '-' is reserved")
    if name.lower() in RESERVED_NAMES:
        raise InvalidName(f"the user name {name!r} is reserved for anonymous access (FTP and HTTP)")
    root_parts = split_path(root) if root is not None else (name,)
    # The usage and adoption below read the inodes table whole (there is
    # no index on owner), yet they keep the statement limit a request has:
    # this transaction holds the directory-move lock, the users row and,
    # when it creates the root, the root's parent, where other accounts
    # write (a shared folder, an admin's /).  Unbounded, one long scan
    # would make every write there wait lock_timeout and fail.  On a
    # catalog where the scans outlast the limit, the admin raises it for
    # the command's own connection (docs/catalog.md).
    # A root stays put (``_roots``): serialise with the directory moves
    # that check the users table, then hold the root's row against rmdir.
    tx.lock_global(DIRECTORY_MOVE_LOCK)
    tx.lock_rows("users", "name", [name])
    if tx.one("SELECT name FROM users WHERE name = ?", name) is not None:
        raise Exists(f"user {name!r} exists")
    # The live uploads kept under the name (``files=keep``) are counted
    # into pending_bytes below.  The users row does not exist yet, so one
    # ending meanwhile (expiry, abort, checkpoint) would charge no row and
    # the count would read it as it was: lock them (before the root's
    # directory rows, in the order upload then inode that ending one takes)
    # so the count comes after any such change, or the change after the
    # row exists.
    _lock_live_uploads(tx, name)
    if not adopt_files and _entries(tx, root_parts):
        raise RootInUse(
            f"the root {join_path(root_parts)} of the new user {name!r} already holds files "
            "(a deleted user's, or another account's); adopting them must be asked for"
        )
    makedirs(tx, root_parts, now)
    top = _root_dir(tx, root_parts)
    if top is not None:
        lock_dirs(tx, top)
    if adopt_files:
        _adopt(tx, name, top)
        used_bytes, used_files = _owned(tx, name)
    else:
        tx.execute("UPDATE inodes SET owner = NULL WHERE owner = ?", name)
        used_bytes, used_files = 0, 0
    tx.execute(
        "INSERT INTO users (name, admin, root, permissions, quota_bytes, quota_files, "
        "used_bytes, used_files, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        name,
        1 if admin else 0,
        join_path(root_parts),
        json.dumps(_permissions(permissions)),
        quota_bytes,
        quota_files,
        used_bytes,
        used_files,
        password_hash,
        now,
    )
    # Uploads of an earlier account of the name, kept live (``files=keep``),
    # charge and refund this one when they end: count them from the start.
    _recount_pending(tx, name)
    return get_user(tx, name)


def _adopt(tx: Tx, name: str, top: int | None) -> None:
    """Make ``name`` the owner of the committed files under the directory
    ``top`` that no account owns.  A file another account owns stays
    theirs (and charged to them): a root inside a shared folder.  A
    pending upload's file is not adopted: its bytes are its uploader's
    pending charge (``pending_bytes``, by the upload's user name) until it
    commits."""
    if top is None:
        return
    tx.execute(
        "WITH RECURSIVE tree (inode) AS ("
        " SELECT inode FROM inodes WHERE inode = ? UNION ALL"
        " SELECT d.inode FROM dirents d JOIN tree t ON d.parent = t.inode"
        ") UPDATE inodes SET owner = ? WHERE inode IN (SELECT inode FROM tree)"
        " AND kind = ? AND version_id IS NOT NULL"
        " AND (owner IS NULL OR owner NOT IN (SELECT name FROM users))",
        top,
        name,
        FILE,
    )


def _owned(tx: Tx, name: str) -> tuple[int, int]:
    """The bytes and number of the committed files ``name`` owns: what
    ``charge`` adds up commit by commit (a file overwritten by another
    user moved to them; one deleted was refunded)."""
    row = tx.one(
        "SELECT COALESCE(SUM(v.size), 0) AS b, COUNT(*) AS n FROM inodes i "
        "JOIN versions v ON v.version_id = i.version_id WHERE i.owner = ?",
        name,
    )
    return int(row["b"]), int(row["n"])


def list_users(tx: Tx) -> list[User]:
    return [user_from_row(r) for r in tx.all("SELECT * FROM users ORDER BY name")]


def _entries(tx: Tx, parts: tuple[str, ...]) -> bool:
    """Whether the directory at ``parts`` holds any entry (False if it is
    missing or not a directory; a pending upload's file counts, it holds
    its name)."""
    top = _root_dir(tx, parts)
    if top is None:
        return False
    return tx.one("SELECT 1 AS x FROM dirents WHERE parent = ? LIMIT 1", top) is not None


def _root_dir(tx: Tx, parts: tuple[str, ...]) -> int | None:
    """The inode of the directory at ``parts``, or None if there is none."""
    try:
        row = resolve(tx, parts)
    except CatalogError:
        return None
    if row is None or row["kind"] != DIR:
        return None
    return row["inode"]


def _stores_anything(tx: Tx, top: int) -> bool:
    """Whether the directory ``top`` holds a directory or a committed file.

    The file of a pending upload not yet committed is not counted: it holds
    only its upload, which is its uploader's (``_uploads_under`` finds the
    user's own; another user's is not this account's to lose).
    """
    return (
        tx.one(
            "SELECT 1 AS x FROM dirents d JOIN inodes i ON i.inode = d.inode "
            "WHERE d.parent = ? AND (i.kind = ? OR i.version_id IS NOT NULL) LIMIT 1",
            top,
            DIR,
        )
        is not None
    )


def _uploads_under(tx: Tx, name: str, top: int) -> set[str]:
    """The ids of ``name``'s live uploads on a file under the directory
    ``top``: those the user can resume (access goes by the root).  An
    upload lives on its inode, so where it is now is found by climbing
    the dirents (a rename above it moves it; ``uploads.path`` keeps the
    path it started at)."""
    rows = tx.all(
        "WITH RECURSIVE up (upload_id, inode) AS ("
        f" SELECT upload_id, inode FROM uploads WHERE username = ? AND state IN {LIVE_SQL}"
        " UNION ALL"
        " SELECT up.upload_id, d.parent FROM up JOIN dirents d ON d.inode = up.inode"
        " WHERE up.inode <> ?"
        ") SELECT DISTINCT upload_id FROM up WHERE inode = ?",
        name,
        top,
        top,
    )
    return {r["upload_id"] for r in rows}


def _live_uploads(tx: Tx, name: str) -> list[Any]:
    return tx.all(
        f"SELECT * FROM uploads WHERE username = ? AND state IN {LIVE_SQL} ORDER BY upload_id",
        name,
    )


def _inside(parts: tuple[str, ...], root: tuple[str, ...]) -> bool:
    return parts[: len(root)] == root


def _sharers(tx: Tx, name: str, root: tuple[str, ...]) -> list[str]:
    """Other users whose root is ``root`` or inside it: a purge would delete
    files that are theirs too."""
    return [
        r["name"]
        for r in tx.all("SELECT name, root FROM users WHERE name <> ? ORDER BY name", name)
        if _inside(split_path(r["root"]), root)
    ]


def _refuse_sharers(tx: Tx, name: str, root: tuple[str, ...]) -> None:
    """Refuse the purge of ``root`` (NotEmpty, nothing deleted) while
    another user's root is that root or inside it."""
    sharers = _sharers(tx, name, root)
    if sharers:
        raise NotEmpty(
            f"the root {join_path(root)} of {name!r} is shared with {', '.join(sharers)}: "
            "purging it would delete their files too"
        )


def _refuse_others(tx: Tx, name: str, row: Any, path: str, now: float) -> None:
    """Refuse the purge of ``name``'s tree (the whole transaction: nothing
    is deleted) at a file another user committed or is uploading: an
    account whose root encloses this one (an admin's ``/``, a team's
    directory) may keep files there, and they are not ``name``'s to lose."""
    if row["owner"] not in (None, name):
        raise NotEmpty(
            f"{path} was stored by {row['owner']!r}, not {name!r}: the purge deletes nothing"
        )
    up = live_upload_row(tx, row["inode"])
    if up is not None and up["username"] != name and up["expires_at"] > now:
        raise NotEmpty(
            f"{path} has an upload of {up['username']!r} pending: the purge deletes nothing"
        )


def _purge_dir(tx: Tx, name: str, top: int, path: str, now: float) -> int:
    """Delete the directory ``top`` and everything under it; how many files went.

    Each directory is locked before it is listed, so a session still
    writing there (its login is cached for up to 30 s) cannot add a name
    behind the walk.  Pending uploads on the files are aborted.  The walk
    keeps its own stack (no recursion limit on a deep tree); a directory
    is removed after everything below it.
    """
    removed = 0
    stack: list[tuple[int, str, bool]] = [(top, path, False)]
    while stack:
        inode, where, emptied = stack.pop()
        if emptied:
            tx.execute("DELETE FROM dirents WHERE inode = ?", inode)
            tx.execute("DELETE FROM inodes WHERE inode = ?", inode)
            continue
        lock_dirs(tx, inode)
        stack.append((inode, where, True))
        rows = tx.all(
            "SELECT d.name, i.inode, i.kind, i.version_id, i.owner, i.mtime FROM dirents d "
            "JOIN inodes i ON i.inode = d.inode WHERE d.parent = ? ORDER BY d.name",
            inode,
        )
        for row in rows:
            child_path = f"{where.rstrip('/')}/{row['name']}"
            if row["kind"] == DIR:
                stack.append((row["inode"], child_path, False))
            else:
                tx.lock_rows("inodes", "inode", [row["inode"]])
                if not tx.backend.locks_at_begin:
                    # Read again under the lock (PostgreSQL): a commit that
                    # held it made the file its uploader's, whose owner the
                    # listing above predates.  Gone meanwhile (its pending
                    # upload ended), it is not counted.
                    row = tx.one("SELECT * FROM inodes WHERE inode = ?", row["inode"])
                    if row is None:
                        continue
                _refuse_others(tx, name, row, child_path, now)
                unlink_file(tx, row, True, now, child_path)
                removed += 1
    return removed


def _purge(
    tx: Tx, now: float, name: str, root: tuple[str, ...], touched: list[int] | None
) -> dict[str, int]:
    """Delete the root's tree, the root included, and abort every live
    upload of the user; the blobs lose their references and the garbage
    collector deletes them after its grace.  A root of ``/`` is refused:
    it holds every account's files and the cluster's own directories.

    What goes is what is under the root (as ``delete_user`` without
    options counts it), plus the user's uploads a rename above them moved
    out of it: the account is gone, so nobody can resume them (a later
    user of the name is not given them), and left alone they would hold
    their file's name and blob until they expire.  The committed version
    of a file such an upload was overwriting stays; a file holding only
    the upload goes with it, as any aborted upload's does.

    The directory that held the root is noted in ``touched`` (if given):
    its mtime is set after the commit (``touch_dir``), in a transaction of
    its own, so it is never locked while the tree is.
    """
    if not root:
        raise NotEmpty(f"the root of {name!r} is /, the whole namespace: it is never purged")
    _refuse_sharers(tx, name, root)
    top = _root_dir(tx, root)
    under = _uploads_under(tx, name, top) if top is not None else set()
    aborted = elsewhere = 0
    for seen in _live_uploads(tx, name):
        # Read again under its lock, as end_upload wants: committed or
        # ended meanwhile (PostgreSQL), it is no longer ours to abort.
        up = upload_row(tx, seen["upload_id"], lock=True)
        if not is_live(up):
            continue
        tx.lock_rows("inodes", "inode", [up["inode"]])
        end_upload(tx, up, ABORTED, now)
        aborted += 1
        if up["upload_id"] not in under:
            elsewhere += 1
    files = 0
    if top is not None:
        # The parent of the root is not locked here, not even last: a
        # purge of a big tree holds its locks for its whole transaction,
        # and writes in the parent (a shared folder, an admin's /) would
        # wait behind it up to lock_timeout and then fail.  Nor is it
        # needed: the root's name cannot change or be taken meanwhile (a
        # rename or rmdir of the root is RootBusy while the account's row
        # is there, a mkdir of its name is Exists while its dirent is), and
        # locking it after the tree's locks would take directory locks
        # child first, the reverse of every other operation (a rename
        # between the parent and the tree, an rmdir of the root: deadlocks).
        # The parent's mtime is the caller's to set, after the commit.
        parent = tx.value("SELECT parent FROM dirents WHERE inode = ?", top)
        files = _purge_dir(tx, name, top, join_path(root), now)
        # Again, now that every directory of the tree is locked: an
        # add_user of a root inside it that committed after the check
        # above held (or created its root under) one of them, so the walk
        # waited for its commit and this read sees its row.  One that has
        # not reached the tree yet waits for this purge and finds no tree.
        # (Not the directory-move lock: a long purge would hold every
        # directory rename in the namespace for its whole transaction.)
        _refuse_sharers(tx, name, root)
        if touched is not None:
            touched[:] = [parent]
    return {
        "files_deleted": files,
        "uploads_aborted": aborted,
        "uploads_aborted_outside_root": elsewhere,
    }


def delete_user(
    tx: Tx, now: float, name: str, files: str = REFUSE, touched: list[int] | None = None
) -> dict[str, Any]:
    """Remove the account; what happens to its files depends on ``files``.

    REFUSE (the default) fails with NotEmpty while the root holds a
    directory or a committed file, or the user has uploads pending under
    it, so no data goes by accident; PURGE
    deletes them (``_purge``: the user's uploads outside the root too);
    KEEP leaves them where they are (``add_user`` of the same
    name then refuses to hand them over unless told to adopt them).
    A purge notes in ``touched`` the directory whose mtime the caller
    sets once this transaction committed (``touch_dir``).
    """
    if files not in (REFUSE, PURGE, KEEP):
        raise ValueError(f"unknown files mode {files!r}")
    tx.lock_rows("users", "name", [name])
    user = get_user(tx, name)
    root = split_path(user.root)
    result: dict[str, Any] = {"name": name, "root": user.root, "files": files}
    if files == REFUSE:
        # What the deletion loses (or leaves for the next holder of the
        # name): what the root stores, and the uploads the user could
        # resume there.  Another user's upload under the root is theirs;
        # the user's upload moved out of the root is out of their reach.
        top = _root_dir(tx, root)
        entries = top is not None and _stores_anything(tx, top)
        pending = len(_uploads_under(tx, name, top)) if top is not None else 0
        if entries or pending:
            held = [f"files under {user.root}"] if entries else []
            held += [f"{pending} pending upload(s)"] if pending else []
            raise NotEmpty(f"user {name!r} still has {' and '.join(held)}")
    elif files == PURGE:
        result.update(_purge(tx, now, name, root, touched))
    tx.execute("DELETE FROM users WHERE name = ?", name)
    return result


def touch_dir(tx: Tx, inode: int, now: float) -> None:
    """Move a directory's mtime up to ``now``, if it is still there and
    its mtime is earlier: the parent of a purged root, in a short
    transaction after the purge's.  Never back: a mkdir or an upload
    there while the purge ran (or another front end whose clock is
    ahead) may have set a later time, which stays."""
    tx.execute("UPDATE inodes SET mtime = ? WHERE inode = ? AND mtime < ?", now, inode, now)


def set_password_hash(tx: Tx, name: str, password_hash: str) -> None:
    if not tx.execute("UPDATE users SET password_hash = ? WHERE name = ?", password_hash, name):
        raise NotFound(f"no user {name!r}")


def _lock_live_uploads(tx: Tx, name: str) -> None:
    """Lock the live uploads of the user name ``name`` (PostgreSQL): a
    count of their pending bytes in a later statement then sees every
    change to them committed, and none is made until this transaction
    ends."""
    live = tx.all(f"SELECT upload_id FROM uploads WHERE username = ? AND state IN {LIVE_SQL}", name)
    tx.lock_rows("uploads", "upload_id", [r["upload_id"] for r in live])


def recount_pending(tx: Tx, name: str) -> tuple[User, int]:
    """Set ``name``'s pending_bytes to what their live uploads hold (as
    migration 12 started it); return the user and the count it replaced.
    For a count that drifted (a front end of the code before schema 12
    that ran beside a newer one: docs/catalog.md, Schema).

    The users row is locked first, then counted in the next statement:
    every change to the charge updates that row in the transaction that
    moves the upload, so one that updated it has committed by the count
    (which sees both), and one that has not yet waits for the row and adds
    its change on top of a count that still has its upload as it was.
    Unlocked, the UPDATE waited for such a row, then wrote what its
    statement's snapshot, taken before, counted: that change lost."""
    tx.lock_rows("users", "name", [name])
    before = tx.value("SELECT pending_bytes FROM users WHERE name = ?", name)
    if before is None:
        raise NotFound(f"no user {name!r}")
    _recount_pending(tx, name)
    return get_user(tx, name), int(before)


def set_quota(tx: Tx, name: str, quota_bytes: int | None, quota_files: int | None) -> User:
    if not tx.execute(
        "UPDATE users SET quota_bytes = ?, quota_files = ? WHERE name = ?",
        quota_bytes,
        quota_files,
        name,
    ):
        raise NotFound(f"no user {name!r}")
    return get_user(tx, name)


def set_permissions(tx: Tx, name: str, permissions: Iterable[str]) -> User:
    chosen = json.dumps(_permissions(permissions))
    if not tx.execute("UPDATE users SET permissions = ? WHERE name = ?", chosen, name):
        raise NotFound(f"no user {name!r}")
    return get_user(tx, name)


def get_login(tx: Tx, name: str) -> Login:
    """The user and their stored password hash in one read, no scrypt."""
    row = tx.one("SELECT * FROM users WHERE name = ?", name)
    if row is None:
        raise NotFound(f"no user {name!r}")
    return Login(user_from_row(row), row["password_hash"])


def check_login(tx: Tx, name: str, password: str) -> Login:
    """Runs the scrypt check inside the worker thread; the same work is done
    for unknown users.  The Login carries the hash the password was verified
    against, read in the same statement as the user."""
    row = tx.one("SELECT * FROM users WHERE name = ?", name)
    stored = row["password_hash"] if row is not None else dummy_hash()
    if not verify_password(password, stored) or row is None:
        raise AuthFailed("unknown user or wrong password")
    return Login(user_from_row(row), stored)


def authenticate(tx: Tx, name: str, password: str) -> User:
    return check_login(tx, name, password).user


__all__ = ["add_user", "authenticate", "check_login", "get_login", "hash_password"]


def _recount_pending(tx: Tx, name: str) -> None:
    """Set ``name``'s pending charge from their live uploads as they are
    (``add_user`` and ``recount_pending``; the caller holds the locks)."""
    tx.execute(
        "UPDATE users SET pending_bytes = "
        + PENDING_OF_USER_SQL.format(user="?")
        + " WHERE name = ?",
        name,
        name,
    )
