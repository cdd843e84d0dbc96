"""The storage-server registry, admin jobs, named leases and status.

Jobs are claimed with a compare-and-set on their state, so of several front
ends polling the queue exactly one runs each job.  A lease is a named row
with an owner and an expiry: whoever holds it unexpired (one front end runs
repair at a time) may renew it; anyone may take it once it has expired.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wsfront.catalog._blobs import replica_health
from wsfront.catalog._db import Tx
from wsfront.catalog.errors import LeaseHeld, NotFound
from wsfront.catalog.records import (
    JOB_DONE,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    NODE_DRAINING,
    Job,
    LeaseRow,
    Node,
)
from wsfront.catalog.schema import LIVE_SQL
from wsfront.text import one_line

#: The most characters of a storage server's last error the registry keeps:
#: enough for "could not connect to storage server s1: Connection refused"
#: and a handshake's refusal, not for whatever a hostile server sends.
NODE_ERROR_MAX = 200


def _node(row: Any) -> Node:
    return Node(
        name=row["name"],
        endpoint=row["endpoint"],
        state=row["state"],
        free_bytes=row["free_bytes"],
        total_bytes=row["total_bytes"],
        seen_at=row["seen_at"],
        last_error=row["last_error"],
        store_id=row["store_id"],
        store_replaced=row["store_replaced"],
        store_replaced_at=row["store_replaced_at"],
        store_lost=row["store_lost"],
    )


def short_error(text: str | None) -> str | None:
    """``text`` as one line of at most NODE_ERROR_MAX printable characters.

    The reasons come from the front end's storage pool (a refused or lost
    connection, a failed handshake, a probe's timeout), which never carry
    the cluster secret; a message a storage server sent back is its own
    text, so line breaks and control characters are flattened (one status
    line per server) and the length is capped.
    """
    if text is None:
        return None
    return one_line(text, NODE_ERROR_MAX, controls=True) or None


def register_node(tx: Tx, name: str, endpoint: str) -> Node:
    tx.execute(
        "INSERT INTO nodes (name, endpoint, state) VALUES (?, ?, 'unknown') "
        "ON CONFLICT (name) DO UPDATE SET endpoint = excluded.endpoint",
        name,
        endpoint,
    )
    return _node(tx.one("SELECT * FROM nodes WHERE name = ?", name))


def list_nodes(tx: Tx) -> list[Node]:
    return [_node(r) for r in tx.all("SELECT * FROM nodes ORDER BY name")]


def set_node_health(
    tx: Tx,
    name: str,
    state: str,
    free_bytes: int | None,
    total_bytes: int | None,
    seen_at: float | None,
    last_error: str | None = None,
    endpoint: str | None = None,
) -> Node | None:
    """Record a probe.  A ``draining`` state is neither set nor cleared
    here (that is ``set_node_draining``'s): a front end writes what it read
    a moment before, which must not undo a drain or an undrain meanwhile.

    With ``endpoint`` (the one the probe went to), only if the registry
    still names that endpoint: None, nothing recorded, if the server was
    re-registered elsewhere meanwhile.  A front end that has not caught up
    with a move would otherwise write the old address's "down" over what
    the others see at the new one, and ``wsfs status`` would flap."""
    if state == NODE_DRAINING:
        state_sql, params = "state", []
    else:
        state_sql, params = "CASE WHEN state = ? THEN state ELSE ? END", [NODE_DRAINING, state]
    where, where_params = "name = ?", [name]
    if endpoint is not None:
        where, where_params = "name = ? AND endpoint = ?", [name, endpoint]
    if not tx.execute(
        f"UPDATE nodes SET state = {state_sql}, free_bytes = ?, total_bytes = ?, seen_at = ?, "
        f"last_error = ? WHERE {where}",
        *params,
        free_bytes,
        total_bytes,
        seen_at,
        short_error(last_error),
        *where_params,
    ):
        if endpoint is not None and tx.one("SELECT 1 AS one FROM nodes WHERE name = ?", name):
            return None  # moved: the probe was of an address no longer its
        raise NotFound(f"no storage node {name!r}")
    return _node(tx.one("SELECT * FROM nodes WHERE name = ?", name))


def set_node_store(
    tx: Tx, now: float, name: str, expected: str | None, store_id: str, lost: int | None = None
) -> bool:
    """Record that ``name`` runs on store ``store_id``, if the registry
    still says ``expected`` (a compare-and-set: of two front ends that
    noticed the same change, one records it).  With ``expected`` None the
    server's first id is taken, nothing more; otherwise it is a
    replacement: ``expected``, ``now`` and ``lost`` (replicas found gone)
    are kept for ``wsfs status``.  False if the registry said otherwise
    (or has no such server)."""
    if expected is None:
        return bool(
            tx.execute(
                "UPDATE nodes SET store_id = ? WHERE name = ? AND store_id IS NULL",
                store_id,
                name,
            )
        )
    return bool(
        tx.execute(
            "UPDATE nodes SET store_id = ?, store_replaced = ?, store_replaced_at = ?, "
            "store_lost = ? WHERE name = ? AND store_id = ?",
            store_id,
            expected,
            now,
            lost,
            name,
            expected,
        )
    )


#: The ``settings`` key of the catalog's cluster id (schema 10).
CLUSTER_ID_KEY = "cluster_id"


def cluster_id(tx: Tx, new_id: str) -> str:
    """The catalog's cluster id; ``new_id`` becomes it if it has none.
    Race-free on both backends: of two front ends that start on a catalog
    without one, the insert of one wins (``ON CONFLICT DO NOTHING`` waits
    for the other's commit) and both read the winner's."""
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        CLUSTER_ID_KEY,
        new_id,
    )
    return str(_stored_cluster_id(tx))


def _stored_cluster_id(tx: Tx) -> str | None:
    """The cluster id the catalog holds, None if no front end made one."""
    value = tx.value("SELECT value FROM settings WHERE key = ?", CLUSTER_ID_KEY)
    return None if value is None else str(value)


def has_replicas_on(tx: Tx, node: str) -> bool:
    """Whether the catalog records any replica (in any state) on ``node``:
    a front end binds an unbound store that holds blobs only if so (an
    upgrade of this cluster's stores), never another cluster's."""
    return tx.one("SELECT 1 AS one FROM replicas WHERE node = ? LIMIT 1", node) is not None


def adopt_cluster_id(tx: Tx, value: str) -> None:
    """Make ``value`` the catalog's cluster id, whatever it was: for
    ``fsck --rebuild-catalog``, whose new catalog takes the id its stores
    are bound to (it refuses a catalog that holds files)."""
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        CLUSTER_ID_KEY,
        value,
    )


def set_node_draining(tx: Tx, name: str, draining: bool) -> Node:
    """Start (``wsfs drain``) or end (``wsfs undrain``) a drain; an ended
    one leaves the state ``unknown`` until the next probe is recorded."""
    if draining:
        changed = tx.execute("UPDATE nodes SET state = ? WHERE name = ?", NODE_DRAINING, name)
    else:
        changed = tx.execute(
            "UPDATE nodes SET state = CASE WHEN state = ? THEN 'unknown' ELSE state END "
            "WHERE name = ?",
            NODE_DRAINING,
            name,
        )
    if not changed:
        raise NotFound(f"no storage node {name!r}")
    return _node(tx.one("SELECT * FROM nodes WHERE name = ?", name))


def _job(row: Any) -> Job:
    return Job(
        job_id=row["job_id"],
        kind=row["kind"],
        args=json.loads(row["args"]),
        state=row["state"],
        owner=row["owner"],
        claim=row["claim"],
        progress=json.loads(row["progress"]),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def get_job(tx: Tx, job_id: int) -> Job:
    row = tx.one("SELECT * FROM jobs WHERE job_id = ?", job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return _job(row)


def list_jobs(tx: Tx, states: Iterable[str] | None) -> list[Job]:
    if states is None:
        rows = tx.all("SELECT * FROM jobs ORDER BY job_id")
    else:
        wanted = sorted(set(states))
        marks = ", ".join("?" for _ in wanted)
        rows = tx.all(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY job_id", *wanted)
    return [_job(r) for r in rows]


def enqueue_job(tx: Tx, now: float, kind: str, args: dict[str, Any]) -> Job:
    node = args.get("node")
    # A drain of an unknown node is refused when queued, not minutes later
    # by the front end running it.  A known one is marked draining at once
    # (new uploads avoid it), and by nothing else, so that `wsfs undrain`
    # (set_node_draining) stops every drain job of the node, even one
    # queued again after its runner died.
    if kind == "drain":
        set_node_draining(tx, node, True)  # NotFound for an unknown node
    job_id = tx.value(
        "INSERT INTO jobs (kind, args, state, progress, created_at, updated_at) "
        "VALUES (?, ?, ?, '{}', ?, ?) RETURNING job_id",
        kind,
        json.dumps(args),
        JOB_QUEUED,
        now,
        now,
    )
    return get_job(tx, job_id)


def claim_job(tx: Tx, now: float, owner: str, kinds: Iterable[str]) -> Job | None:
    """Take the oldest queued job of ``kinds``; a candidate another claimer
    took meanwhile (the CAS changed no row) is skipped for the next one.

    The claim bumps the job's ``claim``: the Job returned carries the
    number this run must name to change the job, which no earlier run of
    it holds, even one under the same owner name (a restarted front end)."""
    wanted = sorted(set(kinds))
    if not wanted:
        return None
    marks = ", ".join("?" for _ in wanted)
    skipped: list[int] = []
    while True:
        sql = f"SELECT job_id FROM jobs WHERE state = ? AND kind IN ({marks})"
        params: list[Any] = [JOB_QUEUED, *wanted]
        if skipped:
            sql += f" AND job_id NOT IN ({', '.join('?' for _ in skipped)})"
            params += skipped
        candidate = tx.value(sql + " ORDER BY job_id LIMIT 1", *params)
        if candidate is None:
            return None
        if tx.execute(
            "UPDATE jobs SET state = ?, owner = ?, claim = claim + 1, updated_at = ? "
            "WHERE job_id = ? AND state = ?",
            JOB_RUNNING,
            owner,
            now,
            candidate,
            JOB_QUEUED,
        ):
            return get_job(tx, candidate)
        skipped.append(candidate)


def cancel_job(tx: Tx, now: float, job_id: int, why: str) -> bool:
    """Fail a job that is still queued (no runner has it), with ``why``;
    False if it is not queued (any more)."""
    return bool(
        tx.execute(
            "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE job_id = ? AND state = ?",
            JOB_FAILED,
            why,
            now,
            job_id,
            JOB_QUEUED,
        )
    )


def requeue_job(tx: Tx, now: float, job_id: int, owner: str, claim: int, note: str) -> Job:
    """Put a running job of ``owner`` back in the queue (its runner is gone),
    keeping its id so the CLI waiting on it goes on waiting; ``note`` (why)
    stays in ``error`` until the job finishes.  LeaseHeld if it is not
    running under ``owner``'s claim ``claim`` (the one the caller saw)."""
    _change_owned(
        tx, job_id, owner, claim, "state = ?, owner = NULL, error = ?, updated_at = ?",
        JOB_QUEUED, note, now,
    )  # fmt: skip
    return get_job(tx, job_id)


def _owned_running(tx: Tx, job_id: int, owner: str, claim: int) -> None:
    """LeaseHeld naming who runs job ``job_id`` now, unless it is still
    ``owner``'s claim ``claim``."""
    job = get_job(tx, job_id)
    if job.state != JOB_RUNNING or job.owner != owner:
        raise LeaseHeld(f"job {job_id} is {job.state} and owned by {job.owner}")
    if job.claim != claim:
        raise LeaseHeld(
            f"job {job_id} was claimed again by {owner}: it runs under claim {job.claim}, "
            f"not {claim}"
        )


def _change_owned(
    tx: Tx, job_id: int, owner: str, claim: int, assignments: str, *values: Any
) -> None:
    """``UPDATE jobs SET assignments`` of job ``job_id`` if it is running
    under ``owner``'s claim ``claim``, else LeaseHeld (NotFound for no such
    job).

    The owner, the claim and the state are conditions of the UPDATE
    itself, and what it changed decides: a check read before it could pass
    on PostgreSQL (READ COMMITTED) while another front end re-queued and
    claimed the job (or ended it), the UPDATE, waiting on that row, then
    changing nothing, or overwriting the other's end, and the old runner
    being told it succeeded.  The owner alone is not enough: a restarted
    front end has the name of the run before it, whose job it re-queues
    and may claim again."""
    if tx.execute(
        f"UPDATE jobs SET {assignments} WHERE job_id = ? AND owner = ? AND claim = ? AND state = ?",
        *values,
        job_id,
        owner,
        claim,
        JOB_RUNNING,
    ):
        return
    _owned_running(tx, job_id, owner, claim)  # says who has it now
    raise LeaseHeld(f"job {job_id} is not running under {owner}'s claim {claim}")


def update_job(
    tx: Tx, now: float, job_id: int, owner: str, claim: int, progress: dict[str, Any]
) -> Job:
    _change_owned(
        tx, job_id, owner, claim, "progress = ?, updated_at = ?", json.dumps(progress), now
    )
    return get_job(tx, job_id)


def finish_job(
    tx: Tx,
    now: float,
    job_id: int,
    owner: str,
    claim: int,
    result: dict[str, Any] | None,
    error: str | None,
) -> Job:
    _change_owned(
        tx, job_id, owner, claim, "state = ?, result = ?, error = ?, updated_at = ?",
        JOB_FAILED if error is not None else JOB_DONE,
        json.dumps(result) if result is not None else None, error, now,
    )  # fmt: skip
    return get_job(tx, job_id)


#: Whether the row's life is the caller's: its token, NULL alike (a row of
#: older code, or a caller that gives none, as the CLI's tests do).
_SAME_LIFE = "COALESCE(leases.token, '') = COALESCE(?, '')"


def acquire_lease(
    tx: Tx,
    now: float,
    name: str,
    owner: str,
    ttl_seconds: float,
    token: str | None = None,
    holder: str | None = None,
    lapsed: bool = True,
) -> bool:
    """Take the lease if it is free or expired, or renew it if ``owner``
    holds it under the same ``token``: the same owner name under another
    token is another life of that front end (a second process given the
    same --name, or the one that took this one's name over while it was
    frozen), whose lease this must not renew.

    Without ``lapsed``, a lease another holder let expire is not taken
    either: "expired" is judged by the caller's clock (``now``), and a
    host whose clock runs ahead would take a live holder's lease at once.
    A front end's name claim takes another life's lease only by watching
    it and a compare-and-set (``take_over_lease``,
    ``wsfront.maintenance.name_claim``)."""
    expired = "OR leases.expires_at <= ? " if lapsed else ""
    row = tx.one(
        "INSERT INTO leases (name, owner, expires_at, token, holder, ttl_seconds) "
        "VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
        "expires_at = excluded.expires_at, token = excluded.token, "
        "holder = excluded.holder, ttl_seconds = excluded.ttl_seconds "
        f"WHERE (leases.owner = excluded.owner AND {_SAME_LIFE}) "
        f"{expired}RETURNING owner",
        name,
        owner,
        now + ttl_seconds,
        token,
        holder,
        ttl_seconds,
        token,
        *([now] if lapsed else []),
    )
    return row is not None


def take_over_lease(
    tx: Tx,
    now: float,
    name: str,
    owner: str,
    ttl_seconds: float,
    token: str,
    holder: str | None,
    seen: LeaseRow,
) -> bool:
    """Take the lease from the life ``seen`` held, if the row is still
    exactly as seen (that life did not renew it since, nobody else took
    it): a compare-and-set, so a renewal that lands meanwhile wins."""
    row = tx.one(
        "UPDATE leases SET owner = ?, expires_at = ?, token = ?, holder = ?, ttl_seconds = ? "
        f"WHERE name = ? AND owner = ? AND expires_at = ? AND {_SAME_LIFE} RETURNING name",
        owner,
        now + ttl_seconds,
        token,
        holder,
        ttl_seconds,
        name,
        seen.owner,
        seen.expires_at,
        seen.token,
    )
    return row is not None


def release_lease(tx: Tx, name: str, owner: str, token: str | None = None) -> bool:
    """Give the lease up if ``owner`` holds it under ``token`` (a life that
    lost its name must not delete its successor's lease)."""
    sql = f"DELETE FROM leases WHERE name = ? AND owner = ? AND {_SAME_LIFE}"
    return bool(tx.execute(sql, name, owner, token))


def get_lease(tx: Tx, name: str) -> tuple[str, float] | None:
    """The lease's (owner, expires_at), expired or not, or None: a read,
    so asking who holds a lease never changes who does."""
    row = get_lease_row(tx, name)
    return None if row is None else (row.owner, row.expires_at)


def get_lease_row(tx: Tx, name: str) -> LeaseRow | None:
    """The whole row of the lease (``LeaseRow``), expired or not, or None."""
    row = tx.one(
        "SELECT name, owner, expires_at, token, holder, ttl_seconds FROM leases WHERE name = ?",
        name,
    )
    if row is None:
        return None
    ttl = row["ttl_seconds"]
    return LeaseRow(
        row["name"], row["owner"], float(row["expires_at"]), row["token"], row["holder"],
        None if ttl is None else float(ttl),
    )  # fmt: skip


def list_leases(tx: Tx, prefix: str) -> dict[str, tuple[str, float]]:
    """Leases whose name starts with ``prefix``: name -> (owner, expires_at).

    The prefix is compared with ``substr``, not LIKE (SQLite's LIKE ignores
    ASCII case, and ``_`` and ``%`` in a name would need escaping) nor a
    range (PostgreSQL orders ``leases.name`` by the database's collation):
    both backends count characters alike, and the table holds one row per
    front end, so no index is missed.
    """
    rows = tx.all(
        "SELECT name, owner, expires_at FROM leases WHERE substr(name, 1, ?) = ? ORDER BY name",
        len(prefix),
        prefix,
    )
    return {r["name"]: (r["owner"], float(r["expires_at"])) for r in rows}


def status(tx: Tx) -> dict[str, Any]:
    """Totals, replica health, the storage registry and the cluster id
    (None until the first front end's start makes it: read, never made,
    here; ``wsfs status`` is no front end)."""
    files = tx.one(
        "SELECT COUNT(*) AS files, COALESCE(SUM(v.size), 0) AS bytes "
        "FROM inodes i JOIN versions v ON v.version_id = i.version_id"
    )
    return {
        "cluster_id": _stored_cluster_id(tx),
        "files": int(files["files"]),
        "bytes": int(files["bytes"]),
        "dirs": int(tx.value("SELECT COUNT(*) AS n FROM inodes WHERE kind = 'dir'")),
        "live_uploads": int(
            tx.value(f"SELECT COUNT(*) AS n FROM uploads WHERE state IN {LIVE_SQL}")
        ),
        **replica_health(tx),
        "nodes": list_nodes(tx),
    }
