"""wsstorage.allocator: 1 MiB stream buffers stop costing page faults.

Each case runs in a fresh interpreter (allocator settings are per process):
allocate and free 1 MiB objects the way a read stream does (os.pread of a
batch, a join of frames), and count the minor page faults.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import python_env

SCRIPT = """
import os, resource, sys, tempfile
from wsstorage import allocator
print(allocator.tune())
fd, path = tempfile.mkstemp()
os.write(fd, os.urandom(1 << 20))
keep = []
for _ in range(20):  # warm up: let glibc settle whatever it adapts
    keep.append(os.pread(fd, 1 << 20, 0)); keep.append(b"".join([b"h" * 12, keep[-1]]))
    if len(keep) > 6: del keep[:2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    keep.append(os.pread(fd, 1 << 20, 0)); keep.append(b"".join([b"h" * 12, keep[-1]]))
    if len(keep) > 6: del keep[:2]
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
os.unlink(path)
"""


def faults(tune: bool) -> tuple[str, int]:
    env = python_env({"WSFS_MALLOC_TUNE": "1" if tune else "0"})
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(k, None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    took, count = out.stdout.split()
    return took, int(count)


def test_tuned_allocator_reuses_stream_buffers_instead_of_faulting_them_in():
    took, tuned = faults(True)
    if took != "True":
        pytest.skip("not glibc: mallopt is not available")
    _, untuned = faults(False)
    # 400 MiB allocated: untuned that is ~256 faults per MiB mapped anew.
    assert untuned > 20_000
    assert tuned < untuned // 20
