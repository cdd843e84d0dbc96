"""``twistd wslocal``: a whole wsfs cluster in one process, for trying it out.

N storage servers (each with its own data folder), one front end, and a
SQLite catalog, all under ``--data`` (default ``./wsfs-data``).  The first
start creates the cluster secret and a demo user with a random password and
prints the URLs and the login; later starts reuse the data and the login.
Storage servers listen on UNIX sockets in ``DATA/run`` (``--storage-sockets
tcp``: on 127.0.0.1, on ports the system picks); their current endpoints are
re-registered in the catalog at every start.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import os
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.logger import Logger
from twisted.python import usage

from wsfront.catalog import open_catalog
from wsfront.catalog.errors import NotFound, RootInUse
from wsfront.config import FrontendConfig, endpoint_problem
from wsfront.service import FrontendService, report_start_failure, stop_process_on_failure
from wsfront.transfer import reader
from wsfront.transfer.pending_per_user import DEFAULT_LIMIT as DEFAULT_PENDING_LIMIT
from wsfront.transfer.shares import fair_share
from wsstorage.inprocess_write import InProcessWriteClient
from wsstorage.server import StorageServerFactory
from wsstorage.service import client_endpoint

if TYPE_CHECKING:
    from wsstorage.blobstore import BlobStore

log = Logger()
DEMO_USER = "demo"
#: Read-ahead of each storage server in this one process: it holds the front
#: end and every storage server, so a download is read ahead on one of them
#: and buffered again by the front end; 256 KiB x 1 instead of 1 MiB x 2
#: cuts what each stream holds on the storage side from about 4 MiB to 0.75.
#: That is the most a read stream reads at once (``LocalStorageFactory``).
LOCAL_READ_AHEAD = 256 * 1024
LOCAL_READ_BATCHES = 1
#: What the storage servers' read streams in this process read at once,
#: together: each holds, when the front end's socket is full, a copy of
#: its batch's unsent rest, and a lone stream the buffers its reading task
#: fills (several streams read cached batches into one shared buffer:
#: ``wsstorage.server.reactor_batch_buffer``).  At 256 KiB each, 200
#: downloads held 75 MiB of those (wslocal peaked at 135 MB); each batch
#: is an equal share of this budget among the running reads, between
#: READ_AHEAD_MIN (one default block: cached batches are read in place
#: only in whole blocks, so a store of another block size gets whole
#: blocks of its own) and LOCAL_READ_AHEAD, so up to 32 at once read
#: 256 KiB batches and 200 read 64 KiB ones (peak 89 MB).  The front
#: end's downloads now read these stores in process (``_storage_client``),
#: in batches of the same share: each holds at most two of them, and only
#: while it waits for the disk.
READ_AHEAD_BUDGET = 8 << 20
READ_AHEAD_MIN = 64 << 10
#: Longest path a UNIX socket may have: ``sun_path`` is 108 bytes on Linux,
#: the last a NUL (104 on the BSDs and macOS: the shorter is used).
SUN_PATH_MAX = 103
STORAGE_SOCKETS = ("unix", "tcp")


def unix_socket_dir(data: Path, names: list[str]) -> tuple[Path | None, int | None]:
    """Where the storage servers' UNIX sockets go: ``data/run`` when every
    ``run/NAME.sock`` fits in ``SUN_PATH_MAX`` bytes, else a private
    directory of the system's temporary folder (``private_socket_folder``,
    removed at stop: the second item is then the descriptor of its lock,
    to be closed after that), else None (use TCP).
    Raises OSError when that private directory cannot be made.  Call it
    with the stores of ``data`` open: their locks keep a second wslocal
    from taking (and at its stop removing) the first one's folder.

    Why UNIX sockets: what of the front end's traffic to the storage
    servers of this process is not served in process (``_storage_client``)
    crosses a socket, and a loopback TCP hop cost about twice the CPU of a
    UNIX one (1.97 s against 1.66 s per GiB written to two replicas,
    without the disk's share)."""
    longest = max(len(n) for n in names) + len(".sock")

    def fits(folder: Path) -> bool:
        return len(os.fsencode(folder)) + 1 + longest <= SUN_PATH_MAX

    run = data / "run"
    if fits(run):
        return run, None
    folder = Path(tempfile.gettempdir()) / socket_folder_name(data)
    if fits(folder):
        return private_socket_folder(folder)
    return None, None


def socket_folder_name(data: Path) -> str:
    """The name of ``data``'s socket folder in the temporary folder:
    ``wslocal-UID-HASH``, the same at every start on the same data, so a
    wslocal killed before it could remove its folder (SIGKILL) leaves one
    that the next start on that data takes back, not one more each time."""
    digest = hashlib.sha256(os.fsencode(data.resolve())).hexdigest()[:12]
    return f"wslocal-{os.getuid()}-{digest}"


def private_socket_folder(folder: Path) -> tuple[Path, int]:
    """``folder``, made with mode 0700, or taken back if a killed wslocal
    left it, with the descriptor of its lock (``hold_folder_lock``), held
    until the folder is removed.  Taken back only when it is a directory
    (not a link) of this user that no one else may enter, and that no
    running wslocal holds: a name in a shared temporary folder can be taken
    by anyone first, and a running wslocal's data folder may have been
    moved and another made at its path (the stores' locks, which are the
    data's, do not see that).  Otherwise a fresh ``wslocal-XXXX`` folder
    is made beside it, and what was there is left alone."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        found = os.lstat(folder)
        private = not found.st_mode & 0o077
        if not (stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and private):
            folder = Path(tempfile.mkdtemp(prefix="wslocal-", dir=folder.parent))
    lock = hold_folder_lock(folder)
    if lock is None:
        folder = Path(tempfile.mkdtemp(prefix="wslocal-", dir=folder.parent))
        lock = hold_folder_lock(folder)
        if lock is None:  # a folder just made, that no one else may enter
            raise OSError(errno.EAGAIN, "cannot lock a new folder", str(folder))
    return folder, lock


def hold_folder_lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder/lock``, held by the descriptor returned
    (None: another process holds it).  The kernel lets go of it when the
    process dies, so a SIGKILLed wslocal's folder is free again."""
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale_socket(path: Path) -> None:
    """Remove the socket a killed wslocal left at ``path`` (bind would fail
    on it); anything else there is left for bind to refuse."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def unix_listen_endpoint(path: Path) -> str:
    """The server endpoint string of a UNIX socket at ``path`` (quoted: a
    data folder's name may hold ``:`` or ``\\``; its clients' string is
    ``wsstorage.service.client_endpoint`` of the port).  Mode 0600:
    only this user may connect (the protocol's handshake proves the
    cluster secret anyway).  No Twisted lock file: it holds a process id,
    and a wslocal restarted as the same id (PID 1 of a container) would
    take its own dead lock for a live one; the store's lock (taken before,
    in ``BlobStore.open``) already keeps a second wslocal off the same
    data, so a socket found there is a killed one's (``remove_stale_socket``)."""
    quoted = quoteStringArgument(str(path))
    return f"unix:address={quoted}:mode=600:lockfile=0"


def freeze_start_up_objects(started: object) -> object:
    """Put every object alive once ``twistd wslocal`` has started (modules,
    classes, the services and their stores: most live as long as the
    process) in the collector's permanent generation (``gc.freeze``),
    after a collection so that no garbage goes there.  The oldest
    generation's collections, which the garbage of a busy server triggers
    now and then, then walk only what came later: 1000 small FTP STORs
    over one connection spent 47 us each in the collector, a 28 ms full
    collection among them, and 16 us with the freeze.  What of it becomes
    garbage later in a cycle is never collected: start-up leaves little
    of that.  Only for the process twistd runs (``wsfront.localtap``),
    not for a LocalClusterService made elsewhere (a test's), whose
    caller's objects must stay collectable.  Passes ``started`` on (a
    ``ready`` callback)."""
    gc.collect()
    gc.freeze()
    return started


class LocalStorageFactory(StorageServerFactory):
    """A storage server whose read-ahead is a share of READ_AHEAD_BUDGET.

    The reads of the storage servers in this process are, all but a
    repair's or a scrub's, the front end's downloads
    (``wsfront.transfer.reader``), so the front end's count of running
    reads is the count of read streams sharing the budget.  The
    ``read_ahead`` given is the ceiling; the factory answers its current
    share each time a read stream asks: for each batch the reactor thread
    reads, and when a reading task starts, for its batches.
    """

    @property
    def read_ahead(self) -> int:
        # In steps of READ_AHEAD_MIN, or of the store's block where that is
        # not a divisor of it (a store's block need not be 64 KiB): a batch
        # that is not whole blocks is never read in place, so every cached
        # batch of a wire read stream went to the thread pool instead of
        # being read in the reactor thread (``_ReadStream._read_here``).
        block = getattr(self.store, "block_size", 1)
        step = READ_AHEAD_MIN if READ_AHEAD_MIN % block == 0 else block
        ceiling = self.read_ahead_max
        if ceiling < step:  # a ceiling under one step is its own floor
            return ceiling
        ceiling -= ceiling % step
        floor = min(-(-READ_AHEAD_MIN // step) * step, ceiling)
        return fair_share(READ_AHEAD_BUDGET, reader.active_reads(), floor, ceiling, step)

    @read_ahead.setter
    def read_ahead(self, value: int) -> None:
        self.read_ahead_max = value


class LocalOptions(usage.Options):
    """``twistd -n wslocal [--data DIR] [--ftp EP] [--http EP] [--nodes 3] [--replicas 2]
    [--storage-sockets unix] [--drop-behind-kib 0] [--reserve 1%]
    [--max-pending-uploads-per-user 1000]``"""

    optParameters = [
        ["data", None, "./wsfs-data", "folder holding every server's data and the catalog"],
        ["ftp", None, "tcp:2121:interface=127.0.0.1", "FTP endpoint"],
        ["http", None, "tcp:8080:interface=127.0.0.1", "HTTP endpoint"],
        ["nodes", None, "3", "storage servers to run"],
        ["replicas", None, "2", "replicas of every file"],
        [
            "storage-sockets",
            None,
            "unix",
            "how the front end reaches the storage servers: unix (sockets in DATA/run) or tcp",
        ],
        [
            "drop-behind-kib",
            None,
            "0",  # wsstorage.blobstore.DROP_BEHIND (off), not imported here
            "storage servers drop the page cache behind each run of this many KiB "
            "made durable (0: keep it)",
        ],
        [
            "reserve",
            None,
            "1%",  # wsstorage.reserve.DEFAULT_RESERVE
            "free space each storage server keeps back from new blobs: bytes (512MiB) "
            "or a percentage of the disk",
        ],
        [
            "max-pending-uploads-per-user",
            None,
            str(DEFAULT_PENDING_LIMIT),
            "interrupted uploads one user may leave pending before a new upload is refused",
        ],
    ]

    def postOptions(self) -> None:
        if not self["data"]:
            # Path("") is the current directory: wslocal would fill whatever
            # folder it was started in (wsstorage refuses "" as missing).
            raise usage.UsageError('--data must name a folder ("" is none)')
        for name in ("nodes", "replicas", "drop-behind-kib", "max-pending-uploads-per-user"):
            try:
                self[name] = int(self[name])
            except ValueError as e:
                raise usage.UsageError(f"--{name} must be a whole number") from e
        if self["drop-behind-kib"] < 0:
            raise usage.UsageError("--drop-behind-kib must not be negative")
        from wsstorage.reserve import Reserve

        try:
            self["reserve"] = Reserve.parse(self["reserve"])
        except ValueError as e:
            raise usage.UsageError(f"--reserve: {e}") from None
        if self["max-pending-uploads-per-user"] < 1:
            raise usage.UsageError("--max-pending-uploads-per-user must be at least 1")
        if self["nodes"] < 1:
            raise usage.UsageError("--nodes must be at least 1")
        if not 1 <= self["replicas"] <= self["nodes"]:
            raise usage.UsageError("--replicas must be between 1 and --nodes")
        if self["storage-sockets"] not in STORAGE_SOCKETS:
            raise usage.UsageError("--storage-sockets must be unix or tcp")
        # As wsfront checks its own: a typo is a usage error, not a
        # traceback once the storage servers have started.
        for option in ("ftp", "http"):
            # An empty one turns that protocol off, as for wsfront.
            problem = endpoint_problem(self[option]) if self[option] else None
            if problem is not None:
                raise usage.UsageError(
                    f"--{option} {self[option]!r}: not a server endpoint ({problem})"
                )


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (RFC 3986),
    so ``ftp://user:pw@[::1]:2121/`` is a URL a client can use."""
    return f"[{host}]" if ":" in host else host


class LocalClusterService(service.MultiService):
    """Storage servers, then the front end, in one reactor."""

    def __init__(self, reactor, options: LocalOptions, out=None) -> None:
        super().__init__()
        self.reactor = reactor
        self.options = options
        self.data = Path(options["data"]).resolve()
        self.out = out or sys.stdout
        self.storage_ports: dict[str, object] = {}
        self.stores: dict[str, object] = {}
        self.factories: dict[str, LocalStorageFactory] = {}
        self.frontend: FrontendService | None = None
        self.login: tuple[str, str] | None = None
        #: A temporary folder holding the sockets (``unix_socket_dir``),
        #: removed at stop; None when they are in ``data/run`` or on TCP.
        self.socket_tmp: Path | None = None
        #: The descriptor holding that folder's lock, closed after it is removed.
        self.socket_lock: int | None = None
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = defer.ensureDeferred(self._start())

        def failed(f):
            # After ``_start``'s clean-up: the reactor stops, and twistd's
            # shutdown finds the stores closed (``_close_storage``).
            report_start_failure(f, "wslocal")
            stop_process_on_failure(self.reactor)
            return f

        d.addErrback(failed)
        d.chainDeferred(self.ready)

    async def _start(self) -> LocalClusterService:
        """Start the storage servers, then the front end.  A start that
        fails part way (a store that cannot open, a socket that cannot
        bind) closes the stores and ports it opened (``_close_storage``):
        each store holds its directory's lock and its journal thread, so
        they would stay held in a process that goes on (a test's, or a
        caller's that tries again); twistd's shutdown would only close
        them later.  A front end that fails to start (a port already
        taken) is stopped first: it leaves reporting its failure and
        stopping the reactor to this service (``owns_process=False``),
        whose ``ready`` then fails."""
        try:
            return await self._start_all()
        except Exception:
            # The start's own error is what the operator needs: a failure
            # while cleaning up is logged, never put in its place.
            await self._stop_frontend()
            try:
                await self._close_storage()
            except Exception:
                log.failure("wslocal: cleanup after a failed start")
            raise

    async def _stop_frontend(self) -> None:
        """Stop a front end whose start failed and take it out of this
        service, so that twistd's shutdown does not stop it again (its
        catalog closed twice); its pool's clients go before the storage
        servers they reach."""
        frontend = self.frontend
        if frontend is None or frontend.parent is not self:
            return
        try:
            await defer.maybeDeferred(frontend.disownServiceParent)
        except Exception:
            log.failure("wslocal: stopping the front end after a failed start")

    async def _start_all(self) -> LocalClusterService:
        from wsstorage.auth import ensure_secret

        self.data.mkdir(parents=True, exist_ok=True)
        secret, _ = ensure_secret(self.data / "secret")
        storage = []
        names = [f"s{i}" for i in range(1, self.options["nodes"] + 1)]
        for name in names:
            self.stores[name] = self.open_store(name)
        sockets = self._socket_dir(names)  # with the stores' locks held
        for name, store in self.stores.items():
            factory = LocalStorageFactory(
                self.reactor,
                store,
                name,
                secret,
                read_ahead=LOCAL_READ_AHEAD,
                read_batches=LOCAL_READ_BATCHES,
            )
            if sockets is None:
                listen = "tcp:0:interface=127.0.0.1"
            else:
                listen = unix_listen_endpoint(sockets / f"{name}.sock")
                remove_stale_socket(sockets / f"{name}.sock")
            port = await serverFromString(self.reactor, listen).listen(factory)
            self.storage_ports[name] = port
            self.factories[name] = factory
            storage.append((name, client_endpoint(port)))
        catalog_url = f"sqlite:///{self.data / 'catalog.sqlite'}"
        self.login = await self._demo_login(catalog_url)
        await self._bind_own_stores(catalog_url)
        config = FrontendConfig(
            name="local",
            catalog=catalog_url,
            storage=tuple(storage),
            replicas=self.options["replicas"],
            secret=secret,
            ftp=self.options["ftp"],
            http=self.options["http"],
            # One demo account for everyone trying the cluster (and for
            # benchmarks of 200 clients at once): the per-user cap guards a
            # shared service against one account, not this.
            max_sessions_per_user=1024,
            max_pending_uploads_per_user=self.options["max-pending-uploads-per-user"],
        )
        self.frontend = FrontendService(
            self.reactor,
            config,
            client_factory=self._storage_client,
            owns_process=False,
            storage_by_operator=False,
            # The stores' locks, taken above, make this the one wslocal on
            # this data directory and its catalog: a killed one's name is
            # taken over at once, not after watching its lease.
            name_locked=True,
        )
        self.frontend.setServiceParent(self)
        await self.frontend.ready
        self._share_disks()
        self._announce()
        return self

    def _share_disks(self) -> None:
        """Tell the front end's pool which stores share a file system (all
        of them, unless folders under DATA/storage are mounts of their
        own): each reports that file system's free space as its own, so a
        blob placed on one takes room from the others too, and a blob's
        two replicas on it take it twice (``StoragePool.share_disk``);
        charged to each store alone, uploads of known size placed on a
        nearly full disk would fail mid-body instead of being refused
        before it."""
        by_device: dict[int, list[str]] = {}
        for name, store in self.stores.items():
            by_device.setdefault(os.stat(store.root).st_dev, []).append(name)
        for names in by_device.values():
            self.frontend.pool.share_disk(names)

    def _socket_dir(self, names: list[str]) -> Path | None:
        """The folder of the storage servers' UNIX sockets, made private
        (0700), or None for TCP (``--storage-sockets tcp``, or a data
        folder and a temporary folder whose paths are too long)."""
        if self.options["storage-sockets"] != "unix":
            return None
        try:
            folder, lock = unix_socket_dir(self.data, names)
        except OSError as e:
            # The private folder could not be made (a full or read-only
            # temporary folder): TCP serves as well, if at a higher CPU cost.
            log.warn(
                "wslocal: cannot make a folder for the storage servers' sockets in "
                "{tmp} ({why}): they listen on 127.0.0.1 instead",
                tmp=tempfile.gettempdir(),
                why=e.strerror or e,
            )
            return None
        if folder is None:
            log.warn(
                "wslocal: no socket path under {data} or the temporary folder fits in "
                "{n} bytes: the storage servers listen on 127.0.0.1 instead",
                data=self.data,
                n=SUN_PATH_MAX,
            )
            return None
        if lock is not None:
            self.socket_tmp, self.socket_lock = folder, lock
            log.info(
                "wslocal: {data}/run is too long a path for UNIX sockets: they are in {folder}",
                data=self.data,
                folder=folder,
            )
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
        return folder

    def _storage_client(self, name: str, endpoint: str):
        """The front end's client of storage server ``name``: reads, puts
        and write streams of a server of this process go straight to its
        store, not through a socket (``wsstorage.inprocess``,
        ``wsstorage.inprocess_write``); the rest, and any server the
        catalog lists that is not ours, over the wire."""
        wire = self.frontend.storage_client(name, endpoint)
        factory = self.factories.get(name)
        if factory is None:
            return wire
        return InProcessWriteClient(wire, factory)

    def open_store(self, name: str) -> BlobStore:
        """Open storage server ``name``'s blob store, with the options' drop-behind
        and reserve."""
        from wsstorage.blobstore import BlobStore
        from wsstorage.reserve import Reserve

        drop_behind = self.options["drop-behind-kib"] * 1024
        reserve = self.options["reserve"]
        if isinstance(reserve, str):  # options filled in without parseOptions
            reserve = Reserve.parse(reserve)
        return BlobStore.open(
            self.data / "storage" / name, drop_behind=drop_behind, reserve=reserve
        )

    async def _demo_login(self, catalog_url: str) -> tuple[str, str]:
        """The demo user's login, created with a random password on first start."""
        login_file = self.data / "demo-login.txt"
        catalog = open_catalog(self.reactor, catalog_url)
        try:
            if login_file.exists():
                name, _, password = login_file.read_text().strip().partition(":")
                try:
                    await catalog.get_user(name)
                    return name, password
                except NotFound:
                    pass
            password = secrets.token_urlsafe(12)
            try:
                await catalog.get_user(DEMO_USER)
                await catalog.set_password(DEMO_USER, password)
            except NotFound:
                await self._add_demo_user(catalog, password)
            fd = os.open(login_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{DEMO_USER}:{password}\n")
            return DEMO_USER, password
        finally:
            await catalog.close()

    async def _bind_own_stores(self, catalog_url: str) -> None:
        """Bind every unbound store to this catalog's cluster before the
        front end sees them.  They live in this data directory, under its
        locks, beside the catalog: this cluster's, whatever they hold.  The
        front end alone would not bind a store that holds blobs its catalog
        records no replica of (another cluster's, for all it knows), and
        wslocal has no ``--cluster`` to say otherwise: a store left holding
        only garbage when it was upgraded (files deleted within the
        collection grace) would have stayed unusable.  A store bound to
        another cluster (a catalog replaced by hand) is left as it is: the
        front end refuses it, and ``fsck --rebuild-catalog`` is the way."""
        catalog = open_catalog(self.reactor, catalog_url)
        try:
            cluster_id = await catalog.cluster_id()
        finally:
            await catalog.close()
        for store in self.stores.values():
            if store.cluster_id is None:
                store.bind_cluster(cluster_id)

    async def _add_demo_user(self, catalog, password: str) -> None:
        """Add the demo user, an administrator (so the status page at
        /-/status works out of the box).

        Its root holds files when an operator deleted it with ``wsfs user
        del demo --keep-files``: the catalog refuses to hand them to a new
        account unless told to, but this cluster's one account is the
        same demo user, so it takes them back (as ``user add
        --adopt-files`` would) rather than leave wslocal unable to start.
        """
        try:
            await catalog.add_user(DEMO_USER, password, admin=True)
        except RootInUse:
            user = await catalog.add_user(DEMO_USER, password, admin=True, adopt_files=True)
            log.info(
                "wslocal: the demo user had been deleted with its files kept; "
                "re-added, adopting the files under {root}",
                root=user.root,
            )

    def _announce(self) -> None:
        name, password = self.login
        lines = [f"wsfs local cluster ready: {self.options['nodes']} storage servers, "
                 f"{self.options['replicas']} replicas, data in {self.data}"]  # fmt: skip
        if "ftp" in self.frontend.ports:
            a = self.frontend.address("ftp")
            lines.append(f"  FTP:  ftp://{name}:{password}@{url_host(a.host)}:{a.port}/")
        if "http" in self.frontend.ports:
            a = self.frontend.address("http")
            lines.append(f"  HTTP: http://{name}:{password}@{url_host(a.host)}:{a.port}/")
        lines.append(f"  login: {name} / {password}   (saved in {self.data / 'demo-login.txt'})")
        # Straight to the terminal: the user needs these lines, whatever the
        # log is configured to do.
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    @defer.inlineCallbacks
    def stopService(self):
        yield defer.maybeDeferred(super().stopService)
        yield defer.ensureDeferred(self._close_storage())

    async def _close_storage(self) -> None:
        """Stop the storage servers' ports, close their stores and remove
        the sockets' temporary folder, once: what is closed is forgotten,
        so a stop after a failed start closes nothing twice."""
        ports, self.storage_ports = self.storage_ports, {}
        for name, port in ports.items():
            try:
                await defer.maybeDeferred(port.stopListening)  # None once stopped
            except Exception:
                log.failure("wslocal: storage server {name}'s port did not stop", name=name)
        stores, self.stores = self.stores, {}
        for name, store in stores.items():
            # Every store is closed even if one fails to (a journal that
            # cannot checkpoint): the others' locks and threads go with them.
            close = getattr(store, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.failure("wslocal: store {name} did not close cleanly", name=name)
        folder, self.socket_tmp = self.socket_tmp, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        lock, self.socket_lock = self.socket_lock, None
        if lock is not None:
            os.close(lock)
