"""fsck's check with N missing copies: suspects confirmed one blob at a
time against ``CONFIRM_CONCURRENCY`` at a time, in one invocation.

Layout as bench/compact.py: 3 ``twistd -n wsstorage`` subprocesses on
127.0.0.1, this process as the front end (pool, SQLite catalog),
replicas 2.  Small files are uploaded until s1 holds ``--missing`` of
their copies, then those copies are deleted on s1 (behind the catalog's
back, as a lost disk would), so every check finds exactly that many
missing copies, each a suspect confirmed by a ``stat`` and a fresh read
of its blob's record.  Then, alternating, ``--rounds`` times each:

* **serial**: ``check(..., confirm_concurrency=1)``, the confirmation as it
  was (one blob, one round trip at a time);
* **concurrent**: ``check(...)`` with its default.

A clean check (no copy missing: the same files, before the deletes) is
timed too, so the per-copy cost of the confirmations can be read apart
from the rest of the check; and one listing of s1, the cost a fresh
listing would have instead of the stats.

With ``--latency-ms`` each storage server is reached through a proxy
process that delays every byte that long each way (``_delay_proxy``):
servers across a network rather than on this host.

    flock /tmp/wsfs-bench.lock python bench/fsck_confirm.py --dir /work/bench-fsck \
        [--postgres] [--latency-ms 0.5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/, where a sibling script
# (bench/http.py) would shadow the standard library: import from the repo.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from twisted.internet import defer, task  # noqa: E402

from bench._common import start_storage  # noqa: E402
from tests.catalog_fixtures import postgres_schema_url  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.transfer_env import Feeder  # noqa: E402
from wsfront.catalog import open_catalog  # noqa: E402
from wsfront.maintenance.fsck import check  # noqa: E402
from wsfront.maintenance.fsck_confirm import CONFIRM_CONCURRENCY  # noqa: E402
from wsfront.maintenance.gc import GarbageCollector  # noqa: E402
from wsfront.transfer.pool import StoragePool  # noqa: E402
from wsfront.transfer.service import Transfers, TransferSettings  # noqa: E402
from wsstorage.client import StorageClient  # noqa: E402


async def run(reactor, args) -> None:
    top = Path(tempfile.mkdtemp(prefix="fsck-confirm-", dir=args.dir))
    secret = top / "secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    procs, endpoints = [], {}
    try:
        for i in range(1, 4):
            proc, ep = start_storage(top / f"s{i}", f"s{i}", secret)
            procs.append(proc)
            endpoints[f"s{i}"] = ep
            if args.latency_ms:
                endpoints[f"s{i}"] = delayed(ep, args.latency_ms, procs)
        await measure(reactor, args, top, secret, endpoints)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(top)


def delayed(endpoint: str, one_way_ms: float, procs: list[subprocess.Popen]) -> str:
    """The endpoint of a ``_delay_proxy`` process in front of ``endpoint``,
    added to ``procs`` (to be ended) before it is waited for: one that
    fails to start is ended too."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_delay_proxy.py")), str(port),
         endpoint.rsplit(":", 1)[1], str(one_way_ms)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    procs.append(proc)
    ready = proc.stdout.readline() if proc.stdout is not None else b""
    if ready != b"ready\n":
        raise RuntimeError(f"the delay proxy did not start (said {ready!r})")
    return f"tcp:127.0.0.1:{port}"


async def measure(reactor, args, top: Path, secret: Path, endpoints: dict[str, str]) -> None:
    if args.postgres:
        urls = postgres_schema_url()  # a schema of its own, dropped after
        try:
            await measure_on(reactor, args, secret, endpoints, next(urls))
        finally:
            urls.close()
    else:
        await measure_on(reactor, args, secret, endpoints, f"sqlite:///{top / 'catalog.sqlite'}")


async def measure_on(reactor, args, secret: Path, endpoints: dict[str, str], url: str) -> None:
    catalog = open_catalog(reactor, url)
    pool = StoragePool(reactor)
    try:
        for name, ep in endpoints.items():
            await catalog.register_node(name, ep)
            pool.add(name, ep, StorageClient(reactor, name, ep, secret.read_bytes().strip()))
        await pool.start()
        await timings(reactor, args, catalog, pool)
    finally:
        pool.stop()
        for name in endpoints:
            await pool.client(name).close()
        await catalog.close()


async def timings(reactor, args, catalog, pool: StoragePool) -> None:
    user = await catalog.add_user("bench", "bench-password")
    transfers = Transfers(reactor, catalog, pool, "bench", TransferSettings(replicas=2))
    s1 = pool.client("s1")
    data = os.urandom(args.size)
    uploads = defer.DeferredSemaphore(16)

    async def upload(i: int) -> None:
        session = await transfers.open_write(user, f"/f{i}")
        await Feeder(reactor, session, data).start()
        await session.finish()

    start = time.perf_counter()
    n = 0
    while len(await s1.list_blobs()) < args.missing:
        batch = range(n, n + args.missing)
        await defer.gatherResults(
            [uploads.run(lambda i=i: defer.ensureDeferred(upload(i))) for i in batch]
        )
        n += len(batch)
    print(f"setup: {n} files of {args.size} bytes uploaded in {time.perf_counter() - start:.1f} s")
    gc = GarbageCollector(task.Clock(), catalog, pool)

    cpu: dict[str, list[float]] = {"clean": [], "serial": [], "concurrent": []}

    async def timed(what: str, **kw) -> tuple[float, dict]:
        start, start_cpu = time.perf_counter(), time.process_time()
        report = await check(catalog, pool, gc, **kw)
        cpu[what].append(time.process_time() - start_cpu)
        return time.perf_counter() - start, report

    await timed("clean")  # warm-up: connections, the catalog's caches
    del cpu["clean"][:]
    clean = []
    for _ in range(args.rounds):
        elapsed, report = await timed("clean")
        assert report["problems"] == 0, report
        clean.append(elapsed)
    held = await s1.list_blobs()
    start = time.perf_counter()
    for _ in range(args.rounds):
        await s1.list_blobs()
    listing_s = (time.perf_counter() - start) / args.rounds
    for info in sorted(held, key=lambda i: i.blob_id)[: args.missing]:
        await s1.delete(info.blob_id)

    times: dict[str, list[float]] = {"serial": [], "concurrent": []}
    reports = {}
    for round_ in range(args.rounds):
        steps = ["serial", "concurrent"] if round_ % 2 == 0 else ["concurrent", "serial"]
        for step in steps:
            kw = {"confirm_concurrency": 1} if step == "serial" else {}
            elapsed, report = await timed(step, **kw)
            assert report["problems"] >= args.missing, report
            times[step].append(elapsed)
            reports[step] = report
    assert reports["serial"] == reports["concurrent"], "the two checks judged differently"
    assert len(reports["serial"]["_bad"]) == args.missing

    clean_s = statistics.median(clean)
    serial_s = statistics.median(times["serial"])
    concurrent_s = statistics.median(times["concurrent"])
    print(
        f"fsck check: {n} files, replicas 2, 3 wsstorage processes + front end in this "
        f"process, catalog {'PostgreSQL' if args.postgres else 'SQLite'}, "
        f"{args.latency_ms} ms added each way to the storage servers, {args.missing} "
        f"copies missing on s1; median of {args.rounds} alternating runs each"
    )
    print(f"{'what':40s} {'seconds':>8s} {'ms per missing copy':>20s} {'CPU s here':>10s}")
    print(
        f"{'clean check (nothing missing)':40s} {clean_s:8.2f} {'':>20s} "
        f"{statistics.median(cpu['clean']):10.2f}"
    )
    for step, secs, label in (
        ("serial", serial_s, "confirmed one blob at a time"),
        ("concurrent", concurrent_s, f"confirmed {CONFIRM_CONCURRENCY} blobs at a time"),
    ):
        per = (secs - clean_s) / args.missing * 1000
        print(f"{label:40s} {secs:8.2f} {per:20.3f} {statistics.median(cpu[step]):10.2f}")
    print(f"one listing of s1 ({len(held)} blobs): {listing_s * 1000:.1f} ms")
    print(f"serial / concurrent time ratio: {serial_s / concurrent_s:.2f}")
    extra_serial, extra_concurrent = serial_s - clean_s, concurrent_s - clean_s
    if extra_concurrent > 0:
        print(
            "confirmation cost ratio (time over the clean check), serial / concurrent: "
            f"{extra_serial / extra_concurrent:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--missing", type=int, default=2000, help="copies missing on s1")
    p.add_argument("--size", type=int, default=1024, help="bytes per file")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to make the work directory")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="each way, to every storage server (a _delay_proxy process in front of each)",
    )
    p.add_argument(
        "--postgres", action="store_true", help="catalog on PostgreSQL (WSFS_TEST_POSTGRES)"
    )
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
