"""Upload sessions (DESIGN.md, "Sessions, durability, fencing").

Every change to a session is a compare-and-set on its epoch: the row is
locked (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), the
epoch and state are checked, and the ``UPDATE ... WHERE epoch = ?`` must
change exactly one row.  A lost CAS is ``EpochConflict``; a session that has
ended is ``UploadFinished``.  One live upload per inode is also guarded by
a partial unique index, so two writers racing on one path cannot both win.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._rows import (
    charge,
    child,
    committed_size,
    drop_version,
    end_upload,
    etag_of,
    extents_from_rows,
    insert_blob,
    is_live,
    live_upload_row,
    load_upload,
    load_version,
    lock_dirs,
    locked_live_upload_row,
    pending_charge,
    resolve,
    resolve_parent,
    set_replicas,
    touch,
    truncate_extents,
    upload_extent_rows,
    upload_row,
    write_extents,
)
from wsfront.catalog.errors import (
    EpochConflict,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    NotFound,
    PendingUploadExists,
    QuotaExceeded,
    UploadFinished,
    VersionChanged,
)
from wsfront.catalog.names import join_path, split_path
from wsfront.catalog.records import (
    ABORTED,
    ACTIVE,
    DIR,
    EXPIRED,
    INTERRUPTED,
    LIVE_STATES,
    REPLICA_OK,
    UPLOAD_STATES,
    PurgedUploads,
    Replica,
    UploadSession,
    UploadStart,
    Version,
)
from wsfront.catalog.schema import FINISHED_SQL, LIVE_SQL


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()
"""``restart_at``'s default for ``declared_length``: the one recorded stays."""


def new_upload_id() -> str:
    """An opaque, unguessable token that is safe in a URL."""
    return secrets.token_urlsafe(18)


def _check_quota_ahead(tx: Tx, user: str, grow_bytes: int, new_file: bool) -> None:
    """Refuse early when a declared length cannot fit beside what the user's
    files and pending uploads hold (checkpoints and the commit check again)."""
    row = tx.one("SELECT * FROM users WHERE name = ?", user)
    if row is None:
        return
    quota = row["quota_bytes"]
    held = row["used_bytes"] + row["pending_bytes"]
    if grow_bytes > 0 and quota is not None and held + grow_bytes > quota:
        raise QuotaExceeded(f"{user} has no room for {grow_bytes} more bytes")
    if new_file and row["quota_files"] is not None and row["used_files"] + 1 > row["quota_files"]:
        raise QuotaExceeded(f"{user} has reached the file quota")


def _resolve_target(tx: Tx, path: str) -> tuple[tuple[str, ...], int, Any]:
    """The path's parts, its parent directory (locked) and its entry
    (locked, as it is under the lock; None if absent).  IsADirectory for /
    or a directory."""
    parts = split_path(path)
    if not parts:
        raise IsADirectory("/ is a directory")
    parent = resolve_parent(tx, parts)
    lock_dirs(tx, parent)
    row = child(tx, parent, parts[-1])
    if row is not None and row["kind"] == DIR:
        raise IsADirectory(f"{path} is a directory")
    if row is not None:
        tx.lock_rows("inodes", "inode", [row["inode"]])
        if not tx.backend.locks_at_begin:
            # Read before the lock (PostgreSQL): a commit it waited for
            # changed the inode's version, which the row above predates
            # (its old version's size was gone: a TypeError, or a start on
            # the old size).  The name still holds this inode: renames
            # need the parent's lock, held since before the read.
            row = child(tx, parent, parts[-1])
    return parts, parent, row


def begin_upload(
    tx: Tx,
    now: float,
    user: str,
    path: str,
    base_length: int,
    blob_id: str,
    replicas: Iterable[str],
    wanted_replicas: int,
    owner: str,
    expires_at: float,
    declared_length: int | None,
    meta: dict[str, Any] | None,
    check_version: bool = False,
    expected_version_id: int | None = None,
) -> UploadSession:
    if base_length < 0 or (declared_length is not None and base_length > declared_length):
        raise InvalidOffset(f"base length {base_length} is out of range")
    parts, parent, row = _resolve_target(tx, path)
    if check_version:
        # The caller judged the file (If-Match, APPE after SIZE) in an
        # earlier transaction: another commit since then is VersionChanged,
        # checked on the row read under the inode's lock, or two writers
        # could both pass their check and the second start on the first's
        # file.
        found = row["version_id"] if row is not None else None
        if found != expected_version_id:
            raise VersionChanged(f"{path} is no longer the version its check saw")
    if row is not None:
        live = live_upload_row(tx, row["inode"])
        if live is not None and live["expires_at"] <= now:
            live = locked_live_upload_row(tx, row["inode"])  # expire it: read it again
        if live is not None:
            if live["expires_at"] > now:
                raise PendingUploadExists(f"an upload is pending on {path}")
            end_upload(tx, live, EXPIRED, now)
            row = child(tx, parent, parts[-1])
    version = None
    if row is not None and row["version_id"] is not None:
        version = load_version(tx, row["version_id"])
    return _insert_upload(
        tx, now, user, path, parts, parent, row, version.size if version else 0,
        version.extents if version else (), base_length, blob_id, replicas, wanted_replicas,
        owner, expires_at, declared_length, meta,
    )  # fmt: skip


def _insert_upload(
    tx: Tx,
    now: float,
    user: str,
    path: str,
    parts: tuple[str, ...],
    parent: int,
    row: Any,
    committed_size: int,
    committed_extents: Iterable[Any],
    base_length: int,
    blob_id: str,
    replicas: Iterable[str],
    wanted_replicas: int,
    owner: str,
    expires_at: float,
    declared_length: int | None,
    meta: dict[str, Any] | None,
) -> UploadSession:
    """Begin the upload on a resolved, locked target with no live upload:
    the inode (created if ``row`` is None), blob, session and base extents
    (the committed extents cut at ``base_length``)."""
    if row is None:
        if base_length != 0:
            raise InvalidOffset(f"{path} is new: an upload can only start at 0")
        inode = tx.value("INSERT INTO inodes (kind, mtime) VALUES ('file', ?) RETURNING inode", now)
        tx.execute(
            "INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)", parent, parts[-1], inode
        )
        touch(tx, parent, now)
    else:
        inode = row["inode"]
        if base_length > committed_size:
            raise InvalidOffset(f"{path} has {committed_size} committed bytes, not {base_length}")
    base = truncate_extents(
        (
            {
                "blob_id": e.blob_id,
                "blob_offset": e.blob_offset,
                "length": e.length,
                "file_offset": e.file_offset,
            }
            for e in committed_extents
        ),
        base_length,
    )
    if declared_length is not None:
        _check_quota_ahead(tx, user, declared_length - committed_size, row is None)
    insert_blob(tx, blob_id, replicas, wanted_replicas, now)
    upload_id = new_upload_id()
    meta_json = json.dumps(meta or {})
    tx.execute(
        "INSERT INTO uploads (upload_id, inode, path, username, blob_id, blob_start, checkpoint, "
        "owner, epoch, state, declared_length, meta, created_at, updated_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, 'active', ?, ?, ?, ?, ?)",
        upload_id,
        inode,
        path,
        user,
        blob_id,
        base_length,
        base_length,
        owner,
        declared_length,
        meta_json,
        now,
        now,
        expires_at,
    )
    write_extents(tx, "upload_extents", "upload_id", upload_id, base, fresh=True)
    # What load_upload would read back, from what was just written.
    nodes = sorted(dict.fromkeys(replicas))
    return UploadSession(
        upload_id=upload_id,
        inode=inode,
        path=join_path(parts),
        user=user,
        base_extents=extents_from_rows(tx, base),
        blob_id=blob_id,
        blob_start=base_length,
        replicas=tuple(Replica(node, REPLICA_OK) for node in nodes),
        wanted_replicas=wanted_replicas,
        checkpoint=base_length,
        owner=owner,
        epoch=1,
        state=ACTIVE,
        declared_length=declared_length,
        meta=json.loads(meta_json),
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
    )


def start_upload(
    tx: Tx,
    now: float,
    user: str,
    path: str,
    offset: int | None,
    blob_id: str,
    replicas: Iterable[str],
    wanted_replicas: int,
    owner: str,
    expires_at: float,
    declared_length: int | None,
    meta: dict[str, Any] | None,
) -> UploadStart:
    """The lookup a STOR makes and ``begin_upload`` in one transaction:
    begin at ``offset`` (None: at the committed size, as APPE does).  The
    path is resolved once, and the committed version's extents are read
    only when the upload keeps some of them (offset above 0).

    A live upload on the path (whoever owns it, expired or not, as ``stat``
    reports it) changes nothing: PendingUploadExists carries it, for its
    owner to take over.  An offset above the committed size is
    InvalidOffset; a directory IsADirectory.
    """
    parts, parent, row = _resolve_target(tx, path)
    committed = 0
    version_id = None
    if row is not None:
        live = live_upload_row(tx, row["inode"])
        if live is not None:
            upload = load_upload(tx, live)
            raise PendingUploadExists(f"an upload is pending on {path}", upload=upload)
        version_id = row["version_id"]
        if version_id is not None:
            committed = tx.value("SELECT size FROM versions WHERE version_id = ?", version_id)
    base = committed if offset is None else offset
    if base > committed:
        raise InvalidOffset(f"offset {base} is beyond the size {committed}")
    if base < 0 or (declared_length is not None and base > declared_length):
        raise InvalidOffset(f"base length {base} is out of range")
    extents: Iterable[Any] = ()
    if base > 0 and version_id is not None:
        extents = load_version(tx, version_id).extents
    upload = _insert_upload(
        tx, now, user, path, parts, parent, row, committed, extents, base, blob_id, replicas,
        wanted_replicas, owner, expires_at, declared_length, meta,
    )  # fmt: skip
    return UploadStart(upload, committed)


def get_upload(tx: Tx, upload_id: str) -> UploadSession:
    return load_upload(tx, upload_row(tx, upload_id))


def find_upload(tx: Tx, path: str) -> UploadSession | None:
    try:
        row = resolve(tx, split_path(path))
    except (NotFound, NotADirectory):
        return None
    if row is None or row["kind"] == DIR:
        return None
    up = live_upload_row(tx, row["inode"])
    return load_upload(tx, up) if up is not None else None


def list_uploads(tx: Tx, states: Iterable[str] | None, owner: str | None) -> list[UploadSession]:
    wanted = sorted(set(states) if states is not None else LIVE_STATES)
    unknown = set(wanted) - UPLOAD_STATES
    if unknown:
        raise ValueError(f"unknown upload states {sorted(unknown)}")
    marks = ", ".join("?" for _ in wanted)
    sql = f"SELECT * FROM uploads WHERE state IN ({marks})"
    if set(wanted) <= LIVE_STATES:
        sql += f" AND state IN {LIVE_SQL}"  # the index of live uploads (schema 5)
    params: list[Any] = list(wanted)
    if owner is not None:
        sql += " AND owner = ?"
        params.append(owner)
    sql += " ORDER BY created_at, upload_id"
    return [load_upload(tx, row) for row in tx.all(sql, *params)]


def active_upload_owners(tx: Tx) -> dict[str, float]:
    """Front ends owning active uploads -> the latest ``updated_at`` among
    them (one grouped query: the maintenance holder asks every few seconds)."""
    rows = tx.all(
        "SELECT owner, MAX(updated_at) AS touched FROM uploads "
        f"WHERE state = ? AND state IN {LIVE_SQL} GROUP BY owner",  # see list_uploads
        ACTIVE,
    )
    return {r["owner"]: float(r["touched"]) for r in rows}


def _locked_live(tx: Tx, upload_id: str, epoch: int) -> Any:
    """The session row, locked, if it is live and still at ``epoch``."""
    row = upload_row(tx, upload_id, lock=True)
    if not is_live(row):
        raise UploadFinished(f"upload {upload_id} is {row['state']}", state=row["state"])
    if row["epoch"] != epoch:
        raise EpochConflict(f"upload {upload_id} is at epoch {row['epoch']}, not {epoch}")
    return row


def _cas(tx: Tx, upload_id: str, epoch: int, assignments: str, *params: Any) -> None:
    changed = tx.execute(
        f"UPDATE uploads SET {assignments} WHERE upload_id = ? AND epoch = ? "
        "AND state IN ('active', 'interrupted')",
        *params,
        upload_id,
        epoch,
    )
    if changed != 1:
        raise EpochConflict(f"upload {upload_id} changed under epoch {epoch}")


def checkpoint(
    tx: Tx,
    now: float,
    upload_id: str,
    epoch: int,
    durable_offset: int,
    replicas: Iterable[str] | None,
    expires_at: float | None,
) -> UploadSession:
    row = _locked_live(tx, upload_id, epoch)
    if durable_offset < row["checkpoint"]:
        raise InvalidOffset(f"checkpoint {durable_offset} is below {row['checkpoint']}")
    if row["declared_length"] is not None and durable_offset > row["declared_length"]:
        raise InvalidOffset(f"checkpoint {durable_offset} is past the declared length")
    # A row another front end marked interrupted (our liveness lease had
    # lapsed: a long pause, not a crash) is active again once we record
    # progress at its epoch: a client is sending, so a DELETE must not take
    # it for abandoned.  A takeover bumps the epoch, and this CAS loses.
    _cas(
        tx,
        upload_id,
        epoch,
        "state = 'active', checkpoint = ?, updated_at = ?, expires_at = ?",
        durable_offset,
        now,
        expires_at if expires_at is not None else row["expires_at"],
    )
    tx.execute(
        "UPDATE blobs SET length = ? WHERE blob_id = ?",
        durable_offset - row["blob_start"],
        row["blob_id"],
    )
    if replicas is not None:
        set_replicas(tx, row["blob_id"], replicas)
    if durable_offset > row["checkpoint"]:
        # The bytes it holds grow: charged to its user, and refused past
        # the quota (QuotaExceeded: the transaction rolls back, the
        # checkpoint stays).  Last of the writes: the users row it locks
        # serialises every growing checkpoint and commit of the user until
        # this transaction ends, so it is held no longer than needed.
        size = committed_size(tx, row["inode"])
        grown = pending_charge(durable_offset, size) - pending_charge(row["checkpoint"], size)
        charge(tx, row["username"], 0, 0, check=True, dpending=grown)
    return load_upload(tx, upload_row(tx, upload_id))


def take_over(
    tx: Tx,
    now: float,
    upload_id: str,
    expected_epoch: int,
    new_owner: str,
    expires_at: float | None,
) -> UploadSession:
    row = _locked_live(tx, upload_id, expected_epoch)
    _cas(
        tx,
        upload_id,
        expected_epoch,
        "epoch = epoch + 1, owner = ?, state = 'active', updated_at = ?, expires_at = ?",
        new_owner,
        now,
        expires_at if expires_at is not None else row["expires_at"],
    )
    return load_upload(tx, upload_row(tx, upload_id))


def restart_at(
    tx: Tx,
    now: float,
    upload_id: str,
    epoch: int,
    offset: int,
    blob_id: str,
    replicas: Iterable[str],
    wanted_replicas: int,
    expires_at: float | None,
    declared_length: int | None = KEEP,
) -> UploadSession:
    """Resume at ``offset`` with a new current blob; ``declared_length``
    (unless KEEP) replaces the recorded one: a takeover that starts the
    upload over, or that first learns its total, is not bound by the one an
    abandoned client announced."""
    row = _locked_live(tx, upload_id, epoch)
    if offset < 0 or offset > row["checkpoint"]:
        raise InvalidOffset(f"offset {offset} is above the durable checkpoint {row['checkpoint']}")
    if offset < row["checkpoint"]:
        # Cut back: the bytes past ``offset`` are no longer the upload's.
        size = committed_size(tx, row["inode"])
        cut = pending_charge(row["checkpoint"], size) - pending_charge(offset, size)
        charge(tx, row["username"], 0, 0, check=False, dpending=-cut)
    length_set = ""
    length_params: tuple[Any, ...] = ()
    if declared_length is not KEEP:
        if declared_length is not None and declared_length < offset:
            raise InvalidOffset(f"declared length {declared_length} is below the offset {offset}")
        length_set = ", declared_length = ?"
        length_params = (declared_length,)
    start = row["blob_start"]
    extents = [dict(r) for r in upload_extent_rows(tx, upload_id)]
    if offset >= start:
        segment = offset - start
        if segment > 0:
            extents.append(
                {
                    "blob_id": row["blob_id"],
                    "blob_offset": 0,
                    "length": segment,
                    "file_offset": start,
                }
            )
            tx.execute(
                "UPDATE blobs SET length = ?, sealed = 1 WHERE blob_id = ?", segment, row["blob_id"]
            )
    else:
        extents = truncate_extents(extents, offset)
    write_extents(tx, "upload_extents", "upload_id", upload_id, extents)
    insert_blob(tx, blob_id, replicas, wanted_replicas, now)
    _cas(
        tx,
        upload_id,
        epoch,
        "state = 'active', blob_id = ?, blob_start = ?, checkpoint = ?, updated_at = ?, "
        "expires_at = ?" + length_set,
        blob_id,
        offset,
        offset,
        now,
        expires_at if expires_at is not None else row["expires_at"],
        *length_params,
    )
    return load_upload(tx, upload_row(tx, upload_id))


def resume_at(
    tx: Tx,
    now: float,
    upload_id: str,
    epoch: int,
    offset: int,
    blob_id: str,
    replicas: Iterable[str],
    wanted_replicas: int,
    expires_at: float | None,
    declared_length: int | None = KEEP,
) -> UploadStart:
    """``restart_at``, with the committed size of the file the upload will
    replace: a takeover's room for the quota counts it (released at the
    commit) and the upload's own pending charge, ``pending_charge(offset,
    size)``, once (it cannot change while the upload is live)."""
    upload = restart_at(
        tx, now, upload_id, epoch, offset, blob_id, replicas, wanted_replicas,
        expires_at, declared_length,
    )  # fmt: skip
    return UploadStart(upload, committed_size(tx, upload.inode))


def commit_upload(
    tx: Tx,
    now: float,
    upload_id: str,
    epoch: int,
    length: int,
    sha256: str | None,
    mtime: float | None,
) -> Version:
    row = _locked_live(tx, upload_id, epoch)
    start = row["blob_start"]
    if length < start:
        raise InvalidOffset(f"length {length} is below the current blob's start {start}")
    if row["declared_length"] is not None and length != row["declared_length"]:
        raise InvalidOffset(f"length {length} differs from the declared {row['declared_length']}")
    tx.lock_rows("inodes", "inode", [row["inode"]])
    inode = tx.one("SELECT * FROM inodes WHERE inode = ?", row["inode"])
    if inode is None:
        raise NotFound("the file was removed meanwhile")
    extents = [dict(r) for r in upload_extent_rows(tx, upload_id)]
    had_extents = bool(extents)
    segment = length - start
    if segment > 0:
        extents.append(
            {"blob_id": row["blob_id"], "blob_offset": 0, "length": segment, "file_offset": start}
        )
    tx.execute("UPDATE blobs SET length = ?, sealed = 1 WHERE blob_id = ?", segment, row["blob_id"])
    user = row["username"]
    old_size = None
    if inode["version_id"] is not None:
        old_size = tx.value("SELECT size FROM versions WHERE version_id = ?", inode["version_id"])
    same_owner = inode["owner"] == user
    drop_version(tx, inode, refund=not same_owner)
    # What the upload was charged while pending becomes the file's size.
    held = pending_charge(row["checkpoint"], old_size or 0)
    if same_owner and old_size is not None:
        charge(tx, user, length - old_size, 0, check=True, dpending=-held)
    else:
        charge(tx, user, length, 1, check=True, dpending=-held)
    when = mtime if mtime is not None else now
    etag = etag_of(extents)
    version_id = tx.value(
        "INSERT INTO versions (inode, size, mtime, etag, sha256) VALUES (?, ?, ?, ?, ?) "
        "RETURNING version_id",
        inode["inode"],
        length,
        when,
        etag,
        sha256,
    )
    write_extents(tx, "version_extents", "version_id", version_id, extents, fresh=True)
    tx.execute(
        "UPDATE inodes SET version_id = ?, owner = ?, mtime = ? WHERE inode = ?",
        version_id,
        user,
        when,
        inode["inode"],
    )
    _cas(tx, upload_id, epoch, "state = 'committed', checkpoint = ?, updated_at = ?", length, now)
    if had_extents:
        tx.execute("DELETE FROM upload_extents WHERE upload_id = ?", upload_id)
    # What load_version would read back, from what was just written.
    return Version(
        version_id=version_id,
        inode=inode["inode"],
        size=length,
        mtime=when,
        etag=etag,
        sha256=sha256,
        extents=extents_from_rows(tx, extents),
    )


def interrupt_upload(tx: Tx, now: float, upload_id: str, epoch: int) -> UploadSession:
    _locked_live(tx, upload_id, epoch)
    _cas(tx, upload_id, epoch, "state = ?, updated_at = ?", INTERRUPTED, now)
    return load_upload(tx, upload_row(tx, upload_id))


def interrupt_sessions_of(tx: Tx, now: float, owner: str) -> list[UploadSession]:
    ids = [
        r["upload_id"]
        for r in tx.all(
            "SELECT upload_id FROM uploads WHERE owner = ? AND state = ? "
            f"AND state IN {LIVE_SQL} ORDER BY upload_id",  # see list_uploads
            owner,
            ACTIVE,
        )
    ]
    tx.lock_rows("uploads", "upload_id", ids)
    changed = []
    for upload_id in ids:
        if tx.execute(
            "UPDATE uploads SET state = ?, updated_at = ? "
            "WHERE upload_id = ? AND owner = ? AND state = ?",
            INTERRUPTED,
            now,
            upload_id,
            owner,
            ACTIVE,
        ):
            changed.append(load_upload(tx, upload_row(tx, upload_id)))
    return changed


def abort_upload(tx: Tx, now: float, upload_id: str, epoch: int | None) -> UploadSession:
    row = upload_row(tx, upload_id, lock=True)
    if not is_live(row):
        raise UploadFinished(f"upload {upload_id} is {row['state']}", state=row["state"])
    if epoch is not None and row["epoch"] != epoch:
        raise EpochConflict(f"upload {upload_id} is at epoch {row['epoch']}, not {epoch}")
    tx.lock_rows("inodes", "inode", [row["inode"]])
    end_upload(tx, row, ABORTED, now)
    return load_upload(tx, upload_row(tx, upload_id))


def expire_uploads(tx: Tx, now: float, limit: int | None = None) -> list[UploadSession]:
    """Expire live uploads past their expiry, at most ``limit`` of them.

    The limit keeps each write transaction short: writes share one writer
    (SQLite's writer thread, PostgreSQL's row locks), so expiring thousands
    of uploads at once would hold up every upload's commit meanwhile."""
    sql = (
        "SELECT upload_id FROM uploads WHERE state IN ('active', 'interrupted') "
        "AND expires_at <= ? ORDER BY upload_id"
    )
    params: list[Any] = [now]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    ids = [r["upload_id"] for r in tx.all(sql, *params)]
    expired = []
    for upload_id in ids:
        row = upload_row(tx, upload_id, lock=True)
        if is_live(row) and row["expires_at"] <= now:
            tx.lock_rows("inodes", "inode", [row["inode"]])
            end_upload(tx, row, EXPIRED, now)
            expired.append(load_upload(tx, upload_row(tx, upload_id)))
    return expired


#: Upload ids one statement of ``purge_uploads`` deletes.
PURGE_PIECE = 1000


def purge_uploads(
    tx: Tx, before: float, limit: int | None = None, after: float | None = None
) -> PurgedUploads:
    """Delete finished uploads (committed, aborted, expired) that finished
    at or before ``before`` (and at or after ``after``, when given), with
    their base extents if any are left, at most ``limit`` of them, those
    that finished first first; return how many, and the latest
    ``updated_at`` among them for the next call's ``after``.

    Nothing needs such a row once its retention is over: a finished
    upload's blob is no reference for GC (``_blobs.REFERENCED`` counts live
    uploads only), FTP, PUT and takeovers look uploads up by path among the
    live ones, and only a tus client asks for one by id (HEAD of an upload
    it completed, to learn it did), answered 404 once it is gone.  A
    finished row never changes again, so deleting it races with nothing.
    Found through the index of finished uploads by ``updated_at`` (schema
    7), which the query names by its predicate; bounded by ``limit`` for
    the reason ``expire_uploads`` is.

    ``after`` is a keyset cursor: without it each call starts at the
    index's oldest end, which on PostgreSQL still holds the entries of the
    rows earlier calls deleted until VACUUM removes them, so a long purge's
    batches grow slower as it proceeds (each scans past all the dead
    entries).  ``>=``, not ``>``: rows that finished at the same instant as
    the previous call's last one may not all have fit in it; the ones it
    deleted are gone, so taking the bound again skips nothing and deletes
    nothing twice."""
    sql = (
        f"SELECT upload_id, updated_at FROM uploads WHERE state IN {FINISHED_SQL} "
        "AND updated_at <= ?"
    )
    params: list[Any] = [before]
    if after is not None:
        sql += " AND updated_at >= ?"
        params.append(after)
    sql += " ORDER BY updated_at"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    rows = tx.all(sql, *params)
    ids = [r["upload_id"] for r in rows]
    purged = 0
    # By pieces: a statement takes at most 32,766 parameters on SQLite, 65,535 on PostgreSQL.
    for at in range(0, len(ids), PURGE_PIECE):
        piece = ids[at : at + PURGE_PIECE]
        marks = ", ".join("?" for _ in piece)
        tx.execute(f"DELETE FROM upload_extents WHERE upload_id IN ({marks})", *piece)
        purged += tx.execute(
            f"DELETE FROM uploads WHERE upload_id IN ({marks}) AND state IN {FINISHED_SQL}", *piece
        )
    return PurgedUploads(purged, rows[-1]["updated_at"] if rows else None)
