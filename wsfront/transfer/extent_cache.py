"""Verified bytes of small sealed extents, kept in memory for repeat reads.

A GET of a 4 KiB file spends more time on its storage round trip (a thread
hop for the open, another for the data, frames back) than on anything else.
Committed versions only ever reference *sealed* blobs, and a sealed blob's
bytes never change: fences and truncation apply to the unsealed blob of a
pending upload, compaction and repair write new blobs or identical copies.
So the bytes of ``(blob_id, blob_offset, length)`` that one read fetched and
the storage server checked against their block checksums are the answer for
every later read of that range, and a read that finds them here needs no
storage server at all.  Whether the range is still part of the file is the
catalog's answer, asked for every read as before: a deleted or overwritten
file no longer references the blob, so its cached bytes are never served.

Only small extents are kept (``max_extent``), in a least-recently-used map
bounded by ``capacity`` bytes, so memory stays small and predictable.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[str, int, int]


class ExtentCache:
    """``get(key)`` / ``put(key, data)`` for keys ``(blob_id, blob_offset,
    length)``; counts hits and misses for metrics and tests."""

    def __init__(self, capacity: int = 32 << 20, max_extent: int = 64 << 10) -> None:
        self.capacity = capacity
        self.max_extent = max_extent
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, bytes] = OrderedDict()

    def wants(self, length: int) -> bool:
        """Whether an extent of ``length`` bytes is small enough to keep."""
        return 0 < length <= self.max_extent and self.capacity > 0

    def get(self, key: Key) -> bytes | None:
        data = self._entries.get(key)
        if data is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return data

    def put(self, key: Key, data: bytes) -> None:
        if len(data) != key[2] or not self.wants(len(data)) or key in self._entries:
            return
        self._entries[key] = data
        self.size += len(data)
        while self.size > self.capacity:
            _, dropped = self._entries.popitem(last=False)
            self.size -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)
