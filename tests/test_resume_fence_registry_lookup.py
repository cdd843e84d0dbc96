"""A resume whose upload has a replica on a server this front end does not
know yet (registered since it last read the registry) waits for the
registry read as long as it would for a slow server's fence (the storage
client's idle timeout, ``STORAGE_IDLE_TIMEOUT``), not the probe timeout:
a replica that misses the fence is lost to the upload.  Real storage
servers and catalog; the second front end's pool runs on a Clock, so the
wait is the test's to step through."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.transfer_env import SECRET, Feeder, TransferEnv, sha256
from wsfront.transfer.pool import STORAGE_IDLE_TIMEOUT, StoragePool
from wsfront.transfer.service import Transfers
from wsstorage.client import StorageClient

MiB = 1 << 20


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend="real")
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest_twisted.ensureDeferred
async def test_a_resumes_fence_waits_for_a_slow_registry_read_as_for_a_slow_server(env):
    data = os.urandom(2 * MiB)
    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, data[:MiB]).start()
    await session.checkpoint()
    await session.interrupt()
    upload = await env.catalog.find_upload("/alice/f")
    replicas = sorted(r.node for r in upload.replicas)
    assert len(replicas) == 2
    unknown = replicas[1]  # registered after front end B last read the registry

    clock = task.Clock()
    asked: defer.Deferred = defer.Deferred()
    answer: defer.Deferred = defer.Deferred()

    def refresh() -> defer.Deferred:

        asked.callback(None)
        return answer

    pool = StoragePool(clock, probe_timeout=2.0, refresh=refresh)

    def take_in(name: str) -> None:
        client = StorageClient(env.reactor, name, env.endpoints[name], SECRET, idle_timeout=3.0)
        env.clients.append(client)
        pool.add(name, env.endpoints[name], client)

    for name in env.endpoints:
        if name != unknown:
            take_in(name)
    fe_b = Transfers(env.reactor, env._open_catalog(), pool, "fe-b", env.settings)
    resuming = fe_b.open_write(env.user, "/f", append=True)
    await asked  # the fence looks the unknown server up: the catalog is slow
    await task.deferLater(env.reactor, 0, lambda: None)  # (asked fires inside the lookup)
    clock.advance(STORAGE_IDLE_TIMEOUT / 2)  # past the probe timeout, within the idle one
    await task.deferLater(env.reactor, 0, lambda: None)
    assert not resuming.called
    take_in(unknown)  # the registry read answers, naming it
    answer.callback(None)
    resumed = await resuming
    assert resumed.offset == MiB
    fenced = await env.catalog.get_blob(upload.blob_id)
    assert fenced.length == MiB
    assert sorted(fenced.ok_replicas) == replicas  # both fenced, neither lost
    await Feeder(env.reactor, resumed, data[MiB:]).start()
    await resumed.finish()
    got, _ = await env.download("/f")
    assert sha256(got) == sha256(data)
