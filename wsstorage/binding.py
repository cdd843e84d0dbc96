"""Which cluster a store belongs to: the ``CLUSTER`` file and the ``bind`` op.

Storage servers authenticate front ends by a shared secret only, so a
second catalog pointed at the same servers with the same secret (a config
copied between clusters, a move from SQLite to PostgreSQL) used to see the
first cluster's blobs as orphans and delete them.  A store is therefore
bound to at most one cluster, the random id of the first catalog whose
front end used it; requests that name another cluster are refused
(``WrongCluster``).  Kept out of ``blobstore`` (large enough) and apart
from ``IDENTITY``: the identity says which disk this is, the binding whose
data it holds; one changes when a disk is wiped, the other only when an
operator moves the store on purpose (docs/operations.md).
"""

from __future__ import annotations

import os
import threading
import time

from wsstorage.diskformat import CLUSTER_FILE, ClusterBinding
from wsstorage.errors import BadRequest, Busy, wrong_cluster
from wsstorage.fsops import OsFileSystem, create_durably
from wsstorage.records import STORE_ID_RE


def check_cluster_id(value: object) -> str:
    """A cluster id field of a request: 32 lowercase hex digits."""
    if not isinstance(value, str) or not STORE_ID_RE.fullmatch(value):
        raise BadRequest("cluster must be 32 lowercase hex digits")
    return value


class ClusterBond:
    """A store's binding: read at open, written once by ``bind``.

    It only ever goes from unbound to bound while the store is open (a
    rebind is the operator's: the file removed while the server is
    stopped), so a request checked against a binding it saw cannot be
    overtaken by another cluster's."""

    def __init__(self, root: str, fs: OsFileSystem, binding: ClusterBinding | None) -> None:
        self._root = root
        self._fs = fs
        self._lock = threading.Lock()
        self.binding = binding

    @classmethod
    def load(cls, root: str, fs: OsFileSystem) -> ClusterBond:
        """The binding in ``root`` (none if there is no CLUSTER file); a
        damaged file stops the store (FormatError), never read as none:
        that would let any catalog claim the store."""
        path = os.path.join(root, CLUSTER_FILE)
        try:
            with open(path, "rb") as f:
                raw = f.read(4096)
        except FileNotFoundError:
            return cls(root, fs, None)
        binding = ClusterBinding.decode(raw, path)
        # As for IDENTITY: a bind that crashed between its rename and its
        # directory's fsync leaves a name a power loss can still take back;
        # made durable before the binding is reported or relied on.
        fs.fsync_dir(root)
        return cls(root, fs, binding)

    @property
    def cluster_id(self) -> str | None:
        return None if self.binding is None else self.binding.cluster_id

    def check(self, cluster_id: str) -> None:
        """Refuse (``WrongCluster``) a request of ``cluster_id`` if the
        store is bound to another; an unbound store refuses nobody."""
        bound = self.cluster_id
        if bound is not None and bound != cluster_id:
            raise wrong_cluster(bound, cluster_id)

    def bind(self, cluster_id: str) -> ClusterBinding:
        """Bind the store to ``cluster_id`` (temp file, fsync, rename,
        directory fsync: durable before it returns), or confirm it is;
        ``WrongCluster`` if it is bound to another.  Blocks.

        One bind at a time: another while one runs is ``Busy`` at once,
        not queued behind it.  A front end whose bind timed out on a hung
        disk sends another at its next probe; queued, each would hold a
        thread of the server's pool (health, reads and deletes run there
        too) until the disk answered, and a few minutes of them would
        take the whole server down for every front end."""
        check_cluster_id(cluster_id)
        if self.binding is not None:
            self.check(cluster_id)
            return self.binding
        if not self._lock.acquire(blocking=False):
            raise Busy("a bind of this store is already running; ask again later")
        try:
            if self.binding is not None:
                self.check(cluster_id)
                return self.binding
            binding = ClusterBinding(cluster_id, time.time())
            create_durably(self._fs, self._root, CLUSTER_FILE, binding.encode())
            self.binding = binding
            return binding
        finally:
            self._lock.release()
