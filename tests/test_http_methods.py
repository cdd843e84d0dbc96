"""Which status a method gets where it cannot be served: 501 or 405.

RFC 9110 (15.6.2): 501 Not Implemented for a method the server does not
recognise; 405 (15.5.6, with Allow) for one it knows that the target does
not allow.  wsfs answered 405 to any method, ``BREW`` included.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher

from tests.support import require_tool
from tests.transfer_env import PASSWORD
from tests.tus_env import start_env, stop_env, tus


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(start_env(reactor, tmp_path)))
    yield e
    pytest_twisted.blockon(stop_env(e))


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


async def _curl_status(env, *args: str) -> str:
    out, err, code = await env.run(
        [require_tool("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args]
    )
    assert code == 0, err
    return out.decode()


@pytest_twisted.ensureDeferred
async def test_an_unknown_method_is_501_with_or_without_a_login(env):
    await env.upload("/f.txt", b"kept\n")
    login = ("-u", f"alice:{PASSWORD}")
    assert await _curl_status(env, *login, "-X", "BREW", env.url("/f.txt")) == "501"
    # Before authentication: what the server implements is no secret.
    assert await _curl_status(env, "-X", "BREW", env.url("/f.txt")) == "501"
    assert await _curl_status(env, "-X", "FROBNICATE", env.url("/-/uploads/")) == "501"
    r = await env.request("GET", "/f.txt")
    assert r.code == 200 and await r.content() == b"kept\n"


@pytest_twisted.ensureDeferred
async def test_a_known_method_the_resource_does_not_allow_is_still_405_with_allow(env):
    await env.upload("/f.txt", b"kept\n")
    for method in ("TRACE", "PATCH", "POST", "LOCK"):
        r = await env.request(method, "/f.txt")
        await r.content()
        assert r.code == 405, method
        assert "GET" in header(r, "Allow"), method
    status, found, _ = await tus(env, "GET", "/-/uploads/")
    assert (status, found.get("allow")) == (405, "OPTIONS, POST")


@pytest_twisted.ensureDeferred
async def test_an_unknown_tus_method_override_is_501(env):
    status, found, _ = await tus(env, "POST", "/-/uploads/", {"X-HTTP-Method-Override": "BREW"})
    assert (status, found.get("tus-resumable")) == (501, "1.0.0")
    status, found, _ = await tus(env, "POST", "/-/uploads/", {"X-HTTP-Method-Override": "GET"})
    assert (status, found.get("allow")) == (405, "OPTIONS, POST")


@pytest_twisted.ensureDeferred
async def test_a_501_is_logged_as_the_clients_doing_not_a_warning(env):
    """A 5xx is logged at warn for the operator; an unknown method is not
    theirs to fix, and a scanner trying methods must not flood the log."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        r = await env.request("BREW", "/f.txt")
        await r.content()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert r.code == 501
    [event] = [e for e in seen if e.get("method") == "BREW"]
    assert (event["status"], event["log_level"]) == (501, LogLevel.info)
