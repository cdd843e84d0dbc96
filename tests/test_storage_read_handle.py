"""BlobReadHandle reads many blocks per call and still checks every block.

The read path of a storage server reads up to ``MAX_READ_SPAN`` per call
with one pread of the data and one of the checksum entries; these tests pin
down that this changes nothing a caller can see: the bytes, the short
reads at a damaged block, the torn tail of an unsynced blob.
"""

from __future__ import annotations

import pytest

from tests.test_blobstore import BLOCK, pattern, write_all
from tests.test_blobstore_durability import flip_byte, paths
from wsstorage.blobstore import MAX_READ_SPAN, BlobStore
from wsstorage.errors import ChecksumError
from wsstorage.fsshims import RecordingFileSystem

SIZES = [1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7, MAX_READ_SPAN, MAX_READ_SPAN + 5]


@pytest.fixture
def store(tmp_path):
    s = BlobStore.open(tmp_path / "data", block_size=BLOCK)
    yield s
    s.close()


def read_chunks(store: BlobStore, blob_id: str, n: int, offset: int = 0) -> tuple[bytes, Exception]:
    """Read to the end in calls of ``n``; the bytes and what stopped it."""
    handle = store.open_read(blob_id, offset, None)
    got = bytearray()
    try:
        while True:
            piece = handle.read(n)
            assert len(piece) <= n
            if not piece:
                return bytes(got), None
            got += piece
    except ChecksumError as e:
        return bytes(got), e
    finally:
        handle.close()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1, BLOCK - 1, 2 * BLOCK])
def test_reads_of_any_size_and_offset_return_the_bytes(store, n, offset):
    data = pattern(MAX_READ_SPAN * 2 + 3 * BLOCK + 11)
    write_all(store, "b", data, chunk=65536).seal()
    got, error = read_chunks(store, "b", n, offset)
    assert error is None
    assert got == data[offset:]


@pytest.mark.parametrize("n", SIZES)
def test_unsynced_blob_reads_pending_blocks_and_tail(store, n):
    data = pattern(5 * BLOCK + 123)
    handle = write_all(store, "b", data[: 2 * BLOCK + 10])
    handle.sync()  # some entries on disk, the rest pending or in the tail
    handle.write(data[2 * BLOCK + 10 :])
    got, error = read_chunks(store, "b", n)
    assert error is None
    assert got == data


@pytest.mark.parametrize("n", [BLOCK // 2, BLOCK, 3 * BLOCK, MAX_READ_SPAN])
@pytest.mark.parametrize("bad_block", [0, 1, 7])
def test_a_damaged_block_stops_the_read_after_exactly_the_good_bytes(store, n, bad_block):
    data = pattern(10 * BLOCK + 5)
    write_all(store, "b", data).seal()
    flip_byte(paths(store, "b").data, bad_block * BLOCK + 17)
    got, error = read_chunks(store, "b", n)
    assert isinstance(error, ChecksumError)
    assert f"block {bad_block}" in str(error)
    assert got == data[: bad_block * BLOCK]


def test_a_missing_checksum_entry_is_a_checksum_error(store):
    data = pattern(4 * BLOCK)
    write_all(store, "b", data).seal()
    with open(paths(store, "b").sums, "r+b") as f:
        f.truncate(8 * 2)  # entries of blocks 2 and 3 gone
    got, error = read_chunks(store, "b", MAX_READ_SPAN)
    assert isinstance(error, ChecksumError)
    assert got == data[: 2 * BLOCK]


def test_one_large_read_is_one_pread_of_data_and_one_of_checksums(tmp_path):
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    data = pattern(3 * MAX_READ_SPAN)
    write_all(store, "b", data, chunk=65536).seal()
    handle = store.open_read("b", 0, None)
    fs.calls.clear()
    piece = handle.read(10 * MAX_READ_SPAN)
    assert piece == data[:MAX_READ_SPAN]  # capped at MAX_READ_SPAN per call
    assert fs.calls == [("read", "b.sums"), ("read", "b.data")]
    handle.close()
    store.close()
