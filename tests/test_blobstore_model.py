"""Random sequences of writes, syncs, rewinds, fences and crashes, checked
against a model of what a blob must hold (hypothesis state machine)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.test_blobstore import pattern, read_all
from wsstorage.blobstore import BlobStore
from wsstorage.diskformat import BlobPaths
from wsstorage.errors import BlobNotFound, BlobSealed
from wsstorage.records import INCOMPLETE, SEALED

BLOCK = 512
BLOB = "model"


class BlobModel(RuleBasedStateMachine):
    """``content`` is what the blob must hold; ``durable`` what a crash must
    keep; ``recorded`` whether the blob itself must survive a crash (it has
    been synced, fenced or sealed at least once: a blob never made durable
    vanishes in a crash, with all its files).  A crash keeps the page cache
    (close and reopen the store), optionally scribbling over every byte
    that was never synced."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="blobmodel-")
        self.store = BlobStore.open(self.dir, block_size=BLOCK)
        self.epoch = 1
        self.handle = self.store.open_write(BLOB, self.epoch, 0, {})
        self.content = bytearray()
        self.durable = 0
        self.recorded = False
        self.seed = 0
        self.sealed = False

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @precondition(lambda self: not self.sealed)
    @rule(n=st.integers(1, 3 * BLOCK))
    def write(self, n):
        self.seed += 1
        data = pattern(n, self.seed)
        self.handle.write(data)
        self.content += data

    @precondition(lambda self: not self.sealed)
    @rule()
    def sync(self):
        assert self.handle.sync() == len(self.content)
        self.durable = len(self.content)
        self.recorded = True

    @precondition(lambda self: not self.sealed)
    @rule(fraction=st.floats(0, 1))
    def rewind(self, fraction):
        offset = int(fraction * len(self.content))
        self.handle.close()
        self.handle = self.store.open_write(BLOB, self.epoch, offset, {})
        del self.content[offset:]
        self.durable = min(self.durable, offset)

    @precondition(lambda self: not self.sealed)
    @rule(fraction=st.floats(0, 1))
    def fence(self, fraction):
        cut = int(fraction * len(self.content))
        self.epoch += 1
        info = self.store.fence(BLOB, self.epoch, cut)
        assert (info.size, info.durable, info.epoch) == (cut, cut, self.epoch)
        self.handle = self.store.open_write(BLOB, self.epoch, cut, {})
        del self.content[cut:]
        self.durable = cut
        self.recorded = True

    @precondition(lambda self: not self.sealed)
    @rule(scribble=st.booleans())
    def crash(self, scribble):
        self.store.close()
        data_path = BlobPaths.of(self.dir, BLOB).data
        if scribble and os.path.getsize(data_path) > self.durable:
            with open(data_path, "r+b") as f:
                f.seek(self.durable)
                f.write(b"\xa5" * (os.path.getsize(data_path) - self.durable))
        self.store = BlobStore.open(self.dir)
        if not self.recorded:
            with pytest.raises(BlobNotFound):
                self.store.stat(BLOB)
            assert not os.path.exists(data_path)
            self.handle = self.store.open_write(BLOB, self.epoch, 0, {})
            del self.content[:]
            return
        info = self.store.stat(BLOB)
        assert info.state == INCOMPLETE
        assert info.durable == self.durable
        assert read_all(self.store, BLOB, 0, self.durable) == bytes(self.content[: self.durable])
        self.handle = self.store.open_write(BLOB, self.epoch, self.durable, {})
        del self.content[self.durable :]

    @precondition(lambda self: not self.sealed)
    @rule()
    def seal(self):
        info = self.handle.seal()
        assert (info.state, info.size) == (SEALED, len(self.content))
        self.sealed = True
        self.store.close()
        self.store = BlobStore.open(self.dir)

    @precondition(lambda self: self.sealed)
    @rule(fraction=st.floats(0, 1))
    def sealed_blob_refuses_writes(self, fraction):
        with pytest.raises(BlobSealed):
            self.store.open_write(BLOB, self.epoch, int(fraction * len(self.content)), {})

    @invariant()
    def blob_reads_back_as_the_model(self):
        info = self.store.stat(BLOB)
        assert info.size == len(self.content)
        assert read_all(self.store, BLOB) == bytes(self.content)


TestBlobModel = BlobModel.TestCase
TestBlobModel.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
