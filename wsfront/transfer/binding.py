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

Binding is automatic only where it cannot take another cluster's store:
an unbound store this process has seen bound to another cluster (its
CLUSTER file deleted, its data restored from an old copy), or one that
holds blobs of which this catalog records no replica, is refused (an
error naming it and how to bind it on purpose: ``wsstorage --cluster``)
and used for nothing, as a foreign one.  An upgraded cluster's stores,
unbound but holding blobs the catalog knows, are bound with no action.

The bind runs beside the probes, with its own timeout: the probe that
starts it waits for it at most the probe timeout, so a hung disk delays
neither the other servers' probes nor the front end's start.  Until a
store is bound (a bind pending, or failed: a full disk, a disk error) it
is used, its deletes still name this cluster (the pool names it in every
client from the start), and no orphan sweep runs there.

That view is as fresh as the last health probe (a second).  The delete
itself is checked by the store: a bound client names its cluster in every
delete, and a store bound elsewhere refuses it (``wrong_cluster``), so no
stale view can delete another cluster's blob (docs/maintenance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsstorage.errors import WrongCluster
from wsstorage.records import Health

if TYPE_CHECKING:
    from wsfront.transfer.pool import NodeState

log = Logger()

#: Seconds a bind may take (an fsync of a small file and of the data
#: directory) before it is given up, and tried again at a later answer.
BIND_TIMEOUT = 30.0
#: ``NodeState.foreign`` of an unbound store the pool refuses to bind on
#: its own (``refused``): used for nothing, as one of another cluster.
UNBOUND = "unbound"
#: What ``settle`` fires with while the bind is still running.
PENDING = object()


def foreign_reason(name: str, theirs: str, ours: str) -> str:
    """Why ``name`` is not used: one line for logs, ``wsfs status`` and
    the registry, naming both ids."""
    return (
        f"{name}'s store is bound to another cluster {theirs}, not this catalog's "
        f"{ours}: not used (docs/operations.md)"
    )


def how_to_bind(ours: str) -> str:
    """The deliberate way to bind a store to this cluster."""
    return (
        f"if it is this cluster's, restart its storage server once with --cluster {ours} "
        "(docs/operations.md)"
    )


def settle(
    node: NodeState,
    health: Health,
    ours: str,
    clock: IReactorTime,
    wait: float,
    knows_node: Callable[[str], Any] | None = None,
) -> defer.Deferred:
    """After a health answer of ``node``: fire with the reason the store
    is not used (bound to another cluster, or refused binding), or None:
    it may be used.  An unbound store is bound (``_bind``, beside the
    probes) and waited for at most ``wait`` seconds; a bind still running
    after that leaves the store used unbound (its deletes name ``ours``
    anyway) until its outcome is known, and a probe meanwhile does not
    wait for it."""
    theirs = health.cluster_id
    if theirs is not None and theirs != ours:
        return defer.succeed(_foreign(node, theirs, ours))
    if theirs == ours:
        # Bound to this cluster (by this process, another front end of the
        # catalog, or the operator): the client already names it.
        node.bound = True
        node.bind_error = None
        return defer.succeed(_ours(node))
    if node.foreign == UNBOUND and node.last_refusal is not None:
        return defer.succeed(node.last_refusal)  # refused once: until bound on purpose
    if node.binding is not None:
        # Started by an earlier probe: not waited for again.
        return defer.succeed(_pending(node))
    client = node.client
    task = defer.ensureDeferred(_bind(node, health, ours, clock, knows_node))

    def done(result: Any) -> Any:
        if node.client is not client:
            # It moved while the old address's store bound: nothing of
            # that says anything of the new store (``StoragePool.move``).
            return None
        node.binding = None
        if result is not None:
            node.up = False  # refused or foreign after the probe stopped waiting
            node.last_error = result
        return result

    task.addBoth(done)
    if task.called:
        return task
    node.binding = task
    return _within(node, task, wait, clock)


def _pending(node: NodeState) -> str | None:
    """While a bind runs: not used while it is still unknown whether the
    store may be bound (the catalog asked), used (unbound) once its bind
    is sent."""
    if node.bind_checking:
        return f"{node.name}: not yet known whether its unbound store is this cluster's"
    return None


def _within(
    node: NodeState, task: defer.Deferred, seconds: float, clock: IReactorTime
) -> defer.Deferred:
    """Fire with ``task``'s result, or after ``seconds`` with ``_pending``'s
    (the task runs on, its result taken by ``settle``'s ``done``)."""
    out: defer.Deferred = defer.Deferred()

    def late() -> None:
        log.warn(
            "storage server {name}: binding its store to this cluster takes more than "
            "{s:g} s; not waited for",
            name=node.name,
            s=seconds,
        )
        out.callback(_pending(node))

    timer = clock.callLater(seconds, late)

    def finished(result: Any) -> Any:
        if timer.active():
            timer.cancel()
            out.callback(result)
        return result

    task.addCallback(finished)
    return out


async def _bind(
    node: NodeState,
    health: Health,
    ours: str,
    clock: IReactorTime,
    knows_node: Callable[[str], Any] | None,
) -> str | None:
    client = node.client
    try:
        return await _bind_unbound(node, health, ours, clock, knows_node)
    finally:
        if node.client is client:
            node.bind_checking = False


async def _bind_unbound(
    node: NodeState,
    health: Health,
    ours: str,
    clock: IReactorTime,
    knows_node: Callable[[str], Any] | None,
) -> str | None:
    """Bind the unbound store of ``node`` to ``ours`` unless that could
    take another cluster's store; the reason it is not used, or None.
    Never fails: a failed bind (a disk error, a timeout, a lost
    connection) leaves the store used, unbound, and is tried again at the
    next answer.  Once the server moved (``node.client`` another one),
    whatever the old address's store answers changes nothing: that store
    was bound or refused, not the new one, which its own probes check."""
    client = node.client
    bind = getattr(client, "bind_cluster", None)
    can_bind = getattr(client, "can_bind", None)
    node.bind_checking = True
    try:
        if bind is None:
            return _unprotected(node, "its client cannot bind")
        if can_bind is not None:
            can = await can_bind()
            if node.client is not client:
                return None
            if not can:
                return _unprotected(node, "it predates cluster binding")
        if node.seen_foreign is not None:
            return _refuse(
                node,
                ours,
                f"was bound to another cluster {node.seen_foreign} when this front end "
                "last saw it bound, and is now unbound (its CLUSTER file deleted, its data "
                "restored from an old copy?)",
            )
        known = True
        if health.blobs and knows_node is not None:
            known = await knows_node(node.name)
            if node.client is not client:
                return None
        if not known:
            return _refuse(
                node,
                ours,
                f"holds {health.blobs} blobs and this catalog records no replica there "
                "(another cluster's store?)",
            )
        node.bind_checking = False
        d = bind(ours)
        d.addTimeout(BIND_TIMEOUT, clock)
        got = await d
    except WrongCluster as e:
        if node.client is not client:
            return None
        # Bound by another cluster's front end since its answer.
        return _foreign(node, e.bound_to or "unknown", ours)
    except Exception as e:
        if node.client is not client:
            return None
        if node.bind_checking:  # the catalog could not be asked: tried again later
            log.warn(
                "storage server {name}: cannot tell whether its unbound store is this "
                "cluster's: {err}; not used until then",
                name=node.name,
                err=str(e) or e.__class__.__name__,
            )
            return f"{node.name}: not yet known whether its unbound store is this cluster's"
        if isinstance(e, defer.TimeoutError):
            e = RuntimeError(f"no answer within {BIND_TIMEOUT:g} s")
        if str(e) != node.bind_error:  # a failing disk fails every probe: said once
            log.warn(
                "storage server {name}: could not bind its store to cluster {ours}: {err}; "
                "used unbound (its deletes name this cluster, no orphan sweep there), "
                "tried again at each health answer",
                name=node.name,
                ours=ours,
                err=str(e) or e.__class__.__name__,
            )
        node.bind_error = str(e)
        return _ours(node)
    if node.client is not client:
        return None
    node.bind_error = None
    if got is None:
        return _unprotected(node, "it predates cluster binding")
    if node.bound:
        log.warn(
            "storage server {name} was unbound since its last answer (its CLUSTER file "
            "removed, the server restarted?): bound to cluster {ours} again",
            name=node.name,
            ours=ours,
        )
    else:
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
    node.seen_foreign = theirs
    node.bound = False
    return reason


def _refuse(node: NodeState, ours: str, why: str) -> str:
    """An unbound store not bound automatically: used for nothing."""
    reason = (
        f"{node.name}'s store is unbound and not bound to this cluster automatically: it "
        f"{why}; not used; {how_to_bind(ours)}"
    )
    log.error("storage server {reason}", reason=reason)
    node.foreign = UNBOUND
    node.last_refusal = reason
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
        node.last_refusal = None
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
