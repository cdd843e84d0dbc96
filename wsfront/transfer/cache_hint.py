"""Which replica of a blob keeps what was written in its page cache.

What a storage server pays most for, writing a big blob, is the page cache
growing: on a VM with free-page reporting a fresh page costs the kernel
several times a recycled one (bench/http.py's docstring: a replica wrote a
GiB with 1-2.5 s of CPU on fresh pages).  A replica that drops the page
cache behind what it has synced (``BlobWriteHandle.drop_cache_behind``)
writes into pages it just freed instead, but a read of it then goes to the
disk.  So one replica of each blob keeps its cache, the one a reader goes
to first, and the writer asks the others to drop it (the ``drop_cache``
hint of docs/wire-protocol.md).

That replica is picked by rendezvous hashing of the blob id with each
node's name: the writer and every reader find the same one from what the
catalog holds, with nothing recorded, and it stays the same when another
replica leaves the set.  Nothing depends on it but speed: a read that finds
it down, or a blob written before, reads whichever replica it gets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def cached_replica(blob_id: str, replicas: Iterable[str]) -> str | None:
    """The replica of ``blob_id`` among ``replicas`` that keeps its page
    cache (None when there are none)."""
    best, best_key = None, b""
    for node in replicas:
        key = hashlib.blake2b(f"{blob_id}\0{node}".encode(), digest_size=8).digest()
        if best is None or key > best_key:
            best, best_key = node, key
    return best


def advise_drop_behind(blob_id: str, writers: dict) -> None:
    """Ask every writer of ``blob_id`` but the cached replica's to drop the
    page cache behind what it makes durable (writers that take no hints,
    e.g. test doubles, keep theirs)."""
    keep = cached_replica(blob_id, writers)
    for node, writer in writers.items():
        if node != keep:
            hint_drop_behind(writer)


def hint_drop_behind(writer: object) -> None:
    """Give ``writer`` the drop-behind hint if it takes hints."""
    advise = getattr(writer, "drop_cache_behind", None)
    if advise is not None:
        advise()
