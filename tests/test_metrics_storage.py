"""The storage server's own metrics listener: served over real HTTP, the
numbers follow writes, connections and a server's death."""

from __future__ import annotations

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from tests.http_env import payload
from tests.transfer_env import TransferEnv
from wsstorage.metrics import listen_metrics, storage_registry
from wsstorage.reserve import Reserve


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(TransferEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    answer = await treq.get(url)
    assert answer.code == 200
    assert answer.headers.getRawHeaders("Content-Type")[0].startswith("text/plain; version=")
    text = (await treq.content(answer)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_storage_metrics_follow_writes_and_connections(env):
    from twisted.internet import reactor

    node = env.nodes["s1"]
    port = await listen_metrics(
        reactor, "tcp:0:interface=127.0.0.1", storage_registry(node.factory)
    )
    url = f"http://127.0.0.1:{port.getHost().port}/metrics"
    try:
        before = await scrape(url)
        assert before[("wsstorage_server_info", (("name", "s1"),))] == 1
        assert before[("wsstorage_total_bytes", ())] > 0
        assert before[("wsstorage_reserve_bytes", ())] == 0  # the test store keeps none
        node.store.reserve = Reserve(fraction=0.01)
        reserved = await scrape(url)
        total = reserved[("wsstorage_total_bytes", ())]
        assert reserved[("wsstorage_reserve_bytes", ())] == int(total * 0.01)
        assert before[("wsstorage_damaged_blobs", ())] == 0
        written = before[("wsstorage_process_bytes_total", (("direction", "write"),))]
        await env.upload("/f", payload(300_000))
        after = await scrape(url)
        grown = after[("wsstorage_process_bytes_total", (("direction", "write"),))] - written
        # The byte counter is per process: two replicas of 300 000 bytes
        # land on two of the three in-process servers.
        assert grown == 600_000
        assert after[("wsstorage_connections", ())] >= 1
        await node.kill()
        dead = await scrape(url)
        assert dead[("wsstorage_connections", ())] == 0
    finally:
        await port.stopListening()
