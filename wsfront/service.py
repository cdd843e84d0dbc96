"""A front end as a Twisted service: catalog, storage pool, transfer layer,
and the FTP and HTTP listeners, started and stopped in the right order.

Start: open the catalog, register the ``--storage`` servers in it, build the
pool from the catalog's registry (so every front end and the CLI see the same
set), mark this front end's sessions from a previous life interrupted, probe
the storage servers, then listen.  Stop: stop listening, checkpoint and
interrupt running uploads so clients can resume them anywhere, close.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfront.auth import CachingAuthenticator, make_portal
from wsfront.catalog import open_catalog
from wsfront.catalog.records import NODE_DRAINING, Node
from wsfront.config import FrontendConfig, endpoint_problem
from wsfront.failures import operator_error
from wsfront.maintenance.failure_log import FailureLog
from wsfront.maintenance.lease import liveness_lease
from wsfront.maintenance.name_claim import Life, NameInUse, claim_name, this_life
from wsfront.transfer.pool import STORAGE_IDLE_TIMEOUT, StoragePool, UnusableClient
from wsfront.transfer.service import Transfers, TransferSettings
from wsstorage.auth import SecretError
from wsstorage.diskformat import FormatError
from wsstorage.names import storage_name_problem
from wsstorage.reserve import ReserveTooLarge

log = Logger()


def with_backlog(endpoint: str, backlog: int = 512) -> str:
    """Add an explicit listen backlog to a tcp endpoint string (Twisted's
    default of 50 drops clients when hundreds connect at once)."""
    kinds = ("tcp:", "tcp6:", "haproxy:tcp:", "haproxy:tcp6:")
    if endpoint.startswith(kinds) and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={backlog}"
    return endpoint


def _node_state(node) -> str:
    """The registry state of a pool node (``wsfs status``): "unwritable"
    when it answers but its disk takes no writes (``NodeState.problem``),
    "foreign" when its store is bound to another cluster (used for nothing,
    ``wsfront.transfer.binding``)."""
    if node.foreign is not None:
        return "foreign"
    if not node.up:
        return "down"
    return "unwritable" if node.problem is not None else "up"


def _operator_error(error: BaseException) -> bool:
    """Whether a failed start is the operator's environment (a catalog that
    cannot be reached, a port already taken, a bad endpoint, wslocal's data
    directory in use by another wslocal or of another format, a --reserve
    the disk cannot hold, a secret file wslocal cannot create or read in
    its data directory, a --name another live process has): one line
    says it, as for a bad option.
    Anything else is a bug, with its traceback."""
    environment = (
        BadStorageEndpoint, CannotListenError, FormatError, NameInUse, ReserveTooLarge,
        SecretError,
    )  # fmt: skip
    return isinstance(error, environment) or operator_error(error)


def report_start_failure(failure: Failure, what: str) -> None:
    """Log a failed start of ``what``: one line for the operator's
    environment (``_operator_error``), a traceback for anything else."""
    if _operator_error(failure.value):
        log.error("{what} could not start: {err}", what=what, err=failure.value)
    else:
        log.failure("{what} could not start", failure, what=what)


def stop_process_on_failure(reactor) -> None:
    """Stop the reactor after a failed start, and exit 1 once it has shut
    down: twistd would exit 0 after ``reactor.stop()``, and a supervisor
    must see the failure.  Start-up may fail before the reactor runs: it
    is stopped once it does."""
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    reactor.callWhenRunning(reactor.stop)


class BadStorageEndpoint(ValueError):
    """A ``--storage NAME=ENDPOINT`` whose endpoint does not parse, or
    whose name no storage server could have (``wsstorage.names``)."""


def transfer_settings(cfg: FrontendConfig) -> TransferSettings:
    """The transfer layer's knobs from the front end's options: every
    option meant for the transfer layer goes through here, so one left
    out shows in one place (and in its test)."""
    return TransferSettings(
        replicas=cfg.replicas,
        checkpoint_bytes=cfg.checkpoint_mib << 20,
        upload_expiry=cfg.upload_expiry_hours * 3600,
        max_sessions_per_user=cfg.max_sessions_per_user,
        max_pending_uploads_per_user=cfg.max_pending_uploads_per_user,
    )


class FrontendService(service.Service):
    """One wsfront process (or the front end inside wslocal)."""

    def __init__(
        self,
        reactor,
        config: FrontendConfig,
        client_factory=None,
        *,
        owns_process: bool = True,
        storage_by_operator: bool = True,
        name_locked: bool = False,
    ) -> None:
        self.reactor = reactor
        #: Whether the caller holds a lock that already makes this process
        #: the only one of its name (wslocal: its data directory's, which
        #: also holds the catalog): a name held by another life is then a
        #: dead one's, taken over without watching it (``name_claim``).
        self.name_locked = name_locked
        #: Whether ``config.storage`` is what an operator typed (``--storage``):
        #: a changed endpoint is then worth a warning (a typo reaches every
        #: front end).  wslocal's own servers get new ports or socket folders
        #: at each start, which is no news to anyone.
        self.storage_by_operator = storage_by_operator
        #: A front end that is the process (``twistd wsfront``) reports a
        #: failed start and stops the reactor; one inside ``twistd wslocal``
        #: leaves both to its owner, which first closes what it opened (its
        #: storage servers) once ``ready`` fails.
        self.owns_process = owns_process
        self.config = config
        self._client_factory = client_factory or self.storage_client
        self.catalog = None
        #: Recording the pool's probes in the catalog fails every round
        #: while it is down: said once per kind of failure, not each round.
        self._registry_failures = FailureLog(reactor, "storage registry update")
        self.pool: StoragePool | None = None
        self.transfers: Transfers | None = None
        self.ports: dict[str, object] = {}
        self._expiry: LoopingCall | None = None
        self._health: LoopingCall | None = None
        #: The old client of each server that moved (``_move_node``), by
        #: name: closed at stop, or at the server's next move.
        self._retired_clients: dict[str, object] = {}
        #: Registry reads started, and the number of the last one followed
        #: (``refresh_registry``): two at once (a record round's and a
        #: read's lookup) may answer out of order.
        self._registry_reads = 0
        self._registry_followed = 0
        self.status_page = None
        self.maintenance = None
        #: This process's life under ``config.name`` (``name_claim``), made
        #: by startService (twistd builds the service before it daemonizes:
        #: a pid taken here is the parent's, which a refused start would
        #: name), and whether it claimed the name; a maintenance service
        #: stopped when another life took the name over (``_name_lost``).
        self.life: Life | None = None
        self._claimed = False
        self._lost_name: defer.Deferred | None = None
        self.ready: defer.Deferred = defer.Deferred()

    def storage_client(self, name: str, endpoint: str):
        """The wire-protocol client of storage server ``name`` (the default
        ``client_factory``)."""
        from wsstorage.client import StorageClient

        # A busy storage server still sends keepalives every second; only ten
        # silent seconds mean it is gone (reads also fail over on a stall):
        # ``STORAGE_IDLE_TIMEOUT``.
        # expected_name: a mistyped endpoint that reaches another server of
        # the cluster must not be taken for ``name`` (blobs would be
        # recorded on a server that does not hold them).
        return StorageClient(
            self.reactor,
            name,
            endpoint,
            self.config.secret,
            idle_timeout=STORAGE_IDLE_TIMEOUT,
            expected_name=name,
        )

    def startService(self) -> None:
        super().startService()
        self.life = this_life()
        d = defer.ensureDeferred(self._start())
        if self.owns_process:

            def failed(f):
                report_start_failure(f, f"wsfront {self.config.name}")
                stop_process_on_failure(self.reactor)
                return f

            d.addErrback(failed)
        # ``ready`` fails as the start did: an owner waiting on it cleans up.
        d.chainDeferred(self.ready)

    async def _start(self) -> FrontendService:
        cfg = self.config
        for name, endpoint in cfg.storage:
            # Options were checked when read, but a config built in code was
            # not; once in the catalog a bad endpoint is every front end's.
            problem = storage_name_problem(name)
            if problem is not None:
                raise BadStorageEndpoint(f"--storage {name}={endpoint}: bad name: {problem}")
            problem = endpoint_problem(endpoint, client=True)
            if problem is not None:
                raise BadStorageEndpoint(f"--storage {name}={endpoint}: bad endpoint: {problem}")
        self.catalog = open_catalog(self.reactor, cfg.catalog)
        # Before anything is done in this front end's name (its previous
        # life's uploads marked interrupted, its jobs re-queued, maintenance
        # run as it): another live process may have the name.
        previous = await claim_name(
            self.reactor, self.catalog, cfg.name, cfg.liveness_lease_seconds, self.life,
            watch=not self.name_locked,
        )  # fmt: skip
        self._claimed = True
        if previous is not None:
            log.warn(
                "front end name {name}: its previous life ({who}) stopped renewing its "
                "liveness lease; this one takes the name over",
                name=cfg.name,
                who=previous.holder or "not recorded",
            )
        registered = {n.name: n.endpoint for n in await self.catalog.list_nodes()}
        for name, endpoint in cfg.storage:
            before = registered.get(name)
            if before is not None and before != endpoint and self.storage_by_operator:
                # How a moved server is re-registered, and how a typo in
                # one front end's options reaches every other: say so.
                log.warn(
                    "--storage {name}={endpoint}: {name} was registered at {before}; "
                    "the catalog now says {endpoint} for every front end and the CLI",
                    name=name,
                    endpoint=endpoint,
                    before=before,
                )
            await self.catalog.register_node(name, endpoint)
        # Every store the pool uses is bound to this catalog's cluster, and
        # one bound to another is used for nothing (wsfront.transfer.binding).
        # A store holding blobs the catalog knows nothing of is not bound on
        # its own (another cluster's?): ``knows_node``.
        self.pool = StoragePool(
            self.reactor,
            cluster_id=await self.catalog.cluster_id(),
            knows_node=self.catalog.has_replicas_on,
            refresh=self.refresh_registry,
            on_switch=self._retire,
        )
        self._follow_registry(await self.catalog.list_nodes())
        settings = transfer_settings(cfg)
        self.transfers = Transfers(self.reactor, self.catalog, self.pool, cfg.name, settings)
        interrupted = await self.transfers.recover()
        if interrupted:
            log.info(
                "{n} upload(s) of this front end's previous life marked interrupted",
                n=len(interrupted),
            )
        await self.pool.start()
        from wsfront.maintenance.service import MaintenanceService, maintenance_settings

        self.maintenance = MaintenanceService(
            self.reactor,
            self.catalog,
            self.pool,
            cfg.name,
            maintenance_settings(cfg),
            life=self.life,
            on_name_lost=self._name_lost,
        )
        self.maintenance.startService()
        self._expiry = LoopingCall(self.transfers.expire)
        self._expiry.clock = self.reactor
        self._expiry.start(60, now=True)
        self._health = LoopingCall(self.record_node_health)
        self._health.clock = self.reactor
        self._health.start(5, now=True)
        authenticator = CachingAuthenticator(self.catalog, self.reactor)
        ftp_factory = None
        if cfg.ftp or cfg.ftps:
            import attrs

            from wsfront.ftp.factory import FTPFactory, settings_of
            from wsfront.ftp.security import implicit_tls_factory

            ftp_settings = settings_of(cfg)
            portal = make_portal(authenticator)
            if cfg.ftp:
                ftp_factory = FTPFactory(self.reactor, self.transfers, portal, ftp_settings)
                self.ports["ftp"] = await serverFromString(
                    self.reactor, with_backlog(cfg.ftp)
                ).listen(ftp_factory)
            if cfg.ftps:
                # Implicit FTPS: TLS from the first byte, PROT P by default.
                # The same options object, so sessions resume across both.
                implicit = FTPFactory(
                    self.reactor,
                    self.transfers,
                    portal,
                    attrs.evolve(ftp_settings, implicit_tls=True),
                    share_limits_with=ftp_factory,
                )
                self.ports["ftps"] = await serverFromString(
                    self.reactor, with_backlog(cfg.ftps)
                ).listen(implicit_tls_factory(implicit))
                ftp_factory = ftp_factory or implicit
        if cfg.http or cfg.https:
            import attrs

            from wsfront.http.site import make_site
            from wsfront.http.tls import listen_https, site_settings

            # One site for both listeners: one login throttle, one set of caps.
            site = make_site(self.reactor, self.transfers, authenticator, site_settings(cfg))
            self._mount_endpoints(site, ftp_factory)
            if cfg.https:
                port = await listen_https(
                    self.reactor, with_backlog(cfg.https), site, cfg.tls_pem()
                )
                self.ports["https"] = port
                site.context.settings = attrs.evolve(
                    site.context.settings, https_port=port.getHost().port
                )
            if cfg.http:
                self.ports["http"] = await serverFromString(
                    self.reactor, with_backlog(cfg.http)
                ).listen(site)
        self._install_drain_signal()
        for proto, port in self.ports.items():
            log.info("wsfront {name} serves {proto} on {addr}", name=cfg.name, proto=proto,
                     addr=port.getHost())  # fmt: skip
        return self

    def _name_lost(self) -> None:
        """Another life renewed this front end's liveness lease: this
        process was frozen (or its catalog out of reach) past the watch of
        a start under the same name, which took the name over, marked this
        one's uploads interrupted and re-queued its jobs.  Its work is no
        longer this process's: maintenance stops at once (the maintenance
        lease first, so a job step in flight sees it gone); a front end
        that is the process stops too, exit status 1 (its ports close, its
        uploads are checkpointed for their clients to resume on the life
        that has the name); one inside wslocal leaves that to its owner."""
        if self._lost_name is not None:
            return
        log.critical(
            "front end {name}: another process took this front end's name over (its "
            "liveness lease {lease} is renewed by another life); this one stops its "
            "maintenance{also}",
            name=self.config.name,
            lease=liveness_lease(self.config.name),
            also=" and exits" if self.owns_process else "",
        )
        maintenance = self.maintenance
        d = defer.maybeDeferred(maintenance.lease.stop)
        d.addCallback(lambda _: maintenance.stopService())
        d.addErrback(lambda f: log.failure("stopping maintenance after the name was lost", f))
        self._lost_name = d
        if self.owns_process:
            stop_process_on_failure(self.reactor)

    def _follow_registry(self, registry: Iterable[Node]) -> None:
        """Bring the pool up to date with the catalog's storage registry:
        take in a server registered since (by another front end's
        ``--storage``), follow one registered at a new endpoint (its server
        moved), and mark draining the ones the registry says are.  Every
        server the pool takes in gets a client of this front end's secret
        and is bound to the catalog's cluster at its first health answer,
        as one named at the start is (``wsfront.transfer.binding``).

        A server the registry no longer lists stays in the pool (the
        catalog has no way to remove one; a drain empties it and leaves it
        registered): replicas recorded there can still be read."""
        if self.pool.closing:
            return  # stopping: a client made now would never be closed
        for node in registry:
            if node.name not in self.pool.names():
                started = self._health is not None  # not the start's own
                self._add_node(node.name, node.endpoint)
                if started:
                    log.info(
                        "storage server {name} was registered at {endpoint}: "
                        "this front end uses it from now on",
                        name=node.name,
                        endpoint=node.endpoint,
                    )
            elif self.pool.registered(node.name) != node.endpoint:
                if self.pool.endpoint(node.name) == node.endpoint:
                    self.pool.unpend(node.name)  # back where it is served
                else:
                    self._move_node(node.name, node.endpoint)
            self.pool.set_draining(node.name, node.state == NODE_DRAINING)

    def _new_client(self, name: str, endpoint: str) -> tuple[object | None, str | None]:
        """The client of ``name`` at ``endpoint``, or (None, the reason) if
        that endpoint cannot be used (registered by an older version that
        did not check): the server is then down with the reason, and the
        front end runs without it."""
        try:
            return self._client_factory(name, endpoint), None  # parses the endpoint
        except Exception as e:
            problem = str(e) or e.__class__.__name__
            return None, (
                f"registered endpoint {endpoint!r} is unusable: {problem} "
                f"(register a good one with --storage {name}=ENDPOINT)"
            )

    def _add_node(self, name: str, endpoint: str) -> None:
        """Put registered server ``name`` in the pool."""
        client, unusable = self._new_client(name, endpoint)
        if client is None:
            self.pool.add_unusable(name, endpoint, unusable)
        else:
            self.pool.add(name, endpoint, client)

    def _move_node(self, name: str, endpoint: str) -> None:
        """``name`` was registered at a new ``endpoint``: new connections go
        there once a probe of it passes (``StoragePool.move``), and the
        old client is retired then (``_retire``)."""
        was = self.pool.endpoint(name)
        client, unusable = self._new_client(name, endpoint)
        if client is None:
            client = UnusableClient(unusable)
        self.pool.move(name, endpoint, client, unusable)
        log.info(
            "storage server {name} was registered at {endpoint} (was {was}): new "
            "connections go there once a probe of it passes, to {was} until then",
            name=name,
            endpoint=endpoint,
            was=was,
        )

    def _retire(self, name: str, old) -> None:
        """Keep ``old``, the client ``name`` had before it moved (the
        pool's ``on_switch``: a probe of the new endpoint passed), for the
        reads and writes still running on it, holding no idle connection
        (``StorageClient.retire``); one at most per server: the one before
        it (moved twice) is closed now, cutting what still runs on an
        address two moves old, rather than kept, with its sockets, until
        the front end stops.  Kept first: closed at stop whatever fails
        after."""
        previous = self._retired_clients.pop(name, None)
        self._retired_clients[name] = old
        if previous is not None:
            defer.maybeDeferred(previous.close).addErrback(
                lambda f: log.failure("closing {name}'s client of two moves ago", f, name=name)
            )
        retire = getattr(old, "retire", None)
        if retire is not None:
            retire()

    @defer.inlineCallbacks
    def refresh_registry(self):
        """Read the catalog's storage registry (one query) and follow it
        (``_follow_registry``); fires with it by name.  Run with every
        health record, and by the pool for a replica on a server it does
        not know yet (``StoragePool.lookup``).  Of two reads at once, one
        answering after a later-started one was followed is not: its
        snapshot may be the older, and would move a server back to the
        address it just left."""
        self._registry_reads += 1
        number = self._registry_reads
        registry = yield self.catalog.list_nodes()
        if number > self._registry_followed:
            self._registry_followed = number
            self._follow_registry(registry)
        return {n.name: n for n in registry}

    def _mount_endpoints(self, site, ftp_factory) -> None:
        """The server's own endpoints under ``/-/``: tus uploads, Prometheus
        metrics and the administrators' live status page."""
        from wsfront.http.tus import TusEndpoint
        from wsfront.metrics import HttpCounters, make_registry, metrics_endpoint
        from wsfront.metrics_catalog import CatalogSnapshot
        from wsfront.status import status_endpoint

        site.mount("uploads", TusEndpoint())
        snapshot = CatalogSnapshot(self.reactor, self.catalog)
        http = HttpCounters(self.reactor)
        http.attach(site)
        gc = self.maintenance.gc if self.maintenance is not None else None
        registry = make_registry(self.transfers, snapshot, ftp=ftp_factory, http=http, gc=gc)
        site.mount("metrics", metrics_endpoint(registry, snapshot))
        self.status_page = status_endpoint(self.reactor, self.transfers, snapshot)
        self.status_page.start()
        site.mount("status", self.status_page)

    @defer.inlineCallbacks
    def record_node_health(self):
        """Follow the catalog's registry (``refresh_registry``: servers
        registered or moved since), then write what the pool's probes saw
        into it, so ``wsfs status`` and other front ends see it.

        Only what a probe of the endpoint the registry names found: nothing
        for a server not probed since it was taken in or moved (this front
        end knows nothing of it yet), and nothing if it moved again
        meanwhile (``set_node_health``'s ``endpoint``).  Two front ends that
        disagree on a server's address would otherwise take turns writing
        "down" and "up" (``wsfs status`` flapping on every call).

        So while a server's registered endpoint is pending here (no probe
        of it passed: ``StoragePool.move``), what is recorded is that
        endpoint's probe, not the one this front end still uses: ``down``
        (or ``foreign``), its error saying which endpoint is still used.
        Every front end that follows the registry then records the same
        state for the same endpoint, the one ``wsfs status`` shows."""
        try:
            registry = yield self.refresh_registry()
        except Exception:
            self._registry_failures.failed(Failure())
            return
        failed = False
        for node in self.pool.nodes():
            known = registry.get(node.name)
            if known is None:
                continue
            probed = node if known.endpoint == node.endpoint else node.pending
            if probed is None or probed.endpoint != known.endpoint or not probed.probed:
                continue
            error = None if probed.up else probed.last_error
            measured = probed.last_seen is not None
            if probed is not node:  # never up: it would have been taken
                error = f"{error} (not taken: this front end still uses {node.endpoint})"
                measured = False  # a store that is not used has no space to show
            draining = known.state == NODE_DRAINING
            try:
                yield self.catalog.set_node_health(
                    node.name,
                    NODE_DRAINING if draining else _node_state(probed),
                    probed.free_bytes if measured else None,
                    probed.total_bytes if measured else None,
                    probed.last_seen,
                    error,
                    probed.endpoint,
                )
            except Exception:
                if not failed:  # a catalog outage fails every node alike
                    self._registry_failures.failed(Failure())
                failed = True
        if not failed:
            self._registry_failures.succeeded()

    # -- draining for a rolling upgrade ------------------------------------

    def _install_drain_signal(self) -> None:
        if not hasattr(signal, "SIGUSR1"):
            return

        def on_signal(signum, frame):
            self.reactor.callFromThread(self.drain_and_exit)

        signal.signal(signal.SIGUSR1, on_signal)

    @defer.inlineCallbacks
    def drain(self, grace: float | None = None):
        """Stop taking new sessions, let running ones finish for ``grace``
        seconds, then checkpoint and interrupt the rest so their clients can
        resume on another front end."""
        grace = self.config.drain_seconds if grace is None else grace
        log.info("wsfront {name} drains (grace {grace}s)", name=self.config.name, grace=grace)
        for port in list(self.ports.values()):
            yield port.stopListening()
        self.ports.clear()
        self.transfers.draining = True
        deadline = self.reactor.seconds() + grace
        while self.transfers.busy and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        left = len(self.transfers.sessions)
        yield self.transfers.shutdown()
        log.info(
            "wsfront {name} drained; {left} upload(s) checkpointed for resumption elsewhere",
            name=self.config.name,
            left=left,
        )

    @defer.inlineCallbacks
    def drain_and_exit(self):
        yield self.drain()
        self.reactor.stop()

    def address(self, proto: str):
        """The bound address of the ``proto`` listener (for tests, wslocal)."""
        return self.ports[proto].getHost()

    @defer.inlineCallbacks
    def stopService(self):
        """Stop in order; each step is bounded, so Ctrl-C never hangs on a
        storage server or a maintenance pass that does not answer."""
        yield defer.maybeDeferred(super().stopService)
        for port in self.ports.values():
            yield self._bounded(port.stopListening(), "stop listening")
        if self.status_page is not None:
            self.status_page.stop()
        for loop in (self._expiry, self._health):
            if loop is not None and loop.running:
                loop.stop()
        if self.transfers is not None:
            yield self._bounded(self.transfers.shutdown(), "checkpoint running uploads")
        if self._lost_name is not None:
            yield self._bounded(self._lost_name, "stop maintenance")
        elif self.maintenance is not None:
            yield self._bounded(self.maintenance.stopService(), "stop maintenance")
        elif self._claimed:
            # A start that failed after claiming the name: give it back, so
            # the next start need not watch it lapse.
            release = self.catalog.release_lease(
                liveness_lease(self.config.name), self.config.name, self.life.token
            )
            yield self._bounded(release, "release the front end's name")
        if self.pool is not None:
            self.pool.stop()
            self.pool.closing = True  # downloads still streaming end quietly
            for node in self.pool.nodes():
                yield self._bounded(node.client.close(), f"close {node.name}")
                if node.pending is not None:  # a moved-to endpoint not taken
                    yield self._bounded(node.pending.client.close(), f"close {node.name}'s")
            for client in self._retired_clients.values():
                yield self._bounded(client.close(), "close a moved server's old client")
        if self.catalog is not None:
            yield self._bounded(self.catalog.close(), "close the catalog")

    def _bounded(self, result, what: str, seconds: float = 15.0) -> defer.Deferred:
        d = defer.maybeDeferred(lambda: result)
        d.addTimeout(seconds, self.reactor)

        def gave_up(failure):
            log.warn("shutdown: {what} did not finish: {err}", what=what, err=failure.value)

        return d.addErrback(gave_up)
