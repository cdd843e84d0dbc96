"""Real HTTP clients against wsfront's site on 127.0.0.1: curl, wget, aria2c.

Each client runs as a subprocess while the reactor keeps serving; every
transfer is checked by sha256 of every byte, resumed ones included.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv, MiB, payload
from tests.http_raw import connect
from tests.support import require_tool
from tests.test_http_site_uploads import arrived, basic, hook, session_ended
from tests.transfer_env import PASSWORD


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def curl(*args: str) -> list[str]:
    return [require_tool("curl"), "-sS", "--fail", "-u", f"alice:{PASSWORD}", *args]


@pytest_twisted.ensureDeferred
async def test_curl_get_head_and_range(env):
    data = payload(5 * MiB + 3)
    await env.upload("/c.bin", data)
    out, err, code = await env.run(curl("-o", "got.bin", env.url("/c.bin")))
    assert code == 0, err
    assert sha((env.tmp_path / "got.bin").read_bytes()) == sha(data)
    out, err, code = await env.run(curl("-I", env.url("/c.bin")))
    assert code == 0, err
    assert f"content-length: {len(data)}".encode() in out.lower()
    assert b"accept-ranges: bytes" in out.lower()
    out, err, code = await env.run(curl("-r", "1000-1999", env.url("/c.bin")))
    assert code == 0, err
    assert out == data[1000:2000]


@pytest_twisted.ensureDeferred
async def test_curl_continues_a_partial_download(env):
    data = payload(4 * MiB + 11)
    await env.upload("/d.bin", data)
    (env.tmp_path / "d.bin").write_bytes(data[: MiB + 5])
    out, err, code = await env.run(
        curl("-C", "-", "-o", "d.bin", "-w", "%{http_code} %{size_download}", env.url("/d.bin"))
    )
    assert code == 0, err
    assert out.decode() == f"206 {len(data) - (MiB + 5)}"
    assert sha((env.tmp_path / "d.bin").read_bytes()) == sha(data)


@pytest_twisted.ensureDeferred
async def test_curl_upload_with_T(env):
    data = payload(6 * MiB + 1)
    (env.tmp_path / "up.bin").write_bytes(data)
    out, err, code = await env.run(curl("-T", "up.bin", "-w", "%{http_code}", env.url("/up.bin")))
    assert (code, out) == (0, b"201"), err
    got, _ = await env.transfer.download("/up.bin")
    assert sha(got) == sha(data)


@pytest_twisted.ensureDeferred
async def test_curl_resumes_an_interrupted_upload_sending_only_the_rest(env):
    from twisted.internet import reactor

    data = payload(6 * MiB + 77)
    (env.tmp_path / "big.bin").write_bytes(data)
    part = 2 * MiB + 3
    opened = hook(env.transfers, "open_write")
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"PUT /big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(data)
        + basic()
        + b"\r\n"
    )
    session = await opened
    got_part = arrived(session, part)
    client.send(data[:part])
    await got_part
    ended = session_ended(session)
    client.close()
    await ended
    out, err, code = await env.run(curl("-I", env.url("/big.bin")))
    assert f"upload-offset: {part}".encode() in out.lower()
    resumed = hook(env.transfers, "open_write")
    out, err, code = await env.run(curl("-C", str(part), "-T", "big.bin", env.url("/big.bin")))
    assert code == 0, err
    session = await resumed
    assert session.received == len(data) - part < len(data)
    got, _ = await env.transfer.download("/big.bin")
    assert sha(got) == sha(data)


@pytest_twisted.ensureDeferred
async def test_wget_continues_a_partial_download(env):
    wget = require_tool("wget")
    data = payload(3 * MiB + 5)
    await env.upload("/w.bin", data)
    (env.tmp_path / "w.bin").write_bytes(data[:700_000])
    out, err, code = await env.run(
        [wget, "-nv", "-S", "-c", "--user", "alice", "--password", PASSWORD, env.url("/w.bin")]
    )
    assert code == 0, (out, err)
    assert b"HTTP/1.1 206 Partial Content" in err
    assert sha((env.tmp_path / "w.bin").read_bytes()) == sha(data)


@pytest_twisted.ensureDeferred
async def test_aria2c_downloads_in_eight_parallel_ranges(env):
    aria2c = require_tool("aria2c")
    data = payload(16 * MiB + 9)
    await env.upload("/a.bin", data)
    out, err, code = await env.run(
        [
            aria2c,
            "-q",
            "-x8",
            "-s8",
            "--min-split-size=1M",
            "--http-user=alice",
            f"--http-passwd={PASSWORD}",
            "--allow-overwrite=true",
            "-o",
            "a.bin",
            env.url("/a.bin"),
        ]
    )
    assert code == 0, (out, err)
    assert sha((env.tmp_path / "a.bin").read_bytes()) == sha(data)


@pytest_twisted.ensureDeferred
async def test_a_browser_like_get_of_a_directory_gets_an_html_listing(env):
    await env.request("MKCOL", "/photos")
    await env.upload("/photos/cat.jpg", b"\xff\xd8meow")
    out, err, code = await env.run(
        curl(
            "-L",
            "-D",
            "headers.txt",
            "-H",
            "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "-A",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "--compressed",
            env.url("/photos"),
        )
    )
    assert code == 0, err
    headers = (env.tmp_path / "headers.txt").read_text().lower()
    assert "301" in headers and "location: /photos/" in headers
    assert "content-type: text/html; charset=utf-8" in headers
    assert "content-security-policy: sandbox" in headers
    assert b'<a href="/photos/cat.jpg">cat.jpg</a>' in out
    assert b'<a href="/">../</a>' in out
