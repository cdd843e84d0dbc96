"""BlobReadHandle reads many blocks per call and still checks every block.

The read path of a storage server reads up to ``MAX_READ_SPAN`` per call
with one pread of the data and one of the checksum entries; these tests pin
down that this changes nothing a caller can see: the bytes, the short
reads at a damaged block, the torn tail of an unsynced blob.
"""

from __future__ import annotations

import os
import threading

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
    handle = write_all(store, "b", data)
    handle.sync()  # its checksums go to .sums, not into the record
    handle.seal()
    with open(paths(store, "b").sums, "r+b") as f:
        f.truncate(8 * 2)  # entries of blocks 2 and 3 gone
    got, error = read_chunks(store, "b", MAX_READ_SPAN)
    assert isinstance(error, ChecksumError)
    assert got == data[: 2 * BLOCK]


def test_one_large_read_is_one_pread_of_data_and_one_of_checksums(tmp_path):
    fs = RecordingFileSystem()
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs)
    assert store.wait_fanned_out(30)  # its mkdirs are not counted as a read's
    data = pattern(3 * MAX_READ_SPAN)
    write_all(store, "b", data, chunk=65536).seal()
    handle = store.open_read("b", 0, None)
    fs.calls.clear()
    piece = handle.read(10 * MAX_READ_SPAN)
    assert piece == data[:MAX_READ_SPAN]  # capped at MAX_READ_SPAN per call
    assert fs.calls == [("read", "b.sums"), ("read", "b.data")]
    handle.close()
    store.close()


def read_into_chunks(
    store: BlobStore,
    blob_id: str,
    size: int,
    offset: int = 0,
    nowait: bool = False,
    fallback: bool = False,
) -> tuple[bytes, Exception | None]:
    """Like read_chunks, with ``read_into`` and one reused buffer; with
    ``nowait`` and ``fallback``, what cannot be done without waiting (a
    block that failed its checksum) is read again waiting, as the servers
    do."""
    handle = store.open_read(blob_id, offset, None)
    buffer = memoryview(bytearray(size))
    got = bytearray()
    try:
        while True:
            try:
                n = handle.read_into(buffer, nowait=nowait)
            except BlockingIOError:
                if not fallback:
                    raise
                n = handle.read_into(buffer)
            if not n:
                return bytes(got), None
            got += buffer[:n]
    except ChecksumError as e:
        return bytes(got), e
    finally:
        handle.close()


@pytest.mark.parametrize("size", [1000, BLOCK, 3 * BLOCK, MAX_READ_SPAN, MAX_READ_SPAN + 5])
@pytest.mark.parametrize("offset", [0, 1, 2 * BLOCK])
def test_read_into_returns_the_bytes_in_place_or_by_copy(store, size, offset):
    data = pattern(MAX_READ_SPAN * 2 + 3 * BLOCK + 11)
    write_all(store, "b", data, chunk=65536).seal()
    got, error = read_into_chunks(store, "b", size, offset)
    assert (got, error) == (data[offset:], None)


@pytest.mark.parametrize("size", [BLOCK, 4 * BLOCK, MAX_READ_SPAN])
def test_read_into_without_waiting_reads_cached_blocks_of_open_and_sealed_blobs(store, size):
    data = pattern(5 * BLOCK + 123)
    handle = write_all(store, "b", data[: 2 * BLOCK + 10])
    handle.sync()  # entries on disk, pending in memory and the tail's
    handle.write(data[2 * BLOCK + 10 :])
    assert read_into_chunks(store, "b", size, nowait=True) == (data, None)
    handle.seal()
    assert read_into_chunks(store, "b", size, nowait=True) == (data, None)


def test_read_into_without_waiting_refuses_what_it_cannot_do_in_place(store):
    data = pattern(4 * BLOCK)
    write_all(store, "b", data).seal()
    handle = store.open_read("b", 1, None)
    buffer = memoryview(bytearray(2 * BLOCK))
    with pytest.raises(BlockingIOError):  # unaligned start
        handle.read_into(buffer, nowait=True)
    assert handle.read_into(buffer) == 2 * BLOCK  # nothing was consumed
    assert bytes(buffer) == data[1 : 2 * BLOCK + 1]
    handle.close()
    handle = store.open_read("b", 0, None)
    with pytest.raises(BlockingIOError):  # not a whole number of blocks
        handle.read_into(buffer[:1000], nowait=True)
    handle.close()


def test_read_into_without_waiting_does_not_wait_for_a_busy_blob(store):
    data = pattern(3 * BLOCK)
    writer = write_all(store, "b", data)
    handle = store.open_read("b", 0, None)
    buffer = memoryview(bytearray(BLOCK))
    blob = writer._blob
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:  # as a writer holds it over an fsync
        with blob.lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    try:
        with pytest.raises(BlockingIOError):
            handle.read_into(buffer, nowait=True)
    finally:
        release.set()
        holder.join(30)
    assert handle.read_into(buffer, nowait=True) == BLOCK
    assert bytes(buffer) == data[:BLOCK]
    handle.close()


def test_read_into_without_waiting_leaves_blocks_not_in_the_page_cache(store):
    data = pattern(8 * BLOCK)
    handle = write_all(store, "b", data)
    handle.sync()  # its checksums go to .sums, not into the record
    handle.seal()  # synced: its pages are clean and can be dropped
    for path in (paths(store, "b").data, paths(store, "b").sums):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    handle = store.open_read("b", 0, None)
    buffer = memoryview(bytearray(4 * BLOCK))
    try:
        handle.read_into(buffer, nowait=True)
    except BlockingIOError:
        assert handle.remaining == len(data)  # nothing consumed: read it with waiting
        assert handle.read_into(buffer) == 4 * BLOCK
        assert bytes(buffer) == data[: 4 * BLOCK]
    else:
        pytest.skip("this file system kept the pages cached (tmpfs?)")
    finally:
        handle.close()


@pytest.mark.parametrize("bad_block", [0, 1, 7])
def test_read_into_stops_after_exactly_the_good_bytes_of_a_damaged_blob(store, bad_block):
    data = pattern(10 * BLOCK + 5)
    write_all(store, "b", data).seal()
    flip_byte(paths(store, "b").data, bad_block * BLOCK + 17)
    for nowait in (False, True):
        got, error = read_into_chunks(store, "b", 4 * BLOCK, nowait=nowait, fallback=True)
        assert isinstance(error, ChecksumError) and f"block {bad_block}" in str(error)
        assert got == data[: bad_block * BLOCK]
    # Without waiting, the damaged block is left to a read that may wait.
    with pytest.raises(BlockingIOError):
        read_into_chunks(store, "b", 4 * BLOCK, nowait=True)


def test_one_read_into_is_one_read_of_data_and_one_of_checksums(tmp_path):
    fs = RecordingFileSystem()
    # nowait reads need the data cached: no drop-behind of what is written.
    store = BlobStore.open(tmp_path / "d", block_size=BLOCK, fs=fs, drop_behind=0)
    assert store.wait_fanned_out(30)  # its mkdirs are not counted as a read's
    data = pattern(3 * MAX_READ_SPAN)
    write_all(store, "b", data, chunk=65536).seal()
    handle = store.open_read("b", 0, None)
    buffer = memoryview(bytearray(MAX_READ_SPAN))
    fs.calls.clear()
    assert handle.read_into(buffer, nowait=True) == MAX_READ_SPAN
    assert bytes(buffer) == data[:MAX_READ_SPAN]
    assert fs.calls == [("read", "b.sums"), ("read", "b.data")]
    handle.close()
    store.close()
