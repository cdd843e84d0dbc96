"""What the tus tests share: a site with the tus endpoint mounted, raw tus
requests over treq, tuspy run as a real client in a subprocess, and checks
of what the catalog committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

from tests.http_env import HttpEnv
from wsfront.http.tus import TusEndpoint, TusSettings

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}
CLIENT = Path(__file__).with_name("tus_client_proc.py")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


async def start_env(reactor, tmp_path, tus: TusSettings | None = None, **kw) -> HttpEnv:
    env = await HttpEnv(reactor, tmp_path, **kw).start()
    env.tus = TusEndpoint(tus)
    env.site.mount("uploads", env.tus)
    # A request refused before its body closes the connection without a
    # ``Connection: close``, so a pooled connection could be reused dead:
    # tus requests get a fresh connection each.
    env.tus_http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    return env


def stop_env(env) -> defer.Deferred:
    return defer.ensureDeferred(env.stop())


async def tus(env, method: str, path: str, headers=None, data: bytes | None = None, auth=True):
    """One tus request; fires with (status, headers as a lower-case dict, body)."""
    merged = {**TUS, **(headers or {})}
    raw = {k.encode(): [str(v).encode()] for k, v in merged.items()}
    kw = {} if data is None else {"data": data}
    if auth:
        raw.update(env.auth_header)
    response = await env.tus_http.request(
        method, env.url(path), headers=raw, unbuffered=True, allow_redirects=False, **kw
    )
    body = await treq.content(response)
    found = {
        k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()
    }
    return response.code, found, body


async def create(env, length: int | None, metadata: dict[str, str], data: bytes | None = None):
    """POST a new upload; fires with (status, headers, body)."""
    headers = {"Upload-Metadata": ",".join(f"{k} {b64(v)}" for k, v in metadata.items())}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if data is not None:
        headers.update(OCTETS)
    return await tus(env, "POST", "/-/uploads/", headers, data)


def write_file(env, name: str, data: bytes) -> Path:
    path = env.tmp_path / name
    path.write_bytes(data)
    return path


def auth_value(env) -> str:
    return env.auth_header[b"Authorization"][0].decode()


def client_argv(env, **spec) -> list[str]:
    spec = {"auth": auth_value(env), **spec}
    spec["file"] = str(spec["file"])
    return [sys.executable, str(CLIENT), json.dumps(spec)]


async def tuspy(env, **spec) -> dict:
    """Run tuspy to its end; fires with its JSON report (``status`` on failure)."""
    argv = client_argv(env, **spec)
    out, err, code = await env.run(argv, cwd=Path(__file__).parent.parent)
    if code == 3:
        return json.loads(err.decode().strip().splitlines()[-1])
    assert code == 0, err.decode()
    return json.loads(out)


async def committed(env, vpath: str) -> bytes:
    """The committed content of ``vpath`` (read back through the transfer layer)."""
    data, _ = await env.transfer.download(vpath)
    return data


def environ() -> dict[str, str]:
    return dict(os.environ)


class SessionWatch:
    """Watches the WriteSessions ``transfers.open_write`` hands out, so a
    test can act when bytes reach the server or a session is interrupted,
    instead of sleeping."""

    def __init__(self, transfers) -> None:
        self._queue: list = []
        self._waiters: list[defer.Deferred] = []
        original = transfers.open_write

        def open_write(*args, **kwargs):
            return original(*args, **kwargs).addCallback(self._opened)

        transfers.open_write = open_write

    def _opened(self, session):
        self.watch(session)
        if self._waiters:
            self._waiters.pop(0).callback(session)
        else:
            self._queue.append(session)
        return session

    def next_session(self) -> defer.Deferred:
        """Fires with the next session opened (in order, none skipped)."""
        if self._queue:
            return defer.succeed(self._queue.pop(0))
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def drain(self) -> list:
        """The sessions opened and not yet taken by ``next_session``."""
        sessions, self._queue = self._queue, []
        return sessions

    @staticmethod
    def watch(session) -> None:
        session.arrival_waiters = []
        session.interrupted = defer.Deferred()
        write, interrupt = session.write, session.interrupt

        def counting_write(data: bytes) -> None:
            write(data)
            for n, d in list(session.arrival_waiters):
                if session.received >= n and not d.called:
                    session.arrival_waiters.remove((n, d))
                    d.callback(session.received)

        def noting_interrupt():
            def done(result):
                if not session.interrupted.called:
                    session.interrupted.callback(session)
                return result

            return defer.maybeDeferred(interrupt).addBoth(done)

        session.write = counting_write
        session.interrupt = noting_interrupt

    @staticmethod
    def arrived(session, n: int) -> defer.Deferred:
        """Fires once ``session`` relayed at least ``n`` bytes."""
        if session.received >= n:
            return defer.succeed(session.received)
        d: defer.Deferred = defer.Deferred()
        session.arrival_waiters.append((n, d))
        return d
