"""Small ``put``s into one storage server over a UNIX socket: what one
replica of a small FTP STOR costs a storage process, without the front end.

Starts ``twistd -n wsstorage`` (listening on a UNIX socket, as the
``procs`` layout of bench/ftp.py does) and sends it ``--count`` puts of
``--size`` bytes through the real client (``StorageClient.put``), one
after the other (``--concurrency`` at a time), for ``--rounds`` rounds.
Prints puts/s and the server process's CPU milliseconds per put, split by
thread (the reactor, the put's worker, the journal's checkpoint thread),
which a loaded machine changes less than it changes the speed.

With ``--other-repo PATH`` a second server runs from that checkout (say
/work/main) and the rounds alternate between the two, each round's
figures printed side by side with their ratio: an A/B in one invocation.

    python bench/storage_puts.py [--count 2000] [--rounds 5] [--other-repo /work/main]
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
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from twisted.internet import defer, task  # noqa: E402

from bench._common import start_storage  # noqa: E402
from wsstorage.client import StorageClient  # noqa: E402


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` so far, by ``name:tid``
    (``schedstat``: nanoseconds on a CPU, where ``stat``'s clock ticks
    were too coarse to tell two servers apart)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[f"{name}:{tid}"] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


async def puts(client: StorageClient, prefix: str, count: int, size: int, conc: int) -> float:
    """Seconds to put ``count`` blobs of ``size`` bytes, ``conc`` at a time."""
    data = bytes(i % 251 for i in range(size))
    t0 = time.perf_counter()

    async def lane(k: int) -> None:
        for i in range(k, count, conc):
            info = await client.put(f"{prefix}-{i}", 1, {"inode": i}, data)
            assert info.size == size, info

    await defer.gatherResults([defer.ensureDeferred(lane(k)) for k in range(conc)])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="puts per round (default 2000)")
    parser.add_argument("--size", type=int, default=4096, help="bytes per put (default 4096)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--other-repo", default=None, help="also run a server from this checkout")
    parser.add_argument("--dir", default=None, help="where to make the work directory")
    parser.add_argument(
        "--py-spy", default=None, metavar="OUT", help="profile this server's rounds (raw stacks)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wsfs-bench-puts-", dir=args.dir))
    repos = {"this": REPO}
    if args.other_repo:
        repos["other"] = Path(args.other_repo).resolve()
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, list[tuple[float, float, dict[str, float]]]] = {k: [] for k in repos}
    try:
        endpoints = {}
        for name, repo in repos.items():
            procs[name], endpoints[name] = start_storage(
                workdir / f"data-{name}",
                name,
                workdir / "secret",
                unix=workdir / f"{name}.sock",
                repo=repo,
                log=workdir / f"{name}.log",
            )
        secret = (workdir / "secret").read_bytes().strip()

        async def run(reactor) -> None:
            clients = {
                k: StorageClient(reactor, "bench", ep, secret) for k, ep in endpoints.items()
            }
            for c in clients.values():
                await puts(c, "warm", 200, args.size, args.concurrency)
            spy = None
            if args.py_spy:
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(procs["this"].pid), "-o", args.py_spy]
                    + ["-f", "raw", "--threads", "-r", "500"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await task.deferLater(reactor, 1.0, lambda: None)
            for r in range(args.rounds):
                for k in list(clients)[:: 1 if r % 2 == 0 else -1]:
                    pid = procs[k].pid
                    before = thread_cpu(pid)
                    elapsed = await puts(
                        clients[k], f"r{r}", args.count, args.size, args.concurrency
                    )
                    after = thread_cpu(pid)
                    per = {
                        t: (after[t] - before.get(t, 0.0)) * 1e3 / args.count
                        for t in after
                        if after[t] - before.get(t, 0.0) > 0
                    }
                    results[k].append((args.count / elapsed, sum(per.values()), per))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait()
            for c in clients.values():
                await c.close()

        task.react(lambda r: defer.ensureDeferred(run(r)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()
    print(
        f"{args.count} puts of {args.size} bytes over a UNIX socket, "
        f"concurrency {args.concurrency}, {args.rounds} rounds"
    )
    for k, rows in results.items():
        print(f"{k} ({repos[k]}):")
        for rate, cpu, per in rows:
            threads = " ".join(f"{t}={v:.3f}" for t, v in sorted(per.items(), key=lambda x: -x[1]))
            print(f"  {rate:7.1f} puts/s  {cpu:.3f} ms CPU/put  [{threads}]")
    if "other" in results:
        rate = [a[0] / b[0] for a, b in zip(results["this"], results["other"])]
        cpu = [a[1] / b[1] for a, b in zip(results["this"], results["other"])]
        print(f"this/other puts/s: median {statistics.median(rate):.3f}  per round {rate}")
        print(f"this/other CPU/put: median {statistics.median(cpu):.3f}  per round {cpu}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
