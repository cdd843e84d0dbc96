"""A front end talks to the storage servers it was told about, and says so
when it cannot: a swapped endpoint reaches another server of the cluster
(refused by name), a bad endpoint string never reaches the catalog (and one
already there costs a node, not the front end), and a wrong secret is named
as such in both sides' logs (the server's rate-limited).

Real storage servers on real TCP sockets, a real sqlite catalog, twistd in a
subprocess for the command line."""

from __future__ import annotations

import subprocess
import time
import types
import warnings

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python import usage

from tests.storage_procs import pattern
from tests.support import python_env, twistd_argv
from wsfront.catalog import open_catalog
from wsfront.config import FrontendConfig, parse_storage
from wsfront.service import BadStorageEndpoint, FrontendService
from wsfront.transfer.pool import StoragePool
from wsstorage import auth
from wsstorage import client as client_module
from wsstorage.client import StorageClient, WrongServer
from wsstorage.errors import AuthenticationFailed, NodeUnavailable
from wsstorage.service import start_storage_server

SECRET = b"identity-test-secret-0123456789ab"
OTHER_SECRET = b"a-freshly-made-secret-nobody-knows"


class LogLines:
    """Formatted log events while attached; ``wait_for(text, n)`` fires once
    ``n`` events containing ``text`` have been seen."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._waits: list[tuple[str, int, defer.Deferred]] = []

    def __call__(self, event: dict) -> None:
        from twisted.logger import formatEvent

        self.lines.append(formatEvent(event))
        for wait in list(self._waits):
            if self.count(wait[0]) >= wait[1]:
                self._waits.remove(wait)
                wait[2].callback(None)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def wait_for(self, text: str, n: int = 1, timeout: float = 10.0) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.count(text) >= n:
            d.callback(None)
        else:
            self._waits.append((text, n, d))
            d.addTimeout(timeout, reactor)
        return d


@pytest.fixture
def logs():
    lines = LogLines()
    globalLogPublisher.addObserver(lines)
    yield lines
    globalLogPublisher.removeObserver(lines)


@pytest_twisted.async_yield_fixture
async def two_servers(tmp_path):
    servers = {}
    for name in ("s1", "s2"):
        servers[name] = await start_storage_server(
            reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / name), name, SECRET
        )
    yield servers
    for running in servers.values():
        await running.stop()


def frontend(tmp_path, storage, secret: bytes = SECRET) -> FrontendService:
    config = FrontendConfig(
        name="fe",
        catalog=f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        storage=tuple(storage),
        replicas=1,
        secret=secret,
    )
    return FrontendService(reactor, config)


async def started(fe: FrontendService) -> FrontendService:
    fe.startService()
    return await fe.ready


# -- 1. the server at the endpoint is the one asked for ------------------------


@pytest_twisted.ensureDeferred
async def test_swapped_endpoints_are_refused_by_name_and_get_no_blob(
    tmp_path, two_servers, logs
) -> None:
    s1, s2 = two_servers["s1"], two_servers["s2"]
    fe = frontend(tmp_path, [("s1", s2.client_endpoint), ("s2", s1.client_endpoint)])
    await started(fe)
    try:
        nodes = {n.name: n for n in fe.pool.nodes()}
        assert not nodes["s1"].up and not nodes["s2"].up
        assert "expected s1, got s2" in nodes["s1"].last_error
        assert "expected s2, got s1" in nodes["s2"].last_error
        assert logs.count("storage server s1 is down") == 1
        assert any("expected s1, got s2" in line for line in logs.lines)
        assert fe.pool.choose(1) == []
        # Even asked directly, the client never sends it a request.
        with pytest.raises(WrongServer, match="expected s1, got s2"):
            await fe.pool.client("s1").put("b1", 1, {}, pattern(1000))
        with pytest.raises(WrongServer):
            writer = await fe.pool.client("s2").write("b2", 1, 0, {})
            writer.write(pattern(1000))
            await writer.commit()
    finally:
        await fe.stopService()
    assert list(s1.store.list_blobs()) == [] and list(s2.store.list_blobs()) == []


@pytest_twisted.ensureDeferred
async def test_right_endpoints_are_up_and_one_wrong_one_leaves_the_rest_working(
    tmp_path, two_servers
) -> None:
    s2 = two_servers["s2"]
    fe = frontend(tmp_path, [("s1", s2.client_endpoint), ("s2", s2.client_endpoint)])
    await started(fe)
    try:
        assert fe.pool.is_up("s2") and not fe.pool.is_up("s1")
        assert fe.pool.choose(2) == ["s2"]
        info = await fe.pool.client("s2").put("ok", 1, {}, pattern(100))
        assert info.size == 100
    finally:
        await fe.stopService()


@pytest_twisted.ensureDeferred
async def test_a_client_without_an_expected_name_takes_any_server(two_servers) -> None:
    """Tools that connect by endpoint alone (a server's copy from a peer)
    keep working: the check is the caller's choice."""
    c = StorageClient(reactor, "peer:x", two_servers["s2"].client_endpoint, SECRET)
    try:
        assert (await c.health()).name == "s2"
    finally:
        await c.close()


# -- 2. endpoint strings are checked before they are registered -----------------


def test_a_storage_option_with_a_bad_endpoint_is_a_usage_error_naming_it() -> None:
    assert parse_storage("s1=tcp:127.0.0.1:7001") == ("s1", "tcp:127.0.0.1:7001")
    assert parse_storage("s2=tls:h:7002") == ("s2", "tls:h:7002")
    with pytest.raises(usage.UsageError, match=r"--storage s2=garbage:x: bad endpoint"):
        parse_storage("s2=garbage:x")
    with pytest.raises(usage.UsageError, match="s1=tcp:host:notaport"):
        parse_storage("s1=tcp:host:notaport")


def test_a_tls_storage_endpoint_is_accepted_with_warnings_as_errors() -> None:
    """Checking builds the endpoint with a stand-in reactor, for which
    Twisted's ``tls:`` client warns: the check must not mistake that
    warning (an error under ``-W error``) for a bad endpoint."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_storage("s2=tls:h:7002") == ("s2", "tls:h:7002")


@pytest_twisted.ensureDeferred
async def test_a_config_built_in_code_with_a_bad_endpoint_fails_before_the_catalog(
    tmp_path,
) -> None:
    """Not every FrontendConfig comes through the options (wslocal and
    embedding code build their own): the start checks its endpoints again
    before it registers any, since the catalog would hand a bad one to
    every later front end."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = open_catalog(reactor, url)
    await catalog.register_node("s1", "tcp:127.0.0.1:23001")
    await catalog.close()
    fe = frontend(tmp_path, [("s2", "tcp:127.0.0.1:23002"), ("s3", "garbage:x")])
    with pytest.raises(BadStorageEndpoint, match="--storage s3=garbage:x: bad endpoint"):
        await fe._start()
    assert fe.catalog is None
    assert await registry(url) == {"s1": "tcp:127.0.0.1:23001"}


async def registry(url: str) -> dict[str, str]:
    catalog = open_catalog(reactor, url)
    try:
        return {n.name: n.endpoint for n in await catalog.list_nodes()}
    finally:
        await catalog.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_bad_storage_endpoint_is_a_one_line_error_and_the_catalog_is_unchanged(
    tmp_path,
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = open_catalog(reactor, url)
    await catalog.register_node("s1", "tcp:127.0.0.1:23001")
    await catalog.close()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    argv = twistd_argv(
        "wsfront", "--name", "a", "--catalog", url, "--secret-file", str(secret),
        "--http", "tcp:0:interface=127.0.0.1", "--storage", "s1=garbage:x",
        "--storage", "s2=tcp:127.0.0.1:23002",
    )  # fmt: skip
    proc = subprocess.run(
        argv, env=python_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "--storage s1=garbage:x: bad endpoint" in out
    assert "Traceback" not in out
    assert await registry(url) == {"s1": "tcp:127.0.0.1:23001"}


@pytest_twisted.ensureDeferred
async def test_a_bad_endpoint_already_in_the_catalog_is_a_down_node_not_a_failed_start(
    tmp_path, two_servers, logs
) -> None:
    """As an older version could leave it: the front end starts, logs the
    node, never chooses it, and serves with the rest."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = open_catalog(reactor, url)
    await catalog.register_node("s1", "garbage:x")
    await catalog.close()
    fe = frontend(tmp_path, [("s2", two_servers["s2"].client_endpoint)])
    await started(fe)
    try:
        nodes = {n.name: n for n in fe.pool.nodes()}
        assert not nodes["s1"].up and "'garbage:x' is unusable" in nodes["s1"].last_error
        assert nodes["s2"].up
        assert fe.pool.choose(2) == ["s2"]
        assert logs.count("storage server s1 is unusable") == 1
        with pytest.raises(NodeUnavailable):
            await fe.pool.client("s1").stat("x")
        await fe.pool.probe_all()
        assert logs.count("storage server s1") == 1  # no repeat per probe
    finally:
        await fe.stopService()


# -- 3. a wrong secret says so --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_server_with_another_secret_is_named_in_the_pool_and_both_logs(
    tmp_path, two_servers, logs
) -> None:
    """The server restarted with a mistyped --secret-file made itself a new
    secret: the front end's node says why it is down, and the server logs
    the failed authentication (not just a connection that ended)."""
    odd = await start_storage_server(
        reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "s3"), "s3", OTHER_SECRET
    )
    pool = StoragePool(reactor)
    client = StorageClient(reactor, "s3", odd.client_endpoint, SECRET, expected_name="s3")
    pool.add("s3", odd.client_endpoint, client)
    try:
        await pool.probe_all()
        [node] = pool.nodes()
        assert not node.up
        assert "check --secret-file" in node.last_error
        assert "storage server s3 could not prove the cluster secret" in node.last_error
        assert any("s3 is down" in x and "check --secret-file" in x for x in logs.lines)
        await logs.wait_for("client failed authentication from")
        [line] = [x for x in logs.lines if "client failed authentication from" in x]
        assert "127.0.0.1" in line and "check --secret-file" in line
    finally:
        await client.close()
        await odd.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_proof_says_refused_our_credentials(two_servers, logs, monkeypatch):
    """A client that sends AUTH with the wrong secret (here: one that does
    not check the server's proof first) gets ``auth_failed``, and says so."""
    lax = types.SimpleNamespace(**vars(auth))
    lax.proofs_match = lambda expected, given: True
    monkeypatch.setattr(client_module, "auth", lax)
    c = StorageClient(reactor, "s1", two_servers["s1"].client_endpoint, OTHER_SECRET)
    try:
        refused = r"storage server s1 refused our credentials: check --secret-file"
        with pytest.raises(AuthenticationFailed, match=refused):
            await c.health()
    finally:
        await c.close()
    await logs.wait_for("client failed authentication from")
    assert logs.count("wrong proof of the cluster secret") == 1
    assert logs.count("dropping") == 0


@pytest_twisted.ensureDeferred
async def test_a_reconnect_loop_with_a_wrong_secret_cannot_flood_the_server_log(
    two_servers, logs
) -> None:
    running = two_servers["s1"]
    factory = running.factory
    clock = Clock()
    factory.auth_failures = auth.LogBudget(clock, lines=3, interval=60.0)
    taken = []
    real_take = factory.auth_failures.take
    done: defer.Deferred = defer.Deferred()

    def counting_take():
        taken.append(1)
        if len(taken) == 20:
            reactor.callLater(0, done.callback, None)
        return real_take()

    factory.auth_failures.take = counting_take
    bad = StorageClient(reactor, "s1", running.client_endpoint, OTHER_SECRET)
    try:
        for _ in range(20):
            with pytest.raises(AuthenticationFailed):
                await bad.health()
        await done.addTimeout(10, reactor)
        assert logs.count("client failed authentication from") == 3
        assert logs.count("ended before the handshake") == 0
        clock.advance(60)
        with pytest.raises(AuthenticationFailed):
            await bad.health()
        await logs.wait_for("client failed authentication from", 4)
        assert logs.count("(17 more not logged)") == 1
    finally:
        await bad.close()


def test_log_budget_lets_through_so_many_lines_per_interval() -> None:
    clock = Clock()
    budget = auth.LogBudget(clock, lines=2, interval=10.0)
    assert [budget.take() for _ in range(5)] == [0, 0, None, None, None]
    clock.advance(9.9)
    assert budget.take() is None
    clock.advance(0.1)
    assert [budget.take(), budget.take(), budget.take()] == [4, 0, None]


# -- the operator's report, end to end with processes ---------------------------


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_wsfront_given_another_servers_port_uses_only_the_real_one(tmp_path) -> None:
    """``--storage s1=<s2's port>``: the log names the mistake, s1 is down,
    and every upload lands (201) on s2 under s2's name, none on s1."""
    from tests.support import require_tool
    from tests.wsfront_procs import ANY_PORT, PASSWORD, USER, running_wsfront, storage_with_user

    curl = require_tool("curl")
    with storage_with_user(tmp_path, 2) as (catalog, (s1, s2)):
        argv = twistd_argv(
            "wsfront", "--name", "fe", "--catalog", catalog, "--replicas", "1",
            "--secret-file", str(tmp_path / "secret"), "--http", ANY_PORT,
            "--storage", f"s1={s2.endpoint}", "--storage", f"s2={s2.endpoint}",
        )  # fmt: skip
        with running_wsfront(tmp_path, argv, {"http"}) as (fe, ports):
            # Said by the first probe, before listening, unless that probe
            # ran out of its 2 s on a loaded machine: then by the next one.
            deadline = time.monotonic() + 60
            while "expected s1, got s2" not in fe.log():
                assert time.monotonic() < deadline, f"no mistake named:\n{fe.log()[-3000:]}"
                await deferLater(reactor, 0.05, lambda: None)  # polling the log
            for i in range(4):
                (tmp_path / "f.bin").write_bytes(pattern(10_000 + i))
                url = f"http://{USER}:{PASSWORD}@127.0.0.1:{ports['http']}/f{i}.bin"
                put = subprocess.run(
                    [curl, "-sS", "-T", str(tmp_path / "f.bin"), "-w", "%{http_code}", url],
                    capture_output=True, timeout=60,
                )  # fmt: skip
                assert put.stdout.endswith(b"201"), (put, fe.log()[-3000:])
        counts = {}
        for proc in (s1, s2):
            c = proc.client(reactor)
            try:
                counts[proc.name] = len(await c.list_blobs())
            finally:
                await c.close()
        assert counts == {"s1": 0, "s2": 4}
