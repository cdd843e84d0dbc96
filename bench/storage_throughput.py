"""Throughput of the wsstorage wire protocol against a plain socket copy.

Starts a real ``twistd -n wsstorage`` on 127.0.0.1, writes one blob of
``--size-mib`` MiB through the client (streaming, committed with fsync),
then for ``--rounds`` rounds reads it back into a consumer that only counts
and, alternating with it, moves the same number of bytes from a second
Python process through a plain socket (sendall/recv_into, the wire's 1 MiB
per system call, no framing, no checksums, no disk) as the reference.
Prints MB/s for every round, the median of the per-round ratios, the write
ratio, the fsync setting and the server's peak RSS (VmHWM).  With ``--tls``
the server also listens with TLS and every round reads over it too.
It also prints the CPU seconds per GiB each side spent (server process,
client reactor thread; reference sender process, receiver thread), which a
loaded machine does not change the way it changes the speeds, and how long
the server's reactor thread (and the reference sender) waited for a CPU
while runnable (``schedstat``): when that wait is close to its CPU time
the machine was oversubscribed, and the elapsed time, so the ratio, follows
the CPU both sides need together rather than the server's alone.  With
``--read-ahead KIBxBATCHES`` a third server runs with that read-ahead
(``--read-ahead-kib``, ``--read-batches``) and is read in every round too.
Goal: reads >= 0.7 of the socket copy, RSS < 100 MB.

With ``--small N`` it measures small blobs instead: N blobs of 4 KiB, each
created, written and committed over the wire one after the other (what a
small FTP STOR costs one replica), in blobs/s, against a reference in the
same run that makes N 4 KiB files durable the cheapest correct way on the
same disk (create, write, fdatasync, fsync the directory), alternating in
``--rounds`` rounds.  ``--strace`` runs the server under ``strace -f -c``
and prints its fsync and fdatasync counts per blob (counts, not timings:
they are not noisy).

    python bench/storage_throughput.py --size-mib 1024 [--rounds 7] [--tls]
        [--read-ahead 256x1]
    python bench/storage_throughput.py --small 500 [--rounds 3] [--strace]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/, where a sibling script
# (bench/http.py) would shadow the standard library: import from the repo.
REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import argparse  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.interfaces import IPushProducer  # noqa: E402
from zope.interface import implementer  # noqa: E402

from bench._common import child_env, peak_rss_mib  # noqa: E402
from tests.support import free_port, twistd_argv  # noqa: E402
from wsstorage.client import StorageClient  # noqa: E402
from wsstorage.framing import TRANSPORT_BUFFER  # noqa: E402

MiB = 1024 * 1024


@functools.cache
def pattern_block() -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(MiB))


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sched_wait(pid: int) -> float:
    """Seconds the main thread of a process (the server's reactor thread,
    which sends every read batch; the reference's only thread) has so far
    spent runnable but waiting for a CPU (``schedstat``'s run delay).

    On a machine shared with other work, a transfer is slowed by this wait
    as much as by its own CPU time; comparing the two tells whether a
    process was short of CPU or waiting for its peer."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")  # no schedstats on this kernel


# -- reference: a plain socket copy ------------------------------------------
#
# A fair reference moves the same bytes between two Python processes, as the
# wire does (the storage server is one, this bench the other), with the
# chunk size the wire uses per system call on both sides
# (framing.TRANSPORT_BUFFER): sendall of a ready buffer on one side,
# recv_into a reused buffer on the other; no framing, no checksums, no disk.

CHUNK = TRANSPORT_BUFFER
#: What the bench's writer hands the wire client per write() by default (a
#: front end relays what its client's connection gives it: ``--write-chunk-kib``).
WRITE_CHUNK = 256 * 1024
_REQUEST = struct.Struct("!cQ")  # b"r" (peer sends) or b"w" (peer receives), size


def reference_peer() -> None:
    """Run as ``--reference-peer``: print a port, then serve copies forever."""
    block = memoryview(pattern_block())
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    buf = bytearray(CHUNK)
    while True:
        conn, _ = listener.accept()
        with conn:
            head = conn.recv(_REQUEST.size, socket.MSG_WAITALL)
            direction, size = _REQUEST.unpack(head)
            if direction == b"r":
                for start in range(0, size, CHUNK):
                    n = min(CHUNK, size - start)
                    conn.sendall(block[:n])
            else:
                got = 0
                while got < size:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    got += n
                conn.sendall(b"k")


def start_reference_peer() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--reference-peer"], stdout=subprocess.PIPE, env=child_env()
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def socket_copy(port: int, size: int, direction: str, cpu: list | None = None) -> float:
    """Seconds to move ``size`` bytes from the peer ('read') or to it ('write');
    appends this thread's CPU seconds to ``cpu`` if given."""
    block = memoryview(pattern_block())
    buf = bytearray(CHUNK)
    cpu_start = time.thread_time()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(_REQUEST.pack(b"r" if direction == "read" else b"w", size))
        if direction == "read":
            got = 0
            while got < size:
                n = c.recv_into(buf)
                if not n:
                    raise RuntimeError("reference peer closed early")
                got += n
        else:
            for offset in range(0, size, CHUNK):
                c.sendall(block[: min(CHUNK, size - offset)])
            c.recv(1)
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.thread_time() - cpu_start)
    return elapsed


# -- the wire protocol ---------------------------------------------------------


@implementer(IPushProducer)
class PatternProducer:
    """Feeds ``size`` bytes into a writer, honouring pause/resume."""

    def __init__(self, reactor, writer, size: int, chunk: int = WRITE_CHUNK) -> None:
        self.reactor = reactor
        self.writer = writer
        self.left = size
        self.paused = False
        self.block = pattern_block()
        self.chunks = [self.block[i : i + chunk] for i in range(0, MiB, chunk)]
        self.i = 0
        self.done: defer.Deferred = defer.Deferred()
        self.scheduled = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.scheduled is None:
            self.scheduled = self.reactor.callLater(0, self.turn)

    def stopProducing(self) -> None:
        self.left = 0

    def turn(self) -> None:
        self.scheduled = None
        for _ in range(16):
            if self.paused or self.left <= 0:
                break
            chunk = self.chunks[self.i % len(self.chunks)]
            if len(chunk) > self.left:
                chunk = chunk[: self.left]
            self.i += 1
            self.left -= len(chunk)
            self.writer.write(chunk)
        if self.left <= 0:
            if not self.done.called:
                self.done.callback(None)
        elif not self.paused:
            self.resumeProducing()


class CountingConsumer:
    def __init__(self) -> None:
        self.count = 0

    def registerProducer(self, producer, streaming) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.count += len(data)


def start_server(
    workdir: Path,
    name: str,
    listen: str,
    wrap: list[str] | None = None,
    extra: list[str] | None = None,
) -> subprocess.Popen:
    env = child_env()
    env.pop("WSFS_FAILPOINTS", None)
    with open(workdir / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(
            [
                *(wrap or []),
                *twistd_argv("wsstorage"),
                "--listen",
                listen,
                "--data",
                str(workdir / f"data-{name}"),
                "--name",
                name,
                "--secret-file",
                str(workdir / "secret"),
                *(extra or []),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc


def wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def timed_read(client: StorageClient, cpu: list | None = None) -> float:
    """Seconds to read the blob; appends the reactor thread's CPU seconds
    (the client's whole receive path) to ``cpu`` if given."""
    consumer = CountingConsumer()
    cpu_start = time.thread_time()
    start = time.perf_counter()
    n = await client.read("bench", 0, None, consumer)
    assert n == consumer.count, (n, consumer.count)
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.thread_time() - cpu_start)
    return elapsed


async def timed_write(
    reactor, client: StorageClient, size: int, blob: str = "bench", chunk: int = WRITE_CHUNK
) -> float:
    start = time.perf_counter()
    writer = await client.write(blob, 1, 0, {"bench": True})
    producer = PatternProducer(reactor, writer, size, chunk)
    writer.registerProducer(producer, True)
    producer.resumeProducing()
    await producer.done
    writer.unregisterProducer()
    info = await writer.commit()
    assert info.size == size, info
    return time.perf_counter() - start


async def wire(
    reactor,
    endpoints: dict[str, str],
    secret: bytes,
    size: int,
    rounds: int,
    ref_port: int,
    pids: dict[str, int],
    write_rounds: int = 1,
    write_chunk: int = WRITE_CHUNK,
) -> dict:
    """Write the blob to every server ``write_rounds`` times, each round
    followed by one socket-copy write, then per round read it from each and
    make one socket-copy read, alternating, so all see the same machine
    load (this box is shared); returns seconds, and CPU seconds per write
    and per read of each side (``cpu``/``wcpu``: kind -> (server, client)
    lists; a machine shared with other work slows a transfer but does not
    change what it costs)."""
    from twisted.internet import threads

    clients = {
        kind: StorageClient(reactor, "bench", ep, secret, idle_timeout=30)
        for kind, ep in endpoints.items()
    }
    out: dict = {"ref": [], "write": {}, "cpu": {"ref": ([], [])}, "wref": [], "wcpu": {}}
    out["wcpu"]["ref"] = ([], [])
    for kind in clients:
        out["write"][kind] = []
        out["wcpu"][kind] = ([], [])
    for i in range(write_rounds):
        # The last round writes the blob the reads use; earlier ones are deleted.
        blob = "bench" if i == write_rounds - 1 else f"bench-{i}"
        for kind, client in clients.items():
            server, cl = out["wcpu"][kind]
            before = process_cpu(pids[kind])
            cpu_start = time.thread_time()
            out["write"][kind].append(await timed_write(reactor, client, size, blob, write_chunk))
            cl.append(time.thread_time() - cpu_start)
            server.append(process_cpu(pids[kind]) - before)
            if blob != "bench":
                await client.delete(blob)
        server, cl = out["wcpu"]["ref"]
        before = process_cpu(pids["ref"])
        out["wref"].append(await threads.deferToThread(socket_copy, ref_port, size, "write", cl))
        server.append(process_cpu(pids["ref"]) - before)
    out["wait"] = {kind: [] for kind in (*clients, "ref")}
    for kind in clients:
        out[kind] = []
        out["cpu"][kind] = ([], [])
    for _ in range(rounds):
        for kind, client in clients.items():
            sender, receiver = out["cpu"][kind]
            before = process_cpu(pids[kind])
            waited = sched_wait(pids[kind])
            out[kind].append(await timed_read(client, receiver))
            sender.append(process_cpu(pids[kind]) - before)
            out["wait"][kind].append(sched_wait(pids[kind]) - waited)
        sender, receiver = out["cpu"]["ref"]
        before = process_cpu(pids["ref"])
        waited = sched_wait(pids["ref"])
        out["ref"].append(
            await threads.deferToThread(socket_copy, ref_port, size, "read", receiver)
        )
        sender.append(process_cpu(pids["ref"]) - before)
        out["wait"]["ref"].append(sched_wait(pids["ref"]) - waited)
    for client in clients.values():
        await client.close()
    return out


# -- small blobs ---------------------------------------------------------------

SMALL = 4096


async def small_blobs(client: StorageClient, prefix: str, count: int) -> float:
    """Seconds to create, write and commit ``count`` 4 KiB blobs in turn."""
    data = pattern_block()[:SMALL]
    start = time.perf_counter()
    for i in range(count):
        writer = await client.write(f"{prefix}-{i}", 1, 0, {"inode": i})
        writer.write(data)
        info = await writer.commit()
        assert info.size == SMALL, info
    return time.perf_counter() - start


def durable_files(directory: Path, count: int) -> float:
    """Reference: seconds to make ``count`` 4 KiB files durable, the least
    a correct store can do per file (create, write, fdatasync, fsync dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = pattern_block()[:SMALL]
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    start = time.perf_counter()
    try:
        for i in range(count):
            fd = os.open(directory / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    elapsed = time.perf_counter() - start
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed


#: The system calls a traced plain server's summary reports on a blob write.
WRITE_SYSCALLS = (
    "pwrite64",
    "pwritev",
    "pwritev2",
    "recvfrom",
    "read",
    "sendto",
    "fdatasync",
    "fsync",
)


def strace_counts(path: Path, names: tuple[str, ...] = ("fsync", "fdatasync")) -> dict[str, int]:
    """Calls per syscall from an ``strace -c`` summary file."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in names and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def run_small(args: argparse.Namespace) -> None:
    from twisted.internet import threads

    workdir = Path(tempfile.mkdtemp(prefix="wsfs-bench-small-", dir=args.dir))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    trace = workdir / "strace.txt"
    wrap = None
    if args.strace:
        wrap = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace)]
    proc = start_server(workdir, "small", f"tcp:{port}:interface=127.0.0.1", wrap)
    times: dict[str, list[float]] = {"wire": [], "ref": []}
    try:
        wait_listening(proc, port, workdir / "small.log")
        secret = (workdir / "secret").read_bytes().strip()

        async def run(reactor):
            client = StorageClient(reactor, "bench", f"tcp:127.0.0.1:{port}", secret)
            await small_blobs(client, "warm", 64)  # connections, imports, the first dirs
            for r in range(args.rounds):
                times["wire"].append(await small_blobs(client, f"r{r}", args.small))
                ref = await threads.deferToThread(durable_files, workdir / f"ref{r}", args.small)
                times["ref"].append(ref)
            await client.close()

        task.react(lambda r: defer.ensureDeferred(run(r)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        if args.strace:  # stop the traced server; strace then writes its summary
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                for child in f.read().split():
                    os.kill(int(child), signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait()
    n = args.small
    print(f"small blobs: {n} x 4 KiB create+write+commit over 127.0.0.1, {args.rounds} rounds")
    print("wire blobs/s      " + " ".join(f"{n / t:7.1f}" for t in times["wire"]))
    print("durable files/s   " + " ".join(f"{n / t:7.1f}" for t in times["ref"]))
    ratios = [ref / wire for ref, wire in zip(times["ref"], times["wire"])]
    print(
        f"wire vs durable files: median ratio {statistics.median(ratios):4.2f}"
        f"  (per round {' '.join(f'{r:4.2f}' for r in ratios)})"
    )
    if args.strace:
        blobs = 64 + n * args.rounds
        counts = strace_counts(trace)
        per_blob = {k: round(v / blobs, 2) for k, v in sorted(counts.items())}
        print(f"server syscalls per blob (strace -f -c, {blobs} blobs): {per_blob}")
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="blob size (default 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="read rounds (default 5)")
    parser.add_argument(
        "--write-rounds", type=int, default=1, help="write rounds (default 1), alternating"
    )
    parser.add_argument(
        "--write-chunk-kib",
        type=int,
        default=WRITE_CHUNK // 1024,
        help="bytes per writer.write() in KiB (default 256; an HTTP front end relays less)",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="where to make the work directory (default: $TMPDIR); removed at the end",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also run a server behind TLS (ssl:/tls: endpoints, a CA made here) and read from it",
    )
    parser.add_argument(
        "--read-ahead",
        metavar="KIBxBATCHES",
        help="also read from a server started with this read-ahead (e.g. 256x1)",
    )
    parser.add_argument(
        "--small", type=int, default=0, metavar="N", help="measure N 4 KiB blobs instead"
    )
    parser.add_argument(
        "--strace",
        action="store_true",
        help="count the plain server's system calls (strace -f -c; per blob with --small,"
        " per MiB written otherwise, where its CPU figures then include strace's cost)",
    )
    parser.add_argument("--reference-peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_peer:
        reference_peer()
        return
    if args.small:
        run_small(args)
        return
    size = args.size_mib * MiB
    workdir = Path(tempfile.mkdtemp(prefix="wsfs-bench-", dir=args.dir))
    workdir.mkdir(parents=True, exist_ok=True)
    servers: dict[str, tuple[int, str, str]] = {}  # kind -> port, listen, connect
    port = free_port()
    servers["plain"] = (port, f"tcp:{port}:interface=127.0.0.1", f"tcp:127.0.0.1:{port}")
    if args.tls:
        from tests.storage_tls import make_tls

        tls = make_tls(workdir / "tls")
        port = free_port()
        servers["tls"] = (port, tls.listen(port), tls.connect(port))
    extra: dict[str, list[str]] = {}
    if args.read_ahead:
        kib, _, batches = args.read_ahead.partition("x")
        port = free_port()
        servers["ra"] = (port, f"tcp:{port}:interface=127.0.0.1", f"tcp:127.0.0.1:{port}")
        extra["ra"] = ["--read-ahead-kib", kib, "--read-batches", batches or "1"]
    trace = workdir / "strace.txt"
    wraps: dict[str, list[str]] = {}
    if args.strace:
        calls = ",".join(WRITE_SYSCALLS)
        wraps["plain"] = [
            *os.environ.get("WSFS_BENCH_STRACE", "strace -f -c").split(),
            "-e",
            f"trace={calls}",
            "-o",
            str(trace),
        ]
    procs = {
        kind: start_server(workdir, kind, listen, wraps.get(kind), extra=extra.get(kind))
        for kind, (_, listen, _) in servers.items()
    }
    ref, ref_port = start_reference_peer()
    traced = None
    try:
        for kind, (port, _, _) in servers.items():
            wait_listening(procs[kind], port, workdir / f"{kind}.log")
        if args.strace:  # strace's child is the server
            with open(f"/proc/{procs['plain'].pid}/task/{procs['plain'].pid}/children") as f:
                traced = int(f.read().split()[0])
        secret = (workdir / "secret").read_bytes().strip()
        endpoints = {kind: connect for kind, (_, _, connect) in servers.items()}
        result: dict = {}

        async def run(reactor):
            pids = {kind: proc.pid for kind, proc in procs.items()}
            if traced is not None:
                pids["plain"] = traced
            pids["ref"] = ref.pid
            result.update(
                await wire(
                    reactor,
                    endpoints,
                    secret,
                    size,
                    args.rounds,
                    ref_port,
                    pids,
                    args.write_rounds,
                    args.write_chunk_kib * 1024,
                )
            )

        try:
            task.react(lambda r: defer.ensureDeferred(run(r)))
        except SystemExit as e:
            if e.code:
                raise
        rss = {kind: peak_rss_mib(proc.pid) for kind, proc in procs.items()}
        if traced is not None:
            rss["plain"] = peak_rss_mib(traced)
    finally:
        if traced is not None:  # stop the traced server; strace then writes its summary
            os.kill(traced, signal.SIGTERM)
        for p in (*procs.values(), ref):
            p.terminate()
            p.wait()
    report(args, size, result, rss)
    if args.strace:
        mib = size // MiB * (args.write_rounds + args.rounds)
        counts = strace_counts(trace, WRITE_SYSCALLS)
        per_mib = {k: round(v / mib, 2) for k, v in sorted(counts.items())}
        print(f"plain server syscalls per MiB moved (strace -f -c, {mib} MiB): {per_mib}")
    shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, size: int, result: dict, rss: dict[str, float]) -> None:
    mb = size / 1e6
    refs = result["ref"]

    def speeds(times: list[float]) -> str:
        return " ".join(f"{mb / t:7.1f}" for t in times)

    def ratio_line(kind: str, against: list[float], label: str) -> str:
        ratios = [a / t for a, t in zip(against, result[kind])]
        return (
            f"read   {kind:5} vs {label}: median ratio {statistics.median(ratios):4.2f}"
            f"  (per round {' '.join(f'{r:4.2f}' for r in ratios)})"
        )

    print(
        f"blob size {args.size_mib} MiB over 127.0.0.1, python {sys.version.split()[0]},"
        f" {args.rounds} alternating read rounds, {args.write_rounds} write rounds of"
        f" {args.write_chunk_kib} KiB writes"
    )
    gib = size / 2**30
    if refs:
        for kind in ("plain", "tls", "ra"):
            if kind in result:
                print(f"read   wire {kind:5} {speeds(result[kind])} MB/s")
        print(f"read   socket copy {speeds(refs)} MB/s")
        print(ratio_line("plain", refs, "socket copy"))
        if "tls" in result:
            print(ratio_line("tls", refs, "socket copy"))
            print(ratio_line("tls", result["plain"], "plain wire "))
        if "ra" in result:
            print(f"(ra = a server with --read-ahead {args.read_ahead})")
            print(ratio_line("ra", refs, "socket copy"))
            print(ratio_line("ra", result["plain"], "plain wire "))
    wrefs = result["wref"]
    print(f"write  socket copy {speeds(wrefs)} MB/s")
    for kind, times in result["write"].items():
        ratios = [r / t for r, t in zip(wrefs, times)]
        print(
            f"write  wire {kind:5} {speeds(times)} MB/s (incl. commit fsync): ratio vs socket"
            f" copy median {statistics.median(ratios):4.2f}"
            f" (per round {' '.join(f'{r:4.2f}' for r in ratios)})"
        )
    for kind, (server, client) in result["wcpu"].items():
        who = ("receiver", "sender") if kind == "ref" else ("server", "client")
        name = "socket copy " if kind == "ref" else f"wire {kind:5}  "
        print(
            f"cpu    write {name} {who[0]} {statistics.median(server) / gib:5.2f} +"
            f" {who[1]} {statistics.median(client) / gib:5.2f} s/GiB"
            f" (per round {who[0]} {' '.join(f'{x / gib:4.2f}' for x in server)})"
        )
    if refs:
        ref_cpu = [sum(p) / gib for p in zip(*result["cpu"]["ref"])]
        for kind in ("plain", "tls", "ra"):
            if kind in result:
                cpu = result["cpu"][kind]
                send, recv = (statistics.median(x) / gib for x in cpu)
                ratios = [sum(p) / gib / r for p, r in zip(zip(*cpu), ref_cpu)]
                print(
                    f"cpu    read  wire {kind:5} server {send:5.2f} + client {recv:5.2f} s/GiB;"
                    f" total vs socket copy: median {statistics.median(ratios):4.2f}x"
                )
        ref_send, ref_recv = (statistics.median(x) / gib for x in result["cpu"]["ref"])
        print(f"cpu    read  socket copy  sender {ref_send:5.2f} + receiver {ref_recv:5.2f} s/GiB")
        # Elapsed time = time on a CPU + time waiting for one + time idle
        # (waiting for the peer): a sender that waited for a CPU about as
        # long as it ran was slowed by the machine's load, not its own code.
        for kind in ("plain", "tls", "ra", "ref"):
            if kind in result["wait"]:
                name = "socket copy sender" if kind == "ref" else f"wire {kind:5} reactor"
                elapsed = statistics.median(result[kind]) / gib
                waited = statistics.median(result["wait"][kind]) / gib
                print(
                    f"sched  read  {name} waited for a CPU {waited:5.2f} s/GiB"
                    f" (runnable, not running); elapsed {elapsed:5.2f} s/GiB"
                )
    print("fsync: on (commit fsyncs data, checksums, record and directory before it is")
    print("       acknowledged; the write figure includes it, the socket copy has none)")
    for kind, peak in rss.items():
        print(f"server peak RSS (VmHWM), {kind}: {peak:.1f} MiB")


if __name__ == "__main__":
    main()
