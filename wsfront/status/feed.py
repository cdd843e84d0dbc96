"""The JSON document the status page polls: one snapshot of the front end.

Everything in it comes from memory (the transfer layer's sessions and
counters, the pool's health probes, the sampler) or from the briefly cached
catalog snapshot, so polling it every second costs no per-request catalog
query.  User-controlled strings (paths, user names) travel as JSON values;
the page only ever puts them into text nodes.
"""

from __future__ import annotations

from typing import Any

from wsfront.metrics_catalog import CatalogSnapshot
from wsfront.status.sampler import ThroughputSampler

MAX_EVENTS = 50


def _nodes(transfers, now: float) -> list[dict[str, Any]]:
    out = []
    for node in transfers.pool.nodes():
        total = node.total_bytes
        out.append(
            {
                "name": node.name,
                "endpoint": node.endpoint,
                "up": node.up,
                "foreign": node.foreign,
                "free_bytes": node.free_bytes,
                "total_bytes": total,
                "fill": (total - node.free_bytes) / total if total else None,
                "seen_ago": None if node.last_seen is None else max(0.0, now - node.last_seen),
                "last_error": node.last_error,
                # The endpoint the registry moved it to, not taken while no
                # probe of it passed (``StoragePool.move``), and why.
                "pending_endpoint": None if node.pending is None else node.pending.endpoint,
                "pending_error": None if node.pending is None else node.pending.last_error,
            }
        )
    return out


def _sessions(transfers, sampler: ThroughputSampler) -> list[dict[str, Any]]:
    out = []
    for upload_id, session in sorted(transfers.sessions.items()):
        record = session.session
        out.append(
            {
                "upload_id": upload_id,
                "path": record.path,
                "user": record.user,
                "offset": session.offset,
                "durable": session.durable,
                "size": record.declared_length,
                "received": session.received,
                "rate": sampler.rate(upload_id),
                "replicas": list(session.replicas),
                "epoch": session.epoch,
                "state": session.state,
            }
        )
    return out


def _events(transfers) -> list[dict[str, Any]]:
    events = list(transfers.stats.events)[-MAX_EVENTS:]
    return [{"at": e.at, "kind": e.kind, "detail": e.detail} for e in reversed(events)]


def _front_ends(transfers, snapshot: CatalogSnapshot | None) -> list[dict[str, Any]]:
    owners = snapshot.uploads_by_owner() if snapshot is not None else {}
    names = sorted(set(owners) | {transfers.name})
    return [
        {
            "name": name,
            "this": name == transfers.name,
            "active": owners.get(name, {}).get("active", 0),
            "interrupted": owners.get(name, {}).get("interrupted", 0),
        }
        for name in names
    ]


def build_feed(
    transfers,
    sampler: ThroughputSampler,
    snapshot: CatalogSnapshot | None,
    csrf_token: str,
    now: float,
) -> dict[str, Any]:
    """The feed for one administrator at time ``now``."""
    stats = transfers.stats
    points = list(sampler.points)
    return {
        "now": now,
        "front_end": transfers.name,
        "csrf": csrf_token,
        "totals": {
            "read_bytes": stats.read_bytes,
            "write_bytes": stats.write_bytes,
            "read_failovers": stats.read_failovers,
            "takeovers": stats.takeovers,
            "fenced": stats.fenced,
            "replica_drops": stats.replica_drops,
            "uploads_committed": stats.uploads_committed,
            "reads_completed": stats.reads_completed,
        },
        # As ``wsfs status`` counts them (snapshot: replica_health).
        "under_replicated": None if snapshot is None else snapshot.under_replicated,
        "unavailable": None if snapshot is None else snapshot.unavailable,
        "nodes": _nodes(transfers, now),
        "front_ends": _front_ends(transfers, snapshot),
        "sessions": _sessions(transfers, sampler),
        "events": _events(transfers),
        "throughput": {
            "interval": sampler.interval,
            "t": [round(t - now, 3) for t, _r, _w in points],
            "read": [round(r) for _t, r, _w in points],
            "write": [round(w) for _t, _r, w in points],
        },
    }
