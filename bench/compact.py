"""Compaction against real storage processes, next to a plain copy.

Layout as bench/transfer.py: 3 ``twistd -n wsstorage`` subprocesses on
127.0.0.1, this process as the front end (pool, SQLite catalog), replicas R.
A file of ``--size-mib`` is built from ``--extents`` appends (one upload
each, as a client resuming that often would leave it), then, alternating
and with ``os.sync()`` before each run:

* **compact**: ``Compactor.compact`` unthrottled: read every extent through
  the transfer layer, hash sha256, write one blob on R servers, seal, swap;
* **copy**: the same bytes read through the transfer layer straight into a
  new upload (``open_read`` piped into ``open_write``: the same read and R
  writes, with checkpoints, no whole-file hash and no swap).

The ratio says what compaction costs over moving the bytes at all.

    python bench/compact.py --size-mib 256 --extents 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from twisted.internet import defer, task

from bench._common import peak_rss_mib, start_storage
from bench.transfer import _StreamFeeder
from wsfront.catalog import open_catalog
from wsfront.maintenance.compact import COMPACTED, Compactor, CompactSettings
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.service import Transfers, TransferSettings
from wsstorage.client import StorageClient


async def run(reactor, args) -> None:
    size = args.size_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="wsfs-bench-compact-"))
    secret = tmp / "secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    procs, endpoints = [], {}
    for i in range(1, 4):
        proc, ep = start_storage(tmp / f"s{i}", f"s{i}", secret)
        procs.append(proc)
        endpoints[f"s{i}"] = ep
    catalog = open_catalog(reactor, f"sqlite:///{tmp / 'catalog.sqlite'}")
    user = await catalog.add_user("bench", "bench-password")
    pool = StoragePool(reactor)
    for name, ep in endpoints.items():
        await catalog.register_node(name, ep)
        pool.add(name, ep, StorageClient(reactor, name, ep, secret.read_bytes().strip()))
    await pool.start()
    transfers = Transfers(reactor, catalog, pool, "bench", TransferSettings(replicas=args.replicas))
    compactor = Compactor(
        reactor, catalog, pool, CompactSettings(min_extents=2, bytes_per_second=None)
    )
    piece = size // args.extents

    async def build(vpath: str) -> None:
        written = 0
        for i in range(args.extents):
            n = piece if i < args.extents - 1 else size - written
            session = await transfers.open_write(user, vpath, written)
            await _StreamFeeder(reactor, session, n).start()
            await session.finish()
            written += n

    times: dict[str, list[float]] = {"compact": [], "copy": []}
    for round_ in range(args.rounds):
        src = f"/src{round_}"
        await build(src)
        full = transfers.full_path(user, src)
        steps = ["compact", "copy"] if round_ % 2 == 0 else ["copy", "compact"]
        for step in steps:
            os.sync()
            start = time.perf_counter()
            if step == "compact":
                [candidate] = await catalog.compaction_candidates(2)
                assert candidate.path == full
                assert await compactor.compact(candidate) == COMPACTED
            else:
                handle = await transfers.open_read(user, src)
                session = await transfers.open_write(user, f"/copy{round_}")
                await handle.stream.start(session)
                await session.finish()
            times[step].append(time.perf_counter() - start)
        await transfers.delete(user, src)
        await transfers.delete(user, f"/copy{round_}")
    compact_s, copy_s = statistics.median(times["compact"]), statistics.median(times["copy"])
    print(
        f"compaction benchmark: {args.size_mib} MiB in {args.extents} extents, "
        f"replicas={args.replicas}, 3 wsstorage processes + front end in this process"
    )
    print(f"median of {args.rounds} alternating runs each, os.sync() before every run")
    print(f"{'what':34s} {'seconds':>8s} {'MB/s':>7s}")
    print(f"{'copy (read -> new upload)':34s} {copy_s:8.2f} {size / copy_s / 1e6:7.0f}")
    print(f"{'compact (read -> blob, sha256)':34s} {compact_s:8.2f} {size / compact_s / 1e6:7.0f}")
    print(f"compact / copy time ratio: {compact_s / copy_s:.2f}")
    print(f"peak RSS of the front end (this process): {peak_rss_mib(os.getpid()):.0f} MiB")
    pool.stop()
    for node in pool.nodes():
        await node.client.close()
    await catalog.close()
    for p in procs:
        p.terminate()
        p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--extents", type=int, default=64)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
