"""Storage servers on UNIX sockets: what a front end on the same host (and
``wslocal``, and other storage servers pulling a copy) may use instead of
loopback TCP.

The whole storage contract runs over ``unix:`` endpoints; a write stream
over one still sends its DATA frames straight into the socket
(``framing.send_iov``: ``sendmsg``, no copy) and both ends get a send
buffer big enough for a batch (``framing.tune_unix_socket``); and
separate ``twistd wsstorage --listen unix:...`` and ``twistd wsfront
--storage NAME=unix:path=...`` processes serve an upload and a download,
and ``wsfs status`` shows the servers up, with nothing but the
configuration saying UNIX.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import quoteStringArgument

from tests.storage_contract import StorageContract, new_id, pattern
from tests.storage_procs import read_sha, write_blob
from tests.support import LoggedChild, python_env, require_tool, twistd_argv
from tests.test_storage_contract_real import SECRET, RealStorage
from tests.wsfront_procs import ANY_PORT, PASSWORD, SERVES, USER, running_wsfront
from wsstorage import client as client_module
from wsstorage import framing
from wsstorage.service import start_storage_server

MiB = 1 << 20


@pytest.fixture
def socket_dir():
    """A short private folder for sockets: a test's ``tmp_path`` can be
    longer than a UNIX socket's path may be (108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="wsu-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def unix_listen(path: Path) -> str:
    return f"unix:address={quoteStringArgument(str(path))}:mode=600:lockfile=0"


@pytest_twisted.async_yield_fixture
async def unix_storage(tmp_path, socket_dir):
    servers = {}
    for name in RealStorage.names:
        servers[name] = await start_storage_server(
            reactor, unix_listen(socket_dir / f"{name}.sock"), str(tmp_path / name), name, SECRET
        )
    storage = RealStorage(servers)
    yield storage
    for c in storage.clients:
        await c.close()
    for server in servers.values():
        await server.stop()


class TestUnixSocketContract(StorageContract):
    """Every operation, a peer's ``copy_from`` included, over UNIX sockets."""

    @pytest.fixture
    def storage(self, unix_storage):
        for name in unix_storage.names:
            assert unix_storage.endpoint(name).startswith("unix:path="), "not a UNIX endpoint"
        return unix_storage


@pytest_twisted.ensureDeferred
async def test_a_write_stream_over_a_unix_socket_sends_directly_into_big_buffers(
    unix_storage, monkeypatch
):
    """The client's direct path (``sendmsg`` of frame headers and views of
    the caller's bytes) works on a UNIX transport as on TCP, and both ends'
    send buffers hold a whole gathered batch: UNIX stream sockets keep
    ``wmem_default`` (208 KiB) unless told, and a 1 MiB ``sendmsg`` then
    took a fifth of it."""
    sent: list[tuple[int, int]] = []
    sendmsg = client_module._sendmsg

    def recording(sock, iov):
        n = sendmsg(sock, iov)
        sent.append((sock.family, n))
        return n

    monkeypatch.setattr(client_module, "_sendmsg", recording)
    c = unix_storage.client("s1")
    blob, data = new_id(), pattern(8 * MiB + 5, 3)
    await write_blob(c, blob, data, chunk=256 * 1024)
    assert await read_sha(c, blob) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sent and {family for family, _ in sent} == {socket.AF_UNIX}
    assert sum(n for _, n in sent) > 0, "nothing went straight into the socket"
    [conn] = c._idle
    assert conn.socket is not None and conn._tcp is not None, "no direct path on UNIX"
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    if wmem_max < framing.UNIX_SEND_BUFFER:
        pytest.skip(f"net.core.wmem_max is {wmem_max}: the kernel caps SO_SNDBUF below that")
    [server_conn] = unix_storage.servers["s1"].factory.connections
    for sock in (conn.socket, server_conn.transport.socket):
        assert sock.family == socket.AF_UNIX
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * (
            framing.UNIX_SEND_BUFFER
        )


def test_tuning_leaves_a_tcp_socket_s_send_buffer_to_the_kernel():
    """SO_SNDBUF set on TCP would end its autotuning: only UNIX sockets
    get one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        framing.tune_unix_socket(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
    framing.tune_unix_socket(None)  # a transport without a socket


def wait_listening_unix(child: LoggedChild, name: str, timeout: float = 60.0) -> None:
    """Wait for ``child``'s "listening on UNIXAddress" line: logged once
    its socket is bound and listening (``start_storage_server``)."""
    deadline = time.monotonic() + timeout
    while f"wsstorage {name} listening on UNIXAddress" not in child.log():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.stop()
            raise AssertionError(f"{name} did not listen:\n{child.log()}")
        time.sleep(0.02)  # polling the log, not a synchronisation


@pytest.mark.slow
def test_separate_storage_and_front_end_processes_can_talk_over_unix_sockets(tmp_path, socket_dir):
    """A deployment with its storage servers on the front end's host may
    give them ``--listen unix:address=PATH`` and the front end
    ``--storage NAME=unix:path=PATH``: nothing else to configure."""
    curl = require_tool("curl")
    secret = tmp_path / "secret"
    children = []
    try:
        for name in ("s1", "s2"):
            path = socket_dir / f"{name}.sock"
            argv = twistd_argv(
                "wsstorage", "--listen", unix_listen(path), "--data", str(tmp_path / name),
                "--name", name, "--secret-file", str(secret),
            )  # fmt: skip
            child = LoggedChild(name, argv, tmp_path / f"{name}.log", cwd=tmp_path).start()
            children.append(child)
            wait_listening_unix(child, name)
            assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
        catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        added = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "user", "add", USER],
            input=PASSWORD, text=True, env=python_env(), capture_output=True,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        storage = []
        for name in ("s1", "s2"):
            path = quoteStringArgument(str(socket_dir / f"{name}.sock"))
            storage += ["--storage", f"{name}=unix:path={path}"]
        argv = twistd_argv(
            "wsfront", "--name", "fe1", "--catalog", catalog, "--secret-file", str(secret),
            "--http", ANY_PORT, "--replicas", "2", *storage,
        )  # fmt: skip
        with running_wsfront(tmp_path, argv, {"http"}, SERVES) as (fe, ports):
            payload = os.urandom(3 * MiB + 7)
            (tmp_path / "p.bin").write_bytes(payload)
            url = f"http://{USER}:{PASSWORD}@127.0.0.1:{ports['http']}/p.bin"
            put = subprocess.run(
                [curl, "-sS", "-T", str(tmp_path / "p.bin"), "-w", "%{http_code}", url],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert put.stdout.endswith(b"201"), (put, fe.log()[-3000:])
            got = subprocess.run([curl, "-sS", "--fail", url], capture_output=True, timeout=60)
            assert hashlib.sha256(got.stdout).digest() == hashlib.sha256(payload).digest()
            status = subprocess.run(
                [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "status"],
                env=python_env(), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            for name in ("s1", "s2"):
                line = next(x for x in status.stdout.splitlines() if x.split()[:1] == [name])
                assert "unix:path=" in line and re.search(r"\bup\b", line), status.stdout
    finally:
        for child in children:
            child.stop()
