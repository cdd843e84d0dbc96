"""The few file-system calls the blob store makes, behind one injectable object.

The blob store never calls ``os`` directly: it goes through an ``OsFileSystem``
so a test can substitute a subclass that records the sequence of calls (to
check that a commit fsyncs data, then metadata, then the directory) or that
fails a call (``ENOSPC`` on the n-th byte) without filling a real disk.

Every method is a thin wrapper over the ``os`` function of the same name;
``pwrite_all`` and ``pwritev_all`` loop over short writes and ``fsync_dir`` opens a directory just
to fsync it (which is how a rename or a new file is made durable on Linux).
The module's functions are the write-a-temp-file-then-rename sequence
(``write_temp``, ``publish``, ``create_durably``), here rather than in the
blob store so the cluster binding (which the blob store imports) uses it too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from wsstorage.diskformat import TMP_SUFFIX

#: What ``room`` reports as free inodes where the file system counts none.
UNCOUNTED_INODES = 1 << 62
#: Most buffers one ``pwritev`` takes (POSIX ``IOV_MAX``; 1024 on Linux).
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024) or 1024


class OsFileSystem:
    """The real file system.  Subclass and override to record or inject faults."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def pwrite_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """Write every byte of ``data`` at ``offset``, retrying short writes."""
        view = memoryview(data)
        while view:
            n = self.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        """Write ``buffers`` (at most ``IOV_MAX``) at ``offset`` in one call; may be short."""
        return os.pwritev(fd, buffers, offset)

    def pwritev_all(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
        """Write every byte of ``buffers``, in order, from ``offset``: one
        ``pwritev`` per ``IOV_MAX`` buffers when the kernel takes them whole
        (the storage server writes the DATA frames of one socket read this
        way, as views into the bytes received, instead of one ``pwrite``
        of a copied body per frame), retrying short writes."""
        views = [memoryview(b) for b in buffers if len(b)]
        i = 0
        while i < len(views):
            batch = views[i : i + IOV_MAX]
            n = self.pwritev(fd, batch, offset)
            offset += n
            for view in batch:
                if n < len(view):
                    break
                n -= len(view)
                i += 1
            if n:
                views[i] = views[i][n:]

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def preadv_into(self, fd: int, buffer: memoryview, offset: int, nowait: bool = False) -> int:
        """Read into ``buffer`` at ``offset``; return the bytes read.

        With ``nowait`` only what is in the page cache is read (Linux
        ``RWF_NOWAIT``): BlockingIOError, or a short count, instead of
        waiting for the disk; where that flag does not exist it always
        raises BlockingIOError, and callers take their blocking path."""
        if not nowait:
            return os.preadv(fd, [buffer], offset)
        flag = getattr(os, "RWF_NOWAIT", None)
        if flag is None:
            raise BlockingIOError("RWF_NOWAIT is not available")
        try:
            return os.preadv(fd, [buffer], offset, flag)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                raise BlockingIOError(str(e)) from e
            raise

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """Flush a file's bytes and the metadata needed to read them back
        (its size, its block map), but not its timestamps: enough for a
        file whose name is made durable separately (``fsync_dir``)."""
        os.fdatasync(fd)

    def drop_cache(self, fd: int, offset: int, length: int) -> None:
        """Ask the kernel to drop the page cache of ``[offset, offset +
        length)`` (``length`` 0: to the end of the file), which the caller
        has synced: ``POSIX_FADV_DONTNEED``.  Clean pages are freed; a page
        still dirty is only queued for writeback, so syncing first is what
        makes this free anything.  Advice only: a platform without it does
        nothing, and a failure is not an error of the write it follows."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        try:
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fstat_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def syncfs(self, path: str, fd: int | None = None) -> None:
        """Flush every dirty page and inode of the file system holding
        ``path`` (Linux ``syncfs(2)``, through libc): one call makes many
        files written without a sync durable, which is how the put
        journal's checkpoint makes its record files durable.  OSError
        ``ENOSYS`` where the call does not exist (callers then fsync file
        by file).

        ``fd``: a descriptor of ``path`` the caller keeps open across its
        calls.  syncfs reports a write-back error of the file system to
        each open file that has not seen it yet, so a descriptor opened
        afresh misses an error another caller (another store on the same
        disk) has already been told of, and the checkpoint would wrongly
        succeed; one kept open since before the error never does."""
        call = _libc_syncfs()
        if call is None:
            raise OSError(errno.ENOSYS, "syncfs is not available")
        own = fd is None
        if own:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            if call(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            if own:
                os.close(fd)

    def listdir(self, path: str) -> Iterator[str]:
        with os.scandir(path) as it:
            for entry in it:
                yield entry.name

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def statvfs(self, path: str) -> tuple[int, int]:
        """(free bytes available to us, total bytes) of the file system."""
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def room(self, path: str) -> tuple[int, int, int]:
        """(free bytes, free inodes, allocation unit) of the file system
        holding ``path``, as an unprivileged user may use them
        (``f_bavail * f_frsize``, ``f_favail``, ``f_frsize``): what the
        put journal checks before it keeps a put's record in memory
        (``BlobStore._admit``).  About 3 µs.  A file system that counts no
        inodes (``f_files`` 0: btrfs, some network file systems) reports
        an unbounded number free, not none."""
        st = os.statvfs(path)
        inodes = st.f_favail if st.f_files else UNCOUNTED_INODES
        return st.f_bavail * st.f_frsize, inodes, st.f_frsize or 4096


_syncfs: list[object] = []


def _libc_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``syncfs``, looked up once; None where there is none."""
    if not _syncfs:
        try:
            call = ctypes.CDLL(None, use_errno=True).syncfs
        except (AttributeError, OSError):
            call = None
        else:
            call.argtypes = [ctypes.c_int]
            call.restype = ctypes.c_int
        _syncfs.append(call)
    return _syncfs[0]  # type: ignore[return-value]


def create_durably(fs: OsFileSystem, directory: str, name: str, data: bytes) -> None:
    """Give ``directory`` a small file ``name`` holding ``data``, durable
    once this returns: a temp file written and fsync'd, renamed, the
    directory fsync'd.  A failure leaves no temp file, and a rename whose
    directory fsync failed is undone (the file removed), so nothing is
    reported that a crash could take back.  A store's once-written files
    (``IDENTITY``, ``CLUSTER``)."""
    path = os.path.join(directory, name)
    publish(fs, write_temp(fs, path, data, sync=True), path)
    try:
        fs.fsync_dir(directory)
    except BaseException:
        # Never before the rename: a file already there may be a real one.
        unlink_quietly(fs, path)
        raise


def write_temp(
    fs: OsFileSystem, path: str, data: bytes, sync: bool = False, alongside: int | None = None
) -> str:
    """Write ``data`` to ``path``'s temp file; return its name.  Unsynced
    unless ``sync`` (the put journal's records: their entry is what is
    synced); with ``sync`` it is fsync'd, and ``alongside`` (a blob's data
    file) fdatasync'd at the same time.  A failure leaves no temp file."""
    tmp = path + TMP_SUFFIX
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            fs.pwrite_all(fd, data, 0)
            if sync and alongside is None:
                fs.fsync(fd)
            elif sync:
                _in_parallel(lambda: fs.fsync(fd), lambda: fs.fdatasync(alongside))
        finally:
            fs.close(fd)
    except BaseException:
        unlink_quietly(fs, tmp)
        raise
    return tmp


def publish(fs: OsFileSystem, tmp: str, path: str) -> None:
    """Give a temp file (``write_temp``) its final name; a failure removes
    it.  The name is durable only once the caller fsyncs the directory
    (``create_durably``, the blob store's ``_write_atomic``) or a journal
    checkpoint does."""
    try:
        fs.rename(tmp, path)
    except BaseException:
        unlink_quietly(fs, tmp)
        raise


def unlink_quietly(fs: OsFileSystem, path: str) -> None:
    """Remove ``path`` if it can be: a clean-up after a failure, whose own
    failure must not hide the first one."""
    try:
        fs.unlink(path)
    except OSError:
        pass


_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def thread_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The process's ``blobstore-<name>`` threads, started on first use:
    one pool per name for the whole process, so ``workers`` counts only on
    the first call for a name (later callers share that pool)."""
    with _pools_lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(workers, f"blobstore-{name}")
        return pool


def _in_parallel(here: Callable[[], None], there: Callable[[], None]) -> None:
    """Run ``there`` in a helper thread (the ``sync`` pool) while this one
    runs ``here``; return once both are done, raising the first one's error
    (or else the other's).

    Two fsyncs of one file system started together share its journal
    commit (ext4, XFS), where one after the other pays two."""
    future = thread_pool("sync", 8).submit(there)
    try:
        here()
    finally:
        error = future.exception()
    if error is not None:
        raise error
