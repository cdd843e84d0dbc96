"""A PUT must say how long its body is: 411 Length Required otherwise.

Without Content-Length or chunked framing a request has an empty body
(RFC 9112, 6.3), so an HTTP/1.0 PUT sending its file until it closes, or an
HTTP/1.1 one with neither header, stored an empty file and answered 201 /
204.  nginx answers such a PUT 411, before anything else; so does wsfs now,
and nothing stored changes.  ``Content-Length: 0`` still stores an empty
file, and a chunked PUT of unknown size still works.

Real curl throughout: ``-H 'Content-Length:'`` and ``-H
'Transfer-Encoding:'`` make it send a body with neither header.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv
from tests.support import require_tool
from tests.transfer_env import PASSWORD

OLD = b"the committed version\n"
NEW = b"bytes the server never saw as a body\n" * 100


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def _curl(env, *args: str) -> tuple[str, bytes]:
    """curl's status code and the body of its answer."""
    source = env.tmp_path / "new.bin"
    source.write_bytes(NEW)
    argv = [
        require_tool("curl"), "-sS", "-m", "20", "-u", f"alice:{PASSWORD}",
        "-o", "answer.txt", "-w", "%{http_code}", *args,
    ]  # fmt: skip
    out, err, code = await env.run(argv)
    assert code == 0, err
    return out.decode(), (env.tmp_path / "answer.txt").read_bytes()


async def _stored(env, path: str):
    """(committed bytes or None, whether an upload is pending) at ``path``."""
    view = await env.transfers.view(env.user, path)
    committed = None
    if view.committed is not None:
        committed, _ = await env.transfer.download(path)
    return committed, view.pending is not None


@pytest.mark.parametrize(
    "framing",
    [("-0", "-H", "Content-Length:"), ("-H", "Content-Length:", "-H", "Transfer-Encoding:")],
    ids=["http-1.0-no-content-length", "http-1.1-neither-header"],
)
@pytest_twisted.ensureDeferred
async def test_a_put_without_a_length_is_411_and_changes_nothing(env, framing):
    await env.upload("/old.txt", OLD)
    for path, before in (("/old.txt", (OLD, False)), ("/fresh.txt", (None, False))):
        status, answer = await _curl(env, *framing, "-T", "new.bin", env.url(path))
        assert status == "411", (path, answer)
        assert b"Content-Length" in answer
        assert await _stored(env, path) == before, path


@pytest_twisted.ensureDeferred
async def test_the_411_comes_before_authentication(env):
    (env.tmp_path / "new.bin").write_bytes(NEW)
    argv = [
        require_tool("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
        "-0", "-H", "Content-Length:", "-T", "new.bin", env.url("/x.txt"),
    ]  # fmt: skip
    out, err, code = await env.run(argv)
    assert (code, out) == (0, b"411"), err


@pytest_twisted.ensureDeferred
async def test_an_empty_put_with_content_length_0_and_a_chunked_put_still_store(env):
    (env.tmp_path / "empty").write_bytes(b"")
    status, _ = await _curl(env, "-T", "empty", env.url("/empty.txt"))
    assert status == "201"
    assert await _stored(env, "/empty.txt") == (b"", False)
    # Chunked framing gives the length too (as curl -T - sends stdin).
    chunked = ("-H", "Transfer-Encoding: chunked")
    status, _ = await _curl(env, *chunked, "-T", "new.bin", env.url("/chunked.txt"))
    assert status == "201", status
    committed, pending = await _stored(env, "/chunked.txt")
    assert (hashlib.sha256(committed).digest(), pending) == (hashlib.sha256(NEW).digest(), False)
