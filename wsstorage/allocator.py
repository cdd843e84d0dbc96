"""Keep glibc from mapping and unmapping every 1 MiB stream buffer.

Storage streams move data in 1 MiB pieces (a socket read, a read-ahead
batch, a framed batch).  glibc serves allocations above its mmap threshold
(128 KiB at start, raised only by frees of larger mapped chunks) with a
fresh ``mmap`` and returns them with ``munmap``, and trims the top of the
heap as soon as 2x that threshold is free: either way every MiB costs 256
page faults and zero-filling on the next allocation.  Measured on the
storage read path (bench/storage_throughput.py) that is a large part of the
gap to a plain socket copy.

``tune()`` raises the mmap threshold to ``MMAP_THRESHOLD`` and the trim
threshold to ``TRIM_THRESHOLD``: stream buffers are then reused from the
heap, and at most ``TRIM_THRESHOLD`` bytes of freed memory stay mapped (RSS
stays bounded: the storage server's goal is under 100 MB).  A no-op where
the C library is not glibc.  Called once by the storage server and by the
first storage client of a process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: Allocations up to this size come from the heap, not their own mmap.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Freed memory at the top of the heap kept before it is returned.
TRIM_THRESHOLD = 32 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_done = False


def tune() -> bool:
    """Apply the thresholds once per process; True if glibc took them.

    ``WSFS_MALLOC_TUNE=0`` leaves the allocator alone (for comparisons);
    explicit ``MALLOC_*`` environment settings win as well.
    """
    global _done
    if _done:
        return False
    _done = True
    if os.environ.get("WSFS_MALLOC_TUNE", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
