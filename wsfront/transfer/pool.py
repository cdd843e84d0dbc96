"""The storage servers a front end writes to and reads from.

The pool owns one ``IStorageClient`` per storage server, probes their health
so a dead server stops being chosen within seconds (and is chosen again when
it comes back), and picks replica sets: distinct servers, most free space
first.  Readers and writers report failures here so the pool reacts before
the next probe.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfront.transfer import binding
from wsstorage._interfaces import IStorageClient
from wsstorage.errors import AuthenticationFailed, NodeUnavailable
from wsstorage.records import Health

log = Logger()

#: Why a server taken in while the pool runs is down until its first probe
#: ends (``StoragePool.add``), and a pending endpoint not taken until then
#: (``StoragePool.move``).
NOT_PROBED = "not probed yet"

#: Why a server named by the catalog (a replica's) cannot be used here.
NOT_IN_POOL = (
    "not in this front end's storage pool (not in the catalog's registry when it last read it)"
)


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
    #: Bytes of blobs of known size placed here that its last health
    #: answer's ``free_bytes`` does not show as used yet: at that answer,
    #: what the uploads then running here had still to write (``holds``);
    #: since, the whole size of each blob placed (``StoragePool.choose``).
    #: Not free any more for the next blob.
    placed_bytes: int = 0
    #: The placements of the uploads running here (by blob id): each
    #: holds its room until its upload ends (``StoragePool.release``).
    holds: dict[str, Placement] = attrs.Factory(dict)
    #: The servers whose stores share this one's file system, itself
    #: included (``StoragePool.share_disk``: wslocal's), or None (its own).
    shares: list[NodeState] | None = attrs.field(default=None, eq=False, repr=False)
    last_seen: float | None = None
    last_error: str | None = None
    #: Whether a health probe of its current endpoint has ended (answered
    #: or failed) since the pool took it in or it moved (``move``): until
    #: then the pool knows nothing of it worth recording in the registry.
    probed: bool = False
    #: Whether the last health probe failed on the secret
    #: (``AuthenticationFailed``: the server refused ours, or could not
    #: prove it knows it): down for a configuration error, not the network.
    secret_refused: bool = False
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
    #: The other cluster the server's store is bound to, or ``"unbound"``
    #: (``binding.UNBOUND``) for an unbound store this pool refuses to bind
    #: on its own, or None: such a server is down for this front end, and
    #: ``StoragePool.client`` gives a client that refuses everything
    #: (``wsfront.transfer.binding``).
    foreign: str | None = None
    #: The other cluster this process last saw the store bound to: never
    #: bound automatically again (``binding``), whatever it says later.
    seen_foreign: str | None = None
    #: Why an unbound store was refused binding (while ``foreign`` is
    #: ``"unbound"``), said once.
    last_refusal: str | None = None
    #: The bind running beside the probes (``binding.settle``), and whether
    #: it is still finding out whether the store may be bound.
    binding: Any = None
    bind_checking: bool = False
    #: Whether the store is bound to this pool's cluster (the pool bound
    #: it, or a health answer says so): only then are orphans swept there.
    bound: bool = False
    #: The server cannot be bound (it predates binding): said once.
    unprotected: bool = False
    #: Why the last bind failed (a full disk), said once; None after one worked.
    bind_error: str | None = None
    #: The endpoint the registry moved the server to, while no probe of it
    #: has passed (``StoragePool.move``): its own state (health, binding,
    #: store), probed beside this one, whose place it takes once a probe
    #: passes (``StoragePool._switch``).  Reads and writes stay on
    #: ``client`` meanwhile: a wrong endpoint (a typo in one front end's
    #: ``--storage``) costs nothing while the current one works.
    pending: NodeState | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def takes_new_blobs(self) -> bool:
        """Whether ``choose`` may place a new blob here: up, no disk
        problem, not draining (reads go on regardless)."""
        return self.up and self.problem is None and not self.draining

    def has_room_for(self, size: int, freeing: str | None = None) -> bool:
        """Whether ``size`` more bytes leave the server's reserve free, as
        far as its last health answer (less what is placed here and not in
        it) says, the room the blob ``freeing`` holds here counted as free;
        a server not heard from yet is given the benefit of the doubt."""
        if self.last_seen is None:
            return True
        if self.shares is not None:
            return self._disk_has_room_for(size, freeing)
        room = self.free_bytes - self.reserve_bytes - self.placed_bytes
        if freeing is not None:
            held = self.holds.get(freeing)
            if held is not None:
                room += held.outstanding()
        return room >= size

    def _disk_has_room_for(self, size: int, freeing: str | None) -> bool:
        """``has_room_for`` on a file system shared with other servers:
        its free space as the one heard from last says (the others' say
        less about it), less what is placed on any of them."""
        shares = [n for n in self.shares if n.last_seen is not None]
        latest = max(shares, key=_LAST_SEEN)
        room = latest.free_bytes - latest.reserve_bytes
        for n in shares:
            room -= n.placed_bytes
            held = None if freeing is None else n.holds.get(freeing)
            if held is not None:
                room += held.outstanding()
        return room >= size


@attrs.define(eq=False)
class Placement:
    """The room a new blob of known size holds on its servers from its
    placement (``StoragePool.choose``) until its upload ends
    (``StoragePool.release``): its size, less what its upload has written
    so far, which a server's free space shows from its next health answer
    on (the bytes still in flight, a few MiB, are the reserve's to cover)."""

    size: int
    #: When it was placed (``StoragePool`` gives back one that no upload
    #: claimed within ``UNCLAIMED_SECONDS``).
    since: float
    #: The servers it still holds room on.
    nodes: list[NodeState] = attrs.field(repr=False)
    #: The bytes its upload has written so far, once one runs
    #: (``StoragePool.claim``); None until then.
    written: Callable[[], int] | None = None

    def outstanding(self) -> int:
        """The bytes still to come, as far as this front end knows."""
        if self.written is None:
            return self.size
        return max(0, self.size - self.written())


#: How long a placement no upload claimed holds its room: a start takes
#: a catalog transaction and a connection to each replica, not minutes.
#: Past this, a start that failed without giving it back (a bug) would
#: otherwise keep its servers "full" until the front end restarts.
UNCLAIMED_SECONDS = 120.0


#: How long a disk failure a writer saw keeps a server out of ``choose``
#: whatever its health answers say (they may rest on a check from before).
WRITER_PROBLEM_HOLD_SECONDS = 10.0


def _stale(node: NodeState, client: IStorageClient | None) -> bool:
    """Whether a failure report through ``client`` is about an address
    ``node`` no longer has (it moved since the client was handed out).
    A foreign store's refusing client (``StoragePool.client``) is not
    ``node.client`` either, but that store is down already."""
    return client is not None and client is not node.client and node.foreign is None


#: What a server's ``NodeState`` keeps when it moves to another endpoint
#: (``StoragePool.move``): what this front end did there (placements and
#: the room they hold, the drain the registry says), which servers share
#: its disk, the cluster it was once seen bound to (never bound
#: automatically again), and the last free space it reported (its data
#: directory moves with it; nothing chooses it before the new endpoint's
#: answer replaces them).  Everything else is of the old endpoint (health,
#: binding, store): reset to a fresh state's, a field added later too.
SURVIVES_MOVE = frozenset(
    {
        "name",
        "draining",
        "free_bytes",
        "total_bytes",
        "reserve_bytes",
        "placed_bytes",
        "holds",
        "shares",
        "seen_foreign",
    }
)


def _take_over(node: NodeState, fresh: NodeState) -> None:
    """Make ``node`` ``fresh`` but for the fields that survive a move
    (``SURVIVES_MOVE``), in place: placements and shared-disk groups hold
    a reference to it."""
    for field in attrs.fields(NodeState):
        if field.name not in SURVIVES_MOVE:
            setattr(node, field.name, getattr(fresh, field.name))


def _absent(node: NodeState | None) -> bool:
    """A server the pool does not know (``StoragePool.lookup``)."""
    return node is None


def _serves(node: NodeState | None) -> bool:
    """A server a read can start on (``StoragePool.lookup_for_read``)."""
    return node is not None and node.up and node.foreign is None


def _fire(waiter: Deferred) -> None:
    """End a wait on the registry (``StoragePool.lookup``): its read
    answered, or the caller waited long enough (whichever comes first)."""
    if not waiter.called:
        waiter.callback(None)


def _cancel(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


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


#: How long a storage client may hear nothing from its server before it
#: drops the connection and the operation fails (the front end's
#: clients': a busy server still sends keepalives every second, so only
#: ten silent seconds mean it is gone).  A resume's fence waits as long
#: for the registry read that looks up a server it does not know
#: (``StoragePool.lookup``'s ``wait``) as for a server that is slow.
STORAGE_IDLE_TIMEOUT = 10.0

#: A registry read for ``StoragePool.lookup`` is given up after this many
#: probe timeouts (and never before ``STORAGE_IDLE_TIMEOUT``, the longest
#: a caller waits): a hung one would otherwise keep every later lookup
#: from starting a fresh read.
REFRESH_PROBE_TIMEOUTS = 5

#: Free space closer than this to the most free server's counts as equal.
SIMILAR_FREE = 1 << 30

_NAME = operator.attrgetter("name")
_LAST_SEEN = operator.attrgetter("last_seen")


class StoragePool:
    """Storage servers by name, with health and replica choice."""

    def __init__(
        self,
        clock: IReactorTime,
        probe_interval: float = 1.0,
        probe_timeout: float = 2.0,
        cluster_id: str | None = None,
        knows_node: Callable[[str], Deferred] | None = None,
        refresh: Callable[[], Deferred] | None = None,
        on_switch: Callable[[str, IStorageClient], None] | None = None,
    ) -> None:
        self._clock = clock
        #: Called with a server's name and its old client once the pool
        #: took the endpoint it moved to (``move``): reads and writes still
        #: running hold that client, which the owner closes once they no
        #: longer matter (the front end: ``_retire``), not now, which would
        #: cut them instead of letting them finish or fail over.
        self._on_switch = on_switch
        #: Reads the catalog's storage registry and brings the pool up to
        #: date with it (the front end's ``refresh_registry``): ``lookup``
        #: calls it for a replica on a server the pool does not know yet
        #: (registered since the last refresh).  None: not looked up.
        self._refresh = refresh
        self._refreshing: list[Deferred] | None = None
        self._looked_up_at: float | None = None
        #: The catalog's cluster id, to which the pool binds the stores it
        #: uses (``wsfront.transfer.binding``) and which every client it
        #: takes names in its deletes; None: no binding (tests, the
        #: rebuild, which binds on its own).
        self.cluster_id = cluster_id
        #: Fires with whether the catalog records a replica on a server
        #: (``catalog.has_replicas_on``): an unbound store that holds blobs
        #: is bound automatically only if so.  None: not asked.
        self._knows_node = knows_node
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
        #: The placements of blobs of known size whose uploads have not
        #: ended, by blob id (``choose``, ``release``).
        self._placements: dict[str, Placement] = {}

    def add(self, name: str, endpoint: str, client: IStorageClient) -> None:
        if self.cluster_id is not None and hasattr(client, "cluster_id"):
            # From the start, whatever any bind's outcome: a store bound by
            # another cluster meanwhile refuses this client's deletes.
            client.cluster_id = self.cluster_id
        node = NodeState(name, endpoint, client)
        if self._loop is not None:
            # Taken in while running (registered since): no write goes
            # there before a probe found it answering with our secret and
            # its store this cluster's (it may be another cluster's, or an
            # operator's typo): ``_probe`` sets it up.  Reads of replicas
            # only there still try it (down servers come last).
            node.up = False
            node.last_error = NOT_PROBED
        self._nodes[name] = node
        self._probe_now(node)

    def move(
        self, name: str, endpoint: str, client: IStorageClient, unusable: str | None = None
    ) -> None:
        """``name`` was registered at ``endpoint`` since the pool took it in
        (its server moved, re-registered by another front end or the CLI),
        reached through ``client`` (an ``UnusableClient`` with ``unusable``,
        the reason, if that endpoint cannot be used).

        While the pool probes (``start``), the new endpoint is *pending*
        (``NodeState.pending``): probed beside the current one, which goes
        on serving reads and writes with its health as it is, and taken
        (``_switch``) only once a probe of it passes as ``_probe`` would
        have it (it answers, accepts our secret, its store is this
        cluster's); never, if it is wrong (a typo in one front end's
        ``--storage`` re-registers the server at a wrong address for
        every front end).  A pending endpoint the registry replaced is
        dropped, its client closed (``unpend`` if it went back to the
        current one).  Before ``start`` nothing was proven of either
        endpoint: the new one is taken at once."""
        node = self._nodes[name]
        if self.cluster_id is not None and hasattr(client, "cluster_id"):
            client.cluster_id = self.cluster_id
        self._drop_pending(node)
        if self._loop is None:
            fresh = NodeState(name, endpoint, client, up=False, last_error=unusable or NOT_PROBED)
            self._hand_over(name, self._switch(node, fresh))
            if unusable is not None:
                log.error("storage server {name} is unusable: {reason}", name=name, reason=unusable)
            return
        pending = NodeState(
            name,
            endpoint,
            client,
            up=False,
            # Unusable: said below, not again by its probe's failure
            # (``_pending_failed`` says each reason once).
            last_error=unusable or NOT_PROBED,
            # The cluster its store was once seen bound to is the server's:
            # the new endpoint's unbound store is not bound automatically.
            seen_foreign=node.seen_foreign,
        )
        node.pending = pending
        if unusable is not None:
            log.error(
                "storage server {name}: its registered endpoint is unusable: {reason}; "
                "reads and writes stay on {current}",
                name=name,
                reason=unusable,
                current=node.endpoint,
            )
        self._probe_pending(node, pending).addErrback(
            lambda f: log.failure("probing storage server {name}'s new endpoint", f, name=name)
        )

    def unpend(self, name: str) -> None:
        """The registry names ``name``'s current endpoint again: the
        pending one (``move``) is dropped, its client closed."""
        node = self._nodes[name]
        if node.pending is not None:
            log.info(
                "storage server {name} is registered at {endpoint} again: "
                "{pending} is no longer tried",
                name=name,
                endpoint=node.endpoint,
                pending=node.pending.endpoint,
            )
            self._drop_pending(node)

    def registered(self, name: str) -> str:
        """The endpoint of ``name`` the pool last took from the registry:
        the pending one while a probe of it has not passed (``move``),
        else the one in use (``endpoint``)."""
        node = self._nodes[name]
        return node.endpoint if node.pending is None else node.pending.endpoint

    def _drop_pending(self, node: NodeState) -> None:
        """Forget ``node``'s pending endpoint, closing its client (nothing
        but its probes used it; one still running is ignored)."""
        pending, node.pending = node.pending, None
        if pending is not None:
            defer.maybeDeferred(pending.client.close).addErrback(
                lambda f: log.failure(
                    "closing {name}'s client of {endpoint}", f, name=node.name,
                    endpoint=pending.endpoint,
                )
            )  # fmt: skip

    def _switch(self, node: NodeState, fresh: NodeState) -> IStorageClient:
        """Make ``fresh`` (the state of the endpoint ``node`` moved to)
        ``node``'s, but for what survives a move (``SURVIVES_MOVE``): new
        connections go there.  Returns the old client, for ``_hand_over``
        once ``node`` is as it should be."""
        old = node.client
        _take_over(node, fresh)
        if fresh.seen_foreign is not None:
            # Learned by its probes while pending (it started with the
            # node's): the store now used was seen bound to another cluster.
            node.seen_foreign = fresh.seen_foreign
        # A bind ``fresh``'s probe started (sent: ``_probe_pending``) ends
        # on ``fresh`` (``binding.settle`` holds it), which nothing reads
        # any more: the node's next probe starts its own.
        node.binding = None
        node.bind_checking = False
        return old

    def _hand_over(self, name: str, old: IStorageClient) -> None:
        """Give ``old``, the client ``name`` had before its switch, to
        ``on_switch``, last: a hook that fails is logged, and leaves the
        server as the switch made it (up, at its new endpoint), not down
        with a stale error and no word of why."""
        if self._on_switch is None:
            return
        try:
            self._on_switch(name, old)
        except Exception:
            log.failure("handing storage server {name}'s old client over", name=name)

    def _probe_now(self, node: NodeState) -> None:
        """Probe a server just taken in at once once the pool probes
        (``start``), not at the next round: a read of a file stored only
        there should not find it "down" for a second."""
        if self._loop is None:
            return
        self._probe(node).addErrback(
            lambda f: log.failure("probing storage server {name}", f, name=node.name)
        )

    def _any(
        self, groups: tuple[Iterable[str], ...], test: Callable[[NodeState | None], bool]
    ) -> bool:
        """Whether ``test`` holds for the state of a server named in
        ``groups`` (None: not in the pool).  Every read of an extent asks:
        a loop, no generator."""
        nodes = self._nodes
        for names in groups:
            for n in names:
                if test(nodes.get(n)):
                    return True
        return False

    def lookup(self, *groups: Iterable[str], wait: float | None = None) -> Deferred | None:
        """None if the pool knows every server named in ``groups``; else a Deferred
        that fires (with None, never failing) once the catalog's registry
        was read again (``refresh``) for the ones it does not know: a
        replica on a server registered after the pool's last refresh (by
        another front end or the CLI).  One read at a time serves every
        caller, and one at most per probe interval: a replica on a server
        the registry does not have either costs no query per read.

        Each caller waits at most ``wait`` seconds (the probe timeout by
        default; a resume's fence: ``STORAGE_IDLE_TIMEOUT``), and is
        forgotten then (the read goes on for the others): a hung catalog
        delays a read, a drain or a resume's fence no longer than a slow
        server would, and they go on as for a server the registry does
        not list.  The read itself is given up after
        ``REFRESH_PROBE_TIMEOUTS`` probe timeouts: the next lookup starts
        a fresh one."""
        if self._refresh is None or not self._any(groups, _absent):
            return None
        if self._refreshing is None:
            now = self._clock.seconds()
            if self._looked_up_at is not None and now - self._looked_up_at < self._probe_interval:
                return None
            self._looked_up_at = now
            self._refreshing = waiters = []
            d = defer.maybeDeferred(self._refresh)
            d.addTimeout(
                max(REFRESH_PROBE_TIMEOUTS * self._probe_timeout, STORAGE_IDLE_TIMEOUT),
                self._clock,
            )

            def done(result: Any) -> None:
                if isinstance(result, Failure):
                    err = result.value
                    if isinstance(err, defer.TimeoutError):
                        err = "no answer within its timeout; the next lookup reads it again"
                    log.warn("reading the storage registry failed: {err}", err=err)
                self._refreshing = None
                for w in waiters:
                    _fire(w)

            d.addBoth(done)
            if self._refreshing is None:
                return succeed(None)  # it answered at once
        waiters = self._refreshing
        waiter: Deferred = Deferred()

        def give_up() -> None:
            waiters.remove(waiter)  # not kept until a hung read ends
            _fire(waiter)

        timer = self._clock.callLater(self._probe_timeout if wait is None else wait, give_up)
        waiter.addBoth(_cancel, timer)
        waiters.append(waiter)
        return waiter

    def lookup_for_read(self, *groups: Iterable[str]) -> Deferred | None:
        """``lookup`` for a read of a replica on one of ``groups``' servers:
        None, no catalog query, while one of them is known and up (the
        read starts there; an unknown one, if ever, is only failed over
        to); else ``lookup``'s Deferred."""
        if self._any(groups, _serves):
            return None
        return self.lookup(*groups)

    def of_this_cluster(self, name: str) -> bool:
        """Whether ``name``'s store is known bound to this pool's cluster
        (or cannot be bound: an older server; or the pool binds nothing):
        GC and fsck sweep orphans only there, not on a store whose bind
        is pending or failed, which another cluster may yet bind."""
        node = self._nodes.get(name)
        if node is None:
            return False
        return self.cluster_id is None or node.bound or node.unprotected

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
        """The client of ``name``; one that refuses every operation while
        its store is bound to another cluster (``NodeState.foreign``): the
        one check every reader, writer, copy and delete goes through."""
        node = self._nodes.get(name)
        if node is None:
            # A replica on a server registered after this front end last
            # read the registry, or no longer there: failed with a reason
            # like a down server's, never a bare KeyError ("'s4'").
            return UnusableClient(f"storage server {name} is {NOT_IN_POOL}")
        if node.foreign is not None:
            return UnusableClient(node.last_error or f"{name} is bound to another cluster")
        return node.client

    def endpoint(self, name: str) -> str:
        return self._nodes[name].endpoint

    def is_up(self, name: str) -> bool:
        node = self._nodes.get(name)
        return node is not None and node.up

    def secret_refused(self, name: str) -> bool:
        """Whether ``name`` is down because its last health probe failed
        authentication (``NodeState.secret_refused``): what ``fsck
        --rebuild-catalog`` tells apart from an unreachable server."""
        node = self._nodes.get(name)
        return node is not None and not node.up and node.secret_refused

    def silent(self, name: str) -> bool:
        """Whether ``name`` is down and has answered no health probe for two
        probe rounds (or never): frozen or gone, not a server that one
        failed connection or one slow probe marked down a moment ago, which
        is still worth waiting for (a takeover's fence, say).  Nor one whose
        first probe since it was taken in or moved has not ended: down only
        until then (``add``), and perhaps the one server holding a resumed
        upload's replica."""
        node = self._nodes.get(name)
        if node is None or node.up or not node.probed:
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

    def mark_unwritable(self, name: str, reason: str, client: IStorageClient | None = None) -> None:
        """A writer's blob failed on ``name`` for its disk (read-only, files
        gone): choose it for no new blob now, not at the next health
        answer that says so, and for ``WRITER_PROBLEM_HOLD_SECONDS`` even if
        an answer says otherwise.  It still serves reads.  ``client``: the
        one that failed; if the server moved since (``move``), that was
        the old address's disk, and the report is ignored."""
        node = self._nodes.get(name)
        if node is None or _stale(node, client):
            return
        if node.problem is None:
            log.warn("storage server {name} takes no new writes: {why}", name=name, why=reason)
        node.problem = reason
        node.last_error = reason
        node.problem_held_until = self._clock.seconds() + WRITER_PROBLEM_HOLD_SECONDS

    def mark_down(self, name: str, reason: str, client: IStorageClient | None = None) -> None:
        """A reader or writer saw ``name`` fail: stop choosing it now.
        ``client``: the one that failed; if the server moved since
        (``move``), the old address failed, not the new, and the report is
        ignored."""
        node = self._nodes.get(name)
        if node is not None and node.up and not _stale(node, client):
            node.up = False
            node.last_error = reason
            log.warn("storage server {name} marked down: {reason}", name=name, reason=reason)

    def choose(
        self,
        count: int,
        exclude: Iterable[str] = (),
        size: int | None = None,
        blob_id: str | None = None,
        freeing: str | None = None,
    ) -> list[str]:
        """Up to ``count`` distinct healthy servers, most free space first
        (less what is placed there since its last health answer); a server
        whose health answer names a disk problem is not one.

        ``size``, when the bytes the new blob will hold are known up front
        (an HTTP Content-Length, a tus Upload-Length, an FTP ALLO), passes
        over the servers that cannot hold them above their reserve
        (``NodeState.has_room_for``), and counts them as taken on the
        servers chosen (``placed_bytes``): uploads placed one after the
        other do not all land on the server that had room for one.  With
        ``blob_id`` (the new blob's), they stay taken until its upload
        ends (``claim``, ``release``), less what it has written, which
        each health answer shows as used: two uploads placed seconds apart
        do not both go where one fits.  Without, only until the server's
        next health answer.  None: as many bytes as the disk takes
        (placement by free space alone).  ``freeing``: the blob of an
        upload this one takes over (a resume while its old session still
        streams here), whose room is about to be given back: it counts as
        free.  Servers that share a file system (``share_disk``) share its
        room: two replicas of a blob there take it twice.

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
            candidates = [n for n in candidates if n.has_room_for(size, freeing)]
        if not candidates:
            return []
        # By the room a server has left: what its last health answer says
        # is free, less what was placed on it since (an upload of unknown
        # size is not sent where this front end's uploads of known size
        # just took the room).
        top = max([n.free_bytes - n.placed_bytes for n in candidates])
        floor = top - max(SIMILAR_FREE, top // 100)
        tier = [n for n in candidates if n.free_bytes - n.placed_bytes >= floor]
        tier.sort(key=_NAME)
        rest = [n for n in candidates if n.free_bytes - n.placed_bytes < floor]
        if rest:
            rest.sort(key=lambda n: (n.placed_bytes - n.free_bytes, n.name))
        k = self._turn % len(tier)
        self._turn += 1
        ordered = tier[k:] + tier[:k] + rest
        if not size:
            return [n.name for n in ordered[:count]]
        chosen = []
        for n in ordered:
            if n.shares is not None and chosen and not n.has_room_for(size, freeing):
                continue  # its file system's room went to a replica just chosen
            n.placed_bytes += size
            chosen.append(n)
            if len(chosen) == count:
                break
        if blob_id is not None:
            self._record(blob_id, size, chosen)
        return [n.name for n in chosen]

    def hold(self, key: str, name: str, size: int, written: Callable[[], int]) -> bool:
        """Set ``size`` bytes aside on the server ``name`` for a blob written
        there now by other means than an upload (a repair copy, storage to
        storage), as a placement already claimed (``claim``) under ``key``,
        given back by ``release(key)``; False, and nothing held, if it takes
        no new blobs or, by this pool's count, has no room for them."""
        node = self._nodes.get(name)
        if node is None or not node.takes_new_blobs or not node.has_room_for(size):
            return False
        node.placed_bytes += size
        self._record(key, size, [node]).written = written
        return True

    def _record(self, key: str, size: int, nodes: list[NodeState]) -> Placement:
        """Keep the ``size`` bytes just counted as taken on ``nodes`` taken
        until ``release(key)`` (less what the placement's ``written`` says
        by then), not only until each server's next health answer."""
        placement = Placement(size, self._clock.seconds(), nodes)
        self._placements[key] = placement
        for n in nodes:
            n.holds[key] = placement
        return placement

    def share_disk(self, names: Iterable[str]) -> None:
        """The stores of the servers ``names`` share one file system (wslocal
        runs its stores in one data folder): a blob placed on one takes room
        from them all, and two replicas of a blob there take it twice."""
        group = [self._nodes[name] for name in names if name in self._nodes]
        for node in group:
            node.shares = group if len(group) > 1 else None

    def claim(self, blob_id: str, nodes: Collection[str], written: Callable[[], int]) -> None:
        """The upload of ``blob_id`` runs, on ``nodes`` (its replicas whose
        stream opened): ``written()`` says how many bytes it has written,
        which the servers' health answers show as used from then on.  The
        servers of its placement not among ``nodes`` get their room back.
        Nothing if ``blob_id`` holds no placement (its size unknown)."""
        placement = self._placements.get(blob_id)
        if placement is None:
            return
        placement.written = written
        gone = [n.name for n in placement.nodes if n.name not in nodes]
        if gone:
            self.release(blob_id, gone)

    def release(self, blob_id: str, names: Collection[str] | None = None) -> None:
        """The upload of ``blob_id`` ended (committed, interrupted, failed,
        fenced by a takeover), or its blob was never made (its start found
        a pending upload to take over instead, or failed); with ``names``,
        only its replicas there failed.  Its room is given back there: the
        bytes it still had to write.  What it wrote since the server's last
        health answer stays counted until the next, which shows it as used.

        Left counted, a resume would be refused for the room its own first
        choice held, and a server would look fuller with every upload."""
        placement = self._placements.get(blob_id)
        if placement is None:
            return
        give_back = placement.outstanding()
        keep = []
        for node in placement.nodes:
            if names is None or node.name in names:
                del node.holds[blob_id]
                node.placed_bytes = max(0, node.placed_bytes - give_back)
            else:
                keep.append(node)
        placement.nodes = keep
        if not keep:
            del self._placements[blob_id]

    def out_of_space(
        self, size: int | None = None, exclude: Iterable[str] = (), freeing: str | None = None
    ) -> bool:
        """Whether ``choose`` (with ``size``) found no server because every
        one that is up and not draining is out of room: below its reserve
        (or, with ``size``, without ``size`` bytes above it).  Then waiting
        will not help, unlike when servers are down (HTTP 507, FTP 452,
        not 503 and 451).  ``freeing``: as for ``choose``."""
        excluded = set(exclude)
        live = [
            n for n in self._nodes.values() if n.up and not n.draining and n.name not in excluded
        ]
        need = 1 if size is None else max(size, 1)
        return bool(live) and all(not n.has_room_for(need, freeing) for n in live)

    def order_for_read(self, replicas: Sequence[str], spread: int = 0) -> list[str]:
        """Replicas known here, healthy ones first; ``spread`` rotates the
        healthy ones so concurrent readers of one file share the load."""
        known = [r for r in replicas if r in self._nodes]
        healthy = [r for r in known if self._nodes[r].up]
        if healthy:
            k = spread % len(healthy)
            healthy = healthy[k:] + healthy[:k]
        return healthy + [r for r in known if not self._nodes[r].up]

    def _still_to_come(self, node: NodeState) -> int:
        """What the uploads placed on ``node`` have still to write there,
        at one of its health answers (whose free space shows what they
        wrote): a placement that no upload claimed in ``UNCLAIMED_SECONDS``
        is given back first, loudly (a start that failed without)."""
        if not node.holds:
            return 0
        stale = self._clock.seconds() - UNCLAIMED_SECONDS
        for blob_id, p in list(node.holds.items()):
            if p.written is None and p.since < stale:
                log.warn(
                    "blob {blob}: its placement ({size} bytes) was claimed by no upload "
                    "in {s:g} s; its room is given back",
                    blob=blob_id,
                    size=p.size,
                    s=UNCLAIMED_SECONDS,
                )
                self.release(blob_id)
        return sum([p.outstanding() for p in node.holds.values()])

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
        nodes = list(self._nodes.values())
        probes = [self._probe(n) for n in nodes]
        probes += [self._probe_pending(n, n.pending) for n in nodes if n.pending is not None]
        return DeferredList(probes, consumeErrors=True)

    def _failure(self, e: BaseException) -> str:
        """Why a health probe failed, in words."""
        if isinstance(e, defer.TimeoutError):
            # Its own text is the bare tuple "(2.0, 'Deferred')".
            return f"no answer to a health probe within {self._probe_timeout:g} s"
        return str(e) or e.__class__.__name__

    @inlineCallbacks
    def _probe(self, node: NodeState):
        client = node.client
        d = client.health()
        d.addTimeout(self._probe_timeout, self._clock)
        try:
            health = yield d
        except Exception as e:
            if node.client is not client:
                return  # it moved meanwhile: the old address's news
            reason = self._failure(e)
            if node.up or node.last_error == NOT_PROBED:
                log.warn("storage server {name} is down: {err}", name=node.name, err=reason)
            elif reason != node.last_error and not isinstance(node.client, UnusableClient):
                # Still down, for another reason: the one that matters now
                # (refused credentials after "connection refused", say).
                log.warn("storage server {name} is still down: {err}", name=node.name, err=reason)
            node.up = False
            node.last_error = reason
            node.secret_refused = isinstance(e, AuthenticationFailed)
            node.probed = True
            return
        if node.client is not client:
            return  # it moved meanwhile: the old address's news
        foreign = yield self._settle(node, health)
        if node.client is not client:
            return  # it moved while its bind ran
        if foreign is not None:
            node.up = False
            node.last_error = foreign
            node.last_seen = self._clock.seconds()
            node.probed = True
            return
        if not node.up:
            again = "" if node.last_seen is None else " again"
            log.info("storage server {name} is up{again}", name=node.name, again=again)
        self._answered(node, health)

    def _settle(self, node: NodeState, health: Health) -> Deferred:
        """After a health answer of ``node``: what it says of its store,
        and its binding (``binding.settle``: at most the probe timeout
        more, a bind runs on beside); fires with why the store is not used,
        or None."""
        node.secret_refused = False
        if health.store_id is not None:
            node.store_id = health.store_id
            node.store_created = health.store_created
        if self.cluster_id is None:
            return succeed(None)
        return binding.settle(
            node, health, self.cluster_id, self._clock, self._probe_timeout, self._knows_node
        )

    def _answered(self, node: NodeState, health: Health) -> None:
        """``node`` answered a probe, its store usable: up, with the
        problem, space and room its answer says."""
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
        node.placed_bytes = self._still_to_come(node)
        node.last_seen = self._clock.seconds()
        node.last_error = problem
        node.probed = True

    @inlineCallbacks
    def _probe_pending(self, node: NodeState, pending: NodeState):
        """Probe the endpoint ``node`` moved to (``move``) as ``_probe``
        would, on its own state: if it passes, it becomes ``node``'s
        (``_switch``); if not, ``node`` goes on as it was, and why is said
        once per reason.  The outcome of a pending endpoint replaced
        meanwhile is nobody's."""
        d = pending.client.health()
        d.addTimeout(self._probe_timeout, self._clock)
        try:
            health = yield d
        except Exception as e:
            if node.pending is pending:
                pending.secret_refused = isinstance(e, AuthenticationFailed)
                self._pending_failed(node, pending, self._failure(e), None)
            return
        if node.pending is not pending:
            return
        foreign = yield self._settle(pending, health)
        if node.pending is not pending:
            return
        # A bind still running here has been sent (while it is still
        # finding out whether the store may be bound, ``foreign`` says so):
        # the store is used unbound meanwhile, as ``_probe`` would have it,
        # and the switch does not wait for it: a bind hanging on the new
        # store's disk must not keep a server whose old address is dead
        # down for good.  Its outcome goes to ``pending`` only, discarded
        # at the switch (``_switch``); the node's next probe binds again.
        if foreign is not None:
            self._pending_failed(node, pending, foreign, self._clock.seconds())
            return
        if self.closing:
            return  # stopping: its client is being closed
        was = node.endpoint
        node.pending = None
        old = self._switch(node, pending)
        log.info(
            "storage server {name} answers at {endpoint}: reads and writes go there "
            "from now on (was {was})",
            name=node.name,
            endpoint=node.endpoint,
            was=was,
        )
        self._answered(node, health)
        self._hand_over(node.name, old)

    def _pending_failed(
        self, node: NodeState, pending: NodeState, reason: str, seen: float | None
    ) -> None:
        """A probe of ``node``'s pending endpoint did not pass, for
        ``reason``: it is not taken; said once per reason."""
        if reason != pending.last_error:
            log.warn(
                "storage server {name}: the endpoint it is registered at, {endpoint}, "
                "is not taken: {err}; reads and writes stay on {current}{state}",
                name=node.name,
                endpoint=pending.endpoint,
                err=reason,
                current=node.endpoint,
                state="" if node.up else " (down too)",
            )
        pending.up = False
        pending.last_error = reason
        if seen is not None:
            pending.last_seen = seen
        pending.probed = True
