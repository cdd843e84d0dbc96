"""``wsfs status`` says why a storage server is down: the front end records
its pool's reason in the catalog's registry, one short line, no secret.

A real storage server with another secret and a good one on real TCP
sockets, a front end in this process, the CLI in a subprocess."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor, threads

from tests.test_cli import wsfs
from wsfront.config import FrontendConfig
from wsfront.service import FrontendService
from wsstorage.service import start_storage_server

SECRET = b"status-test-secret-0123456789abcd"
OTHER_SECRET = b"a-mistyped-secret-file-made-this-one"


@pytest_twisted.ensureDeferred
async def test_status_shows_why_a_storage_server_is_down_and_nothing_for_one_that_is_up(
    tmp_path,
) -> None:
    good = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "s1"), "s1", SECRET
    )
    odd = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "s2"), "s2", OTHER_SECRET
    )
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    config = FrontendConfig(
        name="fe", catalog=url, replicas=1, secret=SECRET,
        storage=(("s1", good.client_endpoint), ("s2", odd.client_endpoint)),
    )  # fmt: skip
    fe = FrontendService(reactor, config)
    fe.startService()
    try:
        await fe.ready
        await fe.record_node_health()
        table = await threads.deferToThread(wsfs, url, "status")
        listed = await threads.deferToThread(wsfs, url, "--json", "status")
    finally:
        await fe.stopService()
        await good.stop()
        await odd.stop()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = lines[1].split()
    assert header[-1] == "ERROR"
    [s1] = [line for line in lines if line.startswith("s1 ")]
    [s2] = [line for line in lines if line.startswith("s2 ")]
    assert s1.split()[2] == "up" and "prove" not in s1
    assert s2.split()[2] == "down"
    assert "storage server s2 could not prove the cluster secret" in s2
    nodes = {n["name"]: n for n in json.loads(listed.stdout)["nodes"]}
    assert nodes["s1"]["last_error"] is None
    assert "check --secret-file" in nodes["s2"]["last_error"]
    for out in (table.stdout, listed.stdout):
        assert SECRET.decode() not in out and OTHER_SECRET.decode() not in out
