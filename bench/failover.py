"""Failover figures: how long a client stalls when storage or a front end dies.

1. Storage failover: a 64 MiB file on replicas 2 of 3 ``twistd -n wsstorage``
   processes; a download through the transfer layer (this process is the
   front end); after 16 MiB the serving storage process is SIGKILLed.  The
   stall is the longest gap between two delivered chunks from the kill to
   the end.  Repeated ``--trials`` times (the killed server is restarted
   between trials); median and worst.
2. Front-end takeover: front end A (a Transfers in this process) writes
   8 MiB and vanishes without a word (its session stays active); front end B
   (another Transfers with its own catalog connection and storage clients)
   is asked to resume.  The figure is the time from B's ``open_write`` to the
   first byte accepted by every replica: catalog CAS, fence, seal, new blob.

Reference in the same run: a plain download's median gap between chunks.

    python bench/failover.py --trials 20
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The repo root instead of bench/ (whose module names must not shadow the stdlib).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from twisted.internet import defer, task

from bench._common import start_storage
from tests.transfer_env import Feeder
from wsfront.catalog import open_catalog
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.service import Transfers, TransferSettings
from wsstorage.client import StorageClient

MiB = 1 << 20


class GapRecorder:
    """A consumer recording when chunks arrive; it can act after N bytes."""

    def __init__(self, act_at: int | None = None, action=None):
        self.producer = None
        self.received = 0
        self.times: list[float] = []
        self.kill_time: float | None = None
        self.act_at = act_at
        self.action = action

    def registerProducer(self, p, s):
        self.producer = p

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.received += len(data)
        self.times.append(time.perf_counter())
        if self.act_at is not None and self.received >= self.act_at and self.kill_time is None:
            self.kill_time = time.perf_counter()
            self.action()

    def stall_after_kill(self) -> float:
        after = [t for t in self.times if t >= self.kill_time]
        points = [self.kill_time, *after]
        return (
            max(b - a for a, b in itertools.pairwise(points)) if len(points) > 1 else float("nan")
        )

    def median_gap(self) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return statistics.median(gaps)


async def run(reactor, args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wsfs-failover-"))
    secret_file = tmp / "secret"
    secret_file.write_bytes(os.urandom(32).hex().encode())
    secret = secret_file.read_bytes().strip()
    procs, endpoints = {}, {}
    for i in (1, 2, 3):
        procs[f"s{i}"], endpoints[f"s{i}"] = start_storage(tmp / f"s{i}", f"s{i}", secret_file)
    catalog_url = f"sqlite:///{tmp / 'catalog.sqlite'}"
    catalogs, pools = [], []

    async def front_end(name: str) -> Transfers:
        catalog = open_catalog(reactor, catalog_url)
        catalogs.append(catalog)
        pool = StoragePool(reactor, probe_interval=0.5, probe_timeout=1.0)
        for n, ep in endpoints.items():
            pool.add(n, ep, StorageClient(reactor, n, ep, secret, idle_timeout=2.0))
        pools.append(pool)
        await pool.start()
        settings = TransferSettings(replicas=2, hash_uploads=False, read_stall_timeout=2.0)
        return Transfers(reactor, catalog, pool, name, settings)

    fe = await front_end("fe-a")
    user = await fe.catalog.add_user("bench", "bench-password")
    data = os.urandom(MiB) * 64
    session = await fe.open_write(user, "/f", 0)
    await Feeder(reactor, session, data, chunk=256 * 1024).start()
    await session.finish()

    handle = await fe.open_read(user, "/f")
    reference = GapRecorder()
    await handle.stream.start(reference)

    stalls = []
    for _ in range(args.trials):
        handle = await fe.open_read(user, "/f")
        victim = {}

        def kill(handle=handle, victim=victim):
            name = handle.stream.serving
            victim["name"] = name
            procs[name].send_signal(signal.SIGKILL)

        rec = GapRecorder(act_at=16 * MiB, action=kill)
        await handle.stream.start(rec)
        assert rec.received == len(data) and handle.stream.failovers == 1
        stalls.append(rec.stall_after_kill())
        name = victim["name"]
        procs[name].wait()
        port = endpoints[name].rsplit(":", 1)[1]
        procs[name], _ = start_storage(tmp / name, name, secret_file, port=int(port))
        await fe.pool.probe_all()

    takeovers = []
    for i in range(args.trials):
        a = await front_end(f"a{i}")
        s = await a.open_write(user, f"/t{i}", 0)
        await Feeder(reactor, s, data[: 8 * MiB], chunk=256 * 1024).start()
        await s.checkpoint()
        b = await front_end(f"b{i}")
        start = time.perf_counter()
        resumed = await b.open_write(user, f"/t{i}", append=True)
        resumed.write(b"x" * 65536)
        await resumed.checkpoint()
        takeovers.append(time.perf_counter() - start)
        await resumed.finish()
        a.pool.stop()
        b.pool.stop()

    print("failover benchmark: 3 wsstorage processes, replicas 2, front end in this process,")
    print(f"SQLite catalog, {args.trials} trials each")
    print(f"reference: median gap between chunks of a plain download: "
          f"{reference.median_gap() * 1000:.2f} ms")  # fmt: skip
    median_stall, worst_stall = statistics.median(stalls) * 1000, max(stalls) * 1000
    print(f"storage SIGKILL mid-download, client stall: median {median_stall:.0f} ms, "
          f"worst {worst_stall:.0f} ms (goal: < 1000 / 2000 ms)")  # fmt: skip
    print(f"front-end takeover, reconnect to first byte durable on every replica: median "
          f"{statistics.median(takeovers) * 1000:.0f} ms, worst {max(takeovers) * 1000:.0f} ms"
          " (goal: < 200 ms)")  # fmt: skip
    for pool in pools:
        pool.stop()
        for node in pool.nodes():
            await node.client.close()
    for c in catalogs:
        await c.close()
    for p in procs.values():
        p.terminate()
        p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=20)
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
