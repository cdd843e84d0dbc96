"""Reading and writing the catalog's rows: path resolution, records from
rows, and the low-level changes several operations share (removing an inode,
ending an upload, charging usage).  Every function runs inside a ``Tx``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog.errors import NotADirectory, NotFound, QuotaExceeded, VersionChanged
from wsfront.catalog.names import join_path
from wsfront.catalog.records import (
    DIR,
    FILE,
    LIVE_STATES,
    NOTHING_COMMITTED,
    REPLICA_OK,
    BlobRecord,
    Extent,
    NothingCommitted,
    Replica,
    UploadSession,
    Version,
    pending_charge,
)
from wsfront.catalog.schema import LIVE_SQL

ROOT = 1
_CHUNK = 500

INODE_COLUMNS = "i.inode, i.kind, i.version_id, i.owner, i.mtime"
#: What ``resolve`` needs of the root to walk below it.
_ROOT_ROW = {"inode": ROOT, "kind": DIR}


def resolve(tx: Tx, parts: tuple[str, ...]) -> Any | None:
    """The inode row at ``parts``, or None if the last component is missing.
    NotFound / NotADirectory for a missing or non-directory ancestor.

    The root's own row is read only for ``/`` itself: below it, the walk
    needs only what every catalog's root is (inode ``ROOT``, a directory,
    made so by the first migration and never removed, since a root of
    ``/`` is never purged), a statement fewer for every path looked up."""
    if not parts:
        return tx.one(f"SELECT {INODE_COLUMNS} FROM inodes i WHERE i.inode = ?", ROOT)
    row: Any = _ROOT_ROW
    for depth, name in enumerate(parts):
        if row["kind"] != DIR:
            raise NotADirectory(f"{join_path(parts[:depth])} is not a directory")
        row = tx.one(
            f"SELECT {INODE_COLUMNS} FROM dirents d JOIN inodes i ON i.inode = d.inode "
            "WHERE d.parent = ? AND d.name = ?",
            row["inode"],
            name,
        )
        if row is None:
            if depth + 1 < len(parts):
                raise NotFound(f"{join_path(parts[: depth + 1])} does not exist")
            return None
    return row


def resolve_existing(tx: Tx, parts: tuple[str, ...]) -> Any:
    row = resolve(tx, parts)
    if row is None:
        raise NotFound(f"{join_path(parts)} does not exist")
    return row


def resolve_parent(tx: Tx, parts: tuple[str, ...]) -> int:
    """The inode of the directory that holds (or would hold) ``parts``."""
    parent = resolve_existing(tx, parts[:-1])
    if parent["kind"] != DIR:
        raise NotADirectory(f"{join_path(parts[:-1])} is not a directory")
    return parent["inode"]


def path_of(tx: Tx, inode: int) -> str | None:
    """The current path of ``inode``, or None if it is no longer linked."""
    names: list[str] = []
    while inode != ROOT:
        row = tx.one("SELECT parent, name FROM dirents WHERE inode = ?", inode)
        if row is None:
            return None
        names.append(row["name"])
        inode = row["parent"]
    return join_path(list(reversed(names)))


def chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def replicas_of(tx: Tx, blob_ids: Iterable[str]) -> dict[str, tuple[Replica, ...]]:
    """Replica sets of several blobs, ok replicas first."""
    found: dict[str, list[Replica]] = {}
    for chunk in chunks(sorted(set(blob_ids))):
        marks = ", ".join("?" for _ in chunk)
        for row in tx.all(
            f"SELECT blob_id, node, state FROM replicas WHERE blob_id IN ({marks})", *chunk
        ):
            found.setdefault(row["blob_id"], []).append(Replica(row["node"], row["state"]))
    return {
        blob: tuple(sorted(reps, key=lambda r: (r.state != REPLICA_OK, r.node)))
        for blob, reps in found.items()
    }


def extents_from_rows(tx: Tx, rows: list[Any]) -> tuple[Extent, ...]:
    replicas = replicas_of(tx, (r["blob_id"] for r in rows))
    return tuple(
        Extent(
            blob_id=r["blob_id"],
            blob_offset=r["blob_offset"],
            length=r["length"],
            file_offset=r["file_offset"],
            replicas=replicas.get(r["blob_id"], ()),
        )
        for r in rows
    )


def etag_of(extents: Iterable[Any]) -> str:
    """A strong ETag: the same extent list always means the same bytes.
    ``extents`` are rows or mappings with blob_id, blob_offset, length."""
    digest = hashlib.sha256()
    for e in extents:
        digest.update(f"{e['blob_id']}:{e['blob_offset']}:{e['length']};".encode())
    return digest.hexdigest()[:32]


def truncate_extents(rows: Iterable[Any], length: int) -> list[dict[str, Any]]:
    """The extents covering file bytes [0, length): later ones dropped, the
    last one shortened by reference (no byte is copied)."""
    kept = []
    for r in rows:
        if r["file_offset"] >= length:
            break
        kept.append(
            {
                "blob_id": r["blob_id"],
                "blob_offset": r["blob_offset"],
                "length": min(r["length"], length - r["file_offset"]),
                "file_offset": r["file_offset"],
            }
        )
    return kept


def write_extents(
    tx: Tx, table: str, key: str, key_value: Any, rows: list[Any], fresh: bool = False
) -> None:
    """Replace the extent list of one version or upload (``fresh``: one
    just created, which has none to delete)."""
    if not fresh:
        tx.execute(f"DELETE FROM {table} WHERE {key} = ?", key_value)
    for idx, r in enumerate(rows):
        tx.execute(
            f"INSERT INTO {table} ({key}, idx, blob_id, blob_offset, length, file_offset) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            key_value,
            idx,
            r["blob_id"],
            r["blob_offset"],
            r["length"],
            r["file_offset"],
        )


def load_version(tx: Tx, version_id: int) -> Version:
    row = tx.one("SELECT * FROM versions WHERE version_id = ?", version_id)
    rows = tx.all(
        "SELECT blob_id, blob_offset, length, file_offset FROM version_extents "
        "WHERE version_id = ? ORDER BY idx",
        version_id,
    )
    return Version(
        version_id=row["version_id"],
        inode=row["inode"],
        size=row["size"],
        mtime=row["mtime"],
        etag=row["etag"],
        sha256=row["sha256"],
        extents=extents_from_rows(tx, rows),
    )


def upload_row(tx: Tx, upload_id: str, lock: bool = False) -> Any:
    """The upload's row (locked for update when ``lock``), or NotFound."""
    if lock:
        tx.lock_rows("uploads", "upload_id", [upload_id])
    row = tx.one("SELECT * FROM uploads WHERE upload_id = ?", upload_id)
    if row is None:
        raise NotFound(f"no upload {upload_id!r}")
    return row


def live_upload_row(tx: Tx, inode: int) -> Any | None:
    return tx.one(f"SELECT * FROM uploads WHERE inode = ? AND state IN {LIVE_SQL}", inode)


def locked_live_upload_row(tx: Tx, inode: int) -> Any | None:
    """The inode's live upload row, locked and read again under the lock,
    for a caller that decides on its state (abandon, abort, expire it).

    Read without the lock, a row can be taken over meanwhile (the epoch
    bumped, interrupted -> active, committed after this transaction read
    it): ending it by its id would then kill the resumed session.  The
    caller holds the inode's lock, so no other upload can begin on it."""
    row = live_upload_row(tx, inode)
    if row is None:
        return None
    row = upload_row(tx, row["upload_id"], lock=True)
    return row if is_live(row) else None


def upload_extent_rows(tx: Tx, upload_id: str) -> list[Any]:
    return tx.all(
        "SELECT blob_id, blob_offset, length, file_offset FROM upload_extents "
        "WHERE upload_id = ? ORDER BY idx",
        upload_id,
    )


def load_upload(tx: Tx, row: Any) -> UploadSession:
    replicas = replicas_of(tx, [row["blob_id"]]).get(row["blob_id"], ())
    wanted = tx.value("SELECT wanted FROM blobs WHERE blob_id = ?", row["blob_id"])
    return UploadSession(
        upload_id=row["upload_id"],
        inode=row["inode"],
        path=path_of(tx, row["inode"]) or row["path"],
        user=row["username"],
        base_extents=extents_from_rows(tx, upload_extent_rows(tx, row["upload_id"])),
        blob_id=row["blob_id"],
        blob_start=row["blob_start"],
        replicas=replicas,
        wanted_replicas=wanted if wanted is not None else len(replicas),
        checkpoint=row["checkpoint"],
        owner=row["owner"],
        epoch=row["epoch"],
        state=row["state"],
        declared_length=row["declared_length"],
        meta=json.loads(row["meta"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
    )


def load_blob(tx: Tx, blob_id: str) -> BlobRecord | None:
    row = tx.one("SELECT * FROM blobs WHERE blob_id = ?", blob_id)
    if row is None:
        return None
    return BlobRecord(
        blob_id=row["blob_id"],
        length=row["length"],
        sealed=bool(row["sealed"]),
        wanted_replicas=row["wanted"],
        replicas=replicas_of(tx, [blob_id]).get(blob_id, ()),
    )


def insert_blob(tx: Tx, blob_id: str, nodes: Iterable[str], wanted: int, now: float) -> None:
    tx.execute(
        "INSERT INTO blobs (blob_id, length, sealed, wanted, created_at) VALUES (?, 0, 0, ?, ?)",
        blob_id,
        wanted,
        now,
    )
    for node in dict.fromkeys(nodes):
        tx.execute("INSERT INTO replicas (blob_id, node, state) VALUES (?, ?, 'ok')", blob_id, node)


def set_replicas(tx: Tx, blob_id: str, nodes: Iterable[str]) -> None:
    """Make the ok replica set of a blob exactly ``nodes``; other ok ones
    become lost, stale ones stay stale (a damage mark sticks: a lost copy
    may be counted ok again by repair, ``reclaim_replica``, a stale one
    never)."""
    nodes = list(dict.fromkeys(nodes))
    tx.execute("UPDATE replicas SET state = 'lost' WHERE blob_id = ? AND state = 'ok'", blob_id)
    for node in nodes:
        if tx.execute(
            "UPDATE replicas SET state = 'ok' WHERE blob_id = ? AND node = ?", blob_id, node
        ):
            continue
        tx.execute("INSERT INTO replicas (blob_id, node, state) VALUES (?, ?, 'ok')", blob_id, node)


def charge(
    tx: Tx, user: str | None, dbytes: int, dfiles: int, check: bool, dpending: int = 0
) -> None:
    """Add to a user's usage (``dbytes`` and ``dfiles`` committed, and
    ``dpending`` to what their pending uploads hold), in one statement;
    with ``check``, QuotaExceeded when a growth passes a quota: the bytes
    grow when committed and pending together do, and must then fit, both
    counted (the caller's transaction then rolls back)."""
    if user is None or (dbytes == 0 and dfiles == 0 and dpending == 0):
        return
    row = tx.one(
        "UPDATE users SET used_bytes = used_bytes + ?, used_files = used_files + ?, "
        "pending_bytes = pending_bytes + ? WHERE name = ? "
        "RETURNING used_bytes, used_files, pending_bytes, quota_bytes, quota_files",
        dbytes,
        dfiles,
        dpending,
        user,
    )
    if row is None or not check:
        return
    held = row["used_bytes"] + row["pending_bytes"]
    if dbytes + dpending > 0 and row["quota_bytes"] is not None and held > row["quota_bytes"]:
        pending = f" ({row['pending_bytes']} of them pending)" if row["pending_bytes"] else ""
        raise QuotaExceeded(f"{user} would use {held}{pending} of {row['quota_bytes']} bytes")
    if dfiles > 0 and row["quota_files"] is not None and row["used_files"] > row["quota_files"]:
        raise QuotaExceeded(f"{user} would have {row['used_files']} of {row['quota_files']} files")


def committed_size(tx: Tx, inode: int) -> int:
    """The size of the committed version of the file ``inode`` (0: none)."""
    size = tx.value(
        "SELECT v.size FROM inodes i JOIN versions v ON v.version_id = i.version_id "
        "WHERE i.inode = ?",
        inode,
    )
    return int(size or 0)


def drop_version(tx: Tx, inode_row: Any, refund: bool = True) -> None:
    """Forget the inode's committed version and (with ``refund``) give its
    usage back to the file's owner."""
    version_id = inode_row["version_id"]
    if version_id is None:
        return
    size = tx.value("SELECT size FROM versions WHERE version_id = ?", version_id)
    tx.execute("DELETE FROM version_extents WHERE version_id = ?", version_id)
    tx.execute("DELETE FROM versions WHERE version_id = ?", version_id)
    tx.execute("UPDATE inodes SET version_id = NULL WHERE inode = ?", inode_row["inode"])
    if refund:
        charge(tx, inode_row["owner"], -(size or 0), -1, check=False)


def remove_file_inode(tx: Tx, inode_row: Any) -> None:
    """Unlink and forget a file inode (its blobs become collectable)."""
    drop_version(tx, inode_row)
    tx.execute("DELETE FROM dirents WHERE inode = ?", inode_row["inode"])
    tx.execute("DELETE FROM inodes WHERE inode = ?", inode_row["inode"])


def end_upload(tx: Tx, row: Any, state: str, now: float) -> None:
    """Move a live upload, its row locked and read under the lock by the
    caller, to a final state (committed uploads go through commit instead).
    Its blobs lose their references; a file with only this pending upload
    disappears.  Its pending charge is given back to its user."""
    tx.execute(
        "UPDATE uploads SET state = ?, updated_at = ? WHERE upload_id = ?",
        state,
        now,
        row["upload_id"],
    )
    tx.execute("DELETE FROM upload_extents WHERE upload_id = ?", row["upload_id"])
    inode = tx.one("SELECT * FROM inodes WHERE inode = ?", row["inode"])
    if row["checkpoint"] > 0:
        size = 0
        if inode is not None and inode["version_id"] is not None:
            size = tx.value("SELECT size FROM versions WHERE version_id = ?", inode["version_id"])
        held = pending_charge(row["checkpoint"], int(size or 0))
        charge(tx, row["username"], 0, 0, check=False, dpending=-held)
    if inode is not None and inode["kind"] == FILE and inode["version_id"] is None:
        remove_file_inode(tx, inode)


def is_live(row: Any) -> bool:
    return row["state"] in LIVE_STATES


def child(tx: Tx, parent: int, name: str) -> Any | None:
    return tx.one(
        f"SELECT {INODE_COLUMNS} FROM dirents d JOIN inodes i ON i.inode = d.inode "
        "WHERE d.parent = ? AND d.name = ?",
        parent,
        name,
    )


def lock_dirs(tx: Tx, *inodes: int) -> None:
    """Lock directories about to change, read earlier in this transaction;
    NotFound if one vanished meanwhile (a concurrent rmdir won).  Not asked
    again where the transaction held the database's write lock from its
    BEGIN (``Backend.locks_at_begin``): nothing could vanish meanwhile."""
    tx.lock_rows("inodes", "inode", list(inodes))
    if tx.backend.locks_at_begin:
        return
    for inode in inodes:
        if tx.one("SELECT inode FROM inodes WHERE inode = ?", inode) is None:
            raise NotFound("the directory was removed meanwhile")


def touch(tx: Tx, inode: int, now: float) -> None:
    tx.execute("UPDATE inodes SET mtime = ? WHERE inode = ?", now, inode)


def locked_version(tx: Tx, inode: int, expected_etag: str) -> Version:
    """The committed version of ``inode`` (its row locked), if it still has
    ``expected_etag``; VersionChanged otherwise: the caller judged the file
    (a compaction's copy, a DELETE's If-Match) in an earlier transaction."""
    tx.lock_rows("inodes", "inode", [inode])
    row = tx.one("SELECT * FROM inodes WHERE inode = ?", inode)
    if row is None or row["kind"] != FILE:
        raise VersionChanged(f"inode {inode} is no longer a file")
    if row["version_id"] is None:
        raise VersionChanged(f"inode {inode} has no committed version")
    version = load_version(tx, row["version_id"])
    if version.etag != expected_etag:
        raise VersionChanged(f"inode {inode} is at {version.etag}, not {expected_etag}")
    return version


def judged_version(tx: Tx, inode: int, expected_etag: str | NothingCommitted) -> None:
    """VersionChanged unless the file ``inode`` is still as a caller's
    preconditions judged it in an earlier transaction: at the committed
    version ``expected_etag`` (``locked_version``), or, with
    ``NOTHING_COMMITTED``, a file with none (a pending upload only)."""
    if expected_etag is not NOTHING_COMMITTED:
        locked_version(tx, inode, expected_etag)
        return
    tx.lock_rows("inodes", "inode", [inode])
    row = tx.one("SELECT kind, version_id FROM inodes WHERE inode = ?", inode)
    if row is None or row["kind"] != FILE:
        raise VersionChanged(f"inode {inode} is no longer a file")
    if row["version_id"] is not None:
        raise VersionChanged(f"inode {inode} has a committed version now")
