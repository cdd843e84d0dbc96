"""Real catalog outages for the front ends' tests: a SQLite catalog on a
tmpfs filled to the last byte (every write fails with SQLITE_FULL), or
locked by another connection while the catalog's writer waits only briefly
(every write fails as busy).  Reads keep working in both, as they do for a
real full disk or a long-held lock."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (the test is skipped where
    mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last block with a file
    (returned, to delete for the space back)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    return filler


async def make_writes_wait_briefly(catalog, milliseconds: int = 50) -> None:
    """Let the catalog's SQLite writer wait ``milliseconds`` for a lock
    (instead of 30 s) before it reports the database busy."""
    await catalog._runner.run(lambda tx: tx.execute(f"PRAGMA busy_timeout = {milliseconds}"))


@contextmanager
def write_locked(catalog_path: Path) -> Iterator[None]:
    """Hold the SQLite catalog's write lock from another connection, as
    another process stuck in a transaction would."""
    conn = sqlite3.connect(catalog_path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.close()
