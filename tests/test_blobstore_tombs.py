"""A damaged blob's delete: its files are renamed to tomb names under the
registry lock and unlinked after it (``BlobStore._delete_damaged``)."""

from __future__ import annotations

import errno
import os

from twisted.logger import globalLogPublisher

from tests.test_blobstore import BLOCK, pattern, write_all
from tests.test_blobstore_latent import damage, listed
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import TMP_SUFFIX, BlobPaths
from wsstorage.errors import BlobNotFound
from wsstorage.fsops import OsFileSystem


class FailingTombUnlink(OsFileSystem):
    """Fails the unlink of the tomb of ``name`` (a blob's file renamed for
    its delete) with EIO; every other call as the OS does it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed: list[str] = []

    def unlink(self, path: str) -> None:
        base = os.path.basename(path)
        if base.startswith(self.name + ".") and base.endswith(TMP_SUFFIX):
            self.failed.append(base)
            raise OSError(errno.EIO, "Input/output error", path)
        super().unlink(path)


def test_a_tomb_that_cannot_be_unlinked_is_logged_and_the_delete_still_succeeds(tmp_path):
    """The blob is gone once its files are renamed to tombs: a failed
    unlink of a tomb after that failed the delete (GC or an operator was
    told it failed, although the blob was gone).  Now it is logged, the
    other tombs are unlinked, and the next start removes what is left."""
    fs = FailingTombUnlink("b.data")
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    write_all(store, "keep", pattern(10)).seal()
    write_all(store, "b", pattern(3 * BLOCK)).seal()
    damage(store, "b")
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        store.delete("b")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert len(fs.failed) == 1
    [event] = [e for e in logged if "log_failure" in e]
    assert event["log_failure"].check(OSError)
    directory = BlobPaths.of(store.root, "b").directory
    left = sorted(n for n in os.listdir(directory) if n.startswith("b."))
    assert left == fs.failed  # the record's and the sums' tombs went
    try:
        store.stat("b")
    except BlobNotFound:
        pass
    else:
        raise AssertionError("the deleted blob is still there")
    assert store.damaged == []
    assert store.count_blobs() == len(listed(store)) == 1
    store.close()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    assert [n for n in os.listdir(directory) if n.startswith("b.")] == []
    assert store.count_blobs() == len(listed(store)) == 1
    store.close()
