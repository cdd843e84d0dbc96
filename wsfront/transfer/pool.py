"""The storage servers a front end writes to and reads from.

The pool owns one ``IStorageClient`` per storage server, probes their health
so a dead server stops being chosen within seconds (and is chosen again when
it comes back), and picks replica sets: distinct servers, most free space
first.  Readers and writers report failures here so the pool reacts before
the next probe.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from wsstorage._interfaces import IStorageClient
from wsstorage.errors import NodeUnavailable

log = Logger()


@attrs.define
class NodeState:
    """What the pool knows of one storage server."""

    name: str
    endpoint: str
    client: IStorageClient
    up: bool = True
    draining: bool = False
    free_bytes: int = 0
    total_bytes: int = 0
    #: Free space the server keeps back from new blobs (its health
    #: answer's ``reserve_bytes``): a blob of known size goes only where
    #: ``free_bytes - reserve_bytes`` holds it.
    reserve_bytes: int = 0
    #: Bytes of blobs of known size placed here since its last health
    #: answer (``StoragePool.choose``): not free any more for the next.
    placed_bytes: int = 0
    last_seen: float | None = None
    last_error: str | None = None
    #: Why the server, though it answers, takes no new blobs (its disk is
    #: read-only, its data directory gone: its health answer says), or
    #: None.  It still serves reads; ``choose`` passes it over.
    problem: str | None = None
    #: Until when a disk problem a writer saw (``mark_unwritable``) stands
    #: though health answers say none: a server checks its disk only now
    #: and then, so an answer just after the failure may predate it.
    problem_held_until: float = 0.0
    #: The id of the data directory (store) the server's last health
    #: answer named, and when that store was created, or None (it never
    #: answered, or is too old to say).  Kept while it is down: the
    #: maintenance lease holder compares it with the catalog's
    #: (``maintenance.identity``) to notice a wiped data directory.
    store_id: str | None = None
    store_created: float | None = None

    @property
    def takes_new_blobs(self) -> bool:
        """Whether ``choose`` may place a new blob here: up, no disk
        problem, not draining (reads go on regardless)."""
        return self.up and self.problem is None and not self.draining

    def has_room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes leave the server's reserve free, as
        far as its last health answer (less what was placed here since)
        says; a server not heard from yet is given the benefit of the doubt."""
        if self.last_seen is None:
            return True
        return self.free_bytes - self.reserve_bytes - self.placed_bytes >= size


#: How long a disk failure a writer saw keeps a server out of ``choose``
#: whatever its health answers say (they may rest on a check from before).
WRITER_PROBLEM_HOLD_SECONDS = 10.0


@implementer(IStorageClient)
class UnusableClient:
    """Stands for a storage server the front end cannot even try to reach
    (its registered endpoint does not parse): every operation fails with
    NodeUnavailable and ``reason``, so the node is down, never chosen, and
    the rest of the front end runs."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _fail(self, *args: object) -> Deferred:
        return fail(NodeUnavailable(self.reason))

    stat = read = write = put = fence = commit = delete = list_blobs = _fail
    copy_from = health = _fail

    def close(self) -> Deferred:
        return succeed(None)


#: Free space closer than this to the most free server's counts as equal.
SIMILAR_FREE = 1 << 30

_NAME = operator.attrgetter("name")


class StoragePool:
    """Storage servers by name, with health and replica choice."""

    def __init__(
        self,
        clock: IReactorTime,
        probe_interval: float = 1.0,
        probe_timeout: float = 2.0,
    ) -> None:
        self._clock = clock
        self._nodes: dict[str, NodeState] = {}
        #: Set by the front end's stop before it closes the clients: a read
        #: whose connection that cuts ends there (``ReadStream``), rather
        #: than marking the server down and failing over to other closing
        #: clients, which would log a healthy cluster as dead at every stop.
        self.closing = False
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._loop: LoopingCall | None = None
        self._turn = 0

    def add(self, name: str, endpoint: str, client: IStorageClient) -> None:
        self._nodes[name] = NodeState(name, endpoint, client)

    def add_unusable(self, name: str, endpoint: str, reason: str) -> None:
        """Register ``name`` as down for good (``UnusableClient``), logged
        once, so a bad registry entry costs one node, not the front end."""
        self._nodes[name] = NodeState(
            name, endpoint, UnusableClient(reason), up=False, last_error=reason
        )
        log.error("storage server {name} is unusable: {reason}", name=name, reason=reason)

    def names(self) -> list[str]:
        return list(self._nodes)

    def nodes(self) -> list[NodeState]:
        return list(self._nodes.values())

    def client(self, name: str) -> IStorageClient:
        return self._nodes[name].client

    def endpoint(self, name: str) -> str:
        return self._nodes[name].endpoint

    def is_up(self, name: str) -> bool:
        node = self._nodes.get(name)
        return node is not None and node.up

    def silent(self, name: str) -> bool:
        """Whether ``name`` is down and has answered no health probe for two
        probe rounds (or never): frozen or gone, not a server that one
        failed connection or one slow probe marked down a moment ago, which
        is still worth waiting for (a takeover's fence, say)."""
        node = self._nodes.get(name)
        if node is None or node.up:
            return False
        if node.last_seen is None:
            return True
        quiet_for = self._clock.seconds() - node.last_seen
        return quiet_for > 2 * (self._probe_interval + self._probe_timeout)

    def set_draining(self, name: str, draining: bool) -> None:
        """A draining server (``wsfs drain``) still serves reads, takes no new writes."""
        node = self._nodes.get(name)
        if node is not None:
            node.draining = draining

    def mark_unwritable(self, name: str, reason: str) -> None:
        """A writer's blob failed on ``name`` for its disk (read-only, files
        gone): choose it for no new blob now, not at the next health
        answer that says so, and for ``WRITER_PROBLEM_HOLD_SECONDS`` even if
        an answer says otherwise.  It still serves reads."""
        node = self._nodes.get(name)
        if node is None:
            return
        if node.problem is None:
            log.warn("storage server {name} takes no new writes: {why}", name=name, why=reason)
        node.problem = reason
        node.last_error = reason
        node.problem_held_until = self._clock.seconds() + WRITER_PROBLEM_HOLD_SECONDS

    def mark_down(self, name: str, reason: str) -> None:
        """A reader or writer saw ``name`` fail: stop choosing it now."""
        node = self._nodes.get(name)
        if node is not None and node.up:
            node.up = False
            node.last_error = reason
            log.warn("storage server {name} marked down: {reason}", name=name, reason=reason)

    def choose(self, count: int, exclude: Iterable[str] = (), size: int | None = None) -> list[str]:
        """Up to ``count`` distinct healthy servers, most free space first;
        a server whose health answer names a disk problem is not one.

        ``size``, when the bytes the new blob will hold are known up front
        (an HTTP Content-Length, a tus Upload-Length, an FTP ALLO), passes
        over the servers that cannot hold them above their reserve
        (``NodeState.has_room_for``), and counts them as taken on the
        servers chosen until their next health answer (``placed_bytes``):
        uploads placed between two probes do not all land on the server
        that had room for one.  None: as many bytes as the disk takes (placement by free
        space alone).

        Servers whose free space is within ``SIMILAR_FREE`` (or 1%) of the
        most free are taken in turn, not by the bytes that happen to separate
        them: servers sharing one disk (wslocal, a test cluster) or equally
        empty new ones would otherwise always give the same few all the
        writes, by name or by which probe ran last."""
        # Lists and C key functions, not generators and lambdas: every
        # upload's start chooses (a small STOR paid ~20 calls here).
        excluded = set(exclude)
        candidates = [
            n for n in self._nodes.values() if n.takes_new_blobs and n.name not in excluded
        ]
        if size is not None:
            candidates = [n for n in candidates if n.has_room_for(size)]
        if not candidates:
            return []
        top = max([n.free_bytes for n in candidates])
        floor = top - max(SIMILAR_FREE, top // 100)
        tier = [n for n in candidates if n.free_bytes >= floor]
        tier.sort(key=_NAME)
        rest = [n for n in candidates if n.free_bytes < floor]
        if rest:
            rest.sort(key=lambda n: (-n.free_bytes, n.name))
        k = self._turn % len(tier)
        self._turn += 1
        chosen = (tier[k:] + tier[:k] + rest)[:count]
        if size:
            for n in chosen:
                n.placed_bytes += size
        return [n.name for n in chosen]

    def unplace(self, names: Iterable[str], size: int | None) -> None:
        """Give back what ``choose`` counted as taken (``size`` bytes on each
        of ``names``) for a blob that was not made after all: an upload
        whose start found a pending one to take over instead, or failed.
        Left counted, a resume would be refused for the space its own first
        choice held (and each retry would hold more)."""
        if not size:
            return
        for name in names:
            node = self._nodes.get(name)
            if node is not None:
                node.placed_bytes = max(0, node.placed_bytes - size)

    def out_of_space(self, size: int | None = None, exclude: Iterable[str] = ()) -> bool:
        """Whether ``choose`` (with ``size``) found no server because every
        one that is up and not draining is out of room: below its reserve
        (or, with ``size``, without ``size`` bytes above it).  Then waiting
        will not help, unlike when servers are down (HTTP 507, FTP 452,
        not 503 and 451)."""
        excluded = set(exclude)
        live = [
            n for n in self._nodes.values() if n.up and not n.draining and n.name not in excluded
        ]
        need = 1 if size is None else max(size, 1)
        return bool(live) and all(not n.has_room_for(need) for n in live)

    def order_for_read(self, replicas: Sequence[str], spread: int = 0) -> list[str]:
        """Replicas known here, healthy ones first; ``spread`` rotates the
        healthy ones so concurrent readers of one file share the load."""
        known = [r for r in replicas if r in self._nodes]
        healthy = [r for r in known if self._nodes[r].up]
        if healthy:
            k = spread % len(healthy)
            healthy = healthy[k:] + healthy[:k]
        return healthy + [r for r in known if not self._nodes[r].up]

    # -- health probes -------------------------------------------------

    def start(self) -> Deferred:
        """Probe every server now, then every ``probe_interval`` seconds."""
        self._loop = LoopingCall(self.probe_all)
        self._loop.clock = self._clock
        self._loop.start(self._probe_interval, now=False)
        return self.probe_all()

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def probe_all(self) -> Deferred:
        return DeferredList([self._probe(n) for n in self._nodes.values()], consumeErrors=True)

    @inlineCallbacks
    def _probe(self, node: NodeState):
        d = node.client.health()
        d.addTimeout(self._probe_timeout, self._clock)
        try:
            health = yield d
        except Exception as e:
            if isinstance(e, defer.TimeoutError):
                # Its own text is the bare tuple "(2.0, 'Deferred')".
                reason = f"no answer to a health probe within {self._probe_timeout:g} s"
            else:
                reason = str(e) or e.__class__.__name__
            if node.up:
                log.warn("storage server {name} is down: {err}", name=node.name, err=reason)
            elif reason != node.last_error and not isinstance(node.client, UnusableClient):
                # Still down, for another reason: the one that matters now
                # (refused credentials after "connection refused", say).
                log.warn("storage server {name} is still down: {err}", name=node.name, err=reason)
            node.up = False
            node.last_error = reason
            return
        if not node.up:
            log.info("storage server {name} is up again", name=node.name)
        problem = health.problem
        if problem is None and self._clock.seconds() < node.problem_held_until:
            problem = node.problem  # a writer's failure outranks an older check
        if problem is not None and problem != node.problem:
            log.warn(
                "storage server {name} takes no new writes: {why}", name=node.name, why=problem
            )
        elif problem is None and node.problem is not None:
            log.info("storage server {name} takes new writes again", name=node.name)
        node.up = True
        node.problem = problem
        node.free_bytes = health.free_bytes
        node.total_bytes = health.total_bytes
        node.reserve_bytes = health.reserve_bytes
        node.placed_bytes = 0
        node.last_seen = self._clock.seconds()
        node.last_error = problem
        if health.store_id is not None:
            node.store_id = health.store_id
            node.store_created = health.store_created
