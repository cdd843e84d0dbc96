"""What a stream commit costs the disk: the server's write stream over a
real blob store on a real directory, counted with the recording shim."""

from __future__ import annotations

import os

from tests.storage_loopback import Rig
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import BlobPaths
from wsstorage.fsshims import RecordingFileSystem

SYNCS = ("fsync", "fdatasync", "fsync_dir")


def test_stream_commit_of_a_small_blob_costs_three_syncs(tmp_path) -> None:
    """write + DATA + commit: data and record (holding the checksums) at
    the same time, then the directory, once each (every fan-out directory
    is made durable when the store opens)."""
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", fs=fs)
    assert store.wait_fanned_out(30)  # its fsync of blobs/ is not counted
    rig = Rig()
    rig.factory.store = store
    try:
        directory = BlobPaths.of(store.root, "first").directory
        other = next(
            f"b{i}"
            for i in range(100_000)
            if BlobPaths.of(store.root, f"b{i}").directory == directory
        )
        for blob_id in ("first", other):
            fs.calls.clear()
            w = rig.result(rig.client.write(blob_id, 1, 0, {"inode": 1}))
            w.write(os.urandom(4096))
            info = rig.result(w.commit())
            assert (info.size, info.state) == (4096, "sealed")
        syncs = [c for c in fs.calls if c[0] in SYNCS]
        assert sorted(syncs[:2]) == [("fdatasync", f"{other}.data"), ("fsync", f"{other}.meta.tmp")]
        assert syncs[2:] == [("fsync_dir", os.path.basename(directory))]
    finally:
        rig.result(rig.client.close())
        store.close()
