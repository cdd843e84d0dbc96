"""Throughput of the wsstorage wire protocol against a plain socket copy.

Starts a real ``twistd -n wsstorage`` on 127.0.0.1, writes one blob of
``--size-mib`` MiB through the client (streaming, committed with fsync) and
reads it back into a consumer that only counts; then moves the same number
of bytes through a tiny plain-socket server/client pair (sendall/recv_into
in Python, no framing, no checksums) as the reference.  Prints MB/s for both,
the read and write ratios, the fsync setting and the server's peak RSS
(VmHWM).  Goal: reads >= 0.7 of the socket copy, RSS < 100 MB.

    python bench/storage_throughput.py --size-mib 1024
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/, where a sibling script
# (bench/http.py) would shadow the standard library: import from the repo.
REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.interfaces import IPushProducer  # noqa: E402
from zope.interface import implementer  # noqa: E402

from wsstorage.client import StorageClient  # noqa: E402

MiB = 1024 * 1024
CHUNK = 256 * 1024


def pattern_block() -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(MiB))


# -- reference: a plain socket copy ------------------------------------------


def socket_copy(size: int, direction: str) -> float:
    """Seconds to move ``size`` bytes server->client ('read') or client->server."""
    block = memoryview(pattern_block())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def send_all(s: socket.socket) -> None:
        left = size
        while left:
            n = min(CHUNK, left)
            s.sendall(
                block[(size - left) % MiB :][:n] if (size - left) % MiB + n <= MiB else block[:n]
            )
            left -= n

    def recv_all(s: socket.socket) -> None:
        buf = bytearray(CHUNK)
        got = 0
        while got < size:
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError("reference peer closed early")
            got += n

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            if direction == "read":
                send_all(conn)
            else:
                recv_all(conn)
                conn.sendall(b"k")

    t = threading.Thread(target=serve)
    t.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        if direction == "read":
            recv_all(c)
        else:
            send_all(c)
            c.recv(1)
    elapsed = time.perf_counter() - start
    t.join()
    listener.close()
    return elapsed


# -- the wire protocol ---------------------------------------------------------


@implementer(IPushProducer)
class PatternProducer:
    """Feeds ``size`` bytes into a writer, honouring pause/resume."""

    def __init__(self, reactor, writer, size: int) -> None:
        self.reactor = reactor
        self.writer = writer
        self.left = size
        self.paused = False
        self.block = pattern_block()
        self.chunks = [self.block[i : i + CHUNK] for i in range(0, MiB, CHUNK)]
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


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(workdir: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("WSFS_FAILPOINTS", None)
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                "wsstorage",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--data",
                str(workdir / "data"),
                "--name",
                "bench",
                "--secret-file",
                str(workdir / "secret"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit((workdir / "server.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def wire(
    reactor, port: int, secret: bytes, size: int, rounds: int
) -> tuple[float, list[float], list[float]]:
    """Write once, then alternate wire reads with socket-copy reads, so both
    see the same machine load (this box is shared); returns seconds."""
    from twisted.internet import threads

    client = StorageClient(reactor, "bench", f"tcp:127.0.0.1:{port}", secret, idle_timeout=30)
    start = time.perf_counter()
    writer = await client.write("bench", 1, 0, {"bench": True})
    producer = PatternProducer(reactor, writer, size)
    writer.registerProducer(producer, True)
    producer.resumeProducing()
    await producer.done
    writer.unregisterProducer()
    info = await writer.commit()
    write_s = time.perf_counter() - start
    assert info.size == size, info
    wire_reads, ref_reads = [], []
    for _ in range(rounds):
        consumer = CountingConsumer()
        start = time.perf_counter()
        n = await client.read("bench", 0, None, consumer)
        wire_reads.append(time.perf_counter() - start)
        assert n == consumer.count == size
        ref_reads.append(await threads.deferToThread(socket_copy, size, "read"))
    await client.close()
    return write_s, wire_reads, ref_reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="blob size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="read rounds (default 3)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="wsfs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    proc, port = start_server(workdir)
    try:
        secret = (workdir / "secret").read_bytes().strip()
        result: dict[str, object] = {}

        async def run(reactor):
            result["write"], result["reads"], result["refs"] = await wire(
                reactor, port, secret, size, args.rounds
            )

        try:
            task.react(lambda r: defer.ensureDeferred(run(r)))
        except SystemExit as e:
            if e.code:
                raise
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    ref_write = socket_copy(size, "write")
    mb = size / 1e6
    reads, refs = sorted(result["reads"]), sorted(result["refs"])
    write_s = result["write"]

    print(f"blob size {args.size_mib} MiB over 127.0.0.1, python {sys.version.split()[0]}")
    print(
        "read   wire "
        + " ".join(f"{mb / t:7.1f}" for t in reads)
        + " MB/s;  socket copy "
        + " ".join(f"{mb / t:7.1f}" for t in refs)
        + " MB/s"
    )
    print(
        f"read   best wire {mb / reads[0]:7.1f} MB/s vs best socket copy {mb / refs[0]:7.1f}"
        f" MB/s: ratio {refs[0] / reads[0]:4.2f}  (median ratio"
        f" {refs[len(refs) // 2] / reads[len(reads) // 2]:4.2f})"
    )
    print(
        f"write  wire {mb / write_s:7.1f} MB/s (incl. commit fsync) vs socket copy"
        f" {mb / ref_write:7.1f} MB/s: ratio {ref_write / write_s:4.2f}"
    )
    print("fsync: on (commit fsyncs data, checksums, record and directory before it is")
    print("       acknowledged; the write figure includes it, the socket copy has none)")
    print(f"server peak RSS (VmHWM): {rss:.1f} MB")
    if not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
