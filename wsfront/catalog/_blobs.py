"""Blob bookkeeping: replica states, under-replication, garbage collection.

A blob is referenced while a committed version's extent or a live upload
(as an earlier segment or its current blob) points at it; once nothing
does, it is collectable and its replicas may be deleted.
"""

from __future__ import annotations

from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._rows import insert_blob, load_blob
from wsfront.catalog.errors import Exists, NotFound
from wsfront.catalog.records import REPLICA_STATES, BlobRecord
from wsfront.catalog.schema import LIVE_SQL

REFERENCED = (
    "(EXISTS (SELECT 1 FROM version_extents ve WHERE ve.blob_id = b.blob_id)"
    " OR EXISTS (SELECT 1 FROM upload_extents ue WHERE ue.blob_id = b.blob_id)"
    " OR EXISTS (SELECT 1 FROM uploads u WHERE u.blob_id = b.blob_id"
    f" AND u.state IN {LIVE_SQL}))"
)
UNDER_REPLICATED = (
    "b.sealed = 1 AND (SELECT COUNT(*) FROM replicas r WHERE r.blob_id = b.blob_id"
    f" AND r.state = 'ok') < b.wanted AND {REFERENCED}"
)


def _blob(tx: Tx, blob_id: str) -> BlobRecord:
    blob = load_blob(tx, blob_id)
    if blob is None:
        raise NotFound(f"no blob {blob_id!r}")
    return blob


def get_blob(tx: Tx, blob_id: str) -> BlobRecord:
    return _blob(tx, blob_id)


def add_blob(tx: Tx, now: float, blob_id: str, replicas: list[str], wanted: int) -> BlobRecord:
    insert_blob(tx, blob_id, replicas, wanted, now)
    return _blob(tx, blob_id)


def mark_replica(tx: Tx, blob_id: str, node: str, state: str) -> BlobRecord:
    if state not in REPLICA_STATES:
        raise ValueError(f"unknown replica state {state!r}")
    _blob(tx, blob_id)
    if not tx.execute(
        "UPDATE replicas SET state = ? WHERE blob_id = ? AND node = ?", state, blob_id, node
    ):
        raise NotFound(f"blob {blob_id} has no replica on {node}")
    return _blob(tx, blob_id)


def add_replica(tx: Tx, blob_id: str, node: str) -> BlobRecord:
    _blob(tx, blob_id)
    if not tx.execute(
        "UPDATE replicas SET state = 'ok' WHERE blob_id = ? AND node = ?", blob_id, node
    ):
        tx.execute("INSERT INTO replicas (blob_id, node, state) VALUES (?, ?, 'ok')", blob_id, node)
    return _blob(tx, blob_id)


def _blobs_where(tx: Tx, condition: str, limit: int) -> list[BlobRecord]:
    rows: list[Any] = tx.all(
        f"SELECT b.blob_id FROM blobs b WHERE {condition} ORDER BY b.blob_id LIMIT ?", limit
    )
    return [_blob(tx, r["blob_id"]) for r in rows]


def under_replicated(tx: Tx, limit: int) -> list[BlobRecord]:
    return _blobs_where(tx, UNDER_REPLICATED, limit)


def count_under_replicated(tx: Tx) -> int:
    return int(tx.value(f"SELECT COUNT(*) AS n FROM blobs b WHERE {UNDER_REPLICATED}"))


def collectable_blobs(tx: Tx, limit: int) -> list[BlobRecord]:
    return _blobs_where(tx, f"NOT {REFERENCED}", limit)


def forget_blob(tx: Tx, blob_id: str) -> None:
    tx.lock_rows("blobs", "blob_id", [blob_id])
    _blob(tx, blob_id)
    if tx.one(f"SELECT 1 AS one FROM blobs b WHERE b.blob_id = ? AND {REFERENCED}", blob_id):
        raise Exists(f"blob {blob_id} is still referenced")
    tx.execute("DELETE FROM replicas WHERE blob_id = ?", blob_id)
    tx.execute("DELETE FROM blobs WHERE blob_id = ?", blob_id)
