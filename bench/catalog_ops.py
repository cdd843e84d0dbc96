"""Catalog operations per second, on SQLite and PostgreSQL.

Measures, through the public Deferred API on the real reactor (so the
thread-pool hop is included): ``stat`` of a committed file, create+commit
of an empty file (``begin_upload`` + ``commit_upload``, both durable), a
small STOR's catalog work (``start_upload``, whose commit waits for no
disk, then ``commit_upload`` of 4 KiB, as the FTP adapter does) and a
session ``checkpoint`` update.  Each runs ``--ops`` times with 1 and with
``--concurrency`` operations in flight.  SQLite runs with
``synchronous=FULL`` (every durable commit fsync'd) on ``--dir``;
PostgreSQL uses ``WSFS_TEST_POSTGRES`` (default
postgresql://postgres@127.0.0.1:5432/test) in a schema of its own, dropped
afterwards.  ``--files N`` first fills the catalog with N committed files
(random names and blob ids, as uploads make them): a big catalog dirties
more distinct pages per write, and its checkpoints cost more.

``--pages`` (SQLite) also prints the log pages (WAL frames) each of a small
STOR's two transactions writes, read from the WAL-index header between
them (samples where the log began again are left out).

    python bench/catalog_ops.py --ops 2000 --concurrency 8
    python bench/catalog_ops.py --no-postgres --files 200000 --pages
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import struct
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where a module may
# shadow the standard library (bench/http.py shadows ``http``): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from twisted.internet import defer, task  # noqa: E402

from wsfront.catalog import open_catalog  # noqa: E402

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
_names = itertools.count()


async def timed(ops: int, concurrency: int, op) -> float:
    """Run ``op()`` ``ops`` times with ``concurrency`` in flight; ops/s."""
    todo = iter(range(ops))

    async def worker():
        for _ in todo:
            await op()

    start = time.perf_counter()
    await defer.gatherResults(
        [defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True
    )
    return ops / (time.perf_counter() - start)


async def fill(cat, files: int) -> None:
    """``files`` committed 4 KiB files under /fill, 500 to a transaction
    (set-up only: through the catalog's internals, for speed)."""
    from wsfront.catalog import _uploads

    await cat.mkdir("/fill")
    far = time.time() + 86400

    def batch(tx, count):
        for _ in range(count):
            start = _uploads.start_upload(
                tx, time.time(), "bench", f"/fill/{secrets.token_hex(8)}", 0,
                "b" + secrets.token_hex(16), ["s1", "s2"], 2, "fe1", far, None, {},
            )  # fmt: skip
            up = start.upload
            _uploads.commit_upload(tx, time.time(), up.upload_id, up.epoch, 4096, None, None)

    for done in range(0, files, 500):
        count = min(500, files - done)
        await cat._runner.run(lambda tx, count=count: batch(tx, count))


def wal_frames(path: str) -> int:
    """Frames in the SQLite log now: ``mxFrame`` of the WAL-index header
    (https://www.sqlite.org/walformat.html), in native byte order."""
    with open(path + "-shm", "rb") as f:
        return struct.unpack("=I", f.read(20)[16:20])[0]


async def stor_pages(cat, db_path: str, count: int) -> tuple[float, float]:
    """Mean log pages written by a small STOR's start and by its commit."""
    far = time.time() + 86400
    starts, commits = [], []
    for _ in range(count):
        before = wal_frames(db_path)
        start = await cat.start_upload(
            "bench", f"/bench/{secrets.token_hex(8)}", offset=0,
            blob_id="b" + secrets.token_hex(16), replicas=["s1", "s2"], wanted_replicas=2,
            owner="fe1", expires_at=far,
        )  # fmt: skip
        middle = wal_frames(db_path)
        await cat.commit_upload(start.upload.upload_id, start.upload.epoch, 4096)
        after = wal_frames(db_path)
        if before <= middle <= after:  # else the log began again meanwhile
            starts.append(middle - before)
            commits.append(after - middle)
    return sum(starts) / len(starts), sum(commits) / len(commits)


async def bench_backend(cat, ops: int, concurrencies: list[int]) -> dict[str, list[float]]:
    far = time.time() + 86400
    await cat.mkdir("/bench")

    async def begin(path):
        n = next(_names)
        return await cat.begin_upload(
            "bench", path, base_length=0, blob_id=f"blob{n}", replicas=["s1", "s2"],
            wanted_replicas=2, owner="fe1", expires_at=far,
        )  # fmt: skip

    up = await begin("/bench/statme")
    await cat.commit_upload(up.upload_id, 1, 1234)

    async def stat():
        await cat.stat("/bench/statme")

    async def create_commit():
        up = await begin(f"/bench/f{next(_names)}")
        await cat.commit_upload(up.upload_id, up.epoch, 0)

    async def small_stor():
        start = await cat.start_upload(
            "bench", f"/bench/{secrets.token_hex(8)}", offset=0,
            blob_id="b" + secrets.token_hex(16), replicas=["s1", "s2"], wanted_replicas=2,
            owner="fe1", expires_at=far,
        )  # fmt: skip
        await cat.commit_upload(start.upload.upload_id, start.upload.epoch, 4096)

    sessions = [await begin(f"/bench/ck{i}") for i in range(max(concurrencies))]
    offsets = {s.upload_id: 0 for s in sessions}
    free = list(sessions)

    async def checkpoint():
        s = free.pop()
        try:
            offsets[s.upload_id] += 65536
            await cat.checkpoint(s.upload_id, s.epoch, offsets[s.upload_id])
        finally:
            free.append(s)

    results: dict[str, list[float]] = {}
    for name, op in (
        ("stat", stat),
        ("create+commit", create_commit),
        ("small STOR", small_stor),
        ("checkpoint", checkpoint),
    ):
        results[name] = [await timed(ops, c, op) for c in concurrencies]
    return results


def postgres_schema(base: str):
    import psycopg

    schema = "wsfs_bench_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options={quote('-csearch_path=' + schema)}"


async def main(reactor, args) -> None:
    concurrencies = [1, args.concurrency]
    rows = []
    pages: list[str] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        targets = [("sqlite", f"sqlite:///{tmp}/catalog.sqlite", None)]
        if not args.no_postgres:
            base = os.environ.get("WSFS_TEST_POSTGRES", DEFAULT_POSTGRES)
            schema, url = postgres_schema(base)
            targets.append(("postgresql", url, (base, schema)))
        for backend, url, cleanup in targets:
            cat = open_catalog(reactor, url, threads=args.concurrency)
            try:
                if args.files:
                    await fill(cat, args.files)
                results = await bench_backend(cat, args.ops, concurrencies)
                if args.pages and backend == "sqlite":
                    start, commit = await stor_pages(cat, f"{tmp}/catalog.sqlite", 300)
                    pages.append(f"small STOR, log pages written: start {start:.1f}, "
                                 f"commit {commit:.1f}")  # fmt: skip
            finally:
                await cat.close()
                if cleanup:
                    import psycopg

                    with psycopg.connect(cleanup[0], autocommit=True) as conn:
                        conn.execute(f"DROP SCHEMA {cleanup[1]} CASCADE")
            for op, figures in results.items():
                rows.append((backend, op, *figures))
    header = (
        "backend",
        "operation",
        "ops/s (1 in flight)",
        f"ops/s ({args.concurrency} in flight)",
    )
    print(f"{header[0]:<11} {header[1]:<14} {header[2]:>20} {header[3]:>20}")
    for backend, op, one, many in rows:
        print(f"{backend:<11} {op:<14} {one:>20.0f} {many:>20.0f}")
    for line in pages:
        print(line)
    filled = f", {args.files} files before" if args.files else ""
    print(
        f"({args.ops} operations each{filled}; SQLite synchronous=FULL, WAL, "
        f"in {args.dir or '/tmp'})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dir", default=None, help="directory for the SQLite file")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--files", type=int, default=0, help="committed files to start with")
    parser.add_argument("--pages", action="store_true", help="log pages per small STOR (SQLite)")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
