"""Benchmark wsfs's HTTP site against twisted.web's static.File (and nginx
with its dav module for PUT when nginx is installed), in the same run.

    python bench/http.py [--size-mib 1024] [--clients 200] [--small 1000]
                         [--workloads put,get,concurrent,small] [--rounds 3]
                         [--layout procs,wslocal] [--drop-behind-kib N]
                         [--storage-sockets unix|tcp]

Two wsfs layouts (``--layout``, comma-separated; default ``procs``, the
layout of the figures before wslocal's was added), each measured against
the same references in the same rounds (each round runs every layout's
pair, the layouts' order reversed every other round):

* ``procs``: storage servers run as ``twistd wsstorage`` subprocesses; the
  front end (the site, the transfer layer, the catalog client) runs in this
  process, so the RSS reported is the front end's own and ``--count-calls``
  can profile it.  They all run on this one host, so the front end reaches
  the storage servers over UNIX sockets, as wslocal does
  (``--storage-sockets tcp``: over loopback TCP, as servers on hosts of
  their own would be reached; that hop cost 0.24 s of CPU per GiB each way
  against 0.11 for a UNIX socket).
* ``wslocal``: what users run, ``twistd -n wslocal`` as a subprocess with
  its own data folder and HTTP port, logged in as its demo user: front
  end and stores in one process, big uploads and reads going straight into
  the stores (no socket copies).  Its RSS and CPU are that whole process's.

Clients are curl processes.  Issue 7's goals are ratios in the same run:
GET >= 0.6 of static.File (single and concurrent), small files >= 0.5,
PUT >= 0.6 of nginx, RSS < 100 MB during the big PUT.

How the PUT comparison is kept fair.  On a VM with free-page reporting
the host takes back guest pages that stay free, so a page-cache page that
was never used, or was freed more than a couple of seconds ago, costs the
kernel far more than one freed just before (writing 1 GiB with an
fdatasync every 8 MiB: 1.7-2.3 s of system CPU on fresh pages, 0.35 s on
recycled ones).  Who gets recycled pages decided the ratio, so:

* both sides' output is freed right after each PUT, the same way: nginx's
  file by rmtree, wsfs's file by an HTTP DELETE through the site followed
  at once by a garbage-collection pass with no grace period, so the storage
  servers unlink the blobs (left alone, an overwritten version's blobs stay
  on disk and cached for the GC grace period, an hour: wsfs grew the page
  cache by 2 GiB a round and always paid fresh pages, while nginx reused
  what its own rmtree freed); for wslocal this process runs that pass on
  wslocal's catalog and storage sockets (``Wslocal``);
* the side that goes first alternates (wsfs in odd rounds, nginx in even
  ones), since whoever runs second reuses what the first just freed; each
  round's line says who went first.  Each layout has its own nginx run
  beside it, and its ratio is against that one.

wsfs still writes twice the bytes (two replicas on this one machine) and
makes them durable; nginx writes one copy, never fsyncs, and its rmtree
usually drops the file before writeback.  That is the real difference the
ratio measures.  ``--drop-behind-kib`` passes the storage servers'
option of that name (off by default here as there) to see what dropping
the page cache behind synced data changes.  The big file is uploaded once
more, untimed, for the GET workloads.
"""

from __future__ import annotations

import sys

# Run as a script, this file's directory comes first on sys.path and this
# module would shadow the standard library's ``http``; drop that entry.
if sys.path and sys.path[0] == __import__("os").path.dirname(
    __import__("os").path.abspath(__file__)
):
    del sys.path[0]

import argparse
import cProfile
import os
import pstats
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web import server, static

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import free_port  # noqa: E402
from wsfront.auth import CachingAuthenticator  # noqa: E402
from wsfront.catalog import open_catalog  # noqa: E402
from wsfront.http.site import make_site  # noqa: E402
from wsfront.maintenance.gc import GarbageCollector, GCSettings  # noqa: E402
from wsfront.transfer.pool import StoragePool  # noqa: E402
from wsfront.transfer.service import Transfers, TransferSettings  # noqa: E402
from wsstorage.auth import load_secret  # noqa: E402
from wsstorage.client import StorageClient  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench-password"


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's RSS in MB (``field`` VmHWM: its peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Quiet(ProcessProtocol):
    """A child whose output is dropped but for its end (what a server that
    fails to start says)."""

    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()
        self.err = b""

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-2000:]

    outReceived = errReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


async def wait_listening(reactor, port: int | Path, tries: int = 200) -> None:
    """Wait until something listens on TCP ``port`` of 127.0.0.1, or on
    the UNIX socket at ``port`` (a Path)."""
    for _ in range(tries):
        try:
            if isinstance(port, Path):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(0.2)
                    sock.connect(str(port))
                    return
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            await task.deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError(f"nothing listens on {port}")


def storage_endpoints(work: Path, name: str, sockets: str) -> tuple[str, str, int | Path]:
    """A storage server's listening and client endpoints, and what
    ``wait_listening`` waits for: a TCP port of 127.0.0.1, or with
    ``sockets`` "unix" a UNIX socket in ``work`` (what a front end on the
    same host may use, as wslocal does: README, "Run a real cluster"), or
    TCP when its path would be too long for one (108 bytes)."""
    if sockets == "unix" and len(os.fsencode(work / f"{name}.sock")) > 103:
        print(f"{work}: too long a path for UNIX sockets: {name} on TCP", file=sys.stderr)
        sockets = "tcp"
    if sockets == "unix":
        path = work / f"{name}.sock"
        quoted = quoteStringArgument(str(path))
        return f"unix:address={quoted}:mode=600:lockfile=0", f"unix:path={quoted}", path
    port = free_port()
    return f"tcp:{port}:interface=127.0.0.1", f"tcp:127.0.0.1:{port}", port


async def curl(*args: str) -> tuple[bytes, float]:
    start = time.perf_counter()
    out, err, code = await getProcessOutputAndValue(
        shutil.which("curl"), ["-sS", "--fail", *args], env=dict(os.environ)
    )
    if code != 0:
        raise RuntimeError(f"curl {' '.join(args[:4])}...: {err.decode(errors='replace')}")
    return out, time.perf_counter() - start


def write_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


async def start_cluster(
    reactor,
    work: Path,
    nodes: int,
    replicas: int,
    drop_behind_kib: int | None = None,
    sockets: str = "unix",
):
    secret_file = work / "secret"
    secret_file.write_bytes(secrets.token_hex(32).encode())
    procs, endpoints = [], {}
    for i in range(1, nodes + 1):
        name = f"s{i}"
        listen, connect, port = storage_endpoints(work, name, sockets)
        proto = _Quiet()
        argv = [sys.executable, "-m", "twisted", "--log-file=/dev/null"]
        argv += ["wsstorage", "--listen", listen]
        argv += ["--data", str(work / name), "--name", name, "--secret-file", str(secret_file)]
        if drop_behind_kib is not None:
            argv += ["--drop-behind-kib", str(drop_behind_kib)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        procs.append((reactor.spawnProcess(proto, sys.executable, argv, env=env), proto))
        endpoints[name] = connect
        await wait_listening(reactor, port)
    catalog = open_catalog(reactor, f"sqlite:///{work / 'catalog.sqlite'}")
    for name, ep in endpoints.items():
        await catalog.register_node(name, ep)
    await catalog.add_user("bench", PASSWORD)
    secret = secret_file.read_bytes().strip()
    pool = StoragePool(reactor)
    for name, ep in endpoints.items():
        pool.add(name, ep, StorageClient(reactor, name, ep, secret))
    await pool.start()
    # One account fetches with every client at once: no per-user session cap.
    settings = TransferSettings(replicas=replicas, max_sessions_per_user=None)
    transfers = Transfers(reactor, catalog, pool, "bench-fe", settings)
    return procs, catalog, pool, transfers


NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {work}/nginx-root;
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""


async def nginx_put(work: Path, path: Path) -> float | None:
    """Seconds nginx's dav module takes to store ``path`` from curl -T, or
    None when nginx is not installed (Debian: apt-get install nginx-light)."""
    exe = shutil.which("nginx")
    if exe is None:
        return None
    (work / "nginx-root").mkdir()
    (work / "nginx-body").mkdir()
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port))
    proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(work)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)  # polling until nginx listens
        try:
            _, t = await curl("-T", str(path), f"http://127.0.0.1:{port}/big.bin")
        except RuntimeError as e:
            print(f"nginx reference failed: {e}", file=sys.stderr)
            return None
        return t
    finally:
        proc.terminate()
        proc.wait()


def cpu_self() -> tuple[float, float]:
    """User and system CPU seconds of this process (the front end), every
    thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def cpu_threads() -> tuple[float, float, float]:
    """CPU seconds so far of the reactor (main) thread and of the uploads'
    hashing thread (``wsfs-sha256``, 0 before it starts): what the front
    end's figure is made of, since the hash runs beside the reactor; and
    the reactor thread's system share (its socket copies: the body read
    from curl, every byte sent once per replica)."""
    reactor_thread = hashing = reactor_system = 0.0
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.name == "wsfs-sha256":
            try:
                user, system = _user_system(f"self/task/{thread.native_id}")
            except OSError:
                continue
            if thread is threading.main_thread():
                reactor_thread, reactor_system = user + system, system
            else:
                hashing = user + system
    return reactor_thread, hashing, reactor_system


def cpu_machine() -> float:
    """Busy CPU seconds so far of the whole machine (/proc/stat): includes
    what no process is charged for, like the kernel's writeback threads
    flushing the storage servers' page cache (and anything else running:
    noisy on a shared box).  nginx does not fsync; its file is removed
    right after its PUT, mostly before writeback starts, and what writeback
    did start may fall into the next PUT's figure instead of its own."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_children() -> float:
    """CPU seconds of reaped children: curl, and nginx with its worker."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_pids(pids) -> float:
    """CPU seconds so far of live processes (the storage servers)."""
    return sum(sum(_user_system(pid)) for pid in pids)


def system_pids(pids) -> float:
    """System CPU seconds so far of live processes: for a storage server,
    its socket reads, page-cache writes and syncs (the rest is Python and
    the block checksums)."""
    return sum(_user_system(pid)[1] for pid in pids)


def _user_system(pid) -> tuple[float, float]:
    """User and system CPU seconds so far of /proc/``pid`` (a process, or
    ``self/task/TID``, a thread)."""
    fields = _proc_stat(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _proc_stat(pid) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def write_calls(pids) -> int:
    """Write system calls so far of ``pids`` (``syscw`` in /proc/PID/io):
    on a storage server, one ``pwritev`` per batch of DATA frames stored."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/io") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("syscw:"))
    return total


def faults(pids) -> tuple[int, int]:
    """Minor page faults so far of this process and of ``pids`` together:
    each is a page of fresh memory zeroed for a buffer (or the page cache),
    a cost the CPU figures include but do not explain."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt, sum(
        int(_proc_stat(pid)[7]) for pid in pids
    )


async def count_put_calls(
    auth: list[str], path: Path, url: str, size: int, dump: str | None = None
) -> None:
    """One extra PUT under cProfile (the reactor thread only; the hashing
    thread's C work is not a Python call): Python calls per MiB, the
    steadiest measure of the front end's per-byte overhead.  ``dump`` names
    a file for the whole profile (``python -m pstats FILE``)."""
    await count_calls("PUT", [*auth, "-T", str(path), url], size, dump)


async def count_calls(what: str, curl_args: list[str], size: int, dump: str | None) -> None:
    """Run curl with ``curl_args`` under cProfile and print the front end's
    Python calls per MiB moved (``what``: PUT or GET)."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        await curl(*curl_args)
    finally:
        profile.disable()
    stats = pstats.Stats(profile)
    if dump:
        stats.dump_stats(dump)
    mib = size / MiB
    print(f"Python calls per MiB {what} (reactor thread): {stats.total_calls / mib:.0f}")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])[:15]
    for (file, line, name), (_, ncalls, *_rest) in rows:
        print(f"  {ncalls / mib:8.1f}  {name} ({Path(file).name}:{line})")


def unsent_bytes(reactor) -> int:
    """Bytes written to this process's TCP transports and not yet sent
    (all connections: the clients' and the storage servers')."""
    total = 0
    for fd in reactor.getWriters():
        buffered = getattr(fd, "dataBuffer", None)
        if buffered is not None:
            total += len(buffered) - fd.offset + fd._tempDataLen
    return total


def disk_bytes(roots) -> int:
    """Bytes of disk the files under ``roots`` take (the storage servers'
    data directories: what a freed upload must no longer hold)."""
    total = 0
    for root in roots:
        for parent, _, names in os.walk(root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(parent, name)).st_blocks * 512
                except FileNotFoundError:
                    continue
    return total


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


class Procs:
    """The ``procs`` layout: ``twistd wsstorage`` subprocesses, and the
    front end (site, transfer layer, catalog client) in this process, which
    ``--count-calls`` can profile.  Its CPU is this process's (static.File's
    GETs are timed apart) plus the storage servers'; its RSS is this
    process's, so the front end's own."""

    name = "procs"
    in_self = True
    #: Whose RSS ``rss`` is, whose write calls ``write_calls`` counts.
    resident, writers = "front end", "storage servers"

    async def start(self, reactor, args, work: Path) -> None:
        self.root = work / self.name
        self.root.mkdir()
        self.procs, self.catalog, self.pool, transfers = await start_cluster(
            reactor,
            self.root,
            args.nodes,
            args.replicas,
            args.drop_behind_kib,
            args.storage_sockets,
        )
        self.pids = [transport.pid for transport, _ in self.procs]
        site = make_site(reactor, transfers, CachingAuthenticator(self.catalog, reactor), None)
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.auth = ["-u", f"bench:{PASSWORD}"]
        self.gc = GarbageCollector(reactor, self.catalog, self.pool, GC_NOW)

    def storage_roots(self) -> list[Path]:
        return list(self.root.glob("s[0-9]*"))

    def cpu(self) -> float:
        return sum(cpu_self()) + cpu_pids(self.pids)

    def rss(self) -> float:
        return rss_mb()

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far, part by part (``server NAME``: one storage
        server each, shown as the busiest and the others)."""
        user, system = cpu_self()
        reactor_thread, hashing, reactor_system = cpu_threads()
        parts = {"front end": user + system, "front end, user": user}
        parts["front end, reactor thread"] = reactor_thread
        parts["front end, sha256 thread"] = hashing
        parts["reactor thread, system"] = reactor_system
        parts["storage servers"] = cpu_pids(self.pids)
        parts["storage servers, system"] = system_pids(self.pids)
        for i, pid in enumerate(self.pids):
            parts[f"server s{i + 1}"] = cpu_pids([pid])
        return parts

    def faults(self) -> dict[str, int]:
        mine, theirs = faults(self.pids)
        return {"front end": mine, "storage servers": theirs}

    def write_calls(self) -> int:
        return write_calls(self.pids)

    async def stop(self) -> None:
        if getattr(self, "port", None) is not None:
            await self.port.stopListening()
        if getattr(self, "pool", None) is not None:
            self.pool.stop()
            await self.catalog.close()
        for transport, proto in getattr(self, "procs", []):
            transport.signalProcess("TERM")
            await proto.ended


class Wslocal:
    """The ``wslocal`` layout: what users run, ``twistd -n wslocal`` as a
    subprocess (front end and storage stores in one process, uploads and
    reads going straight into the stores), its own data folder, its demo
    login.  Its CPU and RSS are that whole process's.  To free an upload at
    once this process opens wslocal's SQLite catalog and reaches its
    storage servers on the sockets the catalog lists (DATA/run), with its
    secret, and runs a GC pass with no grace, as for ``procs`` (wsfs has no
    command or endpoint for a GC pass of its own)."""

    name = "wslocal"
    in_self = False
    resident = writers = "wslocal process"

    async def start(self, reactor, args, work: Path) -> None:
        self.data = work / self.name
        port = free_port()
        self.log = work / "wslocal.log"
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        argv += ["--nodaemon", "--pidfile=", f"--logfile={self.log}", "wslocal"]
        argv += ["--data", str(self.data), "--http", f"tcp:{port}:interface=127.0.0.1"]
        argv += ["--ftp", f"tcp:{free_port()}:interface=127.0.0.1"]
        argv += ["--nodes", str(args.nodes), "--replicas", str(args.replicas)]
        argv += ["--storage-sockets", args.storage_sockets]
        if args.drop_behind_kib is not None:
            argv += ["--drop-behind-kib", str(args.drop_behind_kib)]
        self.proto = _Quiet()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = reactor.spawnProcess(self.proto, sys.executable, argv, env=env)
        self.pid = self.process.pid
        # wslocal writes its login before it listens (bench/ftp.py).
        login = self.data / "demo-login.txt"
        for _ in range(1200):
            if self.proto.ended.called:
                # The log goes with the work folder: show its end.
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                err = self.proto.err.decode(errors="replace")
                raise RuntimeError(f"wslocal exited at start:\n{log}{err}")
            if login.exists():
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        await wait_listening(reactor, port)
        self.url = f"http://127.0.0.1:{port}"
        self.auth = ["-u", login.read_text().strip()]
        self.catalog = open_catalog(reactor, f"sqlite:///{self.data / 'catalog.sqlite'}")
        secret = load_secret(self.data / "secret")
        self.pool = StoragePool(reactor)
        for node in await self.catalog.list_nodes():
            client = StorageClient(reactor, node.name, node.endpoint, secret)
            self.pool.add(node.name, node.endpoint, client)
        await self.pool.start()
        self.gc = GarbageCollector(reactor, self.catalog, self.pool, GC_NOW)

    def storage_roots(self) -> list[Path]:
        return list((self.data / "storage").glob("s[0-9]*"))

    def cpu(self) -> float:
        return cpu_pids([self.pid])

    def rss(self) -> float:
        return rss_mb(self.pid)

    def peak_rss(self) -> float:
        """The process's peak RSS over the whole run (VmHWM)."""
        return rss_mb(self.pid, "VmHWM")

    def cpu_parts(self) -> dict[str, float]:
        user, system = _user_system(self.pid)
        reactor_thread = sum(_user_system(f"{self.pid}/task/{self.pid}"))
        parts = {"wslocal process": user + system, "wslocal process, system": system}
        parts["wslocal, reactor thread"] = reactor_thread
        # The uploads' hashing thread and the stores' threads.
        parts["wslocal, other threads"] = user + system - reactor_thread
        return parts

    def faults(self) -> dict[str, int]:
        return {"wslocal process": int(_proc_stat(self.pid)[7])}

    def write_calls(self) -> int:
        return write_calls([self.pid])

    async def stop(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.stop()
            await self.catalog.close()
        if getattr(self, "proto", None) is not None and not self.proto.ended.called:
            self.process.signalProcess("TERM")
            await self.proto.ended


LAYOUTS = {"procs": Procs, "wslocal": Wslocal}
#: A GC pass that collects what was just deleted (see the module's
#: docstring: freeing each side's output at once).
GC_NOW = GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0)


async def main(reactor, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-", dir=args.dir))
    files = work / "files"
    files.mkdir()
    layouts = []
    try:
        for name in args.layout.split(","):
            layouts.append(LAYOUTS[name]())
            await layouts[-1].start(reactor, args, work)
        await _measure(reactor, args, work, files, layouts)
    finally:
        for layout in reversed(layouts):
            try:
                await layout.stop()
            except Exception as e:
                print(f"stopping {layout.name}: {e!r}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


async def _measure(reactor, args, work, files, layouts) -> None:
    stport = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        server.Site(static.File(str(files)))
    )
    try:
        await _rounds(
            reactor, args, work, files, layouts, f"http://127.0.0.1:{stport.getHost().port}"
        )
    finally:
        await stport.stopListening()


async def _rounds(reactor, args, work, files, layouts, st) -> None:
    big, mid, small = args.size_mib * MiB, 10 * MiB, 4096
    wanted = set(args.workloads.split(","))
    write_file(files / "big.bin", big)
    write_file(files / "mid.bin", mid)
    write_file(files / "small.bin", small)
    print(f"load average at start: {loadavg()}", flush=True)
    print(f"layouts: {', '.join(x.name for x in layouts)}; storage: {args.storage_sockets} sockets")
    if args.drop_behind_kib is not None:
        print(f"storage servers: --drop-behind-kib {args.drop_behind_kib}")
    # label -> (wsfs figures, reference figures, unit), one figure per round
    rows: dict[str, tuple[list, list, str, str]] = {}

    def record(label, ref_name, unit, ours, ref):
        row = rows.setdefault(label, ([], [], unit, ref_name))
        row[0].append(ours)
        row[1].append(ref)

    def in_turn(round_no: int) -> list:
        """The layouts in this round's order (reversed every other round,
        so neither always follows the other)."""
        return layouts if round_no % 2 else layouts[::-1]

    # Per layout, every RSS sample's peak during the PUTs.
    put_peaks = {x.name: x.rss() for x in layouts}

    def sample_puts() -> None:
        for x in layouts:
            put_peaks[x.name] = max(put_peaks[x.name], x.rss())

    sampler = task.LoopingCall(sample_puts)
    sampler.start(0.05)
    # Per layout: CPU seconds per GiB PUT, per round, part by part
    # (Procs.cpu_parts, Wslocal.cpu_parts), curl's; nginx with its curl.
    # Much steadier than MB/s on a shared box.  For procs the storage
    # servers are also shown as the busiest and the others together, to
    # see which replica pays when their sum swings (1.46-3.01 s per GiB PUT
    # from one round to the next in one run, 1.21-1.36 in the next): the
    # one that keeps the blob in its page cache
    # (wsfront.transfer.cache_hint), writing into fresh pages, or both.
    gib = big / (1 << 30)
    cpu: dict[str, dict[str, list[float]]] = {x.name: {} for x in layouts}
    # Minor page faults and write calls per MiB PUT.
    flt: dict[str, dict[str, list[float]]] = {x.name: {} for x in layouts}
    writes: dict[str, list[float]] = {x.name: [] for x in layouts}
    # Per round: who went first, seconds each side's output took to free,
    # and bytes the storage servers still hold after wsfs's was freed.
    firsts: dict[str, list[str]] = {x.name: [] for x in layouts}
    freeing = {x.name: {"wsfs": [], "nginx": []} for x in layouts}
    left_on_disk: dict[str, list[int]] = {x.name: [] for x in layouts}

    def per_gib(figures: dict[str, list[float]], key: str, seconds: float) -> None:
        figures.setdefault(key, []).append(seconds / gib)

    async def free_wsfs(layout) -> float:
        """Delete big.bin as a user would and collect its blobs at once, so
        the storage servers unlink them (as rmtree unlinks nginx's file)."""
        start = time.perf_counter()
        await curl(*layout.auth, "-X", "DELETE", f"{layout.url}/big.bin")
        stats = await layout.gc.collect()
        if not stats["forgotten"] or stats["waiting"] or stats["left_behind"]:
            print(f"warning: {layout.name}: GC after DELETE left blobs: {stats}", file=sys.stderr)
        return time.perf_counter() - start

    async def put_wsfs(layout) -> float:
        faults_before, writes_before = layout.faults(), layout.write_calls()
        parts_before, whole_before = layout.cpu_parts(), layout.cpu()
        curl_before, machine_before = cpu_children(), cpu_machine()
        _, t = await curl(*layout.auth, "-T", str(files / "big.bin"), f"{layout.url}/big.bin")
        whole, curl_cpu = layout.cpu() - whole_before, cpu_children() - curl_before
        machine = cpu_machine() - machine_before
        parts = {k: v - parts_before[k] for k, v in layout.cpu_parts().items()}
        mine = cpu[layout.name]
        per_gib(mine, "wsfs, all its processes", whole)
        servers = sorted(parts.pop(k) for k in list(parts) if k.startswith("server "))[::-1]
        for key, seconds in parts.items():
            per_gib(mine, key, seconds)
        if servers:
            per_gib(mine, "storage, busiest server", servers[0])
            per_gib(mine, "storage, the others", sum(servers[1:]))
        per_gib(mine, "curl (wsfs)", curl_cpu)
        per_gib(mine, "machine (wsfs)", machine)
        for key, count in layout.faults().items():
            flt[layout.name].setdefault(key, []).append((count - faults_before[key]) / (big / MiB))
        writes[layout.name].append((layout.write_calls() - writes_before) / (big / MiB))
        freeing[layout.name]["wsfs"].append(await free_wsfs(layout))
        left_on_disk[layout.name].append(disk_bytes(layout.storage_roots()))
        return t

    async def put_nginx(layout) -> float | None:
        children_before, machine_before = cpu_children(), cpu_machine()
        t = await nginx_put(work, files / "big.bin")
        per_gib(cpu[layout.name], "nginx + curl", cpu_children() - children_before)
        per_gib(cpu[layout.name], "machine (nginx)", cpu_machine() - machine_before)
        start = time.perf_counter()
        shutil.rmtree(work / "nginx-root", ignore_errors=True)
        shutil.rmtree(work / "nginx-body", ignore_errors=True)
        freeing[layout.name]["nginx"].append(time.perf_counter() - start)
        return t

    profiled = next((x for x in layouts if x.in_self), None)
    if args.count_calls and profiled is None:
        print("--count-calls: only the procs layout's front end runs here", file=sys.stderr)
    if "put" in wanted and args.count_calls and profiled is not None:
        url = f"{profiled.url}/big.bin"
        await count_put_calls(profiled.auth, files / "big.bin", url, big, args.profile_out)
        await free_wsfs(profiled)
    for round_no in range(1, args.rounds + 1 if "put" in wanted else 1):
        for layout in in_turn(round_no):
            # Whoever goes second reuses the pages the first just freed.
            if round_no % 2:
                firsts[layout.name].append("wsfs")
                t = await put_wsfs(layout)
                nginx = await put_nginx(layout)
            else:
                firsts[layout.name].append("nginx")
                nginx = await put_nginx(layout)
                t = await put_wsfs(layout)
            ref = nginx and big / nginx / 1e6
            record(f"PUT big, {layout.name}", "nginx dav", "MB/s", big / t / 1e6, ref)
    sampler.stop()
    # Every PUT's file was deleted: upload what the GET workloads read.
    needs = {"get": "big.bin", "concurrent": "mid.bin", "small": "small.bin"}
    for layout in layouts:
        for workload, path in needs.items():
            if workload in wanted:
                await curl(*layout.auth, "-T", str(files / path), f"{layout.url}/{path}")

    async def timed_get(base, extra, path):
        _, t = await curl(*extra, "-o", "/dev/null", f"{base}/{path}")
        return t

    async def concurrent(base, extra):
        start = time.perf_counter()
        await defer.gatherResults(
            [
                defer.ensureDeferred(curl(*extra, "-o", "/dev/null", f"{base}/mid.bin"))
                for _ in range(args.clients)
            ]
        )
        return time.perf_counter() - start

    async def keepalive(name, base, extra):
        config = work / f"urls-{name}.txt"
        config.write_text(
            "".join(f'url = "{base}/small.bin"\noutput = "/dev/null"\n' for _ in range(args.small))
        )
        _, t = await curl(*extra, "-K", str(config))
        return t

    if "get" in wanted and args.count_calls and profiled is not None:
        get_args = [*profiled.auth, "-o", "/dev/null", f"{profiled.url}/big.bin"]
        await count_calls("GET", get_args, big, args.profile_out and args.profile_out + ".get")
    before_gets = {x.name: x.rss() for x in layouts}
    # Which server the running GETs go to, with the RSS of the process that
    # serves them: its peaks (RSS, and for a site in this process the bytes
    # left unsent in its TCP transports) are kept apart.
    static_file = "static.File"
    phase: list = [None, rss_mb, False]
    peaks = {name: [0.0, 0] for name in [*before_gets, static_file]}
    # RSS never falls back much once reached (freed heap stays mapped), so a
    # site's peak can be memory an earlier phase of another site left: per
    # round, workload and site, the RSS at the phase's start and its peak.
    phases: list[list] = []

    def enter(site, workload: str, round_no: int) -> None:
        """GETs from ``site`` (a layout, or None: static.File) start."""
        name = static_file if site is None else site.name
        phase[:] = [name, rss_mb if site is None else site.rss, site is None or site.in_self]
        rss = phase[1]()
        phases.append([round_no, workload, name, rss, rss])

    get_cpu: dict[str, list[float]] = {}

    def sample():
        if phase[0] is None:
            return
        rss = phase[1]()
        mine = peaks[phase[0]]
        mine[0] = max(mine[0], rss)
        if phase[2]:
            mine[1] = max(mine[1], unsent_bytes(reactor))
        phases[-1][4] = max(phases[-1][4], rss)

    sampler = task.LoopingCall(sample)
    sampler.start(0.05)
    for round_no in range(1, args.rounds + 1):
        for layout in in_turn(round_no):
            ws, auth, name = layout.url, layout.auth, layout.name
            if "get" in wanted:
                # CPU per GiB sent: steadier than MB/s on a shared machine.
                enter(layout, "get", round_no)
                before, self_before = layout.cpu(), sum(cpu_self())
                t_ws = await timed_get(ws, auth, "big.bin")
                whole, front = layout.cpu() - before, sum(cpu_self()) - self_before
                enter(None, "get", round_no)
                middle = sum(cpu_self())
                t_st = await timed_get(st, [], "big.bin")
                get_cpu.setdefault(f"{name}, all its processes", []).append(whole / gib)
                if layout.in_self:
                    get_cpu.setdefault(f"{name}, front end", []).append(front / gib)
                key = f"static.File (after {name})"
                get_cpu.setdefault(key, []).append((sum(cpu_self()) - middle) / gib)
                record(
                    f"GET big, {name}", "static.File", "MB/s", big / t_ws / 1e6, big / t_st / 1e6
                )
            if "concurrent" in wanted:
                enter(layout, "concurrent", round_no)
                t_ws = await concurrent(ws, auth)
                enter(None, "concurrent", round_no)
                t_st = await concurrent(st, [])
                n = args.clients * mid / 1e6
                label = f"{args.clients} x GET 10 MiB, {name}"
                record(label, "static.File", "MB/s", n / t_ws, n / t_st)
            if "small" in wanted:
                enter(layout, "small", round_no)
                t_ws = await keepalive(name, ws, auth)
                enter(None, "small", round_no)
                t_st = await keepalive("static", st, [])
                label = f"{args.small} x GET 4 KiB keep-alive, {name}"
                record(label, "static.File", "files/s", args.small / t_ws, args.small / t_st)
    sampler.stop()

    print(f"load average at end: {loadavg()}")
    print(f"rounds: {args.rounds} (wsfs and reference alternate; medians shown)")
    width = max([len(label) for label in rows] + [50])
    print(f"{'':<{width}}  {'wsfs':>10} {'reference':>10} {'ratio':>6}  (per-round ratios)")
    for label, (ours, ref, unit, ref_name) in rows.items():
        ratios = [a / b for a, b in zip(ours, ref) if a and b]
        m_ref = median(ref)
        m_ratio = median(ratios)
        shown_ref = f"{m_ref:10.1f}" if m_ref is not None else f"{'n/a':>10}"
        shown_ratio = f"{m_ratio:6.2f}" if m_ratio is not None else f"{'':6}"
        each = " ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{label:<{width}}  {median(ours):10.1f} {shown_ref} {shown_ratio}  "
            f"({each}) {unit} vs {ref_name}"
        )

    def show(label: str, values: list[float], unit: str, digits: int = 2) -> None:
        each = " ".join(f"{x:.{digits}f}" for x in values)
        print(f"{label:<{width}}  {median(values):10.{digits}f} {unit:<4} ({each})")

    for layout in layouts if "put" in wanted else []:
        name = layout.name
        print(f"PUT, {name}:")
        print_put_rounds(rows.get(f"PUT big, {name}"), firsts[name], cpu[name], freeing[name],
                         left_on_disk[name])  # fmt: skip
        print(f"{f'peak RSS during PUTs, {layout.resident}':<{width}}  {put_peaks[name]:10.1f} MB")
        for who, values in cpu[name].items():
            show(f"CPU s per GiB PUT, {who}", values, "s")
        for who, values in flt[name].items():
            show(f"page faults per MiB PUT, {who}", values, "", 0)
        show(f"write calls per MiB PUT, {layout.writers}", writes[name], "")
    for name, rss in before_gets.items():
        print(f"{f'RSS before the GETs, {name}':<{width}}  {rss:10.1f} MB")
    for name, (rss, _) in peaks.items():
        print(f"{'  peak while GETs from ' + name + ' run':<{width}}  {rss:10.1f} MB")
    for round_no, workload, site, start, top in phases:
        label = f"  round {round_no} {workload}, {site}: start, peak"
        print(f"{label:<{width}}  {start:10.1f} {top:10.1f} MB")
    for layout in layouts:
        if not layout.in_self:
            label = f"peak RSS over the run (VmHWM), {layout.resident}"
            print(f"{label:<{width}}  {layout.peak_rss():10.1f} MB")
    for name, (_, unsent) in peaks.items():
        if name in ("static.File", *(x.name for x in layouts if x.in_self)):
            label = f"  peak unsent in transports, {name}"
            print(f"{label:<{width}}  {unsent / MiB:10.1f} MiB")
    for name, values in get_cpu.items():
        show(f"CPU s per GiB GET big, {name}", values, "s")


def print_put_rounds(row, firsts, cpu, freeing, left_on_disk) -> None:
    """One line per PUT round of one layout: who went first, both sides'
    MB/s and CPU per GiB, the machine's CPU per GiB no process of that
    side was charged for (kernel threads, and other work on a shared box: a
    noise gauge), how long freeing each side's output took and what wsfs's
    left on the storage servers' disks; then the median ratio by who went
    first."""
    if not row:
        return
    ours, ref = row[0], row[1]
    print(
        "  round: first  wsfs MB/s  nginx MB/s  ratio  CPU s/GiB: wsfs  curl"
        "  nginx+curl  other wsfs/nginx  free s wsfs/nginx  left on disk MiB"
    )
    by_first: dict[str, list[float]] = {"wsfs": [], "nginx": []}
    for i, first in enumerate(firsts):
        ratio = ours[i] / ref[i] if ref[i] else None
        if ratio is not None:
            by_first[first].append(ratio)
        shown_ref = f"{ref[i]:10.1f}" if ref[i] else f"{'n/a':>10}"
        shown_ratio = f"{ratio:6.2f}" if ratio is not None else f"{'':6}"
        wsfs, wsfs_curl = cpu["wsfs, all its processes"][i], cpu["curl (wsfs)"][i]
        other_wsfs = cpu["machine (wsfs)"][i] - wsfs - wsfs_curl
        other_nginx = cpu["machine (nginx)"][i] - cpu["nginx + curl"][i]
        print(
            f"  round {i + 1}: {first:<5} {ours[i]:10.1f} {shown_ref} {shown_ratio}"
            f"  {wsfs:14.2f} {wsfs_curl:5.2f} {cpu['nginx + curl'][i]:11.2f}"
            f" {other_wsfs:10.2f} /{other_nginx:5.2f}"
            f" {freeing['wsfs'][i]:11.2f} /{freeing['nginx'][i]:5.2f}"
            f" {left_on_disk[i] / MiB:17.1f}"
        )
    for first, ratios in by_first.items():
        if ratios:
            each = " ".join(f"{x:.2f}" for x in ratios)
            print(f"  median ratio with {first} first: {median(ratios):.2f} ({each})")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the single GET/PUT file")
    p.add_argument("--clients", type=int, default=200, help="concurrent GETs of 10 MiB")
    p.add_argument("--small", type=int, default=1000, help="4 KiB GETs over one connection")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--dir", default=None, help="where to put the data (default: $TMPDIR)")
    p.add_argument(
        "--workloads",
        default="put,get,concurrent,small",
        help="comma-separated subset of put,get,concurrent,small",
    )
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians shown)")
    p.add_argument(
        "--count-calls",
        action="store_true",
        help="first PUT (and GET) once more under cProfile and print Python calls per MiB",
    )
    p.add_argument(
        "--profile-out",
        default=None,
        help="with --count-calls: write that PUT's cProfile stats to this file",
    )
    p.add_argument(
        "--layout",
        default="procs",
        help="wsfs layouts to run, comma-separated, each against the same references in "
        "the same rounds: procs (storage servers as subprocesses, the front end in this "
        "process; the default) and wslocal (twistd -n wslocal: one process, what users run)",
    )
    p.add_argument(
        "--storage-sockets",
        choices=("unix", "tcp"),
        default="unix",
        help="how the front end reaches the storage servers: UNIX sockets (default, "
        "as wslocal does) or TCP on 127.0.0.1 (the layout before; hosts of their own); "
        "wslocal gets --storage-sockets too (its reads and big writes skip the socket)",
    )
    p.add_argument(
        "--drop-behind-kib",
        type=int,
        default=None,
        help="pass --drop-behind-kib N to the storage servers (default: theirs, off)",
    )
    args = p.parse_args(argv)
    for name in args.layout.split(","):
        if name not in LAYOUTS:
            p.error(f"--layout: {name!r} is not one of {', '.join(LAYOUTS)}")
    return args


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
