"""Blob bookkeeping: replica states, under-replication, garbage collection.

A blob is referenced while a committed version's extent or a live upload
(as an earlier segment or its current blob) points at it; once nothing
does, it is collectable and its replicas may be deleted.
"""

from __future__ import annotations

from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._rows import insert_blob, load_blob, path_of
from wsfront.catalog.errors import Exists, NotFound
from wsfront.catalog.records import (
    NODE_DRAINING,
    REPLICA_LOST,
    REPLICA_OK,
    REPLICA_STALE,
    REPLICA_STATES,
    BlobRecord,
)
from wsfront.catalog.schema import LIVE_SQL

#: A live upload's current blob is looked up per blob in the index of the
#: blobs of live uploads (schema 5), like the extents' blobs in theirs: a
#: query about one blob (``forget_blob``, per blob GC deletes) reads a few
#: entries, not every live upload.
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

#: An ok replica on a server not known to be down: the registry's state is
#: what a front end's probe last recorded (``set_node_health``), and a
#: draining server keeps its state but records the error of a failed probe.
#: A server never probed (``unknown``) counts: nothing says it is down.
#: One bound to another cluster (``foreign``) is used for nothing, as down.
LIVE_REPLICA = (
    "r.state = 'ok' AND EXISTS (SELECT 1 FROM nodes n WHERE n.name = r.node"
    " AND n.state NOT IN ('down', 'foreign')"
    " AND NOT (n.state = 'draining' AND n.last_error IS NOT NULL))"
)
_LIVE_COUNT = f"(SELECT COUNT(*) FROM replicas r WHERE r.blob_id = b.blob_id AND {LIVE_REPLICA})"

#: How many paths of unavailable files ``replica_health`` names.
UNAVAILABLE_PATHS = 10


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


#: How far each replica state distrusts a copy: ``ok`` counts; ``lost`` is
#: a copy that is gone or out of reach (its server was declared lost, fsck
#: found it missing), and may be whole if its server comes back; ``stale``
#: is a copy that is there but wrong, damaged or superseded (a reader's or
#: compaction's ChecksumError, a copy's wrong size, a drain's move, a missed
#: fence).  A mark only ever raises a replica's distrust, so marks that race
#: (a reader's ChecksumError on a fallback replica against repair declaring
#: its server lost) end in the same state in either order: ``stale``, for a
#: damage mark must stick.  Repair counts a ``lost`` copy that reads back
#: equal to a verified one ok again (``reclaim_replica``), never a
#: ``stale`` one; ranked below ``lost``, a damage mark on a lost row (its
#: copy failed a check while its server was counted lost) would be ignored
#: and the copy reclaimed later.  (Whether a stale copy's server was also
#: given up on is not kept: both are replaced alike.)  Only ``add_replica``,
#: after a verified copy, or ``reclaim_replica``, after a lost copy read
#: back equal to a verified one, makes a replica ok again.
DISTRUST = {REPLICA_OK: 0, REPLICA_LOST: 1, REPLICA_STALE: 2}
assert set(DISTRUST) == REPLICA_STATES


def mark_replica(tx: Tx, blob_id: str, node: str, state: str) -> BlobRecord:
    """Raise the distrust of ``node``'s replica of ``blob_id`` to ``state``
    (lost or stale, ``DISTRUST``); a replica already at least that
    distrusted keeps its state.  ValueError for ``ok`` (that is ``add_replica``'s) or an unknown
    state; NotFound if the blob has no replica on ``node``."""
    if state not in REPLICA_STATES:
        raise ValueError(f"unknown replica state {state!r}")
    if state == REPLICA_OK:
        raise ValueError("a replica becomes ok only through add_replica (a verified copy)")
    _blob(tx, blob_id)
    weaker = sorted(s for s, rank in DISTRUST.items() if rank < DISTRUST[state])
    marks = ", ".join("?" * len(weaker))
    raised = tx.execute(
        f"UPDATE replicas SET state = ? WHERE blob_id = ? AND node = ? AND state IN ({marks})",
        state,
        blob_id,
        node,
        *weaker,
    )
    if not raised and not tx.one(
        "SELECT 1 AS one FROM replicas WHERE blob_id = ? AND node = ?", blob_id, node
    ):
        raise NotFound(f"blob {blob_id} has no replica on {node}")
    return _blob(tx, blob_id)


def add_replica(tx: Tx, blob_id: str, node: str) -> BlobRecord:
    """Record ``node``'s verified copy of ``blob_id`` as ok.  NotFound if
    the blob is forgotten (GC collected it while the copy was made): the
    copy is nobody's, and its maker deletes it.

    The blob's row is locked first, as ``forget_blob`` locks it, so the two
    serialise on PostgreSQL too (SQLite's BEGIN IMMEDIATE already does):
    a forget that commits first is seen here (the lock, then the re-read,
    find no row), one that comes after sees this replica's row and deletes
    it with the others, naming it to its caller.  Without the lock, a
    forget's ``DELETE FROM replicas`` could miss the row inserted here, and
    its ``DELETE FROM blobs`` leave it without its blob."""
    tx.lock_rows("blobs", "blob_id", [blob_id])
    if tx.one("SELECT 1 AS one FROM blobs WHERE blob_id = ?", blob_id) is None:
        raise NotFound(f"no blob {blob_id!r} (forgotten): its copy on {node} is not recorded")
    if not tx.execute(
        "UPDATE replicas SET state = 'ok' WHERE blob_id = ? AND node = ?", blob_id, node
    ):
        tx.execute("INSERT INTO replicas (blob_id, node, state) VALUES (?, ?, 'ok')", blob_id, node)
    return _blob(tx, blob_id)


def reclaim_replica(tx: Tx, blob_id: str, node: str) -> bool:
    """Count ``node``'s lost replica of ``blob_id`` ok again (its server came
    back and repair read it back equal to a verified copy); True if it did.
    Only a row still ``lost`` changes: anything that happened to it since
    repair read it (another repair's copy recorded it ok, a reader's or a
    copy's damage mark made it stale) leaves it as it is, and False says so
    (what happens to the copy itself while its row stays lost is not seen
    here: docs/maintenance.md, Repair).  Nor
    does a replica on a server being drained (``wsfs drain`` began since
    repair's pass read the registry): drain passes over a blob whose copy
    there is lost, so one counted ok there afterwards would leave with the
    server.  The blob's row is locked first, as ``add_replica`` does, so
    this serialises with ``forget_blob``: NotFound if the blob was
    forgotten meanwhile."""
    tx.lock_rows("blobs", "blob_id", [blob_id])
    if tx.one("SELECT 1 AS one FROM blobs WHERE blob_id = ?", blob_id) is None:
        raise NotFound(f"no blob {blob_id!r} (forgotten): its replica on {node} stays unrecorded")
    return bool(
        tx.execute(
            "UPDATE replicas SET state = ? WHERE blob_id = ? AND node = ? AND state = ?"
            " AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.name = ? AND n.state = ?)",
            REPLICA_OK,
            blob_id,
            node,
            REPLICA_LOST,
            node,
            NODE_DRAINING,
        )
    )


def _blobs_where(tx: Tx, condition: str, limit: int) -> list[BlobRecord]:
    rows: list[Any] = tx.all(
        f"SELECT b.blob_id FROM blobs b WHERE {condition} ORDER BY b.blob_id LIMIT ?", limit
    )
    return [_blob(tx, r["blob_id"]) for r in rows]


def under_replicated(tx: Tx, limit: int) -> list[BlobRecord]:
    return _blobs_where(tx, UNDER_REPLICATED, limit)


def count_under_replicated(tx: Tx) -> int:
    return int(tx.value(f"SELECT COUNT(*) AS n FROM blobs b WHERE {UNDER_REPLICATED}"))


def replica_health(tx: Tx, with_paths: bool = True) -> dict[str, Any]:
    """What ``wsfs status`` says of the replicas, counting only those on
    servers that are up (``LIVE_REPLICA``): a file whose replicas are all
    on stopped servers is unavailable now, whatever the catalog's replica
    states (repair marks them lost only after its grace period).  The
    metrics and the status page show these counts too (``replica_health``
    of the catalog, through their snapshot); ``count_under_replicated``
    (repair's) counts ok replicas wherever they are.

    Each sealed blob's live replicas are counted once per query, and only
    the blobs short of them are looked up further (referenced? in which
    files?), the paths only when some file is unavailable: five passes
    over every blob and file took 5.3 s on a catalog of 300k files, this
    1.9 s.  ``with_paths`` False skips the paths (a further scan over every
    file), which only ``wsfs status`` shows."""
    # The sealed blobs with fewer live replicas than wanted, each live count
    # computed once; the costlier tests (referenced? which files?) only for
    # those, through the extents' blob index.
    under = (
        "WITH u AS (SELECT b.blob_id AS blob_id, b.live AS live FROM (SELECT b.blob_id AS"
        f" blob_id, b.wanted AS wanted, {_LIVE_COUNT} AS live FROM blobs b WHERE b.sealed = 1)"
        " b WHERE b.live < b.wanted) "
    )
    blobs = tx.one(
        f"{under}SELECT COUNT(*) AS under,"
        " COALESCE(SUM(CASE WHEN live = 0 THEN 1 ELSE 0 END), 0) AS none"
        f" FROM u b WHERE {REFERENCED}"
    )
    # A blob reached through a committed version's extent is referenced.
    files = tx.one(
        f"{under}SELECT COUNT(DISTINCT i.inode) AS under,"
        " COUNT(DISTINCT CASE WHEN u.live = 0 THEN i.inode END) AS none"
        " FROM u JOIN version_extents ve ON ve.blob_id = u.blob_id"
        " JOIN inodes i ON i.version_id = ve.version_id"
    )
    paths: list[str] = []
    if files["none"] and with_paths:
        rows = tx.all(
            "SELECT DISTINCT i.inode FROM inodes i"
            " JOIN version_extents ve ON ve.version_id = i.version_id"
            f" JOIN blobs b ON b.blob_id = ve.blob_id WHERE b.sealed = 1 AND {_LIVE_COUNT} = 0"
            " ORDER BY i.inode LIMIT ?",
            UNAVAILABLE_PATHS,
        )
        paths = [p for p in (path_of(tx, r["inode"]) for r in rows) if p is not None]
    return {
        "under_replicated": int(blobs["under"]),
        "under_replicated_files": int(files["under"]),
        "unavailable": int(blobs["none"]),
        "unavailable_files": int(files["none"]),
        "unavailable_paths": paths,
    }


def collectable_blobs(tx: Tx, limit: int) -> list[BlobRecord]:
    return _blobs_where(tx, f"NOT {REFERENCED}", limit)


def forget_blob(tx: Tx, blob_id: str) -> list[str]:
    """Remove an unreferenced blob's record and its replicas' rows; return
    the nodes those rows named (sorted), read under the blob's row lock
    (``add_replica`` takes it too): a copy recorded after its caller listed
    the blob is among them, so the caller deletes that copy as well."""
    tx.lock_rows("blobs", "blob_id", [blob_id])
    _blob(tx, blob_id)
    if tx.one(f"SELECT 1 AS one FROM blobs b WHERE b.blob_id = ? AND {REFERENCED}", blob_id):
        raise Exists(f"blob {blob_id} is still referenced")
    nodes = [
        r["node"]
        for r in tx.all("SELECT node FROM replicas WHERE blob_id = ? ORDER BY node", blob_id)
    ]
    tx.execute("DELETE FROM replicas WHERE blob_id = ?", blob_id)
    tx.execute("DELETE FROM blobs WHERE blob_id = ?", blob_id)
    return nodes
