"""Read and write through the transfer layer against real storage processes.

Layout: 3 ``twistd -n wsstorage`` subprocesses on 127.0.0.1 (fsync on commit
and on every checkpoint), this process as the front end (Transfers, pool,
SQLite catalog), replicas R.  In the same run, the same number of bytes goes
through a plain loopback socket copy as the reference.  Writes run twice:
with checkpoints every 8 MiB (sessions on), and with checkpointing off, to
show what session management costs.

    python bench/transfer.py --size-mib 1024 --replicas 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The repo root instead of bench/ (whose module names must not shadow the stdlib).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from twisted.internet import defer, task

from bench._common import peak_rss_mib, socket_copy_mbps, start_storage
from tests.transfer_env import Feeder
from wsfront.catalog import open_catalog
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.service import Transfers, TransferSettings
from wsstorage.client import StorageClient


class _Discard:
    """A consumer that counts and drops bytes."""

    def __init__(self):
        self.n = 0
        self.producer = None

    def registerProducer(self, p, s):
        self.producer = p

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.n += len(data)


class _Repeat:
    """``size`` bytes made of one random MiB repeated: no big buffer."""

    def __init__(self, size: int):
        self.size = size
        self.block = os.urandom(1 << 20)


async def run(reactor, args) -> None:
    size = args.size_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="wsfs-bench-"))
    secret = tmp / "secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    procs = []
    endpoints = {}
    for i in range(1, 4):
        proc, ep = start_storage(tmp / f"s{i}", f"s{i}", secret)
        procs.append(proc)
        endpoints[f"s{i}"] = ep
    catalog = open_catalog(reactor, f"sqlite:///{tmp / 'catalog.sqlite'}")
    user = await catalog.add_user("bench", "bench-password")
    for name, ep in endpoints.items():
        await catalog.register_node(name, ep)

    pools = []

    async def front_end(checkpoints: bool) -> Transfers:
        pool = StoragePool(reactor)
        pools.append(pool)
        for name, ep in endpoints.items():
            pool.add(name, ep, StorageClient(reactor, name, ep, secret.read_bytes().strip()))
        await pool.start()
        settings = TransferSettings(
            replicas=args.replicas,
            checkpoint_bytes=(args.checkpoint_mib << 20) if checkpoints else 1 << 62,
            checkpoint_seconds=2.0 if checkpoints else 0,
            hash_uploads=False,
        )
        return Transfers(reactor, catalog, pool, "bench", settings)

    ref = socket_copy_mbps(size)
    on_label = f"write, checkpoints {args.checkpoint_mib} MiB"
    runs: dict[str, list[float]] = {"write, checkpoints off": [], on_label: []}
    # Alternate the two kinds of run and start each from a clean page cache
    # state (os.sync): otherwise the writeback of one run's bytes slows the
    # next and the order decides the "cost".
    order = [("write, checkpoints off", False), (on_label, True)]
    for round_ in range(args.rounds):
        for label, checkpoints in order if round_ % 2 == 0 else order[::-1]:
            os.sync()
            transfers = await front_end(checkpoints)
            session = await transfers.open_write(user, f"/w{round_}-{checkpoints}", 0)
            start = time.perf_counter()
            feeder = _StreamFeeder(reactor, session, size)
            await feeder.start()
            await session.finish()
            runs[label].append(size / (time.perf_counter() - start) / 1e6)
            if round_:  # keep round 0's file for the read below; free the disk of the rest
                await transfers.delete(user, f"/w{round_}-{checkpoints}")
    results = {label: statistics.median(v) for label, v in runs.items()}
    transfers = await front_end(True)
    handle = await transfers.open_read(user, "/w0-True", 0)
    sink = _Discard()
    start = time.perf_counter()
    await handle.stream.start(sink)
    results["read"] = size / (time.perf_counter() - start) / 1e6
    assert sink.n == size
    rss = max(peak_rss_mib(p.pid) for p in procs)
    own = peak_rss_mib(os.getpid())
    print(
        f"transfer layer benchmark: {args.size_mib} MiB, replicas={args.replicas}, "
        "3 wsstorage processes + front end in this process, fsync on checkpoint and commit"
    )
    print(f"writes: median of {args.rounds} alternating runs each, os.sync() before every run")
    print(f"{'what':28s} {'MB/s':>8s} {'ratio':>7s}")
    print(f"{'socket copy (reference)':28s} {ref:8.0f} {1.0:7.2f}")
    for label, mbps in results.items():
        print(f"{label:28s} {mbps:8.0f} {mbps / ref:7.2f}")
    off, on = results["write, checkpoints off"], results[on_label]
    print(f"session management cost (checkpoints on vs off): {(1 - on / off) * 100:+.1f}%")
    print(f"peak RSS: storage server {rss:.0f} MiB, front end (this process) {own:.0f} MiB")
    for pool in pools:
        pool.stop()
        for node in pool.nodes():
            await node.client.close()
    await catalog.close()
    for p in procs:
        p.terminate()
        p.wait()


class _StreamFeeder(Feeder):
    """Feeder over a repeated random MiB, so GiBs need no big buffer."""

    def __init__(self, reactor, consumer, size: int, chunk: int = 256 * 1024):
        super().__init__(reactor, consumer, b"", chunk, stop_at=size)
        self.block = os.urandom(1 << 20)

    def _step(self):
        self._call = None
        if self.paused or self.stopped:
            return
        if self.pos >= self.stop_at:
            self.consumer.unregisterProducer()
            self.done.callback(self.pos)
            return
        # Several chunks per reactor turn: the client side would batch too.
        for _ in range(8):
            n = min(self.chunk, self.stop_at - self.pos)
            if n <= 0 or self.paused:
                break
            off = self.pos % len(self.block)
            piece = self.block[off : off + n] if off + n <= len(self.block) else self.block[:n]
            self.pos += n
            self.consumer.write(piece)
        self._schedule()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--checkpoint-mib", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each kind")
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
