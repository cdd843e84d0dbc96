"""Compaction and late whole-file hashes: swapping a committed version's
extent list for another one holding the same bytes, and recording a sha256
computed after the commit.

Both are compare-and-set on the version's ETag: the inode row is locked
(``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), the committed
version must still carry ``expected_etag`` (``VersionChanged`` otherwise),
and ``replace_extents`` also refuses while an upload is live on the file
(``PendingUploadExists``): such an upload was begun on the old extents, and
its commit will replace the version anyway.

The ETag is *kept* across a swap.  A strong ETag promises "same tag, same
bytes", and compaction changes where the bytes live, not what they are; a
client resuming a download with ``If-Range``/``Range`` or ``REST`` across a
compaction must not be told the file changed.  So the version keeps its
``etag`` column (derived from the extent list when it was committed) instead
of having it derived again.  Old blobs need no explicit release: a blob is
collectable exactly when nothing references it (``_blobs.REFERENCED``), so
blobs another version or a live upload's base still uses stay put.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._rows import (
    live_upload_row,
    load_blob,
    load_version,
    locked_version,
    path_of,
    write_extents,
)
from wsfront.catalog.errors import HashMismatch, NotFound, PendingUploadExists
from wsfront.catalog.records import CompactionCandidate, Version
from wsfront.catalog.schema import LIVE_SQL


def _check_hash(version: Version, sha256: str | None) -> None:
    if sha256 is not None and version.sha256 is not None and version.sha256 != sha256:
        raise HashMismatch(
            f"version {version.version_id} has sha256 {version.sha256}, not {sha256}"
        )


_FIELDS = ("blob_id", "blob_offset", "length")


def _span(extent: Any) -> tuple[str, int, int]:
    """(blob_id, blob_offset, length) of a mapping, an Extent or a tuple."""
    if isinstance(extent, Mapping):
        values = [extent[f] for f in _FIELDS]
    elif isinstance(extent, tuple | list):
        values = list(extent[:3])
    else:
        values = [getattr(extent, f) for f in _FIELDS]
    return str(values[0]), int(values[1]), int(values[2])


def replace_extents(
    tx: Tx, inode: int, expected_etag: str, extents: Iterable[Any], sha256: str | None
) -> Version:
    version = locked_version(tx, inode, expected_etag)
    if live_upload_row(tx, inode) is not None:
        raise PendingUploadExists(f"an upload is live on inode {inode}")
    _check_hash(version, sha256)
    rows = []
    position = 0
    sealed_at: dict[str, int] = {}
    for e in extents:
        blob_id, blob_offset, length = _span(e)
        if blob_offset < 0 or length <= 0:
            raise ValueError(f"bad extent {blob_id}:{blob_offset}:{length}")
        rows.append(
            {
                "blob_id": blob_id,
                "blob_offset": blob_offset,
                "length": length,
                "file_offset": position,
            }
        )
        position += length
        sealed_at[blob_id] = max(sealed_at.get(blob_id, 0), blob_offset + length)
    if position != version.size:
        raise ValueError(f"the new extents hold {position} bytes, the version {version.size}")
    tx.lock_rows("blobs", "blob_id", list(sealed_at))
    for blob_id, end in sealed_at.items():
        blob = load_blob(tx, blob_id)
        if blob is None:
            # Forgotten by GC (abandoned for too long): its bytes may be gone.
            raise NotFound(f"no blob {blob_id!r}")
        if not blob.sealed:
            tx.execute("UPDATE blobs SET length = ?, sealed = 1 WHERE blob_id = ?", end, blob_id)
        elif blob.length < end:
            raise ValueError(f"blob {blob_id} has {blob.length} bytes, the extents need {end}")
    write_extents(tx, "version_extents", "version_id", version.version_id, rows)
    if sha256 is not None:
        tx.execute(
            "UPDATE versions SET sha256 = ? WHERE version_id = ?", sha256, version.version_id
        )
    return load_version(tx, version.version_id)


def set_sha256(tx: Tx, inode: int, expected_etag: str, sha256: str) -> Version:
    version = locked_version(tx, inode, expected_etag)
    _check_hash(version, sha256)
    if version.sha256 is None:
        tx.execute(
            "UPDATE versions SET sha256 = ? WHERE version_id = ?", sha256, version.version_id
        )
    return load_version(tx, version.version_id)


def compaction_candidates(
    tx: Tx, min_extents: int, limit: int, after: int | None
) -> list[CompactionCandidate]:
    if min_extents < 2 or limit < 1:
        raise ValueError("min_extents must be at least 2 and limit positive")
    rows = tx.all(
        "SELECT i.inode, i.owner, v.size, v.etag, v.sha256, COUNT(*) AS n "
        "FROM inodes i JOIN versions v ON v.version_id = i.version_id "
        "JOIN version_extents ve ON ve.version_id = v.version_id "
        "WHERE i.kind = 'file' AND i.inode > ? "
        "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.inode = i.inode "
        f"AND u.state IN {LIVE_SQL}) "
        "GROUP BY i.inode, i.owner, v.size, v.etag, v.sha256 "
        "HAVING COUNT(*) >= ? ORDER BY i.inode LIMIT ?",
        after if after is not None else 0,
        min_extents,
        limit,
    )
    found = []
    for r in rows:
        path = path_of(tx, r["inode"])
        if path is None:
            continue
        found.append(
            CompactionCandidate(
                inode=r["inode"],
                path=path,
                owner=r["owner"],
                size=r["size"],
                etag=r["etag"],
                sha256=r["sha256"],
                extents=int(r["n"]),
            )
        )
    return found
