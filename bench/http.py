"""Benchmark wsfront's HTTP site against twisted.web's static.File (and nginx
with its dav module for PUT when nginx is installed), in the same run.

    python bench/http.py [--size-mib 1024] [--clients 200] [--small 1000]
                         [--workloads put,get,concurrent,small] [--rounds 3]
                         [--drop-behind-kib N] [--storage-sockets unix|tcp]

Storage servers run as ``twistd wsstorage`` subprocesses; the front end (the
site, the transfer layer, the catalog client) runs in this process, so the
RSS reported is the front end's own.  They all run on this one host, so the
front end reaches the storage servers over UNIX sockets, as wslocal does
(``--storage-sockets tcp``: over loopback TCP, as servers on hosts of their
own would be reached; that hop cost 0.24 s of CPU per GiB each way against
0.11 for a UNIX socket).  Clients are curl processes.  Issue 7's
goals are ratios in the same run: GET >= 0.6 of static.File (single and
concurrent), small files >= 0.5, PUT >= 0.6 of nginx, RSS < 100 MB during
the big PUT.

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
  what its own rmtree freed);
* the side that goes first alternates (wsfs in odd rounds, nginx in even
  ones), since whoever runs second reuses what the first just freed; each
  round's line says who went first.

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
from wsstorage.client import StorageClient  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench-password"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Quiet(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()

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


async def main(reactor, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-", dir=args.dir))
    files = work / "files"
    files.mkdir()
    procs, catalog, pool, transfers = await start_cluster(
        reactor, work, args.nodes, args.replicas, args.drop_behind_kib, args.storage_sockets
    )
    try:
        storage_pids = [transport.pid for transport, _ in procs]
        await _measure(reactor, args, work, files, catalog, pool, transfers, storage_pids)
    finally:
        pool.stop()
        await catalog.close()
        for transport, proto in procs:
            transport.signalProcess("TERM")
            await proto.ended
        shutil.rmtree(work, ignore_errors=True)


async def _measure(reactor, args, work, files, catalog, pool, transfers, storage_pids) -> None:
    site = make_site(reactor, transfers, CachingAuthenticator(catalog, reactor), None)
    wsport = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    stport = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        server.Site(static.File(str(files)))
    )
    ws = f"http://127.0.0.1:{wsport.getHost().port}"
    st = f"http://127.0.0.1:{stport.getHost().port}"
    auth = ["-u", f"bench:{PASSWORD}"]
    big, mid, small = args.size_mib * MiB, 10 * MiB, 4096
    wanted = set(args.workloads.split(","))
    write_file(files / "big.bin", big)
    write_file(files / "mid.bin", mid)
    write_file(files / "small.bin", small)
    print(f"load average at start: {loadavg()}", flush=True)
    print(f"front end to storage servers: {args.storage_sockets} sockets")
    if args.drop_behind_kib is not None:
        print(f"storage servers: --drop-behind-kib {args.drop_behind_kib}")
    # label -> (wsfs figures, reference figures, unit), one figure per round
    rows: dict[str, tuple[list, list, str, str]] = {}

    def record(label, ref_name, unit, ours, ref):
        row = rows.setdefault(label, ([], [], unit, ref_name))
        row[0].append(ours)
        row[1].append(ref)

    peak = [rss_mb()]
    sampler = task.LoopingCall(lambda: peak.__setitem__(0, max(peak[0], rss_mb())))
    sampler.start(0.05)
    # CPU seconds per GiB PUT, per round: front end, storage servers, curl;
    # nginx with its curl.  Much steadier than MB/s on a shared box.
    gib = big / (1 << 30)
    cpu: dict[str, list[float]] = {"front end": [], "front end, user": []}
    cpu.update({"front end, reactor thread": [], "front end, sha256 thread": []})
    cpu.update({"reactor thread, system": []})
    cpu.update({"storage servers": [], "storage servers, system": []})
    cpu.update({"curl (wsfs)": [], "nginx + curl": []})
    # The storage servers one by one: the busiest, and the others together,
    # to see which replica pays when their sum swings (1.46-3.01 s per GiB
    # PUT from one round to the next in one run, 1.21-1.36 in the next,
    # 1.22-1.32 with --drop-behind-kib 1024): the one that keeps the blob in
    # its page cache (wsfront.transfer.cache_hint), writing into fresh pages,
    # or both.
    cpu.update({"storage, busiest server": [], "storage, the others": []})
    cpu.update({"machine (wsfs)": [], "machine (nginx)": []})
    # Minor page faults per MiB PUT: front end, storage servers.
    flt: dict[str, list[float]] = {"front end": [], "storage servers": []}
    writes: list[float] = []
    # Per round: who went first, seconds each side's output took to free,
    # and bytes the storage servers still hold after wsfs's was freed.
    firsts: list[str] = []
    freeing: dict[str, list[float]] = {"wsfs": [], "nginx": []}
    left_on_disk: list[int] = []
    gc = GarbageCollector(
        reactor, catalog, pool, GCSettings(grace_seconds=0.0, orphan_grace_seconds=0.0)
    )

    async def free_wsfs() -> float:
        """Delete big.bin as a user would and collect its blobs at once, so
        the storage servers unlink them (as rmtree unlinks nginx's file)."""
        start = time.perf_counter()
        await curl(*auth, "-X", "DELETE", f"{ws}/big.bin")
        stats = await gc.collect()
        if not stats["forgotten"] or stats["waiting"] or stats["left_behind"]:
            print(f"warning: GC after DELETE left blobs: {stats}", file=sys.stderr)
        return time.perf_counter() - start

    async def put_wsfs() -> float:
        faults_before, writes_before = faults(storage_pids), write_calls(storage_pids)
        before = cpu_self(), cpu_pids(storage_pids), cpu_children(), cpu_threads()
        system_before = system_pids(storage_pids)
        each_before = [cpu_pids([pid]) for pid in storage_pids]
        machine_before = cpu_machine()
        _, t = await curl(*auth, "-T", str(files / "big.bin"), f"{ws}/big.bin")
        after = cpu_self(), cpu_pids(storage_pids), cpu_children(), cpu_threads()
        system_after = system_pids(storage_pids)
        each = sorted(
            (cpu_pids([pid]) - b for pid, b in zip(storage_pids, each_before)), reverse=True
        )
        cpu["storage, busiest server"].append(each[0] / gib)
        cpu["storage, the others"].append(sum(each[1:]) / gib)
        machine_after = cpu_machine()
        faults_after = faults(storage_pids)
        writes.append((write_calls(storage_pids) - writes_before) / (big / MiB))
        for who, a, b in zip(flt, faults_after, faults_before):
            flt[who].append((a - b) / (big / MiB))
        cpu["front end"].append((sum(after[0]) - sum(before[0])) / gib)
        cpu["front end, user"].append((after[0][0] - before[0][0]) / gib)
        cpu["front end, reactor thread"].append((after[3][0] - before[3][0]) / gib)
        cpu["front end, sha256 thread"].append((after[3][1] - before[3][1]) / gib)
        cpu["reactor thread, system"].append((after[3][2] - before[3][2]) / gib)
        cpu["storage servers, system"].append((system_after - system_before) / gib)
        cpu["storage servers"].append((after[1] - before[1]) / gib)
        cpu["curl (wsfs)"].append((after[2] - before[2]) / gib)
        cpu["machine (wsfs)"].append((machine_after - machine_before) / gib)
        freeing["wsfs"].append(await free_wsfs())
        left_on_disk.append(disk_bytes(work.glob("s[0-9]*")))
        return t

    async def put_nginx() -> float | None:
        children_before, machine_before = cpu_children(), cpu_machine()
        t = await nginx_put(work, files / "big.bin")
        cpu["nginx + curl"].append((cpu_children() - children_before) / gib)
        cpu["machine (nginx)"].append((cpu_machine() - machine_before) / gib)
        start = time.perf_counter()
        shutil.rmtree(work / "nginx-root", ignore_errors=True)
        shutil.rmtree(work / "nginx-body", ignore_errors=True)
        freeing["nginx"].append(time.perf_counter() - start)
        return t

    if "put" in wanted and args.count_calls:
        await count_put_calls(auth, files / "big.bin", f"{ws}/big.bin", big, args.profile_out)
        await free_wsfs()
    for round_no in range(1, args.rounds + 1 if "put" in wanted else 1):
        # Whoever goes second reuses the pages the first just freed.
        if round_no % 2:
            firsts.append("wsfs")
            t = await put_wsfs()
            nginx = await put_nginx()
        else:
            firsts.append("nginx")
            nginx = await put_nginx()
            t = await put_wsfs()
        record("PUT big", "nginx dav", "MB/s", big / t / 1e6, nginx and big / nginx / 1e6)
    sampler.stop()
    put_peak = peak[0]
    # Every PUT's file was deleted: upload what the GET workloads read.
    needs = {"get": "big.bin", "concurrent": "mid.bin", "small": "small.bin"}
    for workload, path in needs.items():
        if workload in wanted:
            await curl(*auth, "-T", str(files / path), f"{ws}/{path}")

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

    if "get" in wanted and args.count_calls:
        get_args = [*auth, "-o", "/dev/null", f"{ws}/big.bin"]
        await count_calls("GET", get_args, big, args.profile_out and args.profile_out + ".get")
    before_gets = rss_mb()
    peak = [before_gets]
    # Which server the running GETs go to: its peaks (RSS, and bytes left
    # unsent in this process's TCP transports) are kept apart, since both
    # sites run in this process.
    phase = ["wsfs"]
    peaks = {"wsfs": [0.0, 0], "static.File": [0.0, 0]}
    # RSS never falls back much once reached (freed heap stays mapped), so a
    # site's peak can be memory an earlier phase of the other site left: per
    # round, workload and site, the RSS at the phase's start and its peak.
    phases: list[list] = []

    def enter(site: str, workload: str, round_no: int) -> None:
        phase[0] = site
        rss = rss_mb()
        phases.append([round_no, workload, site, rss, rss])

    get_cpu: dict[str, list[float]] = {"wsfs": [], "static.File": []}

    def sample():
        rss = rss_mb()
        peak[0] = max(peak[0], rss)
        mine = peaks[phase[0]]
        mine[0] = max(mine[0], rss)
        mine[1] = max(mine[1], unsent_bytes(reactor))
        if phases:
            phases[-1][4] = max(phases[-1][4], rss)

    sampler = task.LoopingCall(sample)
    sampler.start(0.05)
    for round_no in range(1, args.rounds + 1):
        if "get" in wanted:
            # The front end's CPU per GiB sent (both sites are this
            # process): steadier than MB/s on a shared machine.
            enter("wsfs", "get", round_no)
            before = sum(cpu_self())
            t_ws = await timed_get(ws, auth, "big.bin")
            middle = sum(cpu_self())
            enter("static.File", "get", round_no)
            t_st = await timed_get(st, [], "big.bin")
            get_cpu["wsfs"].append((middle - before) / gib)
            get_cpu["static.File"].append((sum(cpu_self()) - middle) / gib)
            record("GET big", "static.File", "MB/s", big / t_ws / 1e6, big / t_st / 1e6)
        if "concurrent" in wanted:
            enter("wsfs", "concurrent", round_no)
            t_ws = await concurrent(ws, auth)
            enter("static.File", "concurrent", round_no)
            t_st = await concurrent(st, [])
            n = args.clients * mid / 1e6
            record(f"{args.clients} x GET 10 MiB", "static.File", "MB/s", n / t_ws, n / t_st)
        if "small" in wanted:
            enter("wsfs", "small", round_no)
            t_ws = await keepalive("wsfs", ws, auth)
            enter("static.File", "small", round_no)
            t_st = await keepalive("static", st, [])
            record(
                f"{args.small} x GET 4 KiB keep-alive",
                "static.File",
                "files/s",
                args.small / t_ws,
                args.small / t_st,
            )
    sampler.stop()

    print(f"load average at end: {loadavg()}")
    print(f"rounds: {args.rounds} (wsfs and reference alternate; medians shown)")
    width = max([len(label) for label in rows] + [44])
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
    if "put" in wanted:
        print_put_rounds(rows.get("PUT big"), firsts, cpu, freeing, left_on_disk)
        print(f"{'front-end peak RSS during PUTs':<{width}}  {put_peak:10.1f} MB")
        for who, values in cpu.items():
            each = " ".join(f"{x:.2f}" for x in values)
            label = f"CPU s per GiB PUT, {who}"
            print(f"{label:<{width}}  {median(values):10.2f} s    ({each})")
        for who, values in flt.items():
            each = " ".join(f"{x:.0f}" for x in values)
            label = f"page faults per MiB PUT, {who}"
            print(f"{label:<{width}}  {median(values):10.0f}      ({each})")
        each = " ".join(f"{x:.2f}" for x in writes)
        label = "write calls per MiB PUT, storage servers"
        print(f"{label:<{width}}  {median(writes):10.2f}      ({each})")
    print(f"{'front-end RSS before the GETs':<{width}}  {before_gets:10.1f} MB")
    print(f"{'front-end peak RSS during GETs':<{width}}  {peak[0]:10.1f} MB")
    for name, (rss, _) in peaks.items():
        print(f"{'  while GETs from ' + name + ' run':<{width}}  {rss:10.1f} MB")
    for round_no, workload, site, start, top in phases:
        label = f"  round {round_no} {workload}, {site}: start, peak"
        print(f"{label:<{width}}  {start:10.1f} {top:10.1f} MB")
    for name, (_, unsent) in peaks.items():
        label = f"  peak unsent in transports, {name}"
        print(f"{label:<{width}}  {unsent / MiB:10.1f} MiB")
    for name, values in get_cpu.items():
        if not values:
            continue
        each = " ".join(f"{x:.2f}" for x in values)
        label = f"CPU s per GiB GET big, front end, {name}"
        print(f"{label:<{width}}  {median(values):10.2f} s    ({each})")

    await wsport.stopListening()
    await stport.stopListening()


def print_put_rounds(row, firsts, cpu, freeing, left_on_disk) -> None:
    """One line per PUT round: who went first, both sides' MB/s and CPU per
    GiB, the machine's CPU per GiB no process of that side was charged for
    (kernel threads, and other work on a shared box: a noise gauge), how
    long freeing each side's output took and what wsfs's left on the
    storage servers' disks; then the median ratio by who went first."""
    if not row:
        return
    ours, ref = row[0], row[1]
    print(
        "PUT rounds: first  wsfs MB/s  nginx MB/s  ratio  CPU s/GiB: front end  storage"
        "  nginx+curl  other wsfs/nginx  free s wsfs/nginx  left on disk MiB"
    )
    by_first: dict[str, list[float]] = {"wsfs": [], "nginx": []}
    for i, first in enumerate(firsts):
        ratio = ours[i] / ref[i] if ref[i] else None
        if ratio is not None:
            by_first[first].append(ratio)
        shown_ref = f"{ref[i]:10.1f}" if ref[i] else f"{'n/a':>10}"
        shown_ratio = f"{ratio:6.2f}" if ratio is not None else f"{'':6}"
        wsfs_cpu = sum(cpu[k][i] for k in ("front end", "storage servers", "curl (wsfs)"))
        other_wsfs = cpu["machine (wsfs)"][i] - wsfs_cpu
        other_nginx = cpu["machine (nginx)"][i] - cpu["nginx + curl"][i]
        print(
            f"  round {i + 1}: {first:<5} {ours[i]:10.1f} {shown_ref} {shown_ratio}"
            f"  {cpu['front end'][i]:19.2f} {cpu['storage servers'][i]:8.2f}"
            f" {cpu['nginx + curl'][i]:11.2f} {other_wsfs:10.2f} /{other_nginx:5.2f}"
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
        "--storage-sockets",
        choices=("unix", "tcp"),
        default="unix",
        help="how the front end reaches the storage servers: UNIX sockets (default, "
        "as wslocal does) or TCP on 127.0.0.1 (the layout before; hosts of their own)",
    )
    p.add_argument(
        "--drop-behind-kib",
        type=int,
        default=None,
        help="pass --drop-behind-kib N to the storage servers (default: theirs, off)",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
