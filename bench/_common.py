"""Helpers shared by the benchmarks: subprocess servers, a socket-copy
reference, peak RSS.  Benchmarks print figures; they assert nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support import free_port

REPO = Path(__file__).resolve().parent.parent


def child_env(repo: Path = REPO) -> dict[str, str]:
    """The caller's environment with checkout ``repo`` first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process in MiB (its peak resident set)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_storage(
    data_dir: Path,
    name: str,
    secret_file: Path,
    port: int | None = None,
    *,
    unix: Path | None = None,
    repo: Path = REPO,
    log: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``twistd -n wsstorage`` serving ``data_dir`` and return it once
    it listens, with the endpoint a ``StorageClient`` connects to.

    It listens on TCP ``port`` of 127.0.0.1 (a free one by default), or on
    the UNIX socket ``unix`` when given.  It runs the code of checkout
    ``repo``: that directory leads the child's PYTHONPATH and is its working
    directory, because ``python -c`` puts the working directory first on
    ``sys.path``, so a bench A/B-ing two checkouts really runs both.
    Failpoints set in the caller's environment are dropped: a benchmark
    measures the real path.  Output goes to ``log``, or nowhere."""
    env = child_env(repo)
    env.pop("WSFS_FAILPOINTS", None)
    env.pop("WSFS_FAILPOINT_LOG", None)
    if unix is not None:
        listen, endpoint = f"unix:address={unix}:mode=600:lockfile=0", f"unix:path={unix}"
    else:
        port = port or free_port()
        listen, endpoint = f"tcp:{port}:interface=127.0.0.1", f"tcp:127.0.0.1:{port}"
    with open(log, "wb") if log is not None else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "wsstorage",
             "--listen", listen, "--data", str(data_dir),
             "--name", name, "--secret-file", str(secret_file)],
            env=env, cwd=repo, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        if unix is not None:
            _wait_socket(unix, proc)
        else:
            wait_port(port)
    except BaseException as e:
        proc.kill()
        proc.wait()
        if log is not None:
            e.add_note(f"storage server {name}'s output: {log}")
        raise
    return proc, endpoint


def _wait_socket(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until the server has made its UNIX socket; fails at once when it exits."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"storage server exited with {proc.returncode} before {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {timeout}s")
        time.sleep(0.02)


def socket_copy_mbps(total: int, chunk: int = 256 * 1024) -> float:
    """Reference: bytes through a plain loopback TCP socket, one sender
    thread and this thread receiving, in MB/s."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    block = os.urandom(chunk)

    def send():
        conn, _ = server.accept()
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            conn.sendall(block[:n])
            sent += n
        conn.close()

    t = threading.Thread(target=send)
    t.start()
    client = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    got = 0
    buf = bytearray(chunk)
    while True:
        n = client.recv_into(buf)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - start
    client.close()
    t.join()
    server.close()
    assert got == total
    return total / elapsed / 1e6
