"""Latent faults of the blob store found by review: records re-encoded
without their bytes, stale ``damaged`` entries, damaged blobs that cannot
be deleted, readers of a blob replaced under them, and file descriptors
closed under a sync running in a thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from twisted.internet.defer import ensureDeferred

from tests.test_blobstore import BLOCK, pattern, read_all, write_all
from tests.test_blobstore_put_inline import put
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import RECORD_HEAD, BlobPaths, FormatError, MetaRecord
from wsstorage.errors import BlobNotFound, ChecksumError
from wsstorage.fsops import OsFileSystem
from wsstorage.fsshims import GatedFsyncFileSystem
from wsstorage.scrub import Scrubber, inline


def meta_path(store: BlobStore, blob_id: str) -> Path:
    return Path(BlobPaths.of(store.root, blob_id).meta)


def listed(store: BlobStore) -> list[str]:
    return sorted(i.blob_id for i in store.list_blobs())


# -- 1. a record read without its bytes ---------------------------------


def test_a_record_read_without_its_inline_bytes_refuses_to_be_encoded(tmp_path):
    """A format-3 record read by its JSON line alone (``RECORD_HEAD``) has
    ``data`` None but ``data_size`` set.  Encoding it used to write a
    record without ``data_size``: a sealed blob that claims a ``.data``
    file it never had, its bytes lost.  Now it is refused; the whole
    record still encodes to the same bytes."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    put(store, "b", pattern(5000))
    raw = meta_path(store, "b").read_bytes()
    assert len(raw) > RECORD_HEAD  # the head alone is not the whole record
    head = MetaRecord.decode(raw[:RECORD_HEAD], total=len(raw))
    assert head.data is None and head.data_size == 5000
    with pytest.raises(ValueError):
        head.encode()
    assert MetaRecord.decode(raw).encode() == raw
    store.close()


def test_every_record_writer_leaves_a_reopened_inline_blob_as_it_was(tmp_path):
    """No path re-writes the record of a sealed blob: a no-op fence, a
    commit, a write or a fence at a newer epoch after a restart (the blob
    then known from its JSON line only) leave the record byte for byte."""
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK)
    data = pattern(5000)
    put(store, "b", data)
    raw = meta_path(store, "b").read_bytes()
    store.close()
    store = BlobStore.open(tmp_path / "d")
    store.fence("b", 1, len(data))
    store.commit("b", 2)
    for attempt in (
        lambda: store.open_write("b", 3, 0, {"inode": 1}),
        lambda: store.fence("b", 4, 0),
    ):
        with pytest.raises(Exception):  # noqa: B017 (BlobSealed, either)
            attempt()
    assert meta_path(store, "b").read_bytes() == raw
    assert read_all(store, "b") == data
    store.close()
