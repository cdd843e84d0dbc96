"""Write streams into a storage server of this process
(``wsstorage.inprocess_write``, wslocal's): the storage contract holds for
them; a stream moves no byte over the server's socket, but goes over the
wire while a write-path failpoint is armed; a stopped server or a closed
client fails a running stream with NodeUnavailable and lets go of its
blob, as a dropped connection does."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from tests.storage_contract import StorageContract, get, new_id, pattern, put
from tests.test_storage_contract_real import SECRET, RealStorage
from wsstorage import failpoints, inprocess_write, server
from wsstorage.client import StorageClient
from wsstorage.errors import BadRequest, NodeUnavailable, StorageError
from wsstorage.inprocess_write import TURN_BYTES, InProcessWriteClient, InProcessWriter
from wsstorage.service import start_storage_server

MiB = 1 << 20


class InProcessWriteStorage(RealStorage):
    def client(self, name: str) -> InProcessWriteClient:
        wire = StorageClient(reactor, name, self.endpoint(name), SECRET, idle_timeout=10)
        self.clients.append(wire)
        return InProcessWriteClient(wire, self.servers[name].factory)


@pytest_twisted.async_yield_fixture
async def write_storage(tmp_path):
    servers = {}
    for name in InProcessWriteStorage.names:
        servers[name] = await start_storage_server(
            reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / name), name, SECRET
        )
    storage = InProcessWriteStorage(servers)
    yield storage
    for c in storage.clients:
        await c.close()
    for s in servers.values():
        if s.port.connected:
            await s.stop()
        else:
            s.store.close()


class TestInProcessWriteContract(StorageContract):
    @pytest.fixture
    def storage(self, write_storage):
        return write_storage


@pytest_twisted.ensureDeferred
async def test_writes_are_in_process_and_a_stopped_server_fails_them(write_storage):
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})
    assert isinstance(w, InProcessWriter)
    w.write(pattern(300_000, 1))
    assert await w.flush() == 300_000
    failed = w.when_failed()
    await write_storage.servers["s1"].port.stopListening()
    w.write(b"x" * 10)
    with pytest.raises(NodeUnavailable):
        await w.flush()
    with pytest.raises(NodeUnavailable):
        await failed
    await w.abort()


@pytest_twisted.ensureDeferred
async def test_a_running_stream_counts_as_a_write_and_an_active_stream(write_storage):
    """Health's ``active_streams`` counts an in-process write stream, in
    ``in_process_writes`` (``in_process_reads`` counts reads only)."""
    factory = write_storage.servers["s1"].factory
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})
    w.write(b"w" * 1000)
    assert (factory.in_process_writes, factory.in_process_reads) == (1, 0)
    assert factory.active_streams == 1 and (await c.health()).active_streams == 1
    await w.commit()
    assert (factory.in_process_writes, factory.active_streams) == (0, 0)
    aborted = await c.write(new_id(), 1, 0, {})
    assert factory.in_process_writes == 1
    await aborted.abort()
    assert factory.in_process_writes == 0


def _wire_streams(monkeypatch) -> list[str]:
    """Record the write streams the servers open (over the wire)."""
    opened: list[str] = []
    init = server._WriteStream.__init__

    def counting(self, rid, blob_id, handle):
        opened.append(blob_id)
        init(self, rid, blob_id, handle)

    monkeypatch.setattr(server._WriteStream, "__init__", counting)
    return opened


@pytest_twisted.ensureDeferred
async def test_a_stream_goes_to_the_store_not_the_socket(write_storage, monkeypatch):
    opened = _wire_streams(monkeypatch)
    c = write_storage.client("s1")
    blob, data = new_id(), pattern(3 * MiB + 1, 2)
    _, info = await put(c, blob, data, chunk=100_000)
    assert info.size == len(data) and await get(c, blob) == data
    assert opened == [] and not write_storage.servers["s1"].factory.in_process_writes


@pytest_twisted.ensureDeferred
async def test_streams_go_over_the_wire_while_a_write_failpoint_is_armed(
    write_storage, monkeypatch
):
    """The failure tests arm the server's write-path failpoints to stop it
    at an exact byte or moment: they get the server's own stream."""
    opened = _wire_streams(monkeypatch)
    armed = failpoints.Failpoints("storage.after_commit=raise@999999999999")
    monkeypatch.setattr(failpoints, "_global", armed)
    c = write_storage.client("s1")
    blob, data = new_id(), pattern(100_000, 5)
    await put(c, blob, data)
    assert opened == [blob] and await get(c, blob) == data


@pytest_twisted.ensureDeferred
async def test_closing_the_client_fails_a_running_stream_and_releases_its_blob(write_storage):
    c = write_storage.client("s1")
    blob = new_id()
    w = await c.write(blob, 1, 0, {})
    w.write(pattern(200_000, 6))
    assert await w.flush() == 200_000
    failed = w.when_failed()
    await c.close()
    with pytest.raises(NodeUnavailable):
        await failed
    assert not c.writers and not write_storage.servers["s1"].factory.in_process_writes
    # Released: another writer takes the blob over from its durable length.
    other = write_storage.client("s1")
    w2 = await other.write(blob, 2, 200_000, {})
    w2.write(b"tail")
    info = await w2.commit()
    assert info.size == 200_004
    with pytest.raises(NodeUnavailable):
        await c.write(new_id(), 1, 0, {})


@pytest_twisted.ensureDeferred
async def test_a_control_after_the_commit_or_an_abort_is_a_bad_request(write_storage):
    """As the server answers a commit on a connection whose stream ended."""
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})
    w.write(b"y" * 1000)
    assert (await w.commit()).size == 1000
    for control in (w.commit, w.flush):
        with pytest.raises(BadRequest):
            await control()
    wire = await c.wire.write(new_id(), 1, 0, {})
    await wire.commit()
    with pytest.raises(BadRequest):
        await wire.commit()
    aborted = await c.write(new_id(), 1, 0, {})
    aborted.write(b"z" * 10)
    await aborted.abort()
    with pytest.raises(BadRequest):
        await aborted.commit()


@pytest_twisted.ensureDeferred
async def test_an_abort_or_commit_during_a_commit_waits_for_its_seal(write_storage):
    """The server holds the controls that follow a commit until it is
    answered: the seal is not broken, the second commit is refused."""
    c = write_storage.client("s1")
    blob, data = new_id(), pattern(3 * MiB, 7)
    w = await c.write(blob, 1, 0, {})
    w.write(data)
    flushed, sealed, aborted, again = w.flush(), w.commit(), w.abort(), w.commit()
    with pytest.raises(StorageError, match="write after commit"):
        w.write(b"more")
    assert await flushed == len(data)
    assert (await sealed).size == len(data)
    assert await aborted is None
    with pytest.raises(BadRequest):
        await again
    assert (await c.stat(blob)).sealed and await get(c, blob) == data
    assert not c.writers and not write_storage.servers["s1"].factory.in_process_writes


@pytest.fixture
def logged():
    """The failures logged while the test runs."""
    failures: list[Failure] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("where", ["store", "sync", "seal"])
@pytest_twisted.ensureDeferred
async def test_an_internal_store_error_is_logged(write_storage, monkeypatch, logged, where):
    """An error that maps to no wire error fails the stream as the
    server's does ("internal error") and is logged with its traceback."""
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    if where == "store":
        monkeypatch.setattr(inprocess_write, "_store_counted", broken)
    else:
        monkeypatch.setattr(type(w.handle), where, broken)
    w.write(b"x" * 1000)
    control = w.commit if where == "seal" else w.flush
    with pytest.raises(StorageError, match="internal error: RuntimeError") as e:
        await control()
    assert type(e.value) is StorageError
    assert [f.type for f in logged] == [RuntimeError]
    await w.abort()


class Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


async def _next_turn() -> None:
    await task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_producer_paused_for_a_turn_is_resumed_though_unregistered(write_storage):
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})
    producer = Producer()
    w.registerProducer(producer, True)
    w.write(b"p" * TURN_BYTES)
    assert producer.paused
    w.unregisterProducer()
    await _next_turn()
    assert not producer.paused
    await w.abort()


@pytest_twisted.ensureDeferred
async def test_a_turns_count_starts_again_after_a_big_write_without_producer(write_storage):
    c = write_storage.client("s1")
    w = await c.write(new_id(), 1, 0, {})
    w.write(b"q" * TURN_BYTES)
    await _next_turn()
    producer = Producer()
    w.registerProducer(producer, True)
    w.write(b"r" * 1000)
    assert not producer.paused
    assert (await w.commit()).size == TURN_BYTES + 1000
