"""Helpers of the security tests: stored files and their digests.

``Hoard`` puts a few files into a ``TransferEnv`` (one per user, random
bytes, one large enough to span several storage frames) and checks later
that every one still reads back with the same sha256: the proof that a
hostile client changed nothing.
"""

from __future__ import annotations

import os
import statistics
import time

from tests.transfer_env import sha256
from wsfront.catalog import errors as catalog_errors

BOB_PASSWORD = "bob's own password"


class Hoard:
    """Files stored before an attack, with the digests they must keep."""

    def __init__(self, env) -> None:
        self.env = env
        self.digests: dict[tuple[str, str], str] = {}

    async def fill(self) -> Hoard:
        """alice: /keep/a.bin (300 KiB), /keep/b.txt; bob: /bob.txt."""
        env = self.env
        await env.catalog.add_user("bob", BOB_PASSWORD)
        self.bob = await env.catalog.get_user("bob")
        for user, path, data in [
            (env.user, "/keep/a.bin", os.urandom(300 * 1024)),
            (env.user, "/keep/b.txt", b"alice's text\n"),
            (self.bob, "/bob.txt", b"bob's secret\n"),
        ]:
            parent = path.rsplit("/", 1)[0]
            if parent:
                try:
                    await env.transfers.mkdir(user, parent)
                except catalog_errors.Exists:
                    pass
            session = await env.transfers.open_write(user, path, 0)
            session.write(data)
            await session.finish()
            self.digests[(user.name, path)] = sha256(data)
        return self

    async def check(self, allow_pending: bool = False) -> None:
        """Every hoarded file's committed version reads back with its digest
        (and, unless ``allow_pending``, no upload is pending on it)."""
        from tests.transfer_env import Collector

        for (name, path), digest in self.digests.items():
            user = await self.env.catalog.get_user(name)
            info = await self.env.transfers.stat(user, path)
            assert allow_pending or not info.pending, f"{name}:{path} has a pending upload"
            handle = await self.env.transfers.open_read(user, path, 0)
            sink = Collector()
            await handle.stream.start(sink)
            assert sha256(sink.data) == digest, f"{name}:{path} changed"


def median_seconds(samples: list[float]) -> float:
    return statistics.median(samples)


class Stopwatch:
    """``with Stopwatch() as t: ...``; ``t.seconds`` afterwards."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
