"""A front end that uploads one file, run as its own process by tests.

    python -m tests.transfer_writer_proc CATALOG_URL SECRET_FILE PATH SIZE SEED \\
        NAME=EP [NAME=EP ...]

It plays front end ``fe-a``: opens a write session for user ``alice`` on
PATH and streams SIZE bytes of ``pattern(SIZE, SEED)`` into it, with a
checkpoint after the first half, then finishes.  It prints
``COMMITTED <sha256>`` and exits 0, or prints
``ERROR <ExceptionClass> <message>`` and exits 3.  Tests freeze or kill it at
an exact moment, e.g. ``WSFS_FAILPOINTS=transfer.after_checkpoint=stop@N``
(frozen right after recording a durable offset of at least N).
"""

from __future__ import annotations

import hashlib
import sys

from twisted.internet import defer, task

from tests.transfer_env import Feeder
from wsfront.catalog import open_catalog
from wsfront.transfer.pool import StoragePool
from wsfront.transfer.service import Transfers, TransferSettings
from wsstorage.client import StorageClient


def pattern(size: int, seed: int) -> bytes:
    block = hashlib.sha256(f"wsfs-{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def main(reactor, argv: list[str]) -> None:
    catalog_url, secret_file, path, size, seed, *nodes = argv
    with open(secret_file, "rb") as f:
        secret = f.read().strip()
    data = pattern(int(size), int(seed))
    catalog = open_catalog(reactor, catalog_url)
    pool = StoragePool(reactor)
    for spec in nodes:
        name, _, ep = spec.partition("=")
        pool.add(name, ep, StorageClient(reactor, name, ep, secret, idle_timeout=30.0))
    await pool.start()
    settings = TransferSettings(replicas=2, checkpoint_bytes=256 * 1024, checkpoint_seconds=0)
    transfers = Transfers(reactor, catalog, pool, "fe-a", settings)
    user = await catalog.get_user("alice")
    try:
        session = await transfers.open_write(user, path, 0)
        failed = session.when_failed()
        # Half the file, a checkpoint of it, then the rest: a failpoint on
        # checkpoints of at least N <= half fires mid-transfer however the
        # machine paces the feed against the checkpoints (fed faster than
        # the first checkpoint took, the file was once committed before
        # any checkpoint reached N).
        half = len(data) // 2
        first, rest = Feeder(reactor, session, data, stop_at=half), None
        failed.addErrback(lambda f: [x.stopProducing() for x in (first, rest) if x] and None)
        await first.start()
        while session.error is None and session.durable < half:
            await session.checkpoint()  # it may hand back one begun earlier
        rest = Feeder(reactor, session, data[half:])
        if session.error is None:
            await rest.start()
        await session.finish()
    except Exception as e:
        print(f"ERROR {e.__class__.__name__} {e}", flush=True)
        raise SystemExit(3) from None
    else:
        print(f"COMMITTED {hashlib.sha256(data).hexdigest()}", flush=True)
    finally:
        pool.stop()
        await catalog.close()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
