"""Pages a small STOR writes to a SQLite catalog's log, per b-tree.

    python bench/catalog_frames.py --files 500 --warm 1000

Runs the two write transactions of each small FTP STOR (``start_upload``
unsynced, then ``commit_upload``, as ``wsfront.transfer`` does) on a fresh
catalog in a temporary directory, on one connection that never checkpoints
by itself, and reads the frames each commit appended to the WAL: every
frame is one page (a pwrite, and SQLite's CPU to build it).  Each frame's
page number is mapped to the table or index it belongs to with SQLite's
``dbstat`` table, so the figures say which b-trees each transaction
dirties.  ``--warm`` STORs run first, unmeasured, so the b-trees have the
depth of a catalog in use.  Counts, not timings: they hold on a busy
machine.
"""

from __future__ import annotations

import argparse
import collections
import secrets
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from wsfront.catalog import _accounts, _namespace, _uploads  # noqa: E402
from wsfront.catalog._db import Tx  # noqa: E402
from wsfront.catalog.schema import migrate  # noqa: E402
from wsfront.catalog.sqlite import SQLiteBackend  # noqa: E402

WAL_HEADER = 32
FRAME_HEADER = 24


class Log:
    """The frames appended to a WAL since the last ``new_frames``."""

    def __init__(self, path: str, page_size: int) -> None:
        self.path = path
        self.page_size = page_size
        self.offset = WAL_HEADER

    def restart(self) -> None:
        self.offset = WAL_HEADER

    def new_frames(self) -> list[int]:
        """Page numbers of the frames written since the last call."""
        pages = []
        with open(self.path, "rb") as wal:
            wal.seek(self.offset)
            while True:
                header = wal.read(FRAME_HEADER)
                if len(header) < FRAME_HEADER:
                    break
                pages.append(struct.unpack(">I", header[:4])[0])
                wal.seek(self.page_size, 1)
                self.offset += FRAME_HEADER + self.page_size
        return pages


def owners(path: str) -> dict[int, str]:
    """Page number -> name of the b-tree holding it (``dbstat``)."""
    conn = sqlite3.connect(path)
    try:
        return {pageno: name for name, pageno in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        conn.close()


def run(tx_fn, backend: SQLiteBackend, conn: sqlite3.Connection, durable: bool):
    cursor = backend.begin(conn, True, durable)
    try:
        result = tx_fn(Tx(backend, cursor))
    except BaseException:
        backend.rollback(conn, cursor)
        raise
    backend.commit(conn, cursor)
    backend.end(conn, durable)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=500, help="STORs measured")
    p.add_argument("--warm", type=int, default=1000, help="STORs run first, unmeasured")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--page-size", type=int, help="PRAGMA page_size of the new catalog")
    p.add_argument("--dir", help="where to make the work directory (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the catalog, print its path")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="wsfs-frames-", dir=args.dir))
    path = str(workdir / "catalog.sqlite")
    backend = SQLiteBackend(path)
    conn = backend.connect()
    if args.page_size:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA page_size = {args.page_size}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]

    def upgrade(tx: Tx) -> None:
        backend.prepare(tx)
        migrate(tx, backend.dialect)

    run(upgrade, backend, conn, True)
    now = 1.8e9
    run(
        lambda tx: _accounts.add_user(tx, now, "demo", "x", True, None, None, None, None),
        backend,
        conn,
        True,
    )
    run(lambda tx: _namespace.mkdir(tx, "/demo/phases", now), backend, conn, True)
    nodes = [f"s{i}" for i in range(1, args.replicas + 1)]
    log = Log(path + "-wal", page_size)
    frames: dict[str, collections.Counter] = {
        "start": collections.Counter(),
        "commit": collections.Counter(),
    }
    pages: dict[str, list[int]] = {"start": [], "commit": []}

    def stor(i: int, measure: bool) -> None:
        nonlocal now
        now += 0.001
        blob = "b" + secrets.token_hex(16)  # as wsfront.transfer's new_blob_id
        started = run(
            lambda tx: _uploads.start_upload(
                tx, now, "demo", f"/demo/phases/p{i:05d}", None, blob, nodes, len(nodes),
                "front", now + 3600, None, {},
            ),
            backend, conn, False,
        )  # fmt: skip
        written = log.new_frames()
        if measure:
            pages["start"].append(written)
        run(
            lambda tx: _uploads.commit_upload(
                tx, now, started.upload.upload_id, 1, 4096, None, None
            ),
            backend, conn, True,
        )  # fmt: skip
        written = log.new_frames()
        if measure:
            pages["commit"].append(written)

    for i in range(args.warm):
        stor(i, False)
        if i % 200 == 199:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.restart()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log.restart()
    for i in range(args.warm, args.warm + args.files):
        stor(i, True)
    named = owners(path)
    print(f"page size {page_size}; {args.files} STORs after {args.warm}")
    for step in ("start", "commit"):
        counts = [len(f) for f in pages[step]]
        for written in pages[step]:
            for page in written:
                frames[step][named.get(page, "(free)")] += 1
        print(
            f"{step}: {sum(counts) / len(counts):.2f} frames per transaction "
            f"(min {min(counts)}, max {max(counts)})"
        )
        for name, count in frames[step].most_common():
            print(f"    {name:28} {count / args.files:6.2f}")
    conn.close()
    if args.keep:
        print(f"catalog: {path}")
    else:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
