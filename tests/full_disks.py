"""Storage servers whose disks fill up after the front end last looked.

Each storage server of a ``TransferEnv`` gets a tmpfs of its own (the
tests are skipped where one cannot be mounted).  ``fill_all`` stops the
pool's health probes first, so the front end still believes there is
room (the view it places by is a probe old) and only the stores refuse
the bytes, with DiskFull: the upload starts, and is then refused for room
(HTTP 507, FTP 452) before any of its bytes is durable.  It leaves
``spare`` bytes free, below each store's reserve (1 % of the disk): the
stores refuse new blobs there, while a takeover's fence, which may go
into the reserve, still has the few blocks it writes.  ``free_all`` gives
the space back and probes again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.catalog_outage import fill, tmpfs

NODES = ("s1", "s2", "s3")


@contextmanager
def small_disks(tmp_path: Path, size: str = "8m") -> Iterator[None]:
    """A tmpfs of ``size`` for each storage server's data directory."""
    with ExitStack() as stack:
        for name in NODES:
            stack.enter_context(tmpfs(tmp_path / name, size))
        yield


#: What ``fill_all`` leaves free on each disk: below an 8 MiB disk's reserve.
SPARE = 32 << 10


def fill_all(tmp_path: Path, pool, spare: int = SPARE) -> None:
    """Fill every server's disk but ``spare`` bytes, its front end none
    the wiser."""
    pool.stop()
    for name in NODES:
        filler = fill(tmp_path / name)
        with open(filler, "r+b") as f:
            f.truncate(max(0, os.path.getsize(filler) - spare))


async def free_all(tmp_path: Path, pool) -> None:
    """Give every disk its space back, and let the front end see it."""
    for name in NODES:
        os.unlink(tmp_path / name / "filler")
    await pool.probe_all()
