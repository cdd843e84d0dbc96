"""A small in-memory IBlobStore for protocol unit tests.

It follows the rules of ``wsstorage._interfaces.IBlobStore`` (epochs,
sealing, offsets, block checksums simulated by ``damage``) so the server's
protocol can be tested without a disk; the real store is covered by the
contract suite against real servers.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from wsstorage._interfaces import IBlobStore
from wsstorage.errors import (
    BlobNotFound,
    BlobSealed,
    ChecksumError,
    InvalidOffset,
    StaleEpoch,
)
from wsstorage.records import OPEN, SEALED, BlobInfo, check_blob_id

BLOCK = 64 * 1024


class _Blob:
    def __init__(self, epoch: int, meta: dict[str, Any]) -> None:
        self.data = bytearray()
        self.durable = 0
        self.epoch = epoch
        self.meta = meta
        self.sealed = False
        self.damaged: set[int] = set()

    def info(self, blob_id: str) -> BlobInfo:
        return BlobInfo(
            blob_id=blob_id,
            size=len(self.data),
            durable=len(self.data) if self.sealed else self.durable,
            state=SEALED if self.sealed else OPEN,
            epoch=self.epoch,
            meta=dict(self.meta),
        )


class _WriteHandle:
    def __init__(self, store: MemoryBlobStore, blob_id: str, blob: _Blob, epoch: int) -> None:
        self.store = store
        self.blob_id = blob_id
        self.blob = blob
        self.epoch = epoch
        self.closed = False

    @property
    def size(self) -> int:
        return len(self.blob.data)

    def _check(self) -> None:
        if self.blob.epoch > self.epoch:
            raise StaleEpoch(f"blob fenced at epoch {self.blob.epoch}")
        if self.blob.sealed:
            raise BlobSealed(self.blob_id)

    def write(self, data: bytes) -> None:
        self._check()
        if self.store.full:
            raise OSError(28, "No space left on device")
        self.blob.data += data

    def sync(self) -> int:
        self._check()
        self.store.calls.append(("sync", self.blob_id))
        self.blob.durable = len(self.blob.data)
        return self.blob.durable

    def seal(self) -> BlobInfo:
        self._check()
        self.blob.durable = len(self.blob.data)
        self.blob.sealed = True
        self.store.calls.append(("seal", self.blob_id))
        return self.blob.info(self.blob_id)

    def close(self) -> None:
        self.closed = True


class _ReadHandle:
    def __init__(self, blob: _Blob, offset: int, length: int) -> None:
        self.blob = blob
        self.pos = offset
        self.end = offset + length

    def read(self, n: int) -> bytes:
        n = min(n, self.end - self.pos)
        if n <= 0:
            return b""
        for block in sorted(self.blob.damaged):
            start = block * BLOCK
            if start < self.pos + n and start + BLOCK > self.pos:
                if start <= self.pos:
                    raise ChecksumError(f"block {block} is damaged")
                n = start - self.pos  # deliver the good bytes before it first
                break
        data = bytes(self.blob.data[self.pos : self.pos + n])
        self.pos += n
        return data

    def close(self) -> None:
        pass


@implementer(IBlobStore)
class MemoryBlobStore:
    def __init__(self) -> None:
        self.blobs: dict[str, _Blob] = {}
        self.full = False
        self.calls: list[tuple[str, str]] = []

    def _get(self, blob_id: str) -> _Blob:
        check_blob_id(blob_id)
        try:
            return self.blobs[blob_id]
        except KeyError:
            raise BlobNotFound(blob_id) from None

    def stat(self, blob_id: str) -> BlobInfo:
        return self._get(blob_id).info(blob_id)

    def open_write(self, blob_id: str, epoch: int, offset: int, meta: dict[str, Any]) -> Any:
        check_blob_id(blob_id)
        blob = self.blobs.get(blob_id)
        if blob is None:
            if offset != 0:
                raise InvalidOffset(f"new blob must start at 0, not {offset}")
            blob = self.blobs[blob_id] = _Blob(epoch, meta)
        else:
            if blob.sealed:
                raise BlobSealed(blob_id)
            if epoch < blob.epoch:
                raise StaleEpoch(f"epoch {epoch} < {blob.epoch}")
            if offset > len(blob.data):
                raise InvalidOffset(f"offset {offset} beyond {len(blob.data)}")
            del blob.data[offset:]
            blob.durable = min(blob.durable, offset)
            blob.epoch = epoch
            blob.meta = meta
        return _WriteHandle(self, blob_id, blob, epoch)

    def open_read(self, blob_id: str, offset: int, length: int) -> Any:
        blob = self._get(blob_id)
        if offset + length > len(blob.data):
            raise InvalidOffset("read past the end")
        return _ReadHandle(blob, offset, length)

    def fence(self, blob_id: str, epoch: int, truncate_to: int) -> BlobInfo:
        blob = self._get(blob_id)
        if epoch < blob.epoch:
            raise StaleEpoch(f"epoch {epoch} < {blob.epoch}")
        if blob.sealed:
            raise BlobSealed(blob_id)
        if truncate_to > blob.durable:
            raise InvalidOffset(f"truncate_to {truncate_to} beyond durable {blob.durable}")
        blob.epoch = epoch
        del blob.data[truncate_to:]
        blob.durable = truncate_to
        return blob.info(blob_id)

    def commit(self, blob_id: str, epoch: int) -> BlobInfo:
        blob = self._get(blob_id)
        if epoch < blob.epoch:
            raise StaleEpoch(f"epoch {epoch} < {blob.epoch}")
        blob.durable = len(blob.data)
        blob.sealed = True
        return blob.info(blob_id)

    def delete(self, blob_id: str) -> None:
        self._get(blob_id)
        del self.blobs[blob_id]

    def list_blobs(self) -> list[BlobInfo]:
        return [b.info(i) for i, b in sorted(self.blobs.items())]

    def count_blobs(self) -> int:
        return len(self.blobs)

    def free_space(self) -> tuple[int, int]:
        return (0 if self.full else 10**9, 10**9)

    def damage(self, blob_id: str, block: int) -> None:
        self.blobs[blob_id].damaged.add(block)
