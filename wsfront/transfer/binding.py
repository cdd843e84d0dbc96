"""Binding the storage servers a front end uses to its catalog's cluster.

Storage servers accept any front end that knows the shared secret, so a
second catalog pointed at them (a config copied between clusters, a move
from SQLite to PostgreSQL) took the first one's blobs for orphans and
deleted them.  The pool therefore binds each store it uses to its
catalog's cluster id at the first health answer (``bind``, durable on the
server) and uses a store bound to another cluster for nothing: it is down
for this front end, and ``StoragePool.client`` hands out a client that
refuses every operation (``ForeignClient``), so no read, write, copy,
listing or delete, whichever job asks, reaches it.

That view is as fresh as the last health probe (a second).  The delete
itself is checked by the store: a bound client names its cluster in every
delete, and a store bound elsewhere refuses it (``wrong_cluster``), so no
stale view can delete another cluster's blob (docs/maintenance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from wsstorage.errors import WrongCluster
from wsstorage.records import Health

if TYPE_CHECKING:
    from wsfront.transfer.pool import NodeState

log = Logger()


def foreign_reason(name: str, theirs: str, ours: str) -> str:
    """Why ``name`` is not used: one line for logs, ``wsfs status`` and
    the registry, naming both ids."""
    return (
        f"{name}'s store is bound to another cluster {theirs}, not this catalog's "
        f"{ours}: not used (docs/operations.md)"
    )


@inlineCallbacks
def check_binding(node: NodeState, health: Health, ours: str):
    """After a health answer of ``node``: bind its store to ``ours`` if it
    is not bound yet (or this pool has not confirmed it: the bind also
    makes the client name the cluster in its deletes).  Fire with the
    reason the store is foreign (bound to another cluster), or None: it
    may be used.  A bind that fails otherwise (a full disk cannot write
    the file) leaves the store usable, unbound, and is tried again at the
    next answer: a full server must still serve reads."""
    theirs = health.cluster_id
    if theirs is not None and theirs != ours:
        return _foreign(node, theirs, ours)
    if node.bound and theirs == ours:
        return _ours(node)
    bind = getattr(node.client, "bind_cluster", None)
    if bind is None:
        return _unprotected(node, "its client cannot bind")
    try:
        got = yield bind(ours)
    except WrongCluster as e:
        # Bound by another cluster's front end since its answer.
        return _foreign(node, e.bound_to or "unknown", ours)
    except Exception as e:
        if str(e) != node.bind_error:  # a full disk fails every probe: said once
            log.warn(
                "storage server {name}: could not bind its store to cluster {ours}: {err}; "
                "tried again at each health answer",
                name=node.name,
                ours=ours,
                err=e,
            )
        node.bind_error = str(e)
        return _ours(node)
    node.bind_error = None
    if got is None:
        return _unprotected(node, "it predates cluster binding")
    if theirs is None and node.bound:
        log.warn(
            "storage server {name} was unbound since its last answer (its CLUSTER file "
            "removed, the server restarted?): bound to cluster {ours} again",
            name=node.name,
            ours=ours,
        )
    elif theirs is None:
        log.info("storage server {name} bound to cluster {ours}", name=node.name, ours=ours)
    node.bound = True
    return _ours(node)


def _foreign(node: NodeState, theirs: str, ours: str) -> str:
    reason = foreign_reason(node.name, theirs, ours)
    if node.foreign != theirs:
        log.error(
            "storage server {reason}; no reads, writes, repair, GC or fsck there",
            reason=reason,
        )
    node.foreign = theirs
    node.bound = False
    return reason


def _ours(node: NodeState) -> None:
    if node.foreign is not None:
        log.info(
            "storage server {name} is no longer bound to another cluster ({theirs}): used again",
            name=node.name,
            theirs=node.foreign,
        )
        node.foreign = None
    return None


def _unprotected(node: NodeState, why: str) -> None:
    if not node.unprotected:
        log.warn(
            "storage server {name} cannot be bound to this cluster ({why}): used, but "
            "nothing stops another catalog's front end from deleting its blobs; "
            "upgrade it (docs/operations.md)",
            name=node.name,
            why=why,
        )
    node.unprotected = True
    return _ours(node)
