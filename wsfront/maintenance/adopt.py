"""``fsck --rebuild-catalog``: the new catalog takes its stores' cluster id.

Stores are bound to the cluster id of the catalog whose front ends used
them (``wsstorage.binding``); a catalog rebuilt from them gets a new
database, and with its own new id its front ends would find every store
foreign and use none.  So before it reads anything the rebuild adopts the
id the stores are bound to (they must agree), and binds any unbound one
to it.  Stores bound to two clusters are refused: a rebuild from both
would take one cluster's blobs into the other's catalog, whose GC and
fsck could then delete them.
"""

from __future__ import annotations

from twisted.logger import Logger

from wsfront.transfer.pool import StoragePool
from wsstorage.errors import WrongCluster

log = Logger()

#: What ``fsck --rebuild-catalog`` tells the operator (stderr): the rebuilt
#: catalog shares the old one's cluster id, so the stores accept both.
WARNING = (
    "warning: this catalog now has the cluster id its storage servers are bound to, "
    "the old catalog's: stop every front end of the old catalog for good (the servers "
    "accept both, and either catalog's GC and fsck --fix would delete the other's new "
    "blobs), and restart any front end of this catalog that was running (it sees every "
    "server as foreign until then); a restored catalog must replace the original, never "
    "run beside it (docs/operations.md)"
)


async def adopt_cluster(catalog, pool: StoragePool) -> str:
    """Give ``catalog`` the cluster id the stores of ``pool`` are bound to
    (its own, made now, if none is bound) and bind the unbound ones to
    it; fire with the id.  ValueError, naming the servers, if they are
    bound to different clusters."""
    bound: dict[str, str] = {}
    for name in pool.names():
        health = await pool.client(name).health()
        if health.cluster_id is not None:
            bound[name] = health.cluster_id
    ids = sorted(set(bound.values()))
    if len(ids) > 1:
        said = ", ".join(f"{n} to {c}" for n, c in sorted(bound.items()))
        raise ValueError(
            f"the storage servers are bound to different clusters ({said}): a rebuild "
            "takes the servers of one cluster only; leave out the others (to move a "
            "server to this cluster on purpose, see docs/operations.md)"
        )
    target = ids[0] if ids else await catalog.cluster_id()
    await catalog.adopt_cluster_id(target)
    for name in pool.names():
        bind = getattr(pool.client(name), "bind_cluster", None)
        if name in bound or bind is None:
            continue
        try:
            got = await bind(target)
        except WrongCluster as e:
            raise ValueError(
                f"storage server {name} was bound to cluster {e.bound_to} during the "
                f"rebuild, not {target}: is a front end of another catalog using it?"
            ) from None
        if got is not None:
            log.info("rebuild: storage server {name} bound to cluster {id}", name=name, id=target)
    log.info("rebuild: the catalog takes cluster id {id}", id=target)
    return target
