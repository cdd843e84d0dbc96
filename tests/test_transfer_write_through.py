"""WriteThrough: what a small upload puts into the extent cache, and when not."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from wsfront.transfer.extent_cache import ExtentCache
from wsfront.transfer.write_through import WriteThrough
from wsstorage.records import BlobInfo


class FakeWriter:
    """Records writes; ``commit`` seals at ``sealed_size`` (default: all)."""

    def __init__(self, offset: int = 0, sealed_size: int | None = None) -> None:
        self.blob_id, self.epoch, self.offset = "b1", 1, offset
        self.data = b""
        self.sealed_size = sealed_size
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data
        self.offset += len(data)

    def commit(self) -> Deferred:
        size = len(self.data) if self.sealed_size is None else self.sealed_size
        return succeed(BlobInfo(self.blob_id, size, size, "sealed", self.epoch))

    def abort(self) -> Deferred:
        self.aborted = True
        return succeed(None)


def test_a_sealed_small_blob_is_cached_under_its_whole_extent():
    cache = ExtentCache()
    writer = FakeWriter()
    tee = WriteThrough(writer, cache)
    tee.write(b"abc")
    tee.write(b"def")
    tee.commit()
    assert writer.data == b"abcdef"
    assert cache.get(("b1", 0, 6)) == b"abcdef"


def test_nothing_is_cached_unless_the_replica_sealed_exactly_what_was_written():
    cache = ExtentCache()
    short = WriteThrough(FakeWriter(sealed_size=2), cache)
    short.write(b"abc")
    short.commit()
    aborted = WriteThrough(FakeWriter(), cache)
    aborted.write(b"abc")
    aborted.abort()
    resumed = WriteThrough(FakeWriter(offset=10), cache)  # not from the blob's first byte
    resumed.write(b"abc")
    resumed.commit()
    assert len(cache) == 0


def test_a_blob_past_the_cache_limit_is_not_kept():
    cache = ExtentCache(max_extent=4)
    tee = WriteThrough(FakeWriter(), cache)
    tee.write(b"abc")
    tee.write(b"de")
    tee.commit()
    assert len(cache) == 0
