"""File-system shims for tests of the blob store and the storage server.

``RecordingFileSystem`` records the order of writes, fsyncs and renames (to
check that a commit is durable in the right order); ``FullDiskFileSystem``
fails writes with ``ENOSPC`` on demand; ``NoRoomFileSystem`` fails, on
demand, only the writes a disk with no free block fails (those that make a
file longer); ``GatedFsyncFileSystem`` holds an
fsync until the test releases it.  Pass one as ``BlobStore.open(..., fs=)``.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence

from wsstorage.fsops import OsFileSystem

__all__ = [
    "FullDiskFileSystem",
    "GatedFsyncFileSystem",
    "NoRoomFileSystem",
    "RecordingFileSystem",
]


class RecordingFileSystem(OsFileSystem):
    """Records every mutating call as ``(op, path)``; paths are basenames.

    ``fsync`` and ``fdatasync`` are recorded under their own names, so a
    test can count each kind of flush.  ``drop_cache`` is recorded as
    ``("drop", path)`` in ``calls`` (its place among the syncs) and with its
    range in ``drops`` as ``(path, offset, length)``.  ``free``, when set,
    is the free space ``room`` reports (how a test makes a disk look full
    to the put journal's admission check, ``BlobStore._admit``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.drops: list[tuple[str, int, int]] = []
        self.paths: dict[int, str] = {}
        #: What ``room`` reports as (free bytes, free inodes), or None: the
        #: real file system's figures.
        self.free: tuple[int, int] | None = None

    def room(self, path: str) -> tuple[int, int, int]:
        if self.free is None:
            return super().room(path)
        return self.free[0], self.free[1], 4096

    def _name(self, fd: int) -> str:
        return os.path.basename(self.paths.get(fd, "?"))

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        self.calls.append(("open", os.path.basename(path)))
        return fd

    def close(self, fd: int) -> None:
        self.paths.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data, offset: int) -> int:
        self.calls.append(("write", self._name(fd)))
        return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        self.calls.append(("write", self._name(fd)))
        return super().pwritev(fd, buffers, offset)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        self.calls.append(("read", self._name(fd)))
        return super().pread(fd, length, offset)

    def preadv_into(self, fd: int, buffer, offset: int, nowait: bool = False) -> int:
        self.calls.append(("read", self._name(fd)))
        return super().preadv_into(fd, buffer, offset, nowait)

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", self._name(fd)))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fdatasync", self._name(fd)))
        super().fdatasync(fd)

    def drop_cache(self, fd: int, offset: int, length: int) -> None:
        self.calls.append(("drop", self._name(fd)))
        self.drops.append((self._name(fd), offset, length))
        super().drop_cache(fd, offset, length)

    def ftruncate(self, fd: int, length: int) -> None:
        self.calls.append(("truncate", self._name(fd)))
        super().ftruncate(fd, length)

    def rename(self, src: str, dst: str) -> None:
        self.calls.append(("rename", os.path.basename(dst)))
        super().rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self.calls.append(("fsync_dir", os.path.basename(path)))
        super().fsync_dir(path)

    def mkdir(self, path: str) -> None:
        self.calls.append(("mkdir", os.path.basename(path)))
        super().mkdir(path)

    def syncfs(self, path: str, fd: int | None = None) -> None:
        self.calls.append(("syncfs", os.path.basename(path)))
        super().syncfs(path, fd)


class FullDiskFileSystem(RecordingFileSystem):
    """Fails writes with ENOSPC once ``full`` is set, after ``allow`` more bytes
    (a short write first, like a real disk filling up mid-call)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.allow = 0

    def pwrite(self, fd: int, data, offset: int) -> int:
        if self.full:
            if self.allow <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = memoryview(data)[: self.allow]
            self.allow -= len(data)
        return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        if self.full:
            if self.allow <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            kept: list[memoryview] = []
            room = self.allow
            for b in buffers:
                if room <= 0:
                    break
                view = memoryview(b)[:room]
                kept.append(view)
                room -= len(view)
            buffers = kept
            self.allow = room
        return super().pwritev(fd, buffers, offset)


class NoRoomFileSystem(OsFileSystem):
    """While ``full`` is set, a disk with no free block: a write that would
    make a file longer fails with ENOSPC, one within the file's size (a
    preallocated put journal's header) goes through, as on ext4 or xfs."""

    def __init__(self) -> None:
        self.full = False

    def _room(self, fd: int, length: int, offset: int) -> None:
        if self.full and offset + length > self.fstat_size(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

    def pwrite(self, fd: int, data, offset: int) -> int:
        self._room(fd, len(data), offset)
        return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        self._room(fd, sum(len(b) for b in buffers), offset)
        return super().pwritev(fd, buffers, offset)


class GatedFsyncFileSystem(OsFileSystem):
    """Holds the first fsync or fdatasync of a ``.data`` file until ``release`` is set, so a
    test can act while a sync is in the middle of its fsync."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.paths: dict[int, str] = {}
        self.armed = False

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def fsync(self, fd: int) -> None:
        self._gate(fd)
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._gate(fd)
        super().fdatasync(fd)

    def _gate(self, fd: int) -> None:
        if self.armed and self.paths.get(fd, "").endswith(".data"):
            self.armed = False
            self.entered.set()
            self.release.wait(30)
