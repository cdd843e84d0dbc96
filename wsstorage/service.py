"""``twistd -n wsstorage``: options, the service, and an in-process starter.

``start_storage_server`` is what tests (and ``wslocal``) use to run a
server inside the current reactor; the twistd service is a thin wrapper
around it.  The blob store is opened (and its startup scan run) in a
thread, and the port opens only after that, so a client that connects
finds every blob already recovered.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import clientFromString, quoteStringArgument, serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from wsstorage import allocator, auth, putthreads
from wsstorage.binding import check_cluster_id
from wsstorage.blobstore import DROP_BEHIND, BlobStore
from wsstorage.diskformat import FormatError
from wsstorage.errors import BadRequest, WrongCluster
from wsstorage.names import storage_name_problem
from wsstorage.reserve import DEFAULT_RESERVE, Reserve, ReserveTooLarge
from wsstorage.server import READ_AHEAD, READ_BATCHES, StorageServerFactory

log = Logger()


def client_endpoint(port: Any) -> str:
    """A client endpoint string that reaches the server listening on
    ``port``: TCP, or ``unix:path=...`` (quoted: a path may hold ``:`` or
    ``\\``) for a UNIX socket (a front end on the same host may reach its
    storage servers that way).  The TCP host is quoted too: an IPv6
    address's colons (``::1``) would split it into several arguments."""
    addr = port.getHost()
    if isinstance(addr, UNIXAddress):
        path = os.fsdecode(addr.name)
        return f"unix:path={quoteStringArgument(path)}"
    return f"tcp:{quoteStringArgument(addr.host)}:{addr.port}"


@attrs.define
class RunningServer:
    """A storage server listening in this process."""

    factory: StorageServerFactory
    store: Any
    port: Any

    @property
    def client_endpoint(self) -> str:
        """A client endpoint string that reaches this server (``client_endpoint``)."""
        return client_endpoint(self.port)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening, drop connections, end the put threads once the
        puts queued to them are done, then close the store (in a thread):
        the store is closed after every put that started, as when puts ran
        in the reactor's thread pool ahead of the close."""
        yield defer.maybeDeferred(self.port.stopListening)
        for conn in list(self.factory.connections):
            conn.transport.abortConnection()
        puts = putthreads.made_put_threads(self.factory)
        if puts is not None:
            yield self.factory.run_blocking(puts.stop)
        yield self.factory.run_blocking(self.store.close)


@defer.inlineCallbacks
def start_storage_server(
    reactor: Any,
    endpoint: str,
    data_dir: str,
    name: str,
    secret: bytes,
    drop_behind: int = DROP_BEHIND,
    reserve: Reserve | None = None,
    cluster: str | None = None,
    **factory_kw: Any,
) -> Any:
    """Open the store under ``data_dir`` (in a thread) and listen on ``endpoint``
    (a server endpoint string such as ``tcp:0:interface=127.0.0.1``).
    ``drop_behind`` and ``reserve`` (None: ``DEFAULT_RESERVE``) are the
    store's (``BlobStore.open``).  ``cluster`` (``--cluster``): bind the
    store to that cluster id before serving, the operator's deliberate
    bind of a store front ends refuse to bind on their own (it holds
    blobs their catalog does not know); WrongCluster if it is bound to
    another.

    Fires with a RunningServer."""
    allocator.tune()
    if reserve is None:
        reserve = Reserve.parse(DEFAULT_RESERVE)
    store = yield threads.deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        lambda: BlobStore.open(data_dir, drop_behind=drop_behind, reserve=reserve),
    )
    try:
        if cluster is not None:
            bound = store.cluster_id
            yield threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), store.bind_cluster, cluster
            )
            if bound is None:
                log.warn(
                    "store {data} bound to cluster {id} (--cluster)", data=data_dir, id=cluster
                )
        factory = StorageServerFactory(reactor, store, name, secret, **factory_kw)
        port = yield serverFromString(reactor, endpoint).listen(factory)
    except BaseException:
        store.close()
        raise
    log.info(
        "wsstorage {name} listening on {addr}, data in {data}",
        name=name,
        addr=port.getHost(),
        data=data_dir,
    )
    return RunningServer(factory, store, port)


def endpoint_problem(spec: str, *, client: bool = False) -> str | None:
    """Why Twisted cannot build the server (or with ``client``, client)
    endpoint ``spec``, or None: ``tcp:notaport``, an unknown type, a missing
    key file.  Checked when options are read (here, and by wsfront and
    wslocal, which use this one), so a typo is a usage error before
    anything is touched.

    The endpoint is only built, never listened on or connected; building
    one stores the reactor it is given without using it.
    """
    build = clientFromString if client else serverFromString
    try:
        with warnings.catch_warnings():
            # A ``tls:`` client endpoint warns that this stand-in reactor
            # resolves no names: true, and beside the point here.
            warnings.simplefilter("ignore")
            endpoint = build(object(), spec)
    except Exception as e:  # Twisted raises ValueError, KeyError, TypeError, OSError...
        return str(e) or e.__class__.__name__
    return _port_problem(endpoint)


def _port_problem(endpoint: object) -> str | None:
    """Why the port of a built endpoint is out of range, or None.

    Twisted parses ``tcp:99999`` without a word, and the listen (or the
    connect) fails later with an OverflowError traceback.  The TCP, SSL and
    host-name endpoints keep their port in ``_port`` (a wrapper such as
    ``tls:`` keeps the endpoint it wraps in ``_wrappedEndpoint``); an
    endpoint with neither (``unix:``) has no port to check.
    """
    while (inner := getattr(endpoint, "_wrappedEndpoint", None)) is not None:
        endpoint = inner
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is not in 0-65535"
    return None


class Options(usage.Options):
    synopsis = "--listen EP --data DIR --name NAME --secret-file FILE"
    longdesc = (
        "Run a wsfs storage server: blobs on local disk under DIR, served over the "
        "authenticated wsstorage wire protocol on the Twisted server endpoint EP."
    )
    optParameters = [
        ["listen", None, None, "server endpoint string, e.g. tcp:7001:interface=127.0.0.1"],
        ["data", None, None, "directory holding the blobs"],
        ["name", None, None, "this storage server's name in the cluster"],
        ["secret-file", None, None, "cluster secret (created with a random one if absent)"],
        ["metrics", None, None, "serve Prometheus metrics on this endpoint (off by default)"],
        [
            "cluster",
            None,
            None,
            "bind the store to this cluster id (the one a front end's error names) before "
            "serving; refused if it is bound to another (docs/operations.md)",
        ],
        [
            "reserve",
            None,
            DEFAULT_RESERVE,
            "free space kept back from new blobs: bytes (512MiB, 2G) or a percentage of the disk",
        ],
        ["scrub-mib-per-second", None, "16", "pace of the background checksum scrub (0: off)"],
        [
            "scrub-interval-hours",
            None,
            "24",
            "start a scrub pass this often (0 turns scrubbing off but is deprecated: "
            "turn it off with --scrub-mib-per-second 0)",
        ],
        [
            "read-ahead-kib",
            None,
            str(READ_AHEAD // 1024),
            "KiB a read stream reads ahead per batch",
        ],
        ["read-batches", None, str(READ_BATCHES), "read-ahead batches a read stream keeps ready"],
        [
            "drop-behind-kib",
            None,
            str(DROP_BEHIND // 1024),
            "drop the page cache behind each run of this many KiB made durable (0: keep it)",
        ],
    ]

    def postOptions(self) -> None:
        missing = [f"--{k}" for k in ("listen", "data", "name", "secret-file") if not self[k]]
        if missing:
            raise usage.UsageError(f"missing required option(s): {', '.join(missing)}")
        for option in ("listen", "metrics"):
            problem = self[option] and endpoint_problem(self[option])
            if problem:
                raise usage.UsageError(
                    f"--{option} {self[option]!r}: not a server endpoint ({problem})"
                )
        if self["cluster"] is not None:
            try:
                check_cluster_id(self["cluster"])
            except BadRequest:
                raise usage.UsageError("--cluster must be 32 lowercase hex digits") from None
        problem = storage_name_problem(self["name"])
        if problem is not None:
            raise usage.UsageError(f"--name {self['name']!r}: {problem}")
        for name in ("scrub-mib-per-second", "scrub-interval-hours"):
            try:
                self[name] = float(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a number") from None
            if not math.isfinite(self[name]):
                raise usage.UsageError(f"--{name} must be a finite number")
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        # ``--scrub-interval-hours 0`` still turns scrubbing off (deployments
        # use it: refusing it would stop their servers restarting in a
        # rolling upgrade), with a deprecation warning at start
        # (``StorageService._scrub``): 0 reads as "all the time" as well
        # as "never", and ``--scrub-mib-per-second 0`` is the one switch.
        for name, least in (("read-ahead-kib", 4), ("read-batches", 1), ("drop-behind-kib", 0)):
            try:
                self[name] = int(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a whole number") from None
            if self[name] < least:
                raise usage.UsageError(f"--{name} must be at least {least}")
        try:
            self["reserve"] = Reserve.parse(self["reserve"])
        except ValueError as e:
            raise usage.UsageError(f"--reserve: {e}") from None
        try:
            self.secret, self.secret_created = auth.ensure_secret(self["secret-file"])
        except auth.SecretError as e:
            raise usage.UsageError(str(e)) from None


class StorageService(Service):
    """Runs one storage server under twistd."""

    def __init__(self, reactor: Any, options: Options) -> None:
        self.reactor = reactor
        self.options = options
        self.running_server: RunningServer | None = None
        self._starting: defer.Deferred | None = None
        self.scrubber = None
        self.metrics_port = None

    def startService(self) -> None:
        super().startService()
        opts = self.options
        if opts.secret_created:
            log.warn(
                "created secret file {path} with a new random secret; copy it to every "
                "front end and storage server of this cluster",
                path=os.path.abspath(opts["secret-file"]),
            )
        d = start_storage_server(
            self.reactor,
            opts["listen"],
            opts["data"],
            opts["name"],
            opts.secret,
            drop_behind=opts["drop-behind-kib"] * 1024,
            reserve=opts["reserve"],
            cluster=opts["cluster"],
            read_ahead=opts["read-ahead-kib"] * 1024,
            read_batches=opts["read-batches"],
        )
        # _failed also sees _started's failures: a --metrics port that is
        # taken is a failed start, not a server running without its metrics.
        d.addCallback(self._started)
        d.addErrback(self._failed)
        self._starting = d

    @defer.inlineCallbacks
    def _started(self, server: RunningServer):
        self.running_server = server
        opts = self.options
        self._scrub(server)
        if opts["metrics"]:
            from wsstorage.metrics import listen_metrics, storage_registry

            self.metrics_port = yield listen_metrics(
                self.reactor, opts["metrics"], storage_registry(server.factory)
            )
            log.info("wsstorage metrics on {addr}", addr=self.metrics_port.getHost())

    def _scrub(self, server: RunningServer) -> None:
        """Start the background scrub and log its schedule, or warn that
        it is off (damage on this disk is then found only when a reader
        trips on it), and, loudly, that ``--scrub-interval-hours 0``,
        which turns it off as it always did, is deprecated."""
        opts = self.options
        hours, pace = opts["scrub-interval-hours"], opts["scrub-mib-per-second"]
        if hours == 0:
            log.error(
                "DEPRECATED: --scrub-interval-hours 0 turns scrubbing off for now, but a "
                "later release will refuse it; use --scrub-mib-per-second 0, the supported "
                "switch, to turn scrubbing off"
            )
        if pace > 0 and hours > 0:
            from wsstorage.scrub import Scrubber

            self.scrubber = Scrubber(self.reactor, server.store, bytes_per_second=pace * 2**20)
            self.scrubber.start(hours * 3600)
            log.info(
                "scrub: a checksum pass now and every {hours:g} h, at {pace:g} MiB/s",
                hours=hours,
                pace=pace,
            )
        else:
            why = "--scrub-mib-per-second 0" if pace == 0 else "--scrub-interval-hours 0"
            log.warn("scrub is off ({why}): no background checksum passes", why=why)

    def _failed(self, failure: Any) -> None:
        # The operator's environment (a port taken, a data directory that
        # is missing, in use or of another format) is the one line below,
        # as wsfront says it; anything else is a bug, worth its traceback.
        if not failure.check(
            CannotListenError, OSError, FormatError, ReserveTooLarge, WrongCluster
        ):
            log.failure("wsstorage could not start", failure)
        sys.stderr.write(f"wsstorage: cannot start: {failure.getErrorMessage()}\n")
        # twistd exits 0 after reactor.stop(); a supervisor must see a failed
        # start as one (wsfront does the same).
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callWhenRunning(self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._starting is not None:
            yield self._starting
        if self.scrubber is not None:
            self.scrubber.stop()
        if self.metrics_port is not None:
            yield self.metrics_port.stopListening()
        if self.running_server is not None:
            yield self.running_server.stop()


def makeService(options: Options) -> StorageService:
    from twisted.internet import reactor

    return StorageService(reactor, options)
