"""HTTP login throttling and connection caps, on real sockets.

Failed logins are counted per client address, per user and per pair
(``wsfront.limits.LoginThrottle``); once throttled, a login gets ``429`` with
``Retry-After`` before any password is checked, for file paths, tus and PUT
alike (no ``100 Continue``, nothing stored).  Connections beyond the cap per
address or in total get ``503`` with ``Retry-After``.  Behind a balancer
speaking the PROXY protocol (``haproxy:`` endpoint), both key on the address
in the PROXY header, and a connection without a valid header is dropped.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.web.client import Agent

from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of
from tests.test_security_auth import count_password_checks
from tests.transfer_env import PASSWORD
from wsfront.catalog.errors import NotFound
from wsfront.http.site import SiteSettings
from wsfront.http.tus import TusEndpoint
from wsfront.limits import LoginThrottle

PER_ADDRESS = 10  # SiteSettings' default login_failures_per_address


def _basic(name: str, password: str) -> dict:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {b"Authorization": [f"Basic {token}".encode()]}


def _basic_line(name: str, password: str) -> bytes:
    token = base64.b64encode(f"{name}:{password}".encode())
    return b"Authorization: Basic " + token + b"\r\n"


@pytest.fixture
def http(tmp_path):
    from twisted.internet import reactor

    env = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


async def _get(env, name: str, password: str, client=None):
    client = client or env.http
    response = await client.get(env.url("/"), headers=_basic(name, password), unbuffered=True)
    body = await response.content()
    return response, body


@pytest_twisted.ensureDeferred
async def test_failures_from_one_address_throttle_every_user_name_there_only(http):
    from twisted.internet import reactor

    for i in range(PER_ADDRESS):
        response, _ = await _get(http, f"guess{i}", "guess")
        assert response.code == 401
    # From this address even alice's correct password waits now...
    response, body = await _get(http, "alice", PASSWORD)
    assert response.code == 429 and b"too many failed logins" in body
    assert int(response.headers.getRawHeaders(b"Retry-After")[0]) > 0
    # ... while from another address (127.0.0.2 is loopback too) it works.
    pool_free = HTTPClient(Agent(reactor, bindAddress=("127.0.0.2", 0)))
    response, _ = await _get(http, "alice", PASSWORD, client=pool_free)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_a_throttled_login_is_429_too_many_requests_on_the_status_line(http):
    """Twisted has no reason phrase for 429: the line read "429 Unknown Status"."""
    from twisted.internet import reactor

    for i in range(PER_ADDRESS):
        response, _ = await _get(http, f"guess{i}", "guess")
        assert response.code == 401
    c = await connect(reactor, http.port.getHost().port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + _basic_line("alice", PASSWORD) + b"\r\n")
    answer = await c.until(b"\r\n\r\n")
    c.close()
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 429 Too Many Requests"


@pytest_twisted.ensureDeferred
async def test_retry_after_counts_down_and_the_throttle_lifts(http):
    clock = task.Clock()
    clock.advance(1000)
    http.site.context.throttle = LoginThrottle(clock, per_address=3, per_user=50, window=300)
    for _ in range(3):
        response, _ = await _get(http, "alice", "guess")
        assert response.code == 401
    waits = []
    for step in (0, 120, 100):
        clock.advance(step)
        response, _ = await _get(http, "alice", "guess")
        assert response.code == 429
        waits.append(int(response.headers.getRawHeaders(b"Retry-After")[0]))
    assert waits == [300, 180, 80]
    clock.advance(81)
    checks = count_password_checks(http)
    response, _ = await _get(http, "alice", PASSWORD)
    assert response.code == 200 and checks == ["alice"]


@pytest_twisted.ensureDeferred
async def test_throttled_tus_and_put_are_refused_before_any_body(http):
    from twisted.internet import reactor

    for _ in range(PER_ADDRESS):
        response, _ = await _get(http, "alice", "guess")
        assert response.code == 401
    http.site.mount("uploads", TusEndpoint())
    checks = count_password_checks(http)
    response = await http.http.post(
        http.url("/-/uploads/"),
        headers={
            **_basic("alice", PASSWORD),
            b"Tus-Resumable": [b"1.0.0"],
            b"Upload-Length": [b"5"],
            b"Upload-Metadata": [b"filename " + base64.b64encode(b"t.bin")],
        },
        unbuffered=True,
    )
    await response.content()
    assert response.code == 429 and response.headers.hasHeader(b"Retry-After")
    c = await connect(reactor, http.port.getHost().port)
    c.send(
        b"PUT /big.bin HTTP/1.1\r\nHost: x\r\n"
        + _basic_line("alice", PASSWORD)
        + b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
    )
    received = await c.closed.addTimeout(10, reactor)
    assert b"100 Continue" not in received
    status, headers = head_of(received)
    assert (status, headers["connection"]) == (429, "close") and "retry-after" in headers
    assert checks == []
    with pytest.raises(NotFound):
        await http.transfers.stat(http.user, "/big.bin")
    with pytest.raises(NotFound):
        await http.transfers.stat(http.user, "/t.bin")


# -- behind a balancer: the PROXY protocol ------------------------------------

PROXY_LISTEN = "haproxy:tcp:0:interface=127.0.0.1"
ATTACKER = b"203.0.113.7"
NEIGHBOUR = b"198.51.100.9"


def _proxied(client: bytes, request: bytes) -> bytes:
    return b"PROXY TCP4 " + client + b" 127.0.0.1 1234 8080\r\n" + request


def _request(path: bytes = b"/-/nothing", *headers: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers)


async def _exchange(reactor, port: int, data: bytes) -> bytes:
    c = await connect(reactor, port)
    c.send(data)
    return await c.closed.addTimeout(10, reactor)


@pytest.fixture
def proxied(tmp_path):
    from twisted.internet import reactor

    settings = SiteSettings(max_connections_per_address=2)
    env = HttpEnv(reactor, tmp_path, settings, listen=PROXY_LISTEN)
    env = pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


@pytest_twisted.ensureDeferred
async def test_connection_cap_keys_on_the_address_in_the_proxy_header(proxied):
    from twisted.internet import reactor

    port = proxied.port.getHost().port
    held = []
    for _ in range(2):  # counted from their first bytes after the PROXY header
        c = await connect(reactor, port)
        c.send(_proxied(ATTACKER, b"GET /-/nothing HTTP/1.1\r\n"))
        held.append(c)
    refused = await _exchange(reactor, port, _proxied(ATTACKER, _request() + b"\r\n"))
    status, headers = head_of(refused)
    assert (status, headers["retry-after"]) == (503, "5")
    assert b"from your address" in refused
    # Every connection comes from 127.0.0.1, yet the neighbour is served.
    served = await _exchange(reactor, port, _proxied(NEIGHBOUR, _request() + b"\r\n"))
    assert head_of(served)[0] == 404
    for c in held:
        c.close()


@pytest_twisted.ensureDeferred
async def test_login_throttle_keys_on_the_address_in_the_proxy_header(proxied):
    from twisted.internet import reactor

    port = proxied.port.getHost().port
    for i in range(PER_ADDRESS):
        answer = await _exchange(
            reactor, port, _proxied(ATTACKER, _request(b"/", _basic_line(f"u{i}", "x")) + b"\r\n")
        )
        assert head_of(answer)[0] == 401
    alice = _request(b"/", _basic_line("alice", PASSWORD)) + b"\r\n"
    answer = await _exchange(reactor, port, _proxied(ATTACKER, alice))
    assert head_of(answer)[0] == 429
    answer = await _exchange(reactor, port, _proxied(NEIGHBOUR, alice))
    assert head_of(answer)[0] == 200
    assert proxied.site.context.throttle.retry_after("x", ATTACKER.decode()) is not None
    assert proxied.site.context.throttle.retry_after("x", "127.0.0.1") is None


@pytest.mark.parametrize(
    "first_bytes",
    [
        _request() + b"\r\n",  # no PROXY header at all
        b"PROXY GARBAGE\r\n" + _request() + b"\r\n",
        b"PROXY TCP9 192.0.2.1 127.0.0.1 1 2\r\n" + _request() + b"\r\n",
        b"PROXY TCP4 192.0.2.1\r\n" + _request() + b"\r\n",
    ],
    ids=["none", "garbage", "bad-protocol", "no-addresses"],
)
@pytest_twisted.ensureDeferred
async def test_connection_without_a_valid_proxy_header_is_dropped(proxied, first_bytes):
    from twisted.internet import reactor

    port = proxied.port.getHost().port
    assert await _exchange(reactor, port, first_bytes) == b""
    assert proxied.site.context.limits.open == 0


@pytest_twisted.ensureDeferred
async def test_connections_in_total_are_capped_whatever_the_addresses(tmp_path):
    from twisted.internet import reactor

    settings = SiteSettings(max_connections_per_address=None, max_connections=3)
    env = await HttpEnv(reactor, tmp_path, settings, listen=PROXY_LISTEN).start()
    held = []
    try:
        port = env.port.getHost().port
        for i in range(3):
            c = await connect(reactor, port)
            c.send(_proxied(b"192.0.2.%d" % i, b"GET / HTTP/1.1\r\n"))
            held.append(c)
        refused = await _exchange(reactor, port, _proxied(NEIGHBOUR, _request() + b"\r\n"))
        assert head_of(refused)[0] == 503 and b"in total" in refused
        held.pop().close()
        for _ in range(100):  # the server sees the close on its next reactor turn
            answer = await _exchange(reactor, port, _proxied(NEIGHBOUR, _request() + b"\r\n"))
            if head_of(answer)[0] != 503:
                break
        assert head_of(answer)[0] == 404
    finally:
        for c in held:
            c.close()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_burst_of_concurrent_guesses_gets_no_more_checks_than_the_limit(tmp_path):
    """Forty wrong passwords sent at once on forty connections: attempts
    being checked count, so only the per-address limit's worth of password
    checks run and the rest get 429 at once."""
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path).start()
    conns = []
    try:
        checks = count_password_checks(env)
        port = env.port.getHost().port
        conns = [await connect(reactor, port) for _ in range(40)]
        for i, c in enumerate(conns):
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + _basic_line("alice", f"guess{i}") + b"\r\n")
        codes = [head_of(await c.until(b"\r\n\r\n"))[0] for c in conns]
        limit = env.site.context.throttle.per_address
        assert codes.count(401) == limit == len(checks)
        assert codes.count(429) == len(conns) - limit
    finally:
        for c in conns:
            c.close()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_many_parallel_correct_logins_all_get_in(tmp_path):
    """A client opening forty connections at once with the right password
    (before any login of it is cached): the checks beyond the limit wait
    for the ones ahead instead of being refused."""
    from twisted.internet import reactor

    env = await HttpEnv(reactor, tmp_path).start()
    conns = []
    try:
        port = env.port.getHost().port
        conns = [await connect(reactor, port) for _ in range(40)]
        for c in conns:
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + _basic_line("alice", PASSWORD) + b"\r\n")
        codes = [head_of(await c.until(b"\r\n\r\n"))[0] for c in conns]
        assert codes == [200] * 40
        assert env.site.context.throttle.refused == 0
    finally:
        for c in conns:
            c.close()
        await env.stop()
